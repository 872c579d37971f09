"""Fault injection: kills at random moments (scripts/kill_trials.py) and a full disk (ENOSPC) while writing
checkpoints, samples and the data cache.

The disk fills up inside the real writers: the file object that ``atomic_write`` hands to ``torch.save`` /
``np.save`` accepts a few KiB and then fails with ``OSError(ENOSPC)``, as a full file system does, or the
fsync fails.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import assert_same_volume, tiny_cli, tiny_config, tiny_data, write_class_folders
from volgan import checkpoint as ckpt
from volgan.cli import main
from volgan.data import cache as data_cache
from volgan.data.dataset import load_volumes
from volgan.training import Trainer

REPO = Path(__file__).resolve().parents[2]
NO_SPACE = "No space left on device"
TINY = [*tiny_cli(16, width=4, latent=8, embed=4), "--set", "log.checkpoint_every=1"]


def no_space() -> OSError:
    return OSError(errno.ENOSPC, NO_SPACE)


class _FullFile:
    """Wraps a binary file: accepts ``room`` more bytes, writes part of the next chunk, then fails with ENOSPC."""

    def __init__(self, f: Any, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) > self._room:
            self._f.write(view[: self._room])
            self._room = 0
            raise no_space()
        self._room -= len(view)
        return int(self._f.write(view))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def fill_disk_for(monkeypatch: pytest.MonkeyPatch, pattern: str, at: str = "write", room: int = 4096) -> list[str]:
    """Make ``atomic_write``'s temp file for a target whose name matches ``pattern`` hit ENOSPC, once.

    ``at="write"``: after ``room`` bytes; ``at="fsync"``: at the fsync. Returns the temp files it doomed.
    """
    doomed: dict[int, str] = {}
    hit: list[str] = []
    real_mkstemp, real_fdopen, real_fsync = tempfile.mkstemp, os.fdopen, os.fsync

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        # atomic_write names its temp file ".<target name>.<random>.tmp"
        if not hit and fnmatch(Path(name).name, f".{pattern}.*.tmp"):
            doomed[fd] = name
        return fd, name

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        f = real_fdopen(fd, *args, **kwargs)
        if at == "write" and fd in doomed:
            hit.append(doomed.pop(fd))
            return _FullFile(f, room)
        return f

    def fsync(fd: int) -> None:
        if at == "fsync" and fd in doomed:
            hit.append(doomed.pop(fd))
            raise no_space()
        real_fsync(fd)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(os, "fsync", fsync)
    return hit


@dataclass
class CliResult:
    code: int | None  # None: the command raised (a traceback for a user)
    error: str  # the "volgan: error:" output, or the exception a user would see
    raised: BaseException | None = None


def run_cli(argv: list[str]) -> CliResult:
    """``volgan.cli.main`` in-process; an exception that escapes it is recorded, not raised."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(argv)
    except Exception as e:
        return CliResult(None, f"{type(e).__name__}: {e}", e)
    return CliResult(code, err.getvalue().strip())


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    assert result.code == 2, f"expected exit 2 with one line, got {result.code}: {result.error}"
    assert result.error.startswith("volgan: error: ") and len(result.error.splitlines()) == 1, result.error
    for needle in needles:
        assert needle in result.error, result.error


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


# ---------------------------------------------------------------------------- kill safety


def test_kill_trials_script_survives_sigkill_and_sigterm(tmp_path: Path) -> None:
    """Three real training processes: killed in the first checkpoint write, at random, and by SIGTERM."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "scripts" / "kill_trials.py"), "--trials", "3", "--workdir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "summary: 3 trials, 3 kills survived, 3 resumes OK, 0 failures" in proc.stdout, proc.stdout
    assert {"first-write", "random", "sigterm"} <= set(re.findall(r"trial +\d+ +(\S+)", proc.stdout))


# ---------------------------------------------------------------------------- ENOSPC: checkpoints


@dataclass
class CheckpointOutcome:
    train: CliResult
    doomed: list[str]
    files: list[str]
    step2_state: dict[str, Any] | None
    lock_left: bool
    resume: CliResult
    resumed_newest: str | None
    notes: list[str] = field(default_factory=list)


def _checkpoint_enospc(tmp: Path, at: str) -> CheckpointOutcome:
    """Train 5 steps, checkpointing every step, with the disk full while step 3's checkpoint is written."""
    data = write_class_folders(tmp / "data", n_per_class=2, size=16, classes=2)
    run = tmp / "run"
    argv = ["train", "--data", str(data), "--run-dir", str(run), "--steps", "5", "--set", f"data.cache_dir={tmp}/c"]
    with pytest.MonkeyPatch.context() as mp:
        doomed = fill_disk_for(mp, "step_00000003.pt", at=at)
        train = run_cli([*argv, *TINY])
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    try:
        step2: dict[str, Any] | None = ckpt.load_checkpoint(run / "checkpoints" / "step_00000002.pt")
    except ckpt.CheckpointError:
        step2 = None
    lock_left = (run / ".lock").exists()
    resume = run_cli(["train", "--resume", str(run), "--steps", "4"])
    newest = ckpt.newest_checkpoint(run)
    return CheckpointOutcome(train, doomed, files, step2, lock_left, resume, newest.name if newest else None)


