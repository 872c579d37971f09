"""The feature space no network shapes (PCA of pooled voxels) and the speckle measure."""

import numpy as np
import pytest

from volgan.evaluation.structure import (
    PCASpace,
    holes,
    otsu_level,
    pca_fd,
    per_volume,
    pooled,
    speckle,
    structure,
    structure_spread,
)


def test_speckle_counts_components_and_the_share_in_small_ones() -> None:
    v = np.full((1, 16, 16, 16), -1.0, dtype=np.float32)
    v[0, 2:6, 2:6, 2:6] = 1.0  # one 64-voxel block
    for i in (9, 11, 13):
        v[0, i, i, i] = 1.0  # three isolated voxels (no face, edge or corner shared)
    out = speckle(v, level=0.0)
    assert out["components"] == 4
    assert out["speckle_share"] == pytest.approx(3 / 67)
    clean = speckle(v[:, :8], level=0.0)  # the block alone
    assert clean == {"components": 1.0, "speckle_share": 0.0}
    assert speckle(np.full((2, 8, 8, 8), -1.0), level=0.0) == {"components": 0.0, "speckle_share": 0.0}


def test_diagonal_neighbours_are_one_component() -> None:
    v = np.full((1, 8, 8, 8), -1.0, dtype=np.float32)
    v[0, 1, 1, 1] = v[0, 2, 2, 2] = 1.0  # corner-touching: 26-connectivity joins them
    assert speckle(v, level=0.0)["components"] == 1


def test_otsu_level_falls_between_the_two_values() -> None:
    rng = np.random.default_rng(0)
    v = np.where(rng.uniform(size=(4, 8, 8, 8)) > 0.7, 1.0, -1.0)
    assert -1.0 <= otsu_level(v) < 1.0


def test_pca_fd_is_near_its_reference_for_the_same_distribution_and_far_for_another() -> None:
    rng = np.random.default_rng(0)

    def blobs(n: int, shift: float) -> np.ndarray:
        x = rng.normal(size=(n, 8, 8, 8)).astype(np.float32)
        x[:, :4] += shift  # a brighter half grid
        return x

    train, real = blobs(80, 0.0), blobs(80, 0.0)
    labels = np.arange(80) % 2
    space = PCASpace.fit(train, components=8)
    assert pooled(train).shape == (80, 64) and space.features(real).shape == (80, 8)
    feats = space.features(real)
    same = pca_fd(feats, labels, space.features(blobs(80, 0.0)), n_splits=3)
    other = pca_fd(feats, labels, space.features(blobs(80, 1.0)), n_splits=3)
    assert same["pca_fd_ratio"] < 3 and other["pca_fd_ratio"] > 10 * same["pca_fd_ratio"]
    with pytest.raises(ValueError, match="at least 3 training volumes"):
        PCASpace.fit(train[:2])


def test_holes_counts_through_holes_and_cavities() -> None:
    solid = np.full((16, 16, 16), -1.0)
    solid[4:12, 4:12, 4:12] = 1.0
    slab = np.full((16, 16, 16), -1.0)
    slab[2:14, 2:14, 7:9] = 1.0
    slab[5:7, 5:7, 7:9] = -1.0  # two through-holes in a slab
    slab[9:11, 9:11, 7:9] = -1.0
    shell = solid.copy()
    shell[6:10, 6:10, 6:10] = -1.0  # one enclosed cavity
    assert holes(solid[None], level=0.0) == {"holes": 0.0}
    assert holes(slab[None], level=0.0) == {"holes": 2.0}
    assert holes(shell[None], level=0.0) == {"holes": 1.0}
    assert holes(np.stack([solid, slab, shell]), level=0.0) == {"holes": 1.0}  # the mean over volumes
    kinds = [{k: structure(v[None], level=0.0)[k] for k in ("tunnels", "cavities")} for v in (slab, shell)]
    assert kinds == [{"tunnels": 2.0, "cavities": 0.0}, {"tunnels": 0.0, "cavities": 1.0}]
    edge = np.full((8, 8, 8), -1.0)
    edge[:, :, :2] = 1.0  # a slab on the grid's face: no hole, though its background touches the edge
    edge[3:5, 3:5, :2] = -1.0  # ... until one goes through it
    assert holes(edge[None], level=0.0) == {"holes": 1.0}


def test_structure_spread_is_how_far_apart_two_real_halves_are() -> None:
    solid = np.full((12, 12, 12), -1.0, dtype=np.float32)
    solid[2:10, 2:10, 2:10] = 1.0
    holed = solid.copy()
    holed[4:6, 4:6, 2:10] = -1.0  # one through-hole
    labels = np.arange(8) % 2
    same = structure_spread(per_volume(np.stack([solid] * 8), level=0.0), labels, n_splits=5)
    assert set(same.values()) == {1.0}  # every measure; empty speckle and no holes: the halves agree
    mixed = np.stack([holed, solid, holed, holed, solid, solid, holed, solid])  # two holed volumes per class
    spread = structure_spread(per_volume(mixed, level=0.0), labels, n_splits=20)
    assert spread["components"] == 1.0 and 1.0 < spread["holes"] < np.inf
    one = np.stack([holed] + [solid] * 7)  # only one half can hold the hole
    assert structure_spread(per_volume(one, level=0.0), labels, n_splits=5)["holes"] == np.inf
