"""Crafted bad inputs through the CLI, and fuzzed configs and volume files.

Every bad input must end as exit code 2 and one ``volgan: error: <file or key>: <what is wrong>``
line on stderr, without a traceback, and must leave the run folder and the data cache as they were.
The fuzz tests feed random configs and byte-mutated files to the loaders: each gives a result or
one ConfigError/DataError line, never another exception.
"""

from __future__ import annotations

import builtins
import errno
import gzip
import logging
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_cli
from volgan.cli import main
from volgan.config import Config, load_config
from volgan.data.io import read_volume
from volgan.errors import ConfigError, DataError

SIZE = 16
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # RAS, 2 mm: a 16³ volume already fits the 16³ grid
TINY = tiny_cli(SIZE, width=4, latent=8, embed=4)


# ---------------------------------------------------------------------------- helpers


def save_nifti(path: Path, volume: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path


def save_nifti_sform(path: Path, rows: np.ndarray) -> Path:
    """A 16³ NIfTI whose sform rows are written verbatim (nibabel refuses a singular or NaN affine)."""
    header = nib.Nifti1Header()
    header.set_data_shape((SIZE,) * 3)
    header.set_data_dtype(np.float32)
    header["sform_code"], header["qform_code"] = 1, 0
    header["srow_x"], header["srow_y"], header["srow_z"] = rows
    nib.save(nib.Nifti1Image(_noise(), None, header=header), path)
    return path


def _noise(shape: tuple[int, ...] = (SIZE,) * 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 20.0, size=shape).astype(np.float32)


def write_dataset(root: Path, classes: int = 2, per_class: int = 2) -> Path:
    """``root/<k>/vol_i.nii.gz``: valid 16³ NIfTI volumes."""
    for k in range(classes):
        (root / str(k)).mkdir(parents=True)
        for i in range(per_class):
            save_nifti(root / str(k) / f"vol_{i}.nii.gz", _noise(seed=10 * k + i) + 30 * k)
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]] | None:
    """Every entry under ``folder`` (hidden ones too) with its size and mtime; None if it does not exist."""
    if not folder.exists():
        return None
    return {
        p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(folder.rglob("*"))
    }


