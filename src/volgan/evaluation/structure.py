"""Sample quality that no trained network shapes: FD in a PCA space of downsampled voxels, and speckle.

:class:`PCASpace` is fitted on the *training* split (scikit-learn's PCA on volumes average-pooled
by 2): the Fréchet distance there sees what the voxels themselves hold, where a judge classifier's
features see only what helped it tell the classes apart. :func:`speckle` binarizes volumes at one
level (Otsu's threshold of the real set, scikit-image) and counts 26-connected components: the
number per volume and the share of foreground voxels in components smaller than ``small`` voxels,
what a reader sees as isolated bright voxels and fragments. :func:`holes` counts, at the same level,
the tunnels (through-holes, as in a broken slab) and enclosed cavities of each volume from its Euler
number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from volgan.evaluation.metrics import frechet_distance, real_vs_real_split

SMALL_COMPONENT = 8
"""Components of fewer voxels than this (a 2x2x2 cube) count as speckle."""


def pooled(volumes: np.ndarray, factor: int = 2) -> np.ndarray:
    """(N, S, S, S) -> (N, (S/factor)^3): each volume average-pooled by ``factor`` and flattened."""
    x = torch.from_numpy(np.require(volumes, np.float32, ["C", "W"])).unsqueeze(1)  # writable: torch asks it
    if factor > 1:
        x = F.avg_pool3d(x, factor)
    return x.flatten(1).numpy().astype(np.float64)


@dataclass
class PCASpace:
    """A PCA of 2x-pooled voxels fitted on training volumes; :meth:`features` projects any volumes."""

    pca: Any
    factor: int

    @classmethod
    def fit(cls, train: np.ndarray, components: int = 32, factor: int = 2, seed: int = 0) -> PCASpace:
        from sklearn.decomposition import PCA

        flat = pooled(train, factor)
        n = min(components, flat.shape[0] - 1, flat.shape[1])
        if n < 2:
            raise ValueError(f"a PCA space needs at least 3 training volumes, got {flat.shape[0]}")
        return cls(PCA(n_components=n, svd_solver="randomized", random_state=seed).fit(flat), factor)

    def features(self, volumes: np.ndarray) -> np.ndarray:
        return np.asarray(self.pca.transform(pooled(volumes, self.factor)))


def pca_fd(
    feats: np.ndarray,
    real_labels: np.ndarray,
    fake: np.ndarray,
    *,
    seed: int = 0,
    n_splits: int = 1,
    n_draws: int = 3,
) -> dict[str, float]:
    """FD of synthetic features ``fake`` against half of the real features ``feats`` (both
    :meth:`PCASpace.features`), beside the real-vs-real FD of the two halves (the reference),
    averaged over ``n_splits`` class-stratified splits; the synthetic set is subsampled to the
    half's size ``n_draws`` times so both FDs see as many volumes."""
    fds, refs = [], []
    rng = np.random.default_rng(seed)
    for r in range(n_splits):
        a, b = real_vs_real_split(len(feats), real_labels, seed=seed + r)
        refs.append(frechet_distance(feats[a], feats[b]))
        size = min(len(b), len(fake))
        draws = [frechet_distance(feats[a], fake[rng.choice(len(fake), size, replace=False)]) for _ in range(n_draws)]
        fds.append(float(np.mean(draws)))
    fd, ref = float(np.mean(fds)), float(np.mean(refs))
    return {"pca_fd": fd, "pca_fd_ref": ref, "pca_fd_ratio": fd / ref if ref > 0 else float("inf")}


