"""A labelled set of volumes: what every evaluation compares (real, synthetic, training data)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volgan.config import DataConfig, surface_level

log = logging.getLogger("volgan")


@dataclass
class Labelled:
    """A labelled volume set: ``volumes`` (N, S, S, S) float32 in [-1, 1], ``labels`` (N,) indices
    into ``class_names``."""

    volumes: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str

    def of(self, k: int) -> np.ndarray:
        return self.volumes[self.labels == k]


def load_labelled(cfg: DataConfig, root: str | Path, split: str | None = None, what: str = "real") -> Labelled:
    """A data root (class folders, flat folder, .npz) on ``cfg``'s grid; ``split`` picks an .npz split."""
    from volgan.data.dataset import load_volumes

    if split is not None:
        cfg = cfg.model_copy(update={"npz_split": split})
    data = load_volumes(cfg, root, progress=True)
    source = f"{root}" + (f" [{cfg.npz_split}]" if str(root).lower().endswith(".npz") else "")
    log.info("%s set %s: %d volumes, classes %s", what, source, len(data.labels), data.class_names)
    return Labelled(np.asarray(data.volumes), np.asarray(data.labels), list(data.class_names), source)


def as_loaded(volumes: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """What loading these volumes from files would give: generated (N, S, S, S) in [-1, 1] get the
    same intensity step as real data (per-volume percentile scaling, or {-1, 1} occupancy for
    binary data), so a generator is judged exactly as its written samples would be."""
    from volgan.data.preprocess import intensity_bounds_batch, scale_to_unit

    if cfg.binary:
        return np.where(volumes >= surface_level(cfg.threshold), np.float32(1.0), np.float32(-1.0))
    lo, hi = intensity_bounds_batch(volumes, cfg.intensity_percentiles)
    flat = hi <= lo  # a constant volume: nothing to stretch, keep it as it is
    hi[flat] = lo[flat] + 1.0
    return scale_to_unit(volumes, lo[:, None, None, None], hi[:, None, None, None])
