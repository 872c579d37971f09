"""The procedural head phantoms and the rule-based class check."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import pytest

from volgan.data.phantom import (
    CLASS_NAMES,
    UNRECOGNISED,
    class_consistency,
    make_phantom,
    make_phantom_set,
    predict_class,
)


@pytest.mark.parametrize("size", [16, 32, 48, 64])
def test_set_shapes_dtype_range(size: int) -> None:
    volumes, labels = make_phantom_set(2, size, seed=0)
    assert volumes.shape == (6, size, size, size)
    assert volumes.dtype == np.float32
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
    assert volumes.min() >= -1.0 and volumes.max() <= 1.0
    # Background near -1 in the corner, tissue in the centre.
    assert volumes[:, :2, :2, :2].mean() < -0.85
    assert volumes[:, size // 2, size // 2, size // 2].mean() > -0.9


def test_set_is_deterministic_by_seed() -> None:
    a, la = make_phantom_set(2, 24, seed=3)
    b, lb = make_phantom_set(2, 24, seed=3)
    c, _ = make_phantom_set(2, 24, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_subjects_differ_and_larger_set_extends_smaller() -> None:
    small, _ = make_phantom_set(2, 24, seed=0)
    large, labels = make_phantom_set(3, 24, seed=0)
    assert not np.array_equal(small[0], small[1])
    # Phantom k of class c depends only on (seed, c, k), not on n_per_class.
    for c in range(3):
        np.testing.assert_array_equal(large[labels == c][:2], small[2 * c : 2 * c + 2])


def test_same_generator_state_gives_same_anatomy_at_any_size() -> None:
    small = make_phantom(2, 32, np.random.default_rng(9))
    large = make_phantom(2, 64, np.random.default_rng(9))
    downsampled = large.reshape(32, 2, 32, 2, 32, 2).mean((1, 3, 5))
    assert np.abs(downsampled - small).mean() < 0.05


def test_lesion_is_brighter_than_white_matter_on_a_shared_scale() -> None:
    volumes, labels = make_phantom_set(3, 64, seed=1)
    brightest = volumes.reshape(len(volumes), -1).max(1)
    centre = volumes[:, 24:40, 24:40, 24:40].reshape(len(volumes), -1)
    # Every class reaches similar intensities in the bright scalp, so no class owns a
    # different intensity range; only lesions are that bright inside the skull.
    assert brightest[labels != 1].min() > 0.75
    assert np.percentile(centre[labels == 0], 99) < 0.5


@pytest.mark.parametrize(("size", "min_accuracy"), [(16, 0.95), (32, 0.95), (64, 0.95)])
def test_predict_class_on_fresh_phantoms(size: int, min_accuracy: float) -> None:
    # Measured at seed 123: 1.0 at 16, 32, 48, 64 and 128.
    volumes, labels = make_phantom_set(30 if size < 64 else 10, size, seed=123)
    assert class_consistency(volumes, labels) >= min_accuracy


def test_rules_discriminate_between_classes() -> None:
    volumes, labels = make_phantom_set(10, 32, seed=77)
    assert class_consistency(volumes, labels) == 1.0
    for shift in (1, 2):
        assert class_consistency(volumes, (labels + shift) % 3) < 0.1


def test_class_consistency_accepts_a_channel_axis() -> None:
    volumes, labels = make_phantom_set(2, 16, seed=0)
    assert class_consistency(volumes[:, None], labels) == class_consistency(volumes, labels)


@pytest.mark.parametrize(
    "name",
    ["constant -1", "constant 0", "constant 1", "uniform noise", "gaussian noise", "dark noise"],
)
def test_non_head_volumes_are_unrecognised(name: str) -> None:
    rng = np.random.default_rng(0)
    shape = (32, 32, 32)
    volume = {
        "constant -1": np.full(shape, -1.0),
        "constant 0": np.zeros(shape),
        "constant 1": np.ones(shape),
        "uniform noise": rng.uniform(-1, 1, shape),
        "gaussian noise": np.clip(rng.normal(0.0, 0.5, shape), -1, 1),
        "dark noise": np.clip(rng.normal(-0.9, 0.3, shape), -1, 1),
    }[name]
    assert predict_class(volume) == UNRECOGNISED
    assert class_consistency(volume[None], np.array([0])) == 0.0


def test_predict_class_tolerates_generator_like_artefacts() -> None:
    rng = np.random.default_rng(0)
    volumes, labels = make_phantom_set(10, 32, seed=11)
    noisy = np.clip(volumes + rng.normal(0.0, 0.15, volumes.shape), -1, 1)
    coarse = volumes.reshape(-1, 16, 2, 16, 2, 16, 2).mean((2, 4, 6)).repeat(2, 1).repeat(2, 2).repeat(2, 3)
    assert class_consistency(noisy, labels) >= 0.95
    assert class_consistency(coarse, labels) >= 0.95


def _python_calls(fn: Callable[[], object]) -> int:
    """Python and C function calls made by ``fn()`` (a work count that does not depend on the machine's load)."""
    count = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal count
        count += event in ("call", "c_call")

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize("label", [0, 1, 2])
def test_generation_is_vectorised(label: int) -> None:
    """The work in Python is the same at every grid size: voxels are only touched by array operations."""
    calls = {size: _python_calls(lambda s=size: make_phantom(label, s, np.random.default_rng(3))) for size in (16, 64)}
    assert calls[64] <= calls[16] + 16, calls  # 64x the voxels, no more interpreted work
    assert calls[64] < 10_000, calls  # seen: 256 (healthy, atrophy) and 2548 (lesion placement) calls


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_phantom(3, 32, np.random.default_rng()), r"label must be one of 0\.\.2 .*got 3"),
        (lambda: make_phantom(0, 4, np.random.default_rng()), "phantom size must be >= 8, got 4"),
        (lambda: make_phantom_set(0, 32), "n_per_class must be >= 1, got 0"),
        (lambda: predict_class(np.zeros((32, 32))), r"expected a \(D, H, W\) volume .*got shape \(32, 32\)"),
        (lambda: class_consistency(np.zeros((2, 16, 16, 16)), np.zeros(3)), "one label per volume"),
    ],
)
def test_errors_name_the_bad_value(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_class_names() -> None:
    assert CLASS_NAMES == ("healthy", "lesion", "atrophy")
