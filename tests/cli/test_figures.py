"""Figures: mid-slices, TensorBoard montages, sample grids and loss curves."""

from __future__ import annotations

import gc
import math
import sys
import warnings
from pathlib import Path

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest

from volgan.data.phantom import CLASS_NAMES, make_phantom_set
from volgan.figures import mid_slices, save_loss_curves, save_sample_grid, slice_montage


def _png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


def test_mid_slices_of_a_non_cubic_volume() -> None:
    d, h, w = 10, 12, 14
    volume = np.arange(d * h * w, dtype=np.float32).reshape(d, h, w)
    axial, coronal, sagittal = mid_slices(volume)
    assert axial.shape == (h, d)
    assert coronal.shape == (w, d)
    assert sagittal.shape == (w, h)
    # Superior (last index of axis 2) at the top of coronal and sagittal views, anterior at
    # the top of the axial view, and the left-right axis running left to right.
    np.testing.assert_array_equal(coronal[0], volume[:, h // 2, w - 1])
    np.testing.assert_array_equal(sagittal[-1], volume[d // 2, :, 0])
    np.testing.assert_array_equal(axial[0], volume[:, h - 1, w // 2])


def test_mid_slices_rejects_a_2d_array() -> None:
    with pytest.raises(ValueError, match=r"expected a \(D, H, W\) volume, got shape \(4, 4\)"):
        mid_slices(np.zeros((4, 4)))


@pytest.mark.parametrize(("shape", "expected"), [((3, 16, 16, 16), (52, 52)), ((2, 1, 8, 10, 12), (26, 30))])
def test_montage_shape_dtype_and_range(shape: tuple[int, ...], expected: tuple[int, int]) -> None:
    volumes = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    image = slice_montage(volumes)
    assert image.shape == expected
    assert image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_montage_clips_values_outside_the_range() -> None:
    volumes = np.full((1, 8, 8, 8), 5.0)
    volumes[0, :, :, :4] = -7.0
    image = slice_montage(volumes, value_range=(-1.0, 1.0))
    assert np.isfinite(image).all()
    assert image.min() == 0.0 and image.max() == 1.0


@pytest.mark.parametrize(
    ("volumes", "value_range", "match"),
    [
        (np.zeros((8, 8, 8)), (-1.0, 1.0), r"volumes must be \(n, D, H, W\)"),
        (np.zeros((0, 8, 8, 8)), (-1.0, 1.0), "with n >= 1"),
        (np.zeros((1, 8, 8, 8)), (1.0, 1.0), r"value_range must be \(low, high\) with high > low"),
    ],
)
def test_montage_errors(volumes: np.ndarray, value_range: tuple[float, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        slice_montage(volumes, value_range)


def test_sample_grid_of_phantoms(tmp_path: Path) -> None:
    volumes, labels = make_phantom_set(4, 32, seed=0)
    by_class = {name: volumes[labels == i] for i, name in enumerate(CLASS_NAMES)}
    path = save_sample_grid(by_class, tmp_path / "sub" / "grid.png", title="phantoms")
    image = _png(path)
    height, width = image.shape[:2]
    assert 300 <= height <= 700 and 900 <= width <= 1600
    assert image[..., :3].std() > 0.1  # not a blank canvas


def test_sample_grid_with_uneven_classes_and_out_of_range_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    by_class = {"a": rng.normal(0, 5, (3, 1, 12, 12, 12)), "b": rng.normal(0, 5, (1, 12, 12, 12))}
    image = _png(save_sample_grid(by_class, tmp_path / "grid.png"))
    assert image.shape[0] > 100 and image.shape[1] > 500


def test_a_class_name_the_font_cannot_draw_gives_a_figure_without_warnings(tmp_path: Path) -> None:
    """Folder names are the user's: a control or private-use character is drawn as a box, quietly."""
    rng = np.random.default_rng(0)
    by_class = {"ok\x7f\U000bfc40": rng.uniform(-1, 1, (2, 12, 12, 12)), "b": rng.uniform(-1, 1, (2, 12, 12, 12))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = _png(save_sample_grid(by_class, tmp_path / "grid.png", title="run \x19"))
    assert image.shape[0] > 100


def test_sample_grid_rejects_no_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="volumes_by_class is empty"):
        save_sample_grid({}, tmp_path / "grid.png")


def _records(n: int) -> list[dict[str, float]]:
    return [
        {
            "step": 10 * i,
            "loss_d": -1.0 / (i + 1),
            "loss_g": 0.5,
            "gp": 0.03,
            "w_dist": 1.5,
            "sec_per_step": 0.8,
        }
        for i in range(n)
    ]


def test_loss_curves(tmp_path: Path) -> None:
    image = _png(save_loss_curves(_records(200), tmp_path / "loss.png"))
    height, width = image.shape[:2]
    assert 500 <= height <= 900 and 1000 <= width <= 1400  # 2 x 2 panels


def test_loss_curves_with_missing_keys_and_a_single_record(tmp_path: Path) -> None:
    records = [{"step": 1, "loss_d": 0.2}, {"step": 2, "gp": None}, {"step": 3, "loss_d": math.nan}]
    image = _png(save_loss_curves(records, tmp_path / "one.png"))
    height, width = image.shape[:2]
    assert 300 <= height <= 500 and 500 <= width <= 700  # one panel
    _png(save_loss_curves(_records(1), tmp_path / "single.png"))


def test_loss_curves_without_any_key_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no record holds 'step' and a finite value for any of \['gp'\]"):
        save_loss_curves([{"step": 1, "loss_d": 0.2}], tmp_path / "x.png", keys=("gp",))


def test_figures_leave_pyplot_state_alone(tmp_path: Path) -> None:
    backend = matplotlib.get_backend()
    for i in range(3):
        save_loss_curves(_records(20), tmp_path / f"loss_{i}.png")
        save_sample_grid({"x": np.zeros((1, 8, 8, 8))}, tmp_path / f"grid_{i}.png")
    gc.collect()
    assert matplotlib.get_backend() == backend
    if "matplotlib.pyplot" in sys.modules:  # no figure was registered with pyplot
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
