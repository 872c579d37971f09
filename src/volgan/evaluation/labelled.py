"""A labelled set of volumes: what every evaluation compares (real, synthetic, training data)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
