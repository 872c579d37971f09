"""Hostile and odd inputs, round two (issue 15): writes stay where the user said, no silent overwrite,
no hang, no traceback, no silent NaN.

Every CLI case must end as exit code 2 (130 for Ctrl-C) and one ``volgan: error: ...`` line. Cases
that could hang run under an alarm, so a regression fails instead of blocking the suite.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from cli_cases import files_under, one_error_line

from conftest import detach_run_logs, tiny_cli, write_npy_classes
from volgan import sampling
from volgan.cli import main
from volgan.config import load_config
from volgan.data.dataset import load_volumes
from volgan.errors import ConfigError, DataError
from volgan.safety import bounded

SIZE = 8
TINY = tiny_cli(SIZE)


# ---------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def alarm() -> Iterator[Callable[[int], None]]:
    """``alarm(s)``: fail the test with TimeoutError after s seconds instead of hanging."""

    def fire(signum: int, frame: Any) -> None:
        raise TimeoutError("the call hung")

    old = signal.signal(signal.SIGALRM, fire)
    yield lambda seconds: signal.alarm(seconds)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------- 1. writes outside / collisions


def test_resume_from_a_loose_checkpoint_needs_run_dir(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "downloads" / "some" / "folder"
    folder.mkdir(parents=True)
    loose = folder / "model.pt"
    loose.write_bytes((trained / "checkpoints" / "step_00000001.pt").read_bytes())
    (tmp_path / "downloads" / "unrelated.txt").write_text("mine")
    before = snapshot(tmp_path / "downloads")

    code = main(["train", "--resume", str(loose), "--steps", "2", *TINY])

    one_error_line(capsys, code, r"model\.pt: this checkpoint is not inside a run folder .*pass --run-dir")
    assert snapshot(tmp_path / "downloads") == before
    run = tmp_path / "continued"
    assert main(["train", "--resume", str(loose), "--run-dir", str(run), "--steps", "2", *TINY]) == 0
    detach_run_logs()
    assert (run / "checkpoints" / "step_00000002.pt").is_file()
    assert snapshot(tmp_path / "downloads") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "continued", "downloads"]


# ---------------------------------------------------------------------------- 2. silently wrong data


def test_float32_volumes_near_the_limit_scale_without_nan(tmp_path: Path) -> None:
    big = np.float32(3e38)
    root = tmp_path / "data"
    for k in range(2):
        (root / str(k)).mkdir(parents=True)
        for i in range(2):
            v = np.random.default_rng(i + 2 * k).uniform(-1, 1, size=(SIZE,) * 3).astype(np.float32) * big
            v[0, 0, 0], v[1, 1, 1] = -big, big
            np.save(root / str(k) / f"v{i}.npy", v)
    cfg = load_config(None, [f"data.size={SIZE}", f"data.cache_dir={tmp_path / 'cache'}"]).data
    data = load_volumes(cfg, root)
    assert np.isfinite(data.volumes).all()
    assert data.volumes.min() == -1.0 and data.volumes.max() == 1.0
    assert np.isfinite(data.intensity_range).all()


@pytest.mark.parametrize("suffix", [".npy", ".nii"])
def test_float64_beyond_float32_is_named(suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_npy_classes(tmp_path / "data", ["0", "1"])
    huge = np.random.default_rng(0).uniform(1, 2, size=(SIZE,) * 3) * 1e300
    if suffix == ".npy":
        np.save(data / "1" / "huge.npy", huge)
    else:
        nib.save(nib.Nifti1Image(huge, np.eye(4)), data / "1" / "huge.nii")
    code = main(["train", "--data", str(data), "--dry-run", *TINY])
    one_error_line(capsys, code, rf"1/huge\{suffix}: holds values up to 2e\+300, beyond float32's range")


def test_yaml_section_given_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "twice.yaml"
    config.write_text("train:\n  steps: 5\nmodel:\n  ngf: 4\ntrain:\n  batch_size: 2\n")
    code = main(["train", "--config", str(config), "--data", str(tmp_path), "--dry-run"])
    one_error_line(capsys, code, r"twice\.yaml: YAML syntax error at line 5, column 1: key 'train' is given twice")


def test_yaml_merge_keys_still_work() -> None:
    from volgan.safety import load_yaml

    assert load_yaml("a: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n", "t") == {
        "a": {"x": 1, "y": 2},
        "c": {"x": 1, "y": 3},
    }


# ---------------------------------------------------------------------------- 3. hangs


def test_fifo_in_a_class_folder_does_not_block(
    tmp_path: Path, alarm: Callable[[int], None], capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_npy_classes(tmp_path / "data", ["0", "1"])
    os.mkfifo(data / "1" / "x.npy")
    alarm(60)
    code = main(["train", "--data", str(data), "--dry-run", *TINY])
    one_error_line(capsys, code, r"1/x\.npy: is a FIFO \(named pipe\); only regular files are read")
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_fifo_as_config_does_not_block(
    tmp_path: Path, alarm: Callable[[int], None], capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(tmp_path / "c.yaml")
    alarm(60)
    code = main(["train", "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path), "--dry-run"])
    one_error_line(capsys, code, r"c\.yaml: is a FIFO")


def _laughs(levels: int, width: int = 9) -> str:
    text = f"l0: &l0 [{', '.join(['lol'] * width)}]\n"
    for k in range(1, levels):
        text += f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * width)}]\n"
    return text


def test_billion_laughs_config_is_refused_fast(
    tmp_path: Path, alarm: Callable[[int], None], capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lol.yaml"
    config.write_text(_laughs(10) + "seed: *l9\n")  # 9^10 = 3.5e9 values in ~500 bytes
    assert config.stat().st_size < 1000
    alarm(30)
    code = main(["train", "--config", str(config), "--data", str(tmp_path), "--dry-run"])
    one_error_line(capsys, code, r"lol\.yaml: YAML syntax error .*expands to more than 10000 values through aliases")


def test_small_alias_bomb_gives_a_short_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "lol.yaml"
    levels = "".join(f"- {line.split(': ', 1)[1]}\n" for line in _laughs(4, width=7).splitlines())
    config.write_text("seed:\n" + levels)  # ~3000 values, under the bound: a wrong type for seed
    code = main(["train", "--config", str(config), "--data", str(tmp_path), "--dry-run"])
    line = one_error_line(capsys, code, r"lol\.yaml.*: seed: .*got \[\[")
    assert len(line) < 300


def test_override_alias_bomb_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"override .*recursive structure"):
        load_config(None, ["seed=&a [*a]"])


def test_error_lines_are_bounded() -> None:
    line = bounded("x" * 10_000_000)
    assert len(line) <= 2000 and "characters left out" in line
    assert bounded("a\nb") == "a b"


# ---------------------------------------------------------------------------- 4. unbounded allocations


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()


def test_npz_member_that_inflates_to_gigabytes_is_refused_before_inflating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:  # a real 400 MB of zeros, ~400 kB deflated
        with archive.open("train_images.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((100, 1, 4000, 1000)))
            zeros = bytes(10**6)
            for _ in range(400):
                member.write(zeros)
        archive.writestr("train_labels.npy", np.zeros(100, np.int64).tobytes())
    assert path.stat().st_size < 5_000_000
    cfg = load_config(None, [f"data.size={SIZE}", "data.max_decoded_gb=0.1", f"data.cache_dir={tmp_path}/c"]).data
    tracemalloc.start()
    try:
        with pytest.raises(
            DataError, match=r"bomb\.npz\[train_images\]: .*would decode to 1\.6 GB.*data\.max_decoded_gb"
        ):
            load_volumes(cfg, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6


def test_npy_header_promising_10_gb_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_npy_classes(tmp_path / "data", ["0", "1"])
    path = data / "1" / "big.npy"
    with open(path, "wb") as f:  # a sparse file really that large, so the "file too short" check passes
        f.write(_npy_header((2500, 2000, 2000)))
        f.truncate(10**10 + 128)
    code = main(["train", "--data", str(data), "--dry-run", *TINY])
    one_error_line(capsys, code, r"1/big\.npy: its array \(2500, 2000, 2000\) would decode to 40 GB.*max_decoded_gb")


def test_tiny_spacing_is_refused_before_resampling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_npy_classes(tmp_path / "data", ["0", "1"])
    for k in "01":
        for i in range(2):
            volume = np.load(data / k / f"v{i}.npy")
            nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), data / k / f"v{i}.nii.gz")
            (data / k / f"v{i}.npy").unlink()
    extra = ["--set", "data.resample=spacing", "--set", "data.spacing=0.0001"]
    code = main(["train", "--data", str(data), "--dry-run", *TINY, *extra])
    one_error_line(
        capsys, code, r"v0\.nii\.gz: data\.spacing resamples this volume to \(160000, .*data\.max_decoded_gb"
    )


@pytest.mark.parametrize("key", ["model.ngf=100000", "model.max_channels=1000000", "model.latent_dim=10000000"])
def test_channel_widths_have_an_upper_bound(key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(tmp_path), "--dry-run", "--set", key])
    one_error_line(capsys, code, re.escape(key.split("=")[0]) + r": Input should be less than or equal to")


def test_sample_count_is_bounded(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["sample", "--checkpoint", str(trained), "--n", str(10**12), "--out", str(out)])
    one_error_line(capsys, code, r"--n 1000000000000: more than --max-volumes 100000")
    code = main(
        ["sample", "--checkpoint", str(trained), "--n", "60000", "--class", "c0", "--class", "c1", "--out", str(out)]
    )
    one_error_line(capsys, code, r"--n 60000 for 2 classes is 120000 volumes, more than --max-volumes 100000")
    code = main(["sample", "--checkpoint", str(trained), "--n", "1", "--batch-size", "100000000", "--out", str(out)])
    one_error_line(capsys, code, r"--batch-size 100000000 at 8³ needs 205 GB, more than the limit of 4 GB")
    assert not out.exists()


# ---------------------------------------------------------------------------- 5. one line, exit 2


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--seed", "-1"], r"argument --seed: must be >= 0, got '-1'"),
        (["--start", "-1"], r"argument --start: must be >= 0, got '-1'"),
        (["--n", "0"], r"argument --n: must be >= 1, got '0'"),
        (["--n", "many"], r"argument --n: expected an integer, got 'many'"),
        (["--batch-size", "0"], r"argument --batch-size: must be >= 1"),
    ],
)
def test_bad_sample_arguments_are_one_line(
    args: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    one_error_line(capsys, int(stop.value.code or 0), match + r".*see `volgan sample --help`")


def test_outputs_that_are_files(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    code = main(["sample", "--checkpoint", str(trained), "--n", "1", "--out", str(blocker)])
    one_error_line(capsys, code, r"file: --out must be a folder, but a file of that name exists")
    code = main(["sample", "--checkpoint", str(trained), "--n", "1", "--out", str(blocker / "sub")])
    one_error_line(capsys, code, r"file/sub: --out: .*file is a file, so the folder cannot be created")
    data = write_npy_classes(tmp_path / "data", ["0", "1"])
    code = main(["train", "--data", str(data), "--run-dir", str(blocker), "--steps", "1", *TINY])
    one_error_line(capsys, code, r"file: --run-dir \(run_dir\) must be a folder")
    code = main(["demo-data", "--out", str(blocker), "--n-per-class", "1", "--size", "8"])
    one_error_line(capsys, code, r"file: --out must be a folder")
    code = main(["export", "--checkpoint", str(trained), "--out", str(blocker / "g.safetensors")])
    one_error_line(capsys, code, r"file: --out's folder must be a folder")
    assert blocker.read_text() == "mine"


def test_out_inside_a_read_only_folder(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: let the permission check answer as for a user
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    try:
        code = main(["sample", "--checkpoint", str(trained), "--n", "1", "--out", str(locked / "out")])
    finally:
        locked.chmod(0o755)
    one_error_line(capsys, code, r"locked/out: --out: cannot write in .*locked \(permission denied or read-only\)")


def test_classifier_meta_without_data_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from volgan.evaluation.classifier import VolumeClassifier, save_classifier

    model = VolumeClassifier(size=SIZE, num_classes=2, width=2)
    save_classifier(tmp_path / "clf", model, {"class_names": ["a", "b"], "size": SIZE, "intensity": "[-1, 1]"})
    args = ["evaluate", "--samples", str(tmp_path), "--real", str(tmp_path), "--classifier", str(tmp_path / "clf")]
    code = main([*args, "--out", str(tmp_path / "report")])
    one_error_line(capsys, code, r"clf: classifier meta lacks valid 'data' settings")


# ---------------------------------------------------------------------------- 6. interrupted sampling


def test_ctrl_c_while_sampling_leaves_only_complete_pairs_and_says_where_to_resume(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = tmp_path / "reference"
    common = ["sample", "--checkpoint", str(trained), "--format", "npy", "--batch-size", "2"]
    assert main([*common, "--n", "5", "--out", str(reference)]) == 0
    capsys.readouterr()

    real_write = sampling.write_volume
    calls = {"n": 0}

    def interrupted_after_volume(volume: np.ndarray, path: Path, affine: np.ndarray) -> None:
        real_write(volume, path, affine)
        calls["n"] += 1
        if calls["n"] == 6:  # the volume of the 6th pair is written; Ctrl-C before its sidecar
            raise KeyboardInterrupt

    monkeypatch.setattr(sampling, "write_volume", interrupted_after_volume)
    out = tmp_path / "out"
    code = main([*common, "--n", "5", "--out", str(out)])
    one_error_line(capsys, code, r"volgan: interrupted: .*before index 2 has its JSON sidecar.*--start 2 --n 3", 130)
    stems = {p.with_suffix("").as_posix() for p in files_under(out)}
    assert all((Path(s + ".npy").is_file() and Path(s + ".json").is_file()) for s in stems)
    assert {Path(s).name for s in stems} == {f"c{k}_seed0_{i:05d}" for k in range(2) for i in range(2)} | {
        "c0_seed0_00002"
    }

    monkeypatch.setattr(sampling, "write_volume", real_write)
    assert main([*common, "--start", "2", "--n", "3", "--out", str(out)]) == 0
    assert [p.relative_to(out) for p in files_under(out)] == [p.relative_to(reference) for p in files_under(reference)]
    for p in files_under(reference):
        if p.suffix == ".npy":
            np.testing.assert_array_equal(np.load(p), np.load(out / p.relative_to(reference)))


# ---------------------------------------------------------------------------- the name mapping itself