@pytest.fixture(scope="module")
def checkpoint_enospc(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], CheckpointOutcome]:
    """One run per failure point, shared by the tests that look at it."""
    outcomes: dict[str, CheckpointOutcome] = {}

    def get(at: str) -> CheckpointOutcome:
        if at not in outcomes:
            outcomes[at] = _checkpoint_enospc(tmp_path_factory.mktemp(f"ckpt-{at}"), at)
        return outcomes[at]

    return get


@pytest.mark.parametrize("at", ["write", "fsync"])
def test_enospc_in_checkpoint_keeps_the_previous_one_and_no_temp_file(
    checkpoint_enospc: Callable[[str], CheckpointOutcome], at: str
) -> None:
    out = checkpoint_enospc(at)
    assert len(out.doomed) == 1, "the fault was never injected"
    assert out.train.code != 0
    assert out.files == ["step_00000001.pt", "step_00000002.pt"]  # no step 3, no temp file
    assert out.step2_state is not None and out.step2_state["step"] == 2
    assert not out.lock_left
    # the run continues from step 2 once there is room again
    assert out.resume.code == 0, out.resume.error
    assert out.resumed_newest == "step_00000004.pt"


@pytest.mark.parametrize("at", ["write", "fsync"])
def test_enospc_in_checkpoint_is_one_line_naming_the_file(
    checkpoint_enospc: Callable[[str], CheckpointOutcome], at: str
) -> None:
    out = checkpoint_enospc(at)
    assert_one_line_error(out.train, "step_00000003.pt", NO_SPACE, "previous one is intact")


# ---------------------------------------------------------------------------- ENOSPC: samples


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("sample") / "run"
    Trainer(tiny_config(run), tiny_data()).save()
    return run


def _sample(run: Path, out: Path, start: int, n: int) -> CliResult:
    args = ["--class", "c0", "--start", str(start), "--n", str(n), "--format", "npy", "--device", "cpu"]
    return run_cli(["sample", "--checkpoint", str(run), "--out", str(out), *args])


