"""Bringing volumes onto the training grid, and the intensity mapping to [-1, 1] and back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from nibabel.orientations import aff2axcodes

from volgan.config import DataConfig
from volgan.data.preprocess import (
    grid_affine,
    grid_spacing,
    intensity_bounds,
    scale_to_unit,
    to_grid,
    to_grid_batch,
    unscale,
)
from volgan.errors import DataError

# LPS with anisotropic voxels: axis 0 runs right -> left (2 mm), axis 1 anterior -> posterior
# (2 mm), axis 2 inferior -> superior (3 mm).
LPS = np.array([[-2.0, 0, 0, 10], [0, -2.0, 0, 20], [0, 0, 3.0, -5], [0, 0, 0, 1]])


def cfg(**kw: Any) -> DataConfig:
    return DataConfig(**{"size": 8, **kw})


def argmax3(volume: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(np.argmax(volume), volume.shape))


def test_reorientation_puts_marker_where_ras_says() -> None:
    volume = np.zeros((8, 8, 8), np.float32)
    volume[0, 1, 2] = 1.0  # rightmost, second-most anterior voxel in LPS order
    grid = to_grid(volume, LPS, cfg(resample="none"))
    assert grid.shape == (8, 8, 8) and grid.dtype == np.float32
    assert argmax3(grid) == (7, 6, 2)  # RAS: right is the end of axis 0, anterior the end of axis 1


def test_orientation_setting_is_honoured() -> None:
    volume = np.zeros((8, 8, 8), np.float32)
    volume[0, 1, 2] = 1.0
    assert argmax3(to_grid(volume, LPS, cfg(resample="none", orientation="LPS"))) == (0, 1, 2)
    assert argmax3(to_grid(volume, LPS, cfg(resample="none", orientation="SAR"))) == (2, 6, 7)


def test_identity_affine_is_never_reoriented() -> None:
    volume = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(to_grid(volume, np.eye(4), cfg(orientation="LPS")), volume)


def test_fit_keeps_the_whole_field_of_view_and_the_aspect_ratio() -> None:
    # 12 x 8 x 4 voxels of 2 x 2 x 3 mm = 24 x 16 x 12 mm: the 24 mm axis fills the 8-voxel grid
    # (3 mm voxels), the others become 16/3 -> 5 and 12/3 -> 4 voxels, padded with the minimum.
    volume = np.full((12, 8, 4), 2.0, np.float32)
    volume[0, 0, 0] = 9.0  # marker: right, anterior, inferior corner
    volume[11, 7, 3] = 1.0  # the minimum, which padding repeats: left, posterior, superior corner
    grid = to_grid(volume, LPS, cfg(resample="fit", interpolation="nearest"))
    assert grid_spacing(volume.shape, LPS, cfg()) == pytest.approx(3.0)
    assert grid.shape == (8, 8, 8)
    content = np.argwhere(grid > 1.0)
    assert content.min(axis=0).tolist() == [0, 1, 2] and content.max(axis=0).tolist() == [7, 5, 5]
    assert np.all(grid[:, 0] == 1.0) and np.all(grid[:, :, :2] == 1.0)
    assert argmax3(grid) == (7, 5, 2)


def test_fit_upsamples_small_npy_exactly_with_nearest() -> None:
    volume = np.random.default_rng(1).random((4, 4, 4)).astype(np.float32)
    grid = to_grid(volume, np.eye(4), cfg(resample="fit", interpolation="nearest"))
    np.testing.assert_array_equal(grid, volume.repeat(2, 0).repeat(2, 1).repeat(2, 2))


def test_fit_pads_a_flat_npy_symmetrically() -> None:
    volume = np.arange(8 * 4 * 6, dtype=np.float32).reshape(8, 4, 6) + 5
    grid = to_grid(volume, np.eye(4), cfg(resample="fit"))
    np.testing.assert_array_equal(grid[:, 2:6, 1:7], volume)
    assert np.all(grid[:, :2] == 5) and np.all(grid[:, 6:] == 5)  # padded with the minimum


def test_spacing_mode_with_same_spacing_only_crops_and_pads() -> None:
    volume = np.random.default_rng(2).random((10, 12, 6)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid = to_grid(volume, affine, cfg(resample="spacing", spacing=2.0))
    np.testing.assert_array_equal(grid[:, :, 1:7], volume[1:9, 2:10, :])
    assert np.all(grid[:, :, 0] == volume.min())


def test_spacing_mode_resamples_to_the_requested_voxel_size() -> None:
    volume = np.zeros((6, 6, 6), np.float32)
    volume[2:4, 2:4, 2:4] = 1.0  # a 4 mm cube in 2 mm voxels
    grid = to_grid(
        volume,
        np.diag([2.0, 2.0, 2.0, 1.0]),
        cfg(size=16, resample="spacing", spacing=1.0, interpolation="nearest"),
    )
    extent = np.ptp(np.argwhere(grid > 0), axis=0) + 1
    assert np.all((extent >= 4) & (extent <= 5))  # ~4 mm in 1 mm voxels (sampling at voxel centres)


def test_none_mode_rejects_another_shape() -> None:
    with pytest.raises(DataError, match=r"shape \(8, 8, 9\) is not the training grid \(8, 8, 8\)"):
        to_grid(np.zeros((8, 8, 9)), np.eye(4), cfg(resample="none"))


def test_bad_affine_and_shape() -> None:
    with pytest.raises(DataError, match="singular"):
        to_grid(np.zeros((8, 8, 8)), np.zeros((4, 4)), cfg())
    with pytest.raises(DataError, match="3-D volume"):
        to_grid(np.zeros((8, 8)), np.eye(4), cfg())


@pytest.mark.parametrize("shape", [(7, 9, 11), (8, 8, 8), (20, 5, 3), (1, 1, 1), (33, 16, 17)])
@pytest.mark.parametrize("size", [8, 12])
@pytest.mark.parametrize("resample", ["fit", "spacing"])
def test_any_shape_lands_on_the_grid(shape: tuple[int, int, int], size: int, resample: str) -> None:
    volume = np.random.default_rng(3).random(shape).astype(np.float32)
    grid = to_grid(volume, LPS, cfg(size=size, resample=resample, spacing=2.5))
    assert grid.shape == (size,) * 3 and grid.dtype == np.float32
    assert volume.min() - 1e-6 <= grid.min() and grid.max() <= volume.max() + 1e-6  # linear stays in range


def test_batch_equals_one_by_one() -> None:
    volumes = np.random.default_rng(4).random((3, 5, 6, 7)).astype(np.float32)
    batch = to_grid_batch(volumes, LPS, cfg())
    np.testing.assert_allclose(batch, np.stack([to_grid(v, LPS, cfg()) for v in volumes]), atol=1e-6)


# ---------------------------------------------------------------------------- intensity


def test_intensity_bounds_are_percentiles() -> None:
    volume = np.arange(1001, dtype=np.float32)
    assert intensity_bounds(volume, (1.0, 99.0)) == (10.0, 990.0)


def test_intensity_bounds_fall_back_to_min_max_for_tiny_foreground() -> None:
    mask = np.zeros((16, 16, 16), np.uint8)
    mask[3, 4, 5] = 255  # 1 voxel of 4096: the 99.5th percentile is still 0
    assert intensity_bounds(mask, (0.5, 99.5)) == (0.0, 255.0)
    np.testing.assert_array_equal(np.unique(scale_to_unit(mask, 0.0, 255.0)), [-1.0, 1.0])


def test_constant_volume_has_equal_bounds() -> None:
    assert intensity_bounds(np.full((4, 4, 4), 7.0), (0.5, 99.5)) == (7.0, 7.0)
    with pytest.raises(ValueError, match="hi > lo"):
        scale_to_unit(np.full((4, 4, 4), 7.0), 7.0, 7.0)


@pytest.mark.parametrize("foreground", [1, 300, 4000])
def test_binary_mask_maps_exactly_to_minus_one_and_one(foreground: int) -> None:
    mask = np.zeros(16**3, np.uint8)
    mask[:foreground] = 255
    lo, hi = intensity_bounds(mask, (0.5, 99.5))
    np.testing.assert_array_equal(np.unique(scale_to_unit(mask, lo, hi)), [-1.0, 1.0])


def test_scale_clips_and_is_linear() -> None:
    scaled = scale_to_unit(np.array([-10.0, 0.0, 5.0, 10.0, 99.0]), 0.0, 10.0)
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled, [-1.0, -1.0, 0.0, 1.0, 1.0])


def test_scale_broadcasts_one_range_per_volume() -> None:
    batch = np.stack([np.linspace(0, 1, 8), np.linspace(0, 100, 8)])
    scaled = scale_to_unit(batch, np.array([[0.0], [0.0]]), np.array([[1.0], [100.0]]))
    np.testing.assert_allclose(scaled[0], scaled[1], atol=1e-6)


def test_unscale_inverts_scale() -> None:
    volume = np.random.default_rng(5).uniform(-300, 1200, size=(6, 7, 8)).astype(np.float32)
    lo, hi = -300.0, 1200.0
    np.testing.assert_allclose(unscale(scale_to_unit(volume, lo, hi), lo, hi), volume, rtol=0, atol=1e-3)
    assert unscale(np.array([-1.0, 1.0]), lo, hi).tolist() == [lo, hi]


# ---------------------------------------------------------------------------- grid affine


def test_grid_affine_is_isotropic_and_centred() -> None:
    affine = grid_affine(16, 1.5)
    np.testing.assert_array_equal(np.diag(affine)[:3], [1.5, 1.5, 1.5])
    np.testing.assert_allclose(affine @ [7.5, 7.5, 7.5, 1.0], [0, 0, 0, 1])
    assert aff2axcodes(affine) == ("R", "A", "S")
    lps = grid_affine(9, 2.0, "LPS")
    assert aff2axcodes(lps) == ("L", "P", "S")
    np.testing.assert_allclose(lps @ [4.0, 4.0, 4.0, 1.0], [0, 0, 0, 1])
