"""Class and file names, fuzzed and crafted, through data loading, training, sampling and export.

Property: whatever the names, everything written lies under the folder the user named (the run
folder, ``--out``, the cache), and the tool either succeeds with one file set per class or refuses
with one ``volgan: error:`` line.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_cases import checkpoint_with_names, files_under, one_error_line, safetensors_with_names
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import detach_run_logs, tiny_cli, write_npy_classes
from volgan.cli import main
from volgan.errors import VolganError
from volgan.safety import safe_name, safe_names
from volgan.sampling import LoadedGenerator, generate, load_generator, write_samples

SIZE = 8
TINY = tiny_cli(SIZE)

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
        detach_run_logs()
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
    detach_run_logs()
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


# ---------------------------------------------------------------------------- crafted names


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_class_named_dotdot_is_written_inside_out(
    kind: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make = checkpoint_with_names if kind == "pt" else safetensors_with_names
    ckpt = make(trained, ["..", "c1"], tmp_path / "src" / f"evil.{'pt' if kind == 'pt' else 'safetensors'}")
    out = tmp_path / "OUT" / "inner"
    assert main(["sample", "--checkpoint", str(ckpt), "--n", "2", "--out", str(out), "--format", "npy"]) == 0
    assert [p.name for p in (tmp_path / "OUT").iterdir()] == ["inner"]
    written = files_under(out)
    assert len(written) == 8  # 2 classes x 2 volumes x (volume + sidecar)
    assert {p.parent.name for p in written} == {"_.", "c1"}
    sidecar = json.loads((out / "_." / "_._seed0_00000.json").read_text())
    assert sidecar["class_name"] == ".."  # the exact name is kept: the mapping can be reversed


@pytest.mark.parametrize(
    ("names", "error"),
    [
        (["a b", "a_b"], r"class names 'a b' and 'a_b' would be written to the same files"),
        (["Chair", "chair"], r"'Chair' and 'chair' would be written to the same files"),
        (["caf\u00e9", "cafe\u0301"], r"'caf\\xe9' and 'cafe\\u0301' would be written to the same files"),
        (["../../escape", "c1"], None),
        (["/etc/passwd", "c1"], None),
        (["a\x00b", "c1"], None),
        (["line\nbreak", "c1"], None),
        (["x" * 400, "c1"], None),
        (["CON", "c1"], None),
    ],
    ids=[
        "space-vs-underscore",
        "case",
        "unicode-nfc-vs-nfd",
        "dotdot-slash",
        "absolute",
        "nul",
        "newline",
        "long",
        "windows-device",
    ],
)
def test_hostile_class_names_are_contained_or_refused(
    names: list[str], error: str | None, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = checkpoint_with_names(trained, names, tmp_path / "ck" / "c.pt")
    out = tmp_path / "out"
    code = main(["sample", "--checkpoint", str(ckpt), "--n", "1", "--out", str(out), "--format", "npy"])
    if error is not None:
        one_error_line(capsys, code, error)
        assert not out.exists()
        return
    assert code == 0
    written = files_under(tmp_path)
    outside = [p for p in written if out not in p.parents and tmp_path / "ck" not in p.parents]
    assert outside == []
    samples = files_under(out)
    assert len(samples) == 4 and len({p.parent for p in samples}) == 2
    assert all(len(p.name.encode()) <= 255 and p.parent.parent == out for p in samples)


def test_training_refuses_class_folders_that_would_collide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_npy_classes(tmp_path / "data", ["a b", "a_b"])
    run = tmp_path / "run"
    code = main(["train", "--data", str(data), "--run-dir", str(run), "--steps", "1", *TINY])
    one_error_line(capsys, code, r"data: class names 'a b' and 'a_b' would be written to the same files")
    assert not run.exists()


def test_safe_name_properties() -> None:
    for name in ["..", ".", "a/b", "\x00", "\n", "x" * 1000, "é" * 200, "CON", "", "con.txt"]:
        safe = safe_name(name)
        assert safe not in ("", ".", "..") and not safe.startswith(".")
        assert "/" not in safe and "\x00" not in safe and "\n" not in safe
        assert len(safe.encode()) <= 100
    assert safe_name("x" * 1000) != safe_name("x" * 999)  # cut names stay apart by their hash
    with pytest.raises(VolganError, match="would be written to the same files"):
        safe_names(["A", "a"], "w")
