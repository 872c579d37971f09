"""Finding a dataset on disk, preprocessing it once into a cache, and the :class:`VolumeSet` it yields.

``data.root`` is one of:

* ``DIR/<class>/*.nii|*.nii.gz|*.npy``: the class is the sub-folder name (sorted; numerically
  when every name is a number, so ``2`` comes before ``10``);
* ``DIR/*.nii|*.nii.gz|*.npy``: one class, for an unconditional model;
* ``FILE.npz``: MedMNIST style, keys ``{split}_images`` / ``{split}_labels`` with
  ``split = data.npz_split``; the classes are the label values.

Hidden files and folders (and the cache, if it lives inside the root) are ignored.

The preprocessed volumes are cached under ``data.cache_dir`` (default
:func:`default_cache_dir`) in a folder named by a hash of the resolved root, every input file's
relative path, size and modification time, the preprocessing settings and :data:`CACHE_VERSION`.
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
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from volgan.config import DataConfig
from volgan.data.io import SUPPORTED_SUFFIXES, check_readable, read_npz, read_volume, volume_suffix
from volgan.data.preprocess import (
    grid_affine,
    grid_spacing,
    intensity_bounds_batch,
    scale_to_unit,
    to_grid_batch,
)
from volgan.errors import DataError

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when preprocessing changes what a cache entry holds; old entries are then ignored."""