def cache_entries(folder: Path) -> list[str]:
    """Names in the cache folder (entries and temp folders); an absent folder holds none."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------- the cases


@dataclass
class Workspace:
    """Folders of one test: a valid dataset, a run folder, a scratch folder and, on request, a trained run."""

    data: Path
    run: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    trained: Callable[[], Path]

    def train_args(self, *extra: str, config: Path | None = None) -> list[str]:
        cfg = ["--config", str(config)] if config else []
        return ["train", "--data", str(self.data), "--run-dir", str(self.run), *cfg, "--steps", "1", *TINY, *extra]

    def config_file(self, text: str) -> Path:
        path = self.tmp / "bad.yaml"
        path.write_text(text)
        return path


@dataclass
class Invocation:
    args: list[str]
    match: str  # regex the error line must match (after "volgan: error: ")
    watch: list[Path] = field(default_factory=list)  # folders that must be left exactly as they were
    check_cache: bool = True  # False only where the data is valid and loads before the failure (see below)


def _train(ws: Workspace, match: str, *extra: str) -> Invocation:
    return Invocation(ws.train_args(*extra), match, [ws.run])


def corrupt_gzip(ws: Workspace) -> Invocation:
    (ws.data / "0" / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    return _train(ws, r"0/broken\.nii\.gz: cannot decode, the file is damaged or not a volume")


def truncated_nifti(ws: Workspace) -> Invocation:
    path = save_nifti(ws.data / "1" / "cut.nii.gz", _noise())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return _train(ws, r"1/cut\.nii\.gz: cannot decode, the file is damaged")


def zero_affine(ws: Workspace) -> Invocation:
    save_nifti_sform(ws.data / "0" / "zero.nii.gz", np.zeros((3, 4)))
    return _train(ws, r"0/zero\.nii\.gz: the affine .* is singular")


def nan_affine(ws: Workspace) -> Invocation:
    rows = np.eye(4)[:3].copy()
    rows[1, 1] = np.nan
    save_nifti_sform(ws.data / "0" / "nan_affine.nii.gz", rows)
    return _train(ws, r"0/nan_affine\.nii\.gz: the affine .* NaN/Inf")


def two_d(ws: Workspace) -> Invocation:
    save_nifti(ws.data / "1" / "slice.nii.gz", _noise((SIZE, SIZE)))
    return _train(ws, r"1/slice\.nii\.gz: expected a 3-D volume \(D, H, W\), got shape \(16, 16\)")


def four_d(ws: Workspace) -> Invocation:
    save_nifti(ws.data / "1" / "channels.nii.gz", _noise((SIZE, SIZE, SIZE, 3)))
    return _train(ws, r"1/channels\.nii\.gz: expected a 3-D volume \(D, H, W\), got shape \(16, 16, 16, 3\); channels")


def nan_voxels(ws: Workspace) -> Invocation:
    volume = _noise()
    volume[3, 4, 5] = np.nan
    save_nifti(ws.data / "0" / "nan.nii.gz", volume)
    return _train(ws, r"0/nan\.nii\.gz: contains NaN or Inf voxels")


def inf_voxels(ws: Workspace) -> Invocation:
    volume = _noise()
    volume[0, 0, 0] = -np.inf
    np.save(ws.data / "1" / "inf.npy", volume)
    return _train(ws, r"1/inf\.npy: contains NaN or Inf voxels")


def constant_volume(ws: Workspace) -> Invocation:
    save_nifti(ws.data / "0" / "flat.nii.gz", np.full((SIZE,) * 3, 7.0, np.float32))
    return _train(ws, r"0/flat\.nii\.gz: constant volume \(every voxel is 7\)")


def empty_class_folder(ws: Workspace) -> Invocation:
    (ws.data / "2").mkdir()
    return _train(ws, r"data/2: class folder '2' is empty")


def only_unsupported_files(ws: Workspace) -> Invocation:
    (ws.data / "2").mkdir()
    (ws.data / "2" / "notes.txt").write_text("not a volume")
    (ws.data / "2" / "scan.dcm").write_bytes(b"DICM")
    return _train(ws, r"data/2: class folder '2' has no volume files .*found only notes\.txt, scan\.dcm")


def mixed_shapes_without_resampling(ws: Workspace) -> Invocation:
    # With data.resample: fit/spacing, other shapes are resampled and padded/cropped by design;
    # with resample: none every volume must already be the grid, so a 12x16x16 volume is refused.
    save_nifti(ws.data / "1" / "short.nii.gz", _noise((12, SIZE, SIZE)))
    return _train(
        ws,
        r"1/short\.nii\.gz: shape \(12, 16, 16\) is not the training grid \(16, 16, 16\) and data\.resample is 'none'",
        "--set",
        "data.resample=none",
    )


def unreadable_file(ws: Workspace) -> Invocation:
    path = save_nifti(ws.data / "0" / "locked.nii.gz", _noise())
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads a chmod-000 file anyway: let opening it fail as it would for a user
        real_open = builtins.open

        def deny(file: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, (str, os.PathLike)) and Path(file).name == path.name:
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        ws.monkeypatch.setattr(builtins, "open", deny)
    return _train(ws, r"0/locked\.nii\.gz: permission denied")


def symlink_loop(ws: Workspace) -> Invocation:
    (ws.data / "1" / "loop.nii.gz").symlink_to(ws.data / "1" / "loop.nii.gz")
    return _train(ws, r"1/loop\.nii\.gz: symlink loop")


def _edit_nifti_header(path: Path, at: int, fmt: str, *values: int) -> Path:
    """Overwrite header bytes of a ``.nii.gz`` (struct format ``fmt`` at byte ``at``), keeping the gzip valid."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[at : at + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def unknown_datatype(ws: Workspace) -> Invocation:
    _edit_nifti_header(save_nifti(ws.data / "0" / "dtype.nii.gz", _noise()), 70, "<h", 272)  # datatype code
    return _train(ws, r"0/dtype\.nii\.gz: cannot decode.*data code 272 not recognized")


def huge_header_shape(ws: Workspace) -> Invocation:
    _edit_nifti_header(save_nifti(ws.data / "1" / "huge.nii.gz", _noise()), 42, "<3h", 2000, 2000, 2000)  # dim[1:4]
    return _train(
        ws, r"1/huge\.nii\.gz: the header's shape \(2000, 2000, 2000\) .* more than the \d+-byte file can hold"
    )


