"""The on-disk cache of preprocessed volumes: entry keys, reading, writing and publishing entries.

An entry is a folder under the cache base (``data.cache_dir``, default :func:`default_cache_dir`)
named by a hash of the resolved data root, every input file's relative path, size and
modification time, the preprocessing settings and :data:`CACHE_VERSION`. It holds
``volumes.npy`` (``(N, S, S, S)`` float32), ``labels.npy`` (``(N,)`` int64) and ``meta.json``.
An entry is built in a temporary folder and renamed into place, so a crashed run never leaves a
half-written entry that a later run would trust; an entry that fails its checks is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volgan.config import DataConfig
from volgan.data.io import check_readable
from volgan.data.volume_set import VolumeSet
from volgan.errors import DataError

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: batch voxel files (sources "file[i]"), per-class files, data.binary
"""Bump when preprocessing changes what a cache entry holds; old entries are then ignored."""

_PREPROCESSING_KEYS = (
    "size",
    "resample",
    "spacing",
    "orientation",
    "interpolation",
    "intensity_percentiles",
    "binary",
)
# data.threshold is left out: it acts on generated volumes, never on the cached ones.
_STALE_TEMP_S = 24 * 3600

Fill = Callable[[Callable[[int], np.ndarray]], tuple[np.ndarray, dict[str, Any]]]
"""Preprocesses into ``allocate(n)`` and returns that array and the entry's metadata."""


def default_cache_dir() -> Path:
    """``$VOLGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/volgan``, else ``~/.cache/volgan``."""
    if os.environ.get("VOLGAN_CACHE_DIR"):
        return Path(os.environ["VOLGAN_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "volgan"


def cache_key(root: Path, files: Sequence[Path], cfg: DataConfig, *, npz: bool) -> str:
    """Hash of the resolved ``root``, each file's relative path, size and mtime, and the settings."""
    settings: dict[str, Any] = {k: getattr(cfg, k) for k in _PREPROCESSING_KEYS}
    if npz:
        settings["npz_split"] = cfg.npz_split
    listing = []
    for path in files:
        st = check_readable(path)
        listing.append([path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    payload = {"version": CACHE_VERSION, "root": str(root), "files": listing, "settings": settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def entry_name(root: Path, key: str) -> str:
    """Folder name of an entry: a readable slug of the root's name and the start of ``key``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name).strip("._")[:40] or "data"
    return f"{slug}-{key[:16]}"


def read_entry(entry: Path, key: str, size: int) -> VolumeSet | None:
    """The cached set, or None if the entry is missing, stale or fails any check."""
    if not entry.is_dir():
        return None
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("cache_version") != CACHE_VERSION or meta.get("key") != key:
            return None
        volumes = np.load(entry / "volumes.npy", mmap_mode="r")
        labels = np.load(entry / "labels.npy")
        n = int(meta["n"])
        if volumes.shape != (n, size, size, size) or volumes.dtype != np.float32:
            raise ValueError(f"volumes.npy has shape {volumes.shape} {volumes.dtype}, expected ({n}, {size}³) float32")
        if labels.shape != (n,) or labels.dtype != np.int64:
            raise ValueError(f"labels.npy has shape {labels.shape} {labels.dtype}, expected ({n},) int64")
        lo, hi = meta["intensity_range"]
        return VolumeSet(
            volumes, labels, list(meta["class_names"]), (float(lo), float(hi)), float(meta["spacing"]),
            list(meta["sources"]), str(meta["orientation"]),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, DataError) as e:  # JSONDecodeError is a ValueError
        logger.warning("ignoring damaged data cache entry %s (%s); rebuilding it", entry, e)
        return None


def _fsync(path: Path, *, folder: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        if folder:  # Windows cannot open a folder; its renames are durable without this
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(base: Path) -> None:
    """Delete temporary build folders that crashed runs left behind more than a day ago."""
    for tmp in base.glob(".*.tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def write_entry(tmp: Path, key: str, root: Path, size: int, fill: Fill) -> None:
    """Let ``fill`` preprocess straight into ``tmp/volumes.npy``, write labels and metadata, then fsync.

    ``fill`` gets an ``allocate(n)`` that returns a memmap of ``(n, size, size, size)`` float32, so the
    set need not fit in RAM; its metadata must hold ``labels`` (``(n,)`` int64) and what
    :func:`read_entry` reads back.
    """
    shape = (size,) * 3

    def allocate(n: int) -> np.ndarray:
        array = np.lib.format.open_memmap(tmp / "volumes.npy", mode="w+", dtype=np.float32, shape=(n, *shape))
        # The memmap is a sparse file: a full disk would surface as SIGBUS on some later page write.
        # Reserving the blocks now turns that into an OSError here, reported as a DataError.
        if hasattr(os, "posix_fallocate"):
            fd = os.open(tmp / "volumes.npy", os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.path.getsize(tmp / "volumes.npy"))
            finally:
                os.close(fd)
        return array

    volumes, meta = fill(allocate)
    volumes.flush()  # type: ignore[attr-defined]  # a np.memmap
    del volumes
    np.save(tmp / "labels.npy", meta.pop("labels"))
    meta.update(cache_version=CACHE_VERSION, key=key, root=str(root), created=time.time())
    (tmp / "meta.json").write_text(json.dumps(meta))  # written last: its presence marks a complete entry
    for name in ("volumes.npy", "labels.npy", "meta.json"):
        _fsync(tmp / name)
    _fsync(tmp, folder=True)


def publish(tmp: Path, entry: Path, key: str, size: int) -> None:
    """Rename the finished temp folder to ``entry``, replacing a damaged entry but never a good one."""
    if entry.exists() and read_entry(entry, key, size) is None:
        shutil.rmtree(entry, ignore_errors=True)
    try:
        os.rename(tmp, entry)
    except OSError:
        if read_entry(entry, key, size) is None:  # not a concurrent run that finished first
            raise
    _fsync(entry.parent, folder=True)