_PREPROCESSING_KEYS = ("size", "resample", "spacing", "orientation", "interpolation", "intensity_percentiles")
_CHUNK = 32  # volumes scaled at once: vectorised, but the float64 scratch stays ~70 MB at 64³
_STALE_TEMP_S = 24 * 3600


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is not a bool
class VolumeSet:
    """Volumes on the training grid, scaled to [-1, 1], with their class labels.

    ``volumes`` is ``(N, S, S, S)`` float32 (a read-only memory map when it comes from the cache);
    ``labels`` is ``(N,)`` int64 indices into ``class_names``. ``intensity_range`` is the data-space
    ``(lo, hi)`` that [-1, 1] maps back to (the median of the per-volume bounds), ``spacing`` the
    isotropic voxel size of the grid in mm and ``orientation`` the axis codes of its axes.
    """

    volumes: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    intensity_range: tuple[float, float]
    spacing: float
    sources: list[str]
    orientation: str = "RAS"

    def __post_init__(self) -> None:
        shape = self.volumes.shape
        if len(shape) != 4 or not shape[1] == shape[2] == shape[3]:
            raise DataError(f"volumes must be (N, S, S, S) cubes, got shape {shape}")
        if self.labels.shape != (shape[0],):
            raise DataError(f"labels must be ({shape[0]},), one per volume, got shape {self.labels.shape}")
        if len(self.sources) != shape[0]:
            raise DataError(f"sources must name each of the {shape[0]} volumes, got {len(self.sources)}")
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"class_names must be non-empty and unique, got {self.class_names}")
        lo, hi = self.intensity_range
        if not hi > lo:
            raise DataError(f"intensity_range must have lo < hi, got {self.intensity_range}")
        if not self.spacing > 0:
            raise DataError(f"spacing must be > 0 mm, got {self.spacing}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}

    @property
    def size(self) -> int:
        return int(self.volumes.shape[1])

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world matrix of the training grid (for writing volumes as NIfTI)."""
        return grid_affine(self.size, self.spacing, self.orientation)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    def summary(self) -> str:
        """A few human-readable lines: where the data came from, classes, grid and value statistics."""
        n, s = len(self.volumes), self.size
        # Statistics over at most 64 evenly spaced volumes: a full pass over a large memmap is slow.
        picked = np.asarray(self.volumes[np.linspace(0, n - 1, min(n, 64)).astype(int)], dtype=np.float64)
        counts = ", ".join(f"{name}: {c}" for name, c in self.class_counts().items())
        lo, hi = self.intensity_range
        return "\n".join(
            [
                f"source:    {_common_source(self.sources)}",
                f"volumes:   {n} x {s}x{s}x{s}, {self.spacing:.4g} mm voxels, {self.orientation}",
                f"classes:   {self.num_classes} ({counts})",
                f"intensity: [{lo:.6g}, {hi:.6g}] in the data maps to [-1, 1]",
                f"values:    mean {picked.mean():.3f}, std {picked.std():.3f}, "
                f"min {picked.min():.3f}, max {picked.max():.3f} (over {len(picked)} volumes)",
            ]
        )

    @classmethod
    def from_arrays(
        cls,
        volumes: np.ndarray,
        labels: np.ndarray | Sequence[int],
        class_names: Sequence[str],
        spacing: float = 1.0,
        intensity_range: tuple[float, float] = (-1.0, 1.0),
        sources: Sequence[str] | None = None,
        orientation: str = "RAS",
    ) -> VolumeSet:
        """Build a set from in-memory arrays, checking shapes, dtypes, label range and values in [-1, 1].

        ``volumes``: ``(N, S, S, S)`` (or ``(N, 1, S, S, S)``) already scaled to [-1, 1];
        ``labels``: ``(N,)`` integer class indices.
        """
        vols = np.asarray(volumes, dtype=np.float32)
        if vols.ndim == 5 and vols.shape[1] == 1:
            vols = vols[:, 0]
        if vols.ndim != 4 or len(vols) == 0:
            raise DataError(f"volumes must be a non-empty (N, S, S, S) array, got shape {vols.shape}")
        if not np.isfinite(vols).all():
            raise DataError("volumes contain NaN or Inf")
        vmin, vmax = float(vols.min()), float(vols.max())
        if vmin < -1.0 - 1e-5 or vmax > 1.0 + 1e-5:
            raise DataError(f"volumes must be scaled to [-1, 1] (see scale_to_unit), got [{vmin:.4g}, {vmax:.4g}]")
        lbl = np.asarray(labels)
        if lbl.dtype.kind not in "iu":
            raise DataError(f"labels must be integer class indices, got dtype {lbl.dtype}")
        lbl = lbl.astype(np.int64)
        if lbl.size and (lbl.min() < 0 or lbl.max() >= len(class_names)):
            raise DataError(f"labels must lie in 0..{len(class_names) - 1}, got {lbl.min()}..{lbl.max()}")
        names = [str(c) for c in class_names]
        srcs = list(sources) if sources is not None else [f"array[{i}]" for i in range(len(vols))]
        rng = (float(intensity_range[0]), float(intensity_range[1]))
        return cls(vols, lbl, names, rng, float(spacing), srcs, orientation.upper())


def _common_source(sources: list[str]) -> str:
    roots = sorted({re.sub(r"\[\d+\]$", "", s) for s in sources})
    if len(roots) == 1:
        return roots[0]
    try:
        return os.path.commonpath(roots) or roots[0]
    except ValueError:  # mixed absolute and relative paths
        return roots[0]


def default_cache_dir() -> Path:
    """``$VOLGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/volgan``, else ``~/.cache/volgan``."""
    if os.environ.get("VOLGAN_CACHE_DIR"):
        return Path(os.environ["VOLGAN_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "volgan"


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


# ---------------------------------------------------------------------------- cache


def _cache_key(source: _Source, cfg: DataConfig) -> str:
    settings: dict[str, Any] = {k: getattr(cfg, k) for k in _PREPROCESSING_KEYS}
    if source.is_npz:
        settings["npz_split"] = cfg.npz_split
    files = []
    for path in source.files:
        st = check_readable(path)
        files.append([path.relative_to(source.root).as_posix(), st.st_size, st.st_mtime_ns])
    payload = {"version": CACHE_VERSION, "root": str(source.root), "files": files, "settings": settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _entry_name(source: _Source, key: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.root.name).strip("._")[:40] or "data"
    return f"{slug}-{key[:16]}"


def _read_entry(entry: Path, key: str, size: int) -> VolumeSet | None:
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


def _remove_stale_temps(base: Path) -> None:
    """Delete temporary build folders that crashed runs left behind more than a day ago."""
    for tmp in base.glob(".*.tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _publish(tmp: Path, entry: Path, key: str, size: int) -> None:
    """Rename the finished temp folder to ``entry``, replacing a damaged entry but never a good one."""
    if entry.exists() and _read_entry(entry, key, size) is None:
        shutil.rmtree(entry, ignore_errors=True)
    try:
        os.rename(tmp, entry)
    except OSError:
        if _read_entry(entry, key, size) is None:  # not a concurrent run that finished first
            raise
    _fsync(entry.parent, folder=True)


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
        bar = tqdm(total=n, desc="preprocessing", unit="vol", disable=not progress)
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
        for i, path in enumerate(tqdm(source.files, desc="preprocessing", unit="vol", disable=not progress)):
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
    key = _cache_key(source, cfg)
    entry = cache_base / _entry_name(source, key)
    cached = _read_entry(entry, key, cfg.size)
    if cached is not None:
        logger.info("data: %d volumes from cache %s", len(cached.volumes), entry)
        return cached
    try:
        cache_base.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(cache_base)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=cache_base))
    except OSError as e:
        logger.warning("cannot write the data cache in %s (%s); preprocessing in memory only", cache_base, e)
        return _in_memory(source, cfg, progress)
    try:
        _write_entry(source, cfg, tmp, progress, key)
        _publish(tmp, entry, key, cfg.size)
    except OSError as e:
        raise DataError(
            f"{cache_base}: cannot write the data cache ({e}); set data.cache_dir to a writable folder"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    loaded = _read_entry(entry, key, cfg.size)
    if loaded is None:
        raise DataError(f"{entry}: the data cache entry just written cannot be read back")
    logger.info("data: preprocessed %d volumes into cache %s", len(loaded.volumes), entry)
    return loaded


def _write_entry(source: _Source, cfg: DataConfig, tmp: Path, progress: bool, key: str) -> None:
    """Preprocess straight into ``tmp/volumes.npy`` (a memmap: the set need not fit in RAM), then fsync."""
    shape = (cfg.size,) * 3

    def allocate(n: int) -> np.ndarray:
        return np.lib.format.open_memmap(tmp / "volumes.npy", mode="w+", dtype=np.float32, shape=(n, *shape))

    volumes, meta = _preprocess(source, cfg, allocate, progress)
    volumes.flush()  # type: ignore[attr-defined]  # a np.memmap
    del volumes
    np.save(tmp / "labels.npy", meta.pop("labels"))
    meta.update(cache_version=CACHE_VERSION, key=key, root=str(source.root), created=time.time())
    (tmp / "meta.json").write_text(json.dumps(meta))  # written last: its presence marks a complete entry
    for name in ("volumes.npy", "labels.npy", "meta.json"):
        _fsync(tmp / name)
    _fsync(tmp, folder=True)