def _fail_sidecar(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """The sidecar ``name`` hits ENOSPC whether it is written in place (half its text first, as a plain
    ``write_text`` on a full disk) or through ``atomic_write``."""
    hit = fill_disk_for(monkeypatch, name, room=20)
    real = pathlib.Path.write_text

    def write_text(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        if self.name != name:
            return real(self, text, *args, **kwargs)
        hit.append(str(self))
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise no_space()

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    return hit


@dataclass
class SampleOutcome:
    result: CliResult
    doomed: list[str]
    out: Path
    before: dict[str, bytes]
    reference: Path


@pytest.fixture(scope="module")
def sample_enospc(sample_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], SampleOutcome]:
    """Samples 0-1 written; then samples 2-4 with the disk full at sample 3's volume or its JSON sidecar."""
    outcomes: dict[str, SampleOutcome] = {}
    reference = tmp_path_factory.mktemp("sample-reference")
    assert _sample(sample_run, reference, 0, 5).code == 0

    def get(what: str) -> SampleOutcome:
        if what not in outcomes:
            out = tmp_path_factory.mktemp(f"sample-{what}")
            assert _sample(sample_run, out, 0, 2).code == 0
            before = {p.name: p.read_bytes() for p in (out / "c0").iterdir()}
            with pytest.MonkeyPatch.context() as mp:
                if what == "volume":
                    doomed = fill_disk_for(mp, "c0_seed0_00003.npy", room=100)
                else:
                    doomed = _fail_sidecar(mp, "c0_seed0_00003.json")
                result = _sample(sample_run, out, 2, 3)
            outcomes[what] = SampleOutcome(result, doomed, out, before, reference / "c0")
        return outcomes[what]

    return get


@pytest.mark.numerics
@pytest.mark.parametrize(
    "what",
    [
        "volume",
        "sidecar",
    ],
)
def test_enospc_in_sample_keeps_earlier_samples_whole(sample_enospc: Callable[[str], SampleOutcome], what: str) -> None:
    o = sample_enospc(what)
    assert len(o.doomed) == 1, "the fault was never injected"
    assert o.result.code != 0
    folder = o.out / "c0"
    assert {name: (folder / name).read_bytes() for name in o.before} == o.before
    assert temp_files(o.out) == []
    # every volume there is whole and the same as an undisturbed run's (which sampled all five in one
    # batch, so to float rounding; tiny_data's intensity range is 0..100)
    for volume in sorted(folder.glob("*.npy")):
        assert_same_volume(np.load(volume), np.load(o.reference / volume.name), value_range=100.0)
    assert "c0_seed0_00002.npy" in {p.name for p in folder.iterdir()}
    for sidecar in folder.glob("*.json"):
        assert json.loads(sidecar.read_text())["index"] >= 0, sidecar


@pytest.mark.parametrize(
    "what",
    [
        "volume",
        "sidecar",
    ],
)
def test_enospc_in_sample_is_one_line_naming_the_file(sample_enospc: Callable[[str], SampleOutcome], what: str) -> None:
    o = sample_enospc(what)
    assert_one_line_error(o.result, f"c0_seed0_00003.{'npy' if what == 'volume' else 'json'}", NO_SPACE)


# ---------------------------------------------------------------------------- ENOSPC: data cache


@contextlib.contextmanager
def _full_cache_writer(at: str) -> Iterator[None]:
    """ENOSPC inside ``write_entry`` while it builds a temp entry: at the volumes' memmap, the labels,
    meta.json (half written first, as a real full disk does) or the fsync of volumes.npy."""
    in_temp = re.compile(r"^\..*\.tmp-")

    def partial(path: Path, payload: bytes) -> None:
        path.write_bytes(payload[: len(payload) // 2])
        raise no_space()

    with pytest.MonkeyPatch.context() as mp:
        if at == "volumes":

            def open_memmap(*args: Any, **kwargs: Any) -> np.ndarray:
                raise no_space()

            mp.setattr(np.lib.format, "open_memmap", open_memmap)
        elif at == "labels":
            real_save = np.save

            def save(file: Any, arr: Any, *args: Any, **kwargs: Any) -> None:
                if isinstance(file, Path) and in_temp.match(file.parent.name) and file.name == "labels.npy":
                    buf = io.BytesIO()
                    real_save(buf, arr)
                    partial(file, buf.getvalue())
                real_save(file, arr, *args, **kwargs)

            mp.setattr(np, "save", save)
        elif at == "meta":
            real_write_text = pathlib.Path.write_text

            def write_text(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
                if self.name == "meta.json" and in_temp.match(self.parent.name):
                    partial(self, text.encode())
                return real_write_text(self, text, *args, **kwargs)

            mp.setattr(pathlib.Path, "write_text", write_text)
        else:
            real_fsync = data_cache._fsync

            def fsync(path: Path, *, folder: bool = False) -> None:
                if path.name == "volumes.npy":
                    raise no_space()
                real_fsync(path, folder=folder)

            mp.setattr(data_cache, "_fsync", fsync)
        yield


@pytest.mark.parametrize("at", ["volumes", "labels", "meta", "fsync"])
def test_enospc_in_data_cache_is_one_line_and_the_next_run_rebuilds(tmp_path: Path, at: str) -> None:
    data = write_class_folders(tmp_path / "data", n_per_class=2, size=16, classes=2)
    cache = tmp_path / "cache"
    argv = ["train", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--dry-run"]
    with _full_cache_writer(at):
        result = run_cli([*argv, "--set", f"data.cache_dir={cache}", *TINY])
    assert_one_line_error(result, str(cache), NO_SPACE)
    assert list(cache.iterdir()) == []  # neither an entry nor a temp folder is left

    cfg = tiny_config(tmp_path / "run", data={"root": str(data), "cache_dir": str(cache)}).data
    again = load_volumes(cfg)
    fresh = load_volumes(cfg.model_copy(update={"cache_dir": str(tmp_path / "fresh")}))
    np.testing.assert_array_equal(np.asarray(again.volumes), np.asarray(fresh.volumes))
    np.testing.assert_array_equal(again.labels, fresh.labels)
    assert (again.class_names, again.intensity_range) == (fresh.class_names, fresh.intensity_range)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1
