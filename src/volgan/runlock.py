"""One training per run folder: an exclusive lock on ``RUN/.lock``, held while the run writes.

The lock is an ``fcntl.flock`` on the open file, so the kernel drops it the moment its holder
exits, however it exits (even ``kill -9``). The file also holds JSON (pid, host, start time,
command) so a refusal can say who holds the folder. A file that nobody has flock-ed is a leftover
of a process that died: it is taken over with a warning. Where the file system (or the OS) has
no flock, the JSON alone decides: a holder on this host whose pid is gone is stale.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from volgan.errors import VolganError

try:
    import fcntl
except ImportError:  # Windows: fall back to the pid check
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("volgan")

LOCK_NAME = ".lock"


class RunLockedError(VolganError):
    """Another process is training in this run folder."""


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def _holder_info() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def _read_holder(fd: int) -> dict[str, Any]:
    """The JSON a holder wrote into the lock file; {} for an empty or unreadable file."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode("utf-8", "replace")
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (True when it cannot be told)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _held_by_live_process(holder: dict[str, Any]) -> bool:
    """The flock-less verdict: a holder is alive unless it ran on this host and its pid is gone."""
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: assume alive
    pid = holder.get("pid")
    return _pid_alive(pid) if isinstance(pid, int) else False


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


def _refusal(run_dir: Path, holder: dict[str, Any]) -> RunLockedError:
    return RunLockedError(
        f"{run_dir}: run folder is in use by another training ({_describe(holder)}); "
        f"wait for it to finish or stop it, or choose another --run-dir "
        f"(if no training is running, delete {lock_path(run_dir)})"
    )


def _try_flock(fd: int) -> bool | None:
    """Take the flock without waiting: True taken, False held by someone else, None unsupported here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP, ...: a file system without flock
    return True


def _open_locked(run_dir: Path) -> tuple[int, dict[str, Any]]:
    """Open ``RUN/.lock`` holding its lock; returns (fd, the previous holder's JSON or {})."""
    path = lock_path(run_dir)
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            taken = _try_flock(fd)
            previous = _read_holder(fd)
            if taken is False or (taken is None and _held_by_live_process(previous)):
                raise _refusal(run_dir, previous)
            if taken is None:
                log.warning("%s: file system without flock; the run-folder lock is advisory only", run_dir)
            # The holder before us may have unlinked the file between our open and our flock.
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return fd, _read_holder(fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise _refusal(run_dir, {})


def _stale_reason(holder: dict[str, Any]) -> str:
    pid, same_host = holder.get("pid"), holder.get("host") == socket.gethostname()
    if same_host and isinstance(pid, int) and not _pid_alive(pid):
        return "that process no longer exists"
    return "it no longer holds the lock"


class RunLock:
    """The exclusive lock of one run folder; use as a context manager or acquire()/release()."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise RunLockedError naming the holder; stale locks are taken over."""
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd, previous = _open_locked(self.run_dir)
        if previous:
            log.warning(
                "%s: taking over a stale lock of %s: %s", self.run_dir, _describe(previous), _stale_reason(previous)
            )
        payload = json.dumps(_holder_info()).encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, payload)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Delete the lock file, then drop the lock (in that order, so no one locks a dying file)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            lock_path(self.run_dir).unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_unlocked(run_dir: Path) -> None:
    """Raise RunLockedError if another process holds ``run_dir`` now: an early check that takes nothing."""
    try:
        fd = os.open(lock_path(run_dir), os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        taken = _try_flock(fd)
        holder = _read_holder(fd)
        if taken is False or (taken is None and _held_by_live_process(holder)):
            raise _refusal(Path(run_dir), holder)
    finally:
        os.close(fd)  # also drops the flock this check may have taken
