"""Finding a dataset on disk and preprocessing it once into the cache; :func:`load_volumes` ties them up.

``data.root`` is one of:

* ``DIR/<class>/*.nii|*.nii.gz|*.npy``: the class is the sub-folder name (sorted; numerically
  when every name is a number, so ``2`` comes before ``10``);
* ``DIR/*.nii|*.nii.gz|*.npy``: one class, for an unconditional model;
* ``FILE.npz``: MedMNIST style, keys ``{split}_images`` / ``{split}_labels`` with
  ``split = data.npz_split``; the classes are the label values.

Hidden files and folders (and the cache, if it lives inside the root) are ignored.

The preprocessed volumes are cached under ``data.cache_dir`` (default
:func:`~volgan.data.cache.default_cache_dir`); :mod:`volgan.data.cache` says how an entry is
keyed, written and checked.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from volgan.config import DataConfig
from volgan.data.cache import (
    CACHE_VERSION,
    cache_key,
    default_cache_dir,
    entry_name,
    publish,
    read_entry,
    remove_stale_temps,
    write_entry,
)
from volgan.data.io import SUPPORTED_SUFFIXES, check_readable, read_npz, read_volume, volume_suffix
from volgan.data.preprocess import grid_spacing, intensity_bounds_batch, scale_to_unit, to_grid_batch
from volgan.data.volume_set import VolumeSet
from volgan.errors import DataError

# CACHE_VERSION, VolumeSet and default_cache_dir live in their own modules; they stay importable from here.
__all__ = ["CACHE_VERSION", "VolumeSet", "default_cache_dir", "load_volumes"]

logger = logging.getLogger(__name__)

_CHUNK = 32  # volumes scaled at once: vectorised, but the float64 scratch stays ~70 MB at 64³


# ---------------------------------------------------------------------------- discovery


@dataclass
class _Source:
    """What a data root holds: the input files (for the cache key) and, for folders, their labels."""

    root: Path  # resolved
    is_npz: bool
    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)


def _scan(folder: Path, skip: Path | None = None) -> tuple[list[Path], list[Path], list[str]]:
    """Sorted (sub-folders, volume files, names of other files) of ``folder``, hidden entries left out."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except PermissionError:
        raise DataError(f"{folder}: permission denied, cannot list the folder") from None
    except OSError as e:
        raise DataError(f"{folder}: cannot list the folder ({e.strerror or e})") from None
    dirs, files, others = [], [], []
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            check_readable(path)  # a broken link or a symlink loop is an error, not a silent skip
        if entry.is_dir():
            if skip is None or path.resolve() != skip:
                dirs.append(path)
        elif volume_suffix(path) is not None:
            files.append(path)
        else:
            others.append(entry.name)
    return dirs, files, others


def _class_order(names: list[str]) -> list[str]:
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _discover(root: Path, cache_base: Path) -> _Source:
    try:
        os.stat(root)
    except FileNotFoundError:
        raise DataError(
            f"{root}: data root not found; expected a folder of volumes or class sub-folders, or an .npz file"
        ) from None
    check_readable(root)
    resolved = root.resolve()
    if not resolved.is_dir():
        if resolved.name.lower().endswith(".npz"):
            return _Source(resolved, is_npz=True, files=[resolved])
        raise DataError(f"{root}: expected a folder of volumes or class sub-folders, or an .npz file as data root")
    kinds = ", ".join(SUPPORTED_SUFFIXES)
    dirs, files, others = _scan(resolved, skip=cache_base.resolve())
    if files and dirs:
        raise DataError(
            f"{root}: holds both volume files and sub-folders ({', '.join(d.name for d in dirs[:3])}); "
            "expected either class sub-folders or volume files directly, not both"
        )
    if files:
        return _Source(resolved, False, files, [0] * len(files), [resolved.name or "volume"])
    if not dirs:
        hint = "; pass an .npz file itself as data.root" if any(o.lower().endswith(".npz") for o in others) else ""
        raise DataError(f"{root}: no volume files ({kinds}) or class sub-folders found{hint}")
    source = _Source(resolved, False, class_names=_class_order([d.name for d in dirs]))
    for label, name in enumerate(source.class_names):
        nested, class_files, class_others = _scan(resolved / name)
        if not class_files:
            class_others += [f"{d.name}/" for d in nested]  # volumes are not searched for in sub-folders
            found = f"; found only {', '.join(class_others[:5])}" if class_others else ""
            what = "is empty" if not class_others else f"has no volume files ({kinds})"
            raise DataError(f"{resolved / name}: class folder '{name}' {what}{found}")
        source.files += class_files
        source.labels += [label] * len(class_files)
    return source


# ---------------------------------------------------------------------------- preprocessing


