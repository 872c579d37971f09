"""Fuzzed file and class names through data loading, training and sampling (issue 15).

Property: whatever the names, everything written lies under the folder the user named (the run
folder, ``--out``, the cache), and the tool either succeeds with one file set per class or refuses
with one ``volgan: error:`` line.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volgan.cli import main
from volgan.errors import VolganError
from volgan.safety import safe_name
from volgan.sampling import LoadedGenerator, generate, load_generator, write_samples

SIZE = 8
TINY = [
    *("--set", f"data.size={SIZE}", "--set", "model.ngf=2", "--set", "model.ndf=2"),
    *("--set", "model.latent_dim=4", "--set", "model.embed_dim=2"),
    *("--set", "train.batch_size=2", "--set", "train.n_critic=1"),
    *("--set", "log.every=1", "--set", "log.image_every=1000", "--set", "log.progress_bar=false"),
    *("--device", "cpu"),
]

# what a folder may be called: anything but '/' and NUL, not hidden, not too long for the file system
folder_names = st.text(
    st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=40
).filter(lambda n: not n.startswith(".") and len(n.encode()) <= 200)
# what a downloaded checkpoint may claim: anything at all
any_names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300) | st.sampled_from(
    ["..", ".", "../..", "/", "/etc/passwd", "a/../../b", "\x00", "\n", "CON", "~", "x" * 5000]
)


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if not p.is_dir()]


def _detach_run_logs() -> None:
    log = logging.getLogger("volgan")
    for handler in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(handler)
        handler.close()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(folder_names, min_size=2, max_size=3, unique=True), file_name=folder_names)
def test_fuzzed_folder_and_file_names_through_train_and_sample(names: list[str], file_name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        base = Path(tmp)
        mp.setenv("VOLGAN_CACHE_DIR", str(base / "cache"))
        rng = np.random.default_rng(0)
        for k, name in enumerate(names):
            (base / "data" / name).mkdir(parents=True)
            for i in range(2):
                volume = (rng.normal(size=(SIZE,) * 3) + 3 * k).astype(np.float32)
                np.save(base / "data" / name / f"{file_name}{i}.npy", volume)
        data_before = sorted(p.relative_to(base) for p in _all_files(base / "data"))
        run, out = base / "runs" / "r", base / "out"

        code = main(["-q", "train", "--data", str(base / "data"), "--run-dir", str(run), "--steps", "1", *TINY])
        _detach_run_logs()
        folded = [safe_name(n).casefold() for n in names]
        if len(set(folded)) < len(folded):  # names the sampler could not keep apart: refused before training
            assert code == 2 and not run.exists()
            return
        assert code == 0
        assert main(["sample", "--checkpoint", str(run), "--n", "1", "--format", "npy", "--out", str(out)]) == 0

        assert sorted(p.name for p in base.iterdir()) == ["cache", "data", "out", "runs"]
        assert sorted(p.relative_to(base) for p in _all_files(base / "data")) == data_before
        assert [p.name for p in (base / "runs").iterdir()] == ["r"]
        samples = _all_files(out)
        assert len(samples) == 2 * len(names)  # volume + sidecar per class, none overwritten
        assert {p.parent.name for p in samples} == {safe_name(n) for n in names}
        assert all(p.parent.parent == out for p in samples)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedGenerator, np.ndarray]:
    base = tmp_path_factory.mktemp("fuzz-sample")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOLGAN_CACHE_DIR", str(base / "cache"))
        for k in range(2):
            (base / "data" / f"c{k}").mkdir(parents=True)
            for i in range(2):
                np.save(base / "data" / f"c{k}" / f"v{i}.npy", np.random.default_rng(i).normal(size=(SIZE,) * 3) + k)
        args = ["-q", "train", "--data", str(base / "data"), "--run-dir", str(base / "run"), "--steps", "1", *TINY]
        assert main(args) == 0
    _detach_run_logs()
    gen = load_generator(base / "run")
    volumes = generate(gen.generator, torch.tensor([0, 1]), seed=0).numpy()
    return gen, volumes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(any_names, min_size=2, max_size=2))
def test_fuzzed_checkpoint_class_names_never_write_outside_out(
    names: list[str], loaded: tuple[LoadedGenerator, np.ndarray]
) -> None:
    gen, volumes = loaded
    hostile = dataclasses.replace(gen, class_names=names)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        out = base / "a" / "out"
        try:
            written = write_samples(hostile, volumes, [0, 1], [0, 0], 0, out, "npy")
        except VolganError as e:
            assert "would be written to the same files" in str(e) and "\n" not in str(e)
            assert not _all_files(base)
            return
        files = _all_files(base)
        assert len(written) == 2 and len(files) == 4
        assert all(p.parent.parent == out for p in files), files
        assert all(len(p.name.encode()) <= 255 for p in files)
