"""Finding a dataset on disk and preprocessing it once into the cache; :func:`load_volumes` ties them up.

``data.root`` is one of:

* ``DIR/<class>/FILES``: the class is the sub-folder name (sorted; numerically when every name
  is a number, so ``2`` comes before ``10``). Each file is a volume (``.nii``, ``.nii.gz``,
  ``.npy``) or voxel file (``.binvox``, ``.mat``, ``.npz``, see :mod:`volgan.data.voxels`); a
  file whose array is 4-D holds a batch ``(N, D, H, W)``, each object one volume of the folder's
  class (named ``file[i]`` in ``sources``);
* ``DIR/FILES`` with no sub-folders, decided by what the files hold:

  - every file a single volume (3-D): one class, named after the folder, for an unconditional
    model;
  - every file a batch (4-D, even ``N = 1``; only ``.npz``, ``.npy``, ``.mat`` can be): one file
    per class, the class is the file name without its suffix (``chair.npz`` -> ``chair``),
    ordered as sub-folders are;
  - both kinds together is ambiguous and a DataError that names one file of each;
* ``FILE.npz``: MedMNIST style, keys ``{split}_images`` / ``{split}_labels`` with
  ``split = data.npz_split``; the classes are the label values.

Hidden files and folders (and the cache, if it lives inside the root) are ignored.

With ``data.binary`` every volume must be an occupancy grid (two values ``{0, m}``); it is scaled
exactly ``0 -> -1``, ``m -> +1`` (no percentile clipping) and, when the grid changes its size,
resampled as occupancy and thresholded again at 0.5, so it stays binary.

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
from volgan.data.voxels import VoxelInfo, as_occupancy, peek_voxels, read_voxels, voxel_suffix
from volgan.errors import DataError
from volgan.safety import decoded_limit, require_regular_file

# CACHE_VERSION, VolumeSet and default_cache_dir live in their own modules; they stay importable from here.
__all__ = ["CACHE_VERSION", "VolumeSet", "default_cache_dir", "load_volumes"]

logger = logging.getLogger(__name__)

_CHUNK = 32  # volumes scaled at once: vectorised, but the float64 scratch stays ~70 MB at 64³
_KINDS = f"volume files ({', '.join(SUPPORTED_SUFFIXES)}) or voxel files (.npz, .binvox, .mat)"


# ---------------------------------------------------------------------------- discovery


@dataclass
class _Source:
    """What a data root holds: the input files (for the cache key) and, for folders, their labels."""

    root: Path  # resolved
    is_npz: bool
    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    flat: bool = False  # files directly in the root: one class, or one file per class (see _plan)


@dataclass
class _File:
    """One input file of a folder root: its class, how many objects it holds, whether as a batch."""

    path: Path
    label: int
    count: int
    batched: bool

    def sources(self) -> list[str]:
        return [f"{self.path}[{i}]" for i in range(self.count)] if self.batched else [str(self.path)]


def _suffix(path: Path) -> str | None:
    return volume_suffix(path) or voxel_suffix(path)


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
        elif _suffix(path) is not None:
            require_regular_file(path)  # a FIFO named x.npy would block the first read forever
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
    dirs, files, _ = _scan(resolved, skip=cache_base.resolve())
    if files and dirs:
        raise DataError(
            f"{root}: holds both volume files and sub-folders ({', '.join(d.name for d in dirs[:3])}); "
            "expected either class sub-folders or volume files directly, not both"
        )
    if files:
        return _Source(resolved, False, files, [0] * len(files), [resolved.name or "volume"], flat=True)
    if not dirs:
        raise DataError(f"{root}: no {_KINDS}, and no class sub-folders")
    source = _Source(resolved, False, class_names=_class_order([d.name for d in dirs]))
    for label, name in enumerate(source.class_names):
        nested, class_files, class_others = _scan(resolved / name)
        if not class_files:
            class_others += [f"{d.name}/" for d in nested]  # volumes are not searched for in sub-folders
            found = f"; found only {', '.join(class_others[:5])}" if class_others else ""
            what = "is empty" if not class_others else f"has no {_KINDS}"
            raise DataError(f"{resolved / name}: class folder '{name}' {what}{found}")
        source.files += class_files
        source.labels += [label] * len(class_files)
    return source


def _plan(source: _Source) -> tuple[list[_File], list[str]]:
    """Each file of a folder root with its object count and label, and the class names.

    Only file headers are read. A flat root is one class unless its files hold batches, then
    each file is a class (see the module docstring).
    """
    files = [
        _File(path, label, *(peek_voxels(path) if voxel_suffix(path) else VoxelInfo(1, False)))
        for path, label in zip(source.files, source.labels, strict=True)
    ]
    if not (source.flat and any(f.batched for f in files)):
        return files, source.class_names
    single = next((f for f in files if not f.batched), None)
    if single is not None:
        batch = next(f for f in files if f.batched)
        raise DataError(
            f"{source.root}: ambiguous folder: {batch.path.name} holds a batch (N, D, H, W), which makes each "
            f"file one class, but {single.path.name} holds one volume; keep one batch file per class, or "
            "only single volumes (one class), or move them into class sub-folders"
        )
    stems = [f.path.name[: -len(_suffix(f.path) or "")] for f in files]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise DataError(f"{source.root}: class '{twice[0]}' has more than one batch file; keep one file per class")
    class_names = _class_order(stems)
    for f, stem in zip(files, stems, strict=True):
        f.label = class_names.index(stem)
    logger.info("data: %s holds one batch file per class: %s", source.root, ", ".join(class_names))
    return files, class_names


# ---------------------------------------------------------------------------- preprocessing


def _preprocess(
    source: _Source, cfg: DataConfig, allocate: Callable[[int], np.ndarray], progress: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read, grid and scale every volume into ``allocate(n)``; return that array and the metadata."""
    from tqdm.auto import tqdm

    if source.is_npz:
        images, raw_labels = read_npz(source.root, cfg.npz_split)
        values, labels = np.unique(raw_labels, return_inverse=True)
        class_names = [str(v) for v in values]
        files = [_File(source.root, 0, len(images), batched=True)]
    else:
        files, class_names = _plan(source)
        labels = np.repeat([f.label for f in files], [f.count for f in files])
    n = sum(f.count for f in files)
    out = allocate(n)
    bounds, spacings, sources, empty = np.empty((n, 2)), [], [], []
    bar = tqdm(total=n, desc="preprocessing", unit="vol", disable=None if progress else True)
    at = 0
    for f in files:
        batch, affine = (images, np.eye(4)) if source.is_npz else _read(f)
        names = f.sources()
        if cfg.binary:
            batch = as_occupancy(batch, str(f.path))
        # an .npz already on the grid has no geometry to change: skip to_grid (as always for .npz)
        keep = source.is_npz and batch.shape[1:] == (cfg.size,) * 3
        for start in range(0, len(batch), _CHUNK):
            chunk = batch[start : start + _CHUNK]
            k, rows = len(chunk), slice(at + start, at + start + len(chunk))
            if cfg.binary:  # fixed bounds: 0 -> -1, 1 -> +1; resampled occupancy is thresholded again
                occupied = (chunk if keep else _on_grid(chunk, affine, cfg, str(f.path))) >= 0.5
                out[rows] = np.where(occupied, np.float32(1.0), np.float32(-1.0))
                lo, hi = np.zeros(k), np.ones(k)
                empty += [names[start + i] for i in np.flatnonzero(~occupied.reshape(k, -1).any(axis=1))]
            else:
                lo, hi = intensity_bounds_batch(chunk, cfg.intensity_percentiles)
                _reject_constant(lo, hi, names[start:])
                grid = chunk if keep else _on_grid(chunk, affine, cfg, str(f.path))
                scaled = scale_to_unit(grid, lo[:, None, None, None], hi[:, None, None, None])
                _require_finite(scaled, names[start:])  # no finite input may turn NaN unseen
                out[rows] = scaled
            bounds[rows] = np.stack([lo, hi], axis=1)
            bar.update(k)
        spacings += [grid_spacing(batch.shape[1:], affine, cfg)] * f.count
        sources += names
        at += f.count
    bar.close()
    if empty:
        logger.warning("data: %d of %d occupancy grids are empty, e.g. %s", len(empty), n, empty[0])
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