def otsu_level(volumes: np.ndarray, at_most: int = 1 << 20) -> float:
    """Otsu's threshold over (a strided sample of) the voxels of ``volumes``."""
    from skimage.filters import threshold_otsu

    flat = np.asarray(volumes, dtype=np.float32).reshape(-1)
    return float(threshold_otsu(flat[:: max(1, flat.size // at_most)]))


def _pieces(v: np.ndarray, level: float, small: int) -> tuple[int, float, int, int, int]:
    """One volume's 26-connected foreground pieces above ``level``, the share of its foreground in
    pieces under ``small`` voxels (0 when empty), its holes, and those as tunnels and cavities (from the
    Euler number ``pieces - tunnels + cavities``, the background 6-connected), all from one labelling."""
    from skimage.measure import euler_number, label

    mask = np.pad(v > level, 1)  # a background border: whatever touches the grid's edge is outside
    labelled, n = label(mask, connectivity=3, return_num=True)
    sizes = np.bincount(labelled.reshape(-1))[1:]
    share = float(sizes[sizes < small].sum() / sizes.sum()) if n else 0.0
    cavities = int(label(~mask, connectivity=1).max()) - 1  # background pieces other than the outside
    tunnels = n + cavities - int(euler_number(mask, connectivity=3))
    return n, share, tunnels + cavities, tunnels, cavities


MEASURES = ("components", "speckle_share", "holes", "tunnels", "cavities")


def per_volume(volumes: np.ndarray, level: float, small: int = SMALL_COMPONENT) -> np.ndarray:
    """(N, 5): each volume's :data:`MEASURES` (see :func:`structure`)."""
    rows = [_pieces(v, level, small) for v in np.asarray(volumes)]
    return np.array(rows, dtype=np.float64).reshape(-1, len(MEASURES))


def structure(volumes: np.ndarray, level: float, small: int = SMALL_COMPONENT) -> dict[str, float]:
    """Means over volumes: ``components`` (pieces above ``level``), ``speckle_share`` (foreground in
    pieces under ``small`` voxels), ``holes`` (through-holes and enclosed cavities) and the two kinds
    apart: ``tunnels`` (perforations, as in a broken slab) and ``cavities`` (enclosed background)."""
    return mean_structure(per_volume(volumes, level, small))


def mean_structure(values: np.ndarray) -> dict[str, float]:
    """:func:`per_volume`'s rows averaged, by measure name (zeros for no volumes)."""
    means = values.mean(axis=0) if len(values) else np.zeros(len(MEASURES))
    return dict(zip(MEASURES, map(float, means), strict=True))


def structure_spread(values: np.ndarray, labels: np.ndarray, n_splits: int = 20, seed: int = 0) -> dict[str, float]:
    """How far apart two halves of one real set are in each of :data:`MEASURES`, from its
    :func:`per_volume` rows: over ``n_splits`` class-stratified half splits, the 90th percentile of
    the larger half's mean over the smaller's (1.0: the halves always agree; ``inf`` where one half
    has none of what the other has). A synthetic set's measure within this factor of real's is as
    close as real data are to themselves."""
    factors = []
    for r in range(n_splits):
        a, b = real_vs_real_split(len(values), labels, seed=seed + r)
        lo, hi = np.sort(np.stack([values[a].mean(axis=0), values[b].mean(axis=0)]), axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            factors.append(np.where(hi == 0, 1.0, hi / lo))
    q90 = np.percentile(np.stack(factors), 90, axis=0, method="higher")  # no interpolation towards an inf
    return dict(zip(MEASURES, map(float, q90), strict=True))


def speckle(volumes: np.ndarray, level: float, small: int = SMALL_COMPONENT) -> dict[str, float]:
    """Mean over volumes of: 26-connected components above ``level`` (``components``), and the share
    of foreground voxels in components of fewer than ``small`` voxels (``speckle_share``; 0 for an
    empty volume)."""
    out = structure(volumes, level, small)
    return {"components": out["components"], "speckle_share": out["speckle_share"]}


def holes(volumes: np.ndarray, level: float) -> dict[str, float]:
    """Mean over volumes of the holes in the foreground above ``level``: tunnels (through-holes) plus
    cavities (enclosed background), from the Euler number of the 26-connected foreground."""
    return {"holes": structure(volumes, level)["holes"]}
