"""Generated volumes cleaned the way the training data are clean (``sample.clean``).

A GAN's samples carry what its training volumes never hold: small detached pieces of foreground
(the speckle a reader sees as isolated bright voxels and fragments) and, for occupancy data, grey
values between empty and full. :func:`measure` reads from the training volumes how small a piece
they ever hold; :class:`Cleanup` then removes, from each generated volume, the foreground pieces
(26-connected, above the level) smaller than that, never a volume's largest piece, and writes
occupancy data as the two values they hold. Occupancy data whose training volumes a closing by a
3³ cube leaves as they are (no gap or tunnel a voxel wide) are closed too: it fills the pin-holes
and one-voxel tunnels a generator leaves in them. The pieces are scikit-image's connected
components; the closing is SciPy's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MASS = 0.01
"""Pieces smaller than the cut hold at most this share of the training volumes' foreground."""

MAX_VOLUMES = 64
"""Training volumes (evenly spaced) that :func:`measure` reads."""


@dataclass(frozen=True)
class Cleanup:
    """What cleaning does to volumes in [-1, 1]: ``level`` (foreground above it), ``min_piece``
    (pieces of fewer voxels go, a volume's largest stays), ``binary`` (occupancy data: out as
    {-1, 1}; otherwise a removed piece and its brighter-than-background rim take the median of
    its volume's background) and ``close`` (occupancy data: the foreground closed by a 3³ cube first)."""

    level: float
    min_piece: int
    binary: bool
    close: bool = False

    def __call__(self, volumes: np.ndarray) -> np.ndarray:
        """(N, S, S, S) in [-1, 1] -> the same shape, float32, each volume cleaned."""
        vols = np.asarray(volumes, dtype=np.float32)
        return np.stack([self.one(v) for v in vols]) if len(vols) else vols.copy()

    def one(self, volume: np.ndarray) -> np.ndarray:
        """One (S, S, S) volume in [-1, 1], cleaned."""
        from skimage.measure import label

        mask = volume > self.level
        if self.binary:
            pieces = label(closed(mask) if self.close else mask, connectivity=3)
            return np.where(self._kept(pieces, pieces > 0), 1.0, -1.0).astype(np.float32)
        pieces = label(mask, connectivity=3)
        kept = self._kept(pieces, mask)
        removed = mask & ~kept
        if not removed.any():
            return volume.astype(np.float32, copy=True)
        fill = float(np.median(volume[~mask]))  # the volume's own background
        # a removed piece's faint rim (its 26 neighbours brighter than the background) goes with it,
        # away from the pieces that stay
        rim = grown(removed) & ~grown(kept) & (volume > fill)
        return np.where(removed | rim, fill, volume).astype(np.float32)

    def _kept(self, pieces: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Where the pieces that stay are: those with at least ``min_piece`` voxels in ``mask``, and the
        one with the most."""
        sizes = np.bincount(pieces[mask], minlength=int(pieces.max()) + 1)
        sizes[0] = 0  # the background is no piece
        keep = sizes >= self.min_piece
        keep[int(np.argmax(sizes))] = sizes.max() > 0  # the largest piece always stays (never the background)
        return keep[pieces]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Cleanup:
        """The checkpoint's record (``to_dict``); a malformed one is refused naming ``where``."""
        try:
            return cls(float(d["level"]), int(d["min_piece"]), bool(d["binary"]), bool(d.get("close", False)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: the cleanup record is malformed ({e!r})") from None

    def describe(self) -> str:
        what = "written as 0/1 occupancy, " if self.binary else ""
        what += "closed by a 3³ cube, " if self.binary and self.close else ""
        return f"{what}pieces under {self.min_piece} voxels removed (level {self.level:.3f} in [-1, 1])"


def measure(volumes: np.ndarray, binary: bool, threshold: float) -> Cleanup:
    """The cleanup a training set implies: volumes (N, S, S, S) in [-1, 1]; ``binary`` and
    ``threshold`` are ``data.binary`` and ``data.threshold`` (occupancy units in [0, 1]).

    The level is the occupancy threshold for occupancy data and Otsu's threshold of the volumes
    otherwise; ``min_piece`` is the size below which the volumes' pieces hold at most :data:`MASS`
    of their foreground (1 where even single voxels hold more: nothing is removed); ``close``: occupancy
    data that a closing changes by at most :data:`MASS` of their foreground."""
    from skimage.measure import label

    from volgan.config import surface_level
    from volgan.evaluation.structure import otsu_level

    n = len(volumes)
    picked = np.asarray([volumes[i] for i in np.linspace(0, n - 1, min(n, MAX_VOLUMES)).round().astype(int)])
    level = surface_level(threshold) if binary else otsu_level(picked)
    sizes = np.concatenate([np.bincount(label(v > level, connectivity=3).reshape(-1))[1:] for v in picked])
    sizes = np.sort(sizes)  # every label is a piece of at least one voxel
    if not sizes.size:
        return Cleanup(level, 1, binary)
    within = np.cumsum(sizes) <= MASS * sizes.sum()  # the smallest pieces, up to MASS of the foreground
    cut = int(sizes[int(within.sum())])  # the first piece past MASS (the whole foreground is more)
    close = binary and sum(int((closed(v > level) != (v > level)).sum()) for v in picked) <= MASS * sizes.sum()
    return Cleanup(float(level), max(1, cut), binary, bool(close))


def grown(mask: np.ndarray) -> np.ndarray:
    """``mask`` and its 26 neighbours."""
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, np.ones((3, 3, 3), bool))


def closed(mask: np.ndarray) -> np.ndarray:
    """``mask`` closed by a 3³ cube; padded first, so the grid's edge does not erode it."""
    from scipy.ndimage import binary_closing

    return binary_closing(np.pad(mask, 2), np.ones((3, 3, 3), bool))[2:-2, 2:-2, 2:-2]