def mangled_npy_header(ws: Workspace) -> Invocation:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (16, 16, 16), "  # no closing brace
    header += " " * (117 - len(header)) + "\n"
    raw = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + _noise().tobytes()
    (ws.data / "0" / "mangled.npy").write_bytes(raw)
    return _train(ws, r"0/mangled\.npy: not an \.npy array .*the header cannot be parsed")


def yaml_syntax_error(ws: Workspace) -> Invocation:
    config = ws.config_file("train:\n  steps: 5\n  batch_size: [2, 3\nmodel:\n  ngf: 4\n")
    return Invocation(ws.train_args(config=config), r"bad\.yaml: YAML syntax error at line \d+, column \d+", [ws.run])


def yaml_unknown_key(ws: Workspace) -> Invocation:
    config = ws.config_file("train:\n  n_critics: 3\n")
    return Invocation(ws.train_args(config=config), r"bad\.yaml.*: unknown key 'train\.n_critics'", [ws.run])


def yaml_wrong_type(ws: Workspace) -> Invocation:
    config = ws.config_file("train:\n  wgan_gp:\n    gp_weight: ten\n")
    return Invocation(
        ws.train_args(config=config),
        r"bad\.yaml.*: train\.wgan_gp\.gp_weight: Input should be a valid number.*'ten'",
        [ws.run],
    )


def yaml_out_of_range(ws: Workspace) -> Invocation:
    config = ws.config_file("train:\n  ema_decay: 1.5\n")
    return Invocation(
        ws.train_args(config=config), r"bad\.yaml.*: train\.ema_decay: Input should be less than 1.*1\.5", [ws.run]
    )


def yaml_not_a_mapping(ws: Workspace) -> Invocation:
    config = ws.config_file("- data\n- model\n")
    return Invocation(ws.train_args(config=config), r"bad\.yaml: expected a mapping of sections", [ws.run])


def infinite_learning_rate(ws: Workspace) -> Invocation:
    config = ws.config_file("train:\n  lr_g: .inf\n")
    return Invocation(ws.train_args(config=config), r"bad\.yaml.*: train\.lr_g: .*finite", [ws.run])


def negative_seed(ws: Workspace) -> Invocation:
    return _train(ws, r"seed: Input should be greater than or equal to 0.*-1", "--seed", "-1")


def checkpoint_of_other_architecture(ws: Workspace) -> Invocation:
    run = ws.trained()
    args = ["train", "--resume", str(run), "--steps", "2", "--set", "model.ngf=8"]
    match = r"step_00000001\.pt: checkpoint of another config: model\.ngf is 4 there, 8 here"
    return Invocation(args, match, [run])


def truncated_checkpoint(ws: Workspace) -> Invocation:
    path = ws.tmp / "half.pt"
    raw = (ws.trained() / "checkpoints" / "step_00000001.pt").read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    out = ws.tmp / "samples"
    return Invocation(
        ["sample", "--checkpoint", str(path), "--out", str(out)], r"half\.pt: damaged or truncated checkpoint", [out]
    )


def checkpoint_that_is_not_one(ws: Workspace) -> Invocation:
    path = ws.tmp / "notes.pt"
    path.write_text("these are my notes, not weights\n")
    out = ws.tmp / "samples"
    return Invocation(["sample", "--checkpoint", str(path), "--out", str(out)], r"notes\.pt: damaged", [out])