def _read(f: _File) -> tuple[np.ndarray, np.ndarray]:
    """The ``(N, D, H, W)`` objects of one file and its affine (identity for voxel files)."""
    if f.batched or voxel_suffix(f.path) not in (None, ".npy"):
        batch, affine = read_voxels(f.path), np.eye(4)
    else:
        volume, affine = read_volume(f.path)
        batch = volume[None]
    if len(batch) != f.count:
        raise DataError(f"{f.path}: holds {len(batch)} objects, its header said {f.count}; was it changed meanwhile?")
    return batch, affine


def _require_finite(scaled: np.ndarray, sources: list[str]) -> None:
    bad = ~np.isfinite(scaled.reshape(len(scaled), -1)).all(axis=1)
    if bad.any():
        raise DataError(
            f"{sources[int(np.argmax(bad))]}: scaling to [-1, 1] gave NaN or Inf; the values are out of range"
        )


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
    """:func:`_load_volumes` with every file's decoded size bounded by ``cfg.max_decoded_gb``."""
    with decoded_limit(cfg.max_decoded_gb):
        return _load_volumes(cfg, root, progress=progress)


def _load_volumes(cfg: DataConfig, root: str | Path | None = None, *, progress: bool = False) -> VolumeSet:
    """Load ``root`` (default ``cfg.root``) onto the training grid, from the cache when it is current.

    See the module docstring for the layouts. The first call reads, reorients, resamples and
    scales every volume (per-volume percentile bounds, see ``cfg.intensity_percentiles``; with
    ``cfg.binary`` the fixed occupancy bounds (0, 1)) and stores the result; later calls with
    unchanged files and settings only map the cached array.
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
