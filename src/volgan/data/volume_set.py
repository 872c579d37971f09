"""The :class:`VolumeSet`: volumes on the training grid, scaled to [-1, 1], with their class labels."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from volgan.data.preprocess import grid_affine
from volgan.errors import DataError


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