CASES: dict[str, Callable[[Workspace], Invocation]] = {
    "corrupt-gzip": corrupt_gzip,
    "truncated-nifti": truncated_nifti,
    "zero-affine": zero_affine,
    "nan-affine": nan_affine,
    "2d-volume": two_d,
    "4d-volume-3-channels": four_d,
    "nan-voxels": nan_voxels,
    "inf-voxels": inf_voxels,
    "constant-volume": constant_volume,
    "empty-class-folder": empty_class_folder,
    "only-unsupported-files": only_unsupported_files,
    "mixed-shapes-resample-none": mixed_shapes_without_resampling,
    "nifti-unknown-datatype": unknown_datatype,
    "nifti-header-claims-32-GB": huge_header_shape,
    "npy-mangled-header": mangled_npy_header,
    "unreadable-file": unreadable_file,
    "symlink-loop": symlink_loop,
    "yaml-syntax-error": yaml_syntax_error,
    "yaml-unknown-key": yaml_unknown_key,
    "yaml-wrong-type": yaml_wrong_type,
    "yaml-out-of-range": yaml_out_of_range,
    "yaml-not-a-mapping": yaml_not_a_mapping,
    "yaml-infinite-value": infinite_learning_rate,
    "negative-seed": negative_seed,
    "checkpoint-other-architecture": checkpoint_of_other_architecture,
    "truncated-checkpoint": truncated_checkpoint,
    "checkpoint-not-a-checkpoint": checkpoint_that_is_not_one,
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Path]]:
    """A one-step run on the valid dataset (trained on first use, shared by the checkpoint cases)."""
    base = tmp_path_factory.mktemp("trained")
    runs: list[Path] = []

    def get() -> Path:
        if not runs:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("VOLGAN_CACHE_DIR", str(base / "cache"))
                data = write_dataset(base / "data")
                args = ["train", "--data", str(data), "--run-dir", str(base / "run"), "--steps", "1", *TINY]
                assert main(args) == 0
            # `volgan train` leaves its train.log handler on the "volgan" logger (harmless in a process
            # that then exits); detach it so later in-process runs do not write into this run folder
            volgan_log = logging.getLogger("volgan")
            for handler in [h for h in volgan_log.handlers if isinstance(h, logging.FileHandler)]:
                volgan_log.removeHandler(handler)
                handler.close()
            runs.append(base / "run")
        return runs[0]

    yield get


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_error_line_and_touches_nothing(
    case: Callable[[Workspace], Invocation],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    trained_run: Callable[[], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(cache))
    ws = Workspace(write_dataset(tmp_path / "data"), tmp_path / "run", tmp_path, monkeypatch, trained_run)
    call = case(ws)
    capsys.readouterr()  # drop the output of the trained_run fixture, if it just ran
    watched = {p: snapshot(p) for p in call.watch}

    code = main(call.args)

    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("volgan: error: "), err
    assert re.search(call.match, lines[0]), lines[0]
    for folder, before in watched.items():
        assert snapshot(folder) == before, f"{folder} changed"
    if call.check_cache:
        assert cache_entries(cache) == [], "a failed run wrote into the data cache"


def test_damaged_header_prints_only_the_error_line_in_a_real_process(tmp_path: Path) -> None:
    """nibabel prints header repairs to stderr itself; in a real process only the error line may appear."""
    data = write_dataset(tmp_path / "data")
    _edit_nifti_header(save_nifti(data / "0" / "bad.nii.gz", _noise()), 0, "<i", 1000)  # sizeof_hdr: repaired
    _edit_nifti_header(data / "0" / "bad.nii.gz", 70, "<h", 272)  # datatype: not repairable
    env = {**os.environ, "VOLGAN_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "volgan", "train", "--data", str(data), "--dry-run", *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"volgan: error: {data / '0' / 'bad.nii.gz'}: cannot decode, the file is damaged or not a volume "
        "(data code 272 not recognized)"
    ], proc.stderr


def test_resume_with_other_architecture_fails_before_preprocessing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_run: Callable[[], Path]
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(cache))
    assert main(["train", "--resume", str(trained_run()), "--set", "model.ngf=8"]) == 2
    assert cache_entries(cache) == []


# ---------------------------------------------------------------------------- fuzzing: configs

SECTIONS: dict[str, list[str]] = {
    name: list(Config.model_fields[name].annotation.model_fields)  # type: ignore[union-attr]
    for name in ("data", "model", "train", "log")
}
TOP_KEYS = [k for k in Config.model_fields if k not in SECTIONS]
JUNK = st.text(alphabet="abcxyz_.-0123456789", min_size=1, max_size=8)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["fit", "none", "spacing", "RAS", "LPS", "wgan_gp", "dcgan", "cpu", "auto", "skip", "16", "1e-4"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JUNK, inner, max_size=3),
    max_leaves=6,
)


def _section(name: str) -> st.SearchStrategy[Any]:
    keys = st.sampled_from(SECTIONS[name]) | JUNK
    return st.dictionaries(keys, values, max_size=5) | values


