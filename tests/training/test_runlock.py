"""One training per run folder: RUN/.lock refuses a second one, stale locks are taken over."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import tiny_config, tiny_data
from volgan.cli import main
from volgan.errors import VolganError
from volgan.runlock import RunLock, RunLockedError, check_unlocked, lock_path
from volgan.training import Trainer

HOLD = (
    "import sys; from pathlib import Path; from volgan.runlock import RunLock; "
    "RunLock(Path(sys.argv[1])).acquire(); print('ready', flush=True); sys.stdin.read()"
)


@pytest.fixture
def hold() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """hold(run): start another process that holds run's lock until it is killed."""
    procs: list[subprocess.Popen[str]] = []

    def start(run: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(run: Path, pid: int, host: str | None = None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "2024-01-01T00:00:00+00:00"}
    lock_path(run).write_text(json.dumps(holder))


def refusal(run: Path, pid: int) -> str:
    return (
        rf"{run}: run folder is in use by another training \(pid {pid} on {re.escape(socket.gethostname())}, "
        r"started \d{4}-.*\); wait for it to finish or stop it, or choose another --run-dir"
    )


def test_second_training_is_refused_while_another_process_holds_the_run(
    tmp_path: Path, hold: Callable[[Path], subprocess.Popen[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    holder = hold(run)
    with pytest.raises(RunLockedError, match=refusal(run, holder.pid)):
        Trainer(tiny_config(run), tiny_data())
    # the CLI refuses before it reads any data
    assert main(["train", "--data", str(tmp_path / "no-data"), "--run-dir", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.match("volgan: error: " + refusal(run, holder.pid), err), err


def test_resume_is_refused_while_the_run_trains_and_a_killed_holder_is_taken_over(
    tmp_path: Path,
    hold: Callable[[Path], subprocess.Popen[str]],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(run, train={"steps": 1, "batch_size": 2, "wgan_gp": {"n_critic": 1}}), tiny_data()).fit()
    holder = hold(run)
    with pytest.raises(RunLockedError, match=refusal(run, holder.pid)):
        Trainer(tiny_config(run), tiny_data(), resume=run)
    assert main(["train", "--resume", str(run), "--data", str(tmp_path / "no-data")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.match("volgan: error: " + refusal(run, holder.pid), err), err
    holder.kill()  # like kill -9: no clean-up, its JSON stays behind
    holder.wait()
    with caplog.at_level(logging.WARNING, logger="volgan"):
        resumed = Trainer(
            tiny_config(run, train={"steps": 2, "batch_size": 2, "wgan_gp": {"n_critic": 1}}), tiny_data(), resume=run
        )
        assert resumed.fit().step == 2
    assert f"taking over a stale lock of pid {holder.pid}" in caplog.text
    assert "that process no longer exists" in caplog.text
    assert not lock_path(run).exists()


@pytest.mark.parametrize(("alive", "reason"), [(False, "that process no longer exists"), (True, "no longer holds")])
def test_a_lock_file_nobody_holds_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, alive: bool, reason: str
) -> None:
    pid = os.getpid() if alive else dead_pid()
    write_lock(tmp_path, pid)
    check_unlocked(tmp_path)  # not held: no refusal
    with caplog.at_level(logging.WARNING, logger="volgan"), RunLock(tmp_path):
        assert json.loads(lock_path(tmp_path).read_text())["pid"] == os.getpid()
    assert f"taking over a stale lock of pid {pid} on {socket.gethostname()}" in caplog.text and reason in caplog.text
    assert not lock_path(tmp_path).exists()


def test_without_flock_a_live_pid_holds_and_a_dead_one_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("volgan.runlock._try_flock", lambda fd: None)  # e.g. a file system without flock
    write_lock(tmp_path, os.getpid())
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    write_lock(tmp_path, os.getpid(), host="elsewhere")  # another machine's process: assume alive
    with pytest.raises(RunLockedError, match="on elsewhere"):
        check_unlocked(tmp_path)
    write_lock(tmp_path, dead_pid())
    with RunLock(tmp_path) as lock:
        assert lock.held
    assert not lock_path(tmp_path).exists()


def test_lock_is_held_during_fit_and_released_after_an_exception(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(run), tiny_data())

    def step_then_fail() -> dict[str, float]:
        with pytest.raises(RunLockedError):
            check_unlocked(run)  # a second descriptor, even in this process, is refused
        raise RuntimeError("boom")

    trainer.train_step = step_then_fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    assert not lock_path(run).exists()
    RunLock(run).acquire().release()


def test_lock_is_released_after_fit_and_after_sigint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(run, train={"steps": 50, "batch_size": 2, "wgan_gp": {"n_critic": 1}}), tiny_data())
    original = trainer.train_step

    def step_then_interrupt() -> dict[str, float]:
        out = original()
        os.kill(os.getpid(), signal.SIGINT)
        return out

    trainer.train_step = step_then_interrupt  # type: ignore[method-assign]
    assert trainer.fit().interrupted
    assert not lock_path(run).exists()
    trainer.train_step = original  # type: ignore[method-assign]
    assert trainer.fit(stop_after=1).step == 2  # the same trainer may fit again: nothing else wrote here
    assert not lock_path(run).exists()


def test_checkpoints_written_by_another_training_meanwhile_are_not_overwritten(tmp_path: Path) -> None:
    first, second = (Trainer(tiny_config(tmp_path / "run"), tiny_data()) for _ in range(2))
    first.fit(stop_after=1)
    with pytest.raises(VolganError, match=r"another training changed the checkpoints .*step_00000001\.pt.*--resume"):
        second.fit()