def _preprocess(
    source: _Source, cfg: DataConfig, allocate: Callable[[int], np.ndarray], progress: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read, grid and scale every volume into ``allocate(n)``; return that array and the metadata."""
    from tqdm.auto import tqdm

    percentiles = cfg.intensity_percentiles
    if source.is_npz:
        images, raw_labels = read_npz(source.root, cfg.npz_split)
        values, labels = np.unique(raw_labels, return_inverse=True)
        class_names = [str(v) for v in values]
        n, eye = len(images), np.eye(4)
        sources = [f"{source.root}[{i}]" for i in range(n)]
        out = allocate(n)
        bounds = np.empty((n, 2))
        on_grid = images.shape[1:] == (cfg.size,) * 3
        bar = tqdm(total=n, desc="preprocessing", unit="vol", disable=None if progress else True)
        for start in range(0, n, _CHUNK):
            chunk = images[start : start + _CHUNK]
            lo, hi = intensity_bounds_batch(chunk, percentiles)
            _reject_constant(lo, hi, sources[start:])
            if on_grid:  # the common case: no geometry to change, so scale the whole chunk at once
                out[start : start + len(chunk)] = scale_to_unit(chunk, lo[:, None, None, None], hi[:, None, None, None])
            else:
                out[start : start + len(chunk)] = scale_to_unit(
                    _on_grid(chunk, eye, cfg, str(source.root)),
                    lo[:, None, None, None],
                    hi[:, None, None, None],
                )
            bounds[start : start + len(chunk)] = np.stack([lo, hi], axis=1)
            bar.update(len(chunk))
        bar.close()
        spacings = [grid_spacing(images.shape[1:], eye, cfg)]
    else:
        n, class_names = len(source.files), source.class_names
        labels = np.asarray(source.labels, dtype=np.int64)
        sources = [str(p) for p in source.files]
        out = allocate(n)
        bounds, spacings = np.empty((n, 2)), []
        for i, path in enumerate(
            tqdm(source.files, desc="preprocessing", unit="vol", disable=None if progress else True)
        ):
            volume, affine = read_volume(path)
            lo, hi = intensity_bounds_batch(volume[None], percentiles)
            _reject_constant(lo, hi, [str(path)])
            out[i] = scale_to_unit(_on_grid(volume[None], affine, cfg, str(path))[0], lo[0], hi[0])
            bounds[i] = lo[0], hi[0]
            spacings.append(grid_spacing(volume.shape, affine, cfg))
    median_lo, median_hi = np.median(bounds, axis=0)
    if not median_hi > median_lo:  # only possible when the volumes' ranges do not overlap
        median_lo, median_hi = float(bounds[:, 0].min()), float(bounds[:, 1].max())
    return out, {
        "n": n,
        "size": cfg.size,
        "orientation": cfg.orientation,
        "class_names": class_names,
        "labels": np.asarray(labels, dtype=np.int64),
        "intensity_range": [float(median_lo), float(median_hi)],
        # fit gives each volume its own spacing; the grid records their median
        "spacing": float(np.median(spacings)),
        "sources": sources,
        "bounds": bounds.tolist(),
    }


def _reject_constant(lo: np.ndarray, hi: np.ndarray, sources: list[str]) -> None:
    flat = np.flatnonzero(~(hi > lo))
    if flat.size:
        i = int(flat[0])
        raise DataError(f"{sources[i]}: constant volume (every voxel is {lo[i]:g}); nothing to scale to [-1, 1]")


def _on_grid(volumes: np.ndarray, affine: np.ndarray, cfg: DataConfig, where: str) -> np.ndarray:
    """``to_grid_batch`` with the path added to its error message."""
    try:
        return to_grid_batch(volumes, affine, cfg)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


def _in_memory(source: _Source, cfg: DataConfig, progress: bool) -> VolumeSet:
    volumes, meta = _preprocess(source, cfg, lambda n: np.empty((n,) + (cfg.size,) * 3, np.float32), progress)
    return VolumeSet(
        volumes, meta["labels"], meta["class_names"], tuple(meta["intensity_range"]), meta["spacing"],
        meta["sources"], meta["orientation"],
    )  # fmt: skip


def load_volumes(cfg: DataConfig, root: str | Path | None = None, *, progress: bool = False) -> VolumeSet:
    """Load ``root`` (default ``cfg.root``) onto the training grid, from the cache when it is current.

    See the module docstring for the layouts. The first call reads, reorients, resamples and
    scales every volume (per-volume percentile bounds, see ``cfg.intensity_percentiles``) and
    stores the result; later calls with unchanged files and settings only map the cached array.
    The recorded ``spacing`` is the grid's voxel size: ``cfg.spacing`` for ``resample: spacing``,
    otherwise the median over volumes of what :func:`~volgan.data.preprocess.grid_spacing` gives.
    """
    if root is None and cfg.root is None:
        raise DataError("no data root: set data.root in the config or pass a folder or .npz file")
    root_path = Path(root if root is not None else str(cfg.root)).expanduser()
    cache_base = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    source = _discover(root_path, cache_base)
    key = cache_key(source.root, source.files, cfg, npz=source.is_npz)
    entry = cache_base / entry_name(source.root, key)
    cached = read_entry(entry, key, cfg.size)
    if cached is not None:
        logger.info("data: %d volumes from cache %s", len(cached.volumes), entry)
        return cached
    try:
        cache_base.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(cache_base)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=cache_base))
    except OSError as e:
        logger.warning("cannot write the data cache in %s (%s); preprocessing in memory only", cache_base, e)
        return _in_memory(source, cfg, progress)
    try:
        write_entry(tmp, key, source.root, cfg.size, lambda allocate: _preprocess(source, cfg, allocate, progress))
        publish(tmp, entry, key, cfg.size)
    except OSError as e:
        raise DataError(
            f"{cache_base}: cannot write the data cache ({e}); set data.cache_dir to a writable folder"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    loaded = read_entry(entry, key, cfg.size)
    if loaded is None:
        raise DataError(f"{entry}: the data cache entry just written cannot be read back")
    logger.info("data: preprocessed %d volumes into cache %s", len(loaded.volumes), entry)
    return loaded