configs = st.dictionaries(
    st.sampled_from(list(SECTIONS)) | st.sampled_from(TOP_KEYS) | JUNK,
    st.just(None),
    max_size=6,
).flatmap(
    lambda top: st.fixed_dictionaries(
        {k: (_section(k) if k in SECTIONS else values) for k in top},
    )
)
overrides = st.lists(
    st.builds(
        lambda key, value: f"{key}={value}",
        st.sampled_from([f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys] + TOP_KEYS) | JUNK,
        st.text(alphabet="0123456789.-e[],: abcfinRAS", max_size=10),
    ),
    max_size=3,
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# after "FILE: " an error names a key (dotted, from the real key set unless it is the unknown one) or the file's problem
NAMES_A_KEY = re.compile(
    rf"(unknown key '.*'|YAML syntax error|expected a mapping|({'|'.join(Config.model_fields)})(\.\w+)*[: ])"
)


def _load_or_config_error(path: Path, extra: list[str]) -> None:
    try:
        cfg = load_config(path, extra)
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message, message
        if message.startswith("override "):  # a malformed KEY=VALUE names itself
            return
        source = f"{path} (with overrides): " if extra else f"{path}: "
        assert message.startswith(source), message
        assert NAMES_A_KEY.match(message.removeprefix(source)), message
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=configs, extra=overrides)
def test_fuzzed_config_is_a_config_or_one_config_error(data: dict[str, Any], extra: list[str], fuzz_dir: Path) -> None:
    path = fuzz_dir / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    _load_or_config_error(path, extra)


@settings(max_examples=60, deadline=2000)
@given(text=st.text(alphabet=" \n\t:-[]{},#&*!|>'\"%@`abc01.", max_size=60))
def test_fuzzed_yaml_text_is_a_config_or_one_config_error(text: str, fuzz_dir: Path) -> None:
    path = fuzz_dir / "text.yaml"
    path.write_text(text)
    _load_or_config_error(path, [])


# ---------------------------------------------------------------------------- fuzzing: volume files

mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "insert", "delete"]), st.integers(0, 2**31), st.integers(0, 255)),
    min_size=1,
    max_size=8,
)


def _mutate(raw: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(raw)
    for op, where, value in edits:
        i = where % (len(buf) + (op == "insert")) if buf or op == "insert" else 0
        if op == "flip" and buf:
            buf[i] ^= 1 << (value % 8)
        elif op == "set" and buf:
            buf[i] = value
        elif op == "insert":
            buf.insert(i, value)
        elif op == "delete" and buf:
            del buf[i]
    return bytes(buf)


def _header_heavy(edits: list[tuple[str, int, int]], header: int) -> list[tuple[str, int, int]]:
    """Aim half of the edits at the header, where a flipped byte changes what the reader does."""
    return [(op, where % header if k % 2 == 0 else where, v) for k, (op, where, v) in enumerate(edits)]


def _small_volume() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(6, 5, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("valid")
    save_nifti(folder / "v.nii", _small_volume())
    np.save(folder / "v.npy", _small_volume())
    return {
        ".nii": (folder / "v.nii").read_bytes(),
        # stored without compression, so byte edits reach the header inside the gzip stream too
        ".nii.gz": gzip.compress((folder / "v.nii").read_bytes(), compresslevel=0),
        ".nii.gz (deflated)": gzip.compress((folder / "v.nii").read_bytes()),
        ".npy": (folder / "v.npy").read_bytes(),
    }


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from([".nii", ".nii.gz", ".nii.gz (deflated)", ".npy"]), edits=mutations)
def test_mutated_volume_file_is_a_volume_or_one_data_error(
    kind: str, edits: list[tuple[str, int, int]], valid_files: dict[str, bytes], fuzz_dir: Path
) -> None:
    suffix = kind.split()[0]
    header = 128 if suffix == ".npy" else 352 + (10 if kind == ".nii.gz" else 0)  # (gzip stored-block prefix)
    path = fuzz_dir / f"mutant{suffix}"
    path.write_bytes(_mutate(valid_files[kind], _header_heavy(edits, header)))
    start = time.perf_counter()
    try:
        volume, affine = read_volume(path)
    except DataError as e:
        message = str(e)
        assert message.startswith(str(path)) and "\n" not in message, message
    else:
        assert volume.ndim == 3 and volume.dtype == np.float32 and np.isfinite(volume).all()
        assert affine.shape == (4, 4) and np.isfinite(affine).all()
    assert time.perf_counter() - start < 2.0
