"""A dataset's fingerprint: what the planner needs to know of the data before choosing a recipe.

Read from the raw files (shapes, voxel sizes, intensities as stored) or from a :class:`VolumeSet`
already on its grid. Only an evenly spaced sample of at most ``max_volumes`` volumes is decoded;
class counts come from the file headers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from volgan.config import DataConfig
from volgan.data.volume_set import VolumeSet

# A volume is occupancy-like when at most this share of its voxels lies between its two extremes.
_BETWEEN_SHARE = 0.01
# ... and a dataset when this share of its sampled volumes are.
_OCCUPANCY_SHARE = 0.95


@dataclass(frozen=True)
class Fingerprint:
    """Summary statistics of a dataset (see :func:`fingerprint_path`)."""

    source: str
    n_volumes: int
    classes: dict[str, int]
    shape_median: tuple[int, int, int]
    """grid of the stored volumes (for class folders: over the sampled volumes)"""
    shape_min: tuple[int, int, int]
    shape_max: tuple[int, int, int]
    spacing_median: tuple[float, float, float]
    """voxel size in mm per array axis (1.0 where the files carry no geometry)"""
    anisotropy: float
    """largest over smallest median voxel size (1 = isotropic)"""
    intensity: dict[str, float]
    """as stored: min, p0.5, median, p99.5, max over the sampled voxels"""
    two_valued_share: float
    """share of sampled volumes with (nearly) only two values"""
    occupancy_like: bool
    foreground_fraction: float
    """median share of voxels above each volume's Otsu threshold (the object, not the background)"""
    sampled: int
    """how many volumes were decoded for the statistics"""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def native_edge(self) -> int:
        """The largest median extent in voxels: the finest grid the data can fill without upsampling."""
        return int(max(self.shape_median))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One screen: the facts the planner uses, one line each."""

        def shape(s: tuple[int, ...]) -> str:
            return "x".join(str(v) for v in s)

        counts = ", ".join(f"{name}: {n}" for name, n in self.classes.items())
        i = self.intensity
        kind = "occupancy grids (two values)" if self.occupancy_like else "intensities"
        return "\n".join(
            [
                f"source:      {self.source}",
                f"volumes:     {self.n_volumes} in {self.num_classes} class(es) ({counts})",
                f"shape:       median {shape(self.shape_median)} (min {shape(self.shape_min)}, "
                f"max {shape(self.shape_max)})",
                f"voxel size:  {' x '.join(f'{v:.3g}' for v in self.spacing_median)} mm "
                f"(anisotropy {self.anisotropy:.2f})",
                f"values:      {kind}; min {i['min']:.4g}, p0.5 {i['p0.5']:.4g}, median {i['median']:.4g}, "
                f"p99.5 {i['p99.5']:.4g}, max {i['max']:.4g}",
                f"two-valued:  {self.two_valued_share:.0%} of sampled volumes",
                f"foreground:  {self.foreground_fraction:.1%} of voxels (median, Otsu threshold)",
                f"sampled:     {self.sampled} of {self.n_volumes} volumes decoded",
            ]
        )


def fingerprint_path(cfg: DataConfig, root: str | Path | None = None, max_volumes: int = 48) -> Fingerprint:
    """Fingerprint the raw data at ``root`` (default ``cfg.root``): a class-folder tree, a flat folder
    or a MedMNIST-style ``.npz`` (``cfg.npz_split``), as :func:`~volgan.data.dataset.load_volumes`
    finds it."""
    from volgan.data import dataset
    from volgan.data.cache import default_cache_dir
    from volgan.data.io import read_npz
    from volgan.data.preprocess import voxel_sizes
    from volgan.safety import decoded_limit

    where = Path(root if root is not None else str(cfg.root)).expanduser()
    cache_base = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    with decoded_limit(cfg.max_decoded_gb):
        source = dataset._discover(where, cache_base)
        if source.is_npz:
            images, labels = read_npz(source.root, cfg.npz_split)
            names = [str(v) for v in np.unique(labels)]
            counts = {n: int((labels == int(n)).sum()) for n in names}
            picks = _evenly(len(images), max_volumes)
            samples = [(images[i], np.eye(4)) for i in picks]
            shapes = [images.shape[1:]] * len(images)
        else:
            files, names = dataset._plan(source)
            counts = {n: 0 for n in names}
            for f in files:
                counts[names[f.label]] += f.count
            samples, shapes = [], []
            for f in (files[i] for i in _evenly(len(files), max_volumes)):
                batch, affine = dataset._read(f)
                per_file = max(1, max_volumes // max(1, len(files)))
                samples += [(batch[i], affine) for i in _evenly(len(batch), per_file)]
            shapes = [s.shape for s, _ in samples]
    return _fingerprint(str(source.root), counts, shapes, samples, voxel_sizes)


def fingerprint_volumes(data: VolumeSet, max_volumes: int = 48) -> Fingerprint:
    """Fingerprint volumes already on a grid (their grid is the shape, ``data.spacing`` the voxel size)."""
    from volgan.data.preprocess import voxel_sizes

    picks = _evenly(len(data.volumes), max_volumes)
    affine = np.diag([data.spacing] * 3 + [1.0])
    samples = [(np.asarray(data.volumes[i]), affine) for i in picks]
    shapes = [data.volumes.shape[1:]] * len(data.volumes)
    return _fingerprint(_source_name(data), data.class_counts(), shapes, samples, voxel_sizes)


def _source_name(data: VolumeSet) -> str:
    from volgan.data.volume_set import _common_source

    return _common_source(data.sources)


def _evenly(n: int, k: int) -> list[int]:
    """At most ``k`` evenly spaced indices of ``range(n)``."""
    return sorted(set(np.linspace(0, n - 1, min(n, k)).astype(int).tolist())) if n else []


def _fingerprint(
    source: str,
    counts: dict[str, int],
    shapes: list[tuple[int, ...]],
    samples: list[tuple[np.ndarray, np.ndarray]],
    voxel_sizes: Any,
) -> Fingerprint:
    shape_arr = np.array([tuple(int(v) for v in s) for s in shapes])
    spacing = np.median(np.array([voxel_sizes(a) for _, a in samples]), axis=0)
    flat = np.concatenate([_subsample(v) for v, _ in samples])
    two_valued = [_two_valued(v) for v, _ in samples]
    fg = [_foreground(v) for v, _ in samples]
    return Fingerprint(
        source=source,
        n_volumes=int(sum(counts.values())),
        classes=dict(counts),
        shape_median=_triple(np.median(shape_arr, axis=0)),
        shape_min=_triple(shape_arr.min(axis=0)),
        shape_max=_triple(shape_arr.max(axis=0)),
        spacing_median=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        anisotropy=float(spacing.max() / spacing.min()),
        intensity={
            "min": float(flat.min()),
            "p0.5": float(np.percentile(flat, 0.5)),
            "median": float(np.median(flat)),
            "p99.5": float(np.percentile(flat, 99.5)),
            "max": float(flat.max()),
        },
        two_valued_share=float(np.mean(two_valued)),
        occupancy_like=bool(np.mean(two_valued) >= _OCCUPANCY_SHARE),
        foreground_fraction=float(np.median(fg)),
        sampled=len(samples),
    )


def _triple(values: Any) -> tuple[int, int, int]:
    a, b, c = (round(float(v)) for v in values)
    return a, b, c


def _subsample(volume: np.ndarray, at_most: int = 1 << 16) -> np.ndarray:
    """At most ``at_most`` voxels of a volume, evenly strided, as float64 (for the pooled percentiles)."""
    flat = np.asarray(volume).reshape(-1)
    return flat[:: max(1, flat.size // at_most)].astype(np.float64)


def _two_valued(volume: np.ndarray) -> bool:
    """At most :data:`_BETWEEN_SHARE` of the voxels lie strictly between the volume's min and max."""
    v = np.asarray(volume)
    lo, hi = v.min(), v.max()
    if lo == hi:
        return True
    between = np.count_nonzero((v > lo) & (v < hi))
    return bool(between <= _BETWEEN_SHARE * v.size)


def _foreground(volume: np.ndarray) -> float:
    """Share of voxels above the Otsu threshold (0 for a constant volume)."""
    from skimage.filters import threshold_otsu

    v = np.asarray(volume, dtype=np.float32)
    if v.min() == v.max():
        return 0.0
    return float(np.mean(v > threshold_otsu(v)))
