"""What the built-in procedural datasets (phantom, objects) share: a labelled, seed-addressed set, and
the one-volume check their class rules and the surface renders use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def make_labelled_set(
    make_one: Callable[[int, int, np.random.Generator], np.ndarray],
    n_classes: int,
    n_per_class: int,
    size: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` volumes of each class from ``make_one(label, size, rng)``, sorted by class.

    Returns (N, size, size, size) float32 and labels (N,) int64, ``N = n_classes * n_per_class``.
    Volume ``k`` of class ``c`` uses the RNG seeded by ``(seed, c, k)``, so it does not depend on
    ``n_per_class``: a larger set starts with the same volumes as a smaller one.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class)
    volumes = np.empty((labels.size, size, size, size), np.float32)
    for i, label in enumerate(labels):
        volumes[i] = make_one(int(label), size, np.random.default_rng([seed, int(label), i % n_per_class]))
    return volumes, labels


def as_volume(volume: Any, min_side: int) -> np.ndarray:
    """One (D, H, W) float32 volume from (D, H, W) or (1, D, H, W); ValueError naming the shape otherwise."""
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim == 4 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 3 or min(v.shape) < min_side:
        raise ValueError(f"expected a (D, H, W) volume with every side >= {min_side}, got shape {v.shape}")
    return v
