"""Evaluation metrics: closed-form values, known orderings, and one-line errors on bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from monai.metrics import MultiScaleSSIMMetric
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import pdist

from volgan.errors import MetricError, VolganError
from volgan.evaluation.metrics import (
    MS_SSIM_WEIGHTS,
    bootstrap_ci,
    frechet_distance,
    intensity_stats,
    mmd_gaussian,
    mmd_linear_voxels,
    ms_ssim,
    ms_ssim_settings,
    ms_ssim_within,
    prdc,
    real_vs_real_split,
    wasserstein_intensity,
)


def smooth_volumes(n: int, size: int, seed: int) -> np.ndarray:
    """Independent smoothed-noise volumes (n, size, size, size), each scaled to span [-1, 1]."""
    noise = np.random.default_rng(seed).normal(size=(n, size, size, size))
    v = gaussian_filter(noise, sigma=(0, 2, 2, 2))
    return (v / np.abs(v).max(axis=(1, 2, 3), keepdims=True)).astype(np.float32)


# -- Fréchet distance --------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    feats = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_the_gaussian_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu1, sd1 = np.zeros(4), np.array([1.0, 1.0, 1.0, 1.0])
    mu2, sd2 = np.array([1.0, -1.0, 0.5, 0.0]), np.array([2.0, 1.0, 0.5, 1.0])
    n = 20_000
    x, y = mu1 + sd1 * rng.normal(size=(n, 4)), mu2 + sd2 * rng.normal(size=(n, 4))
    # Diagonal covariances: Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) = Σ (σ1ᵢ − σ2ᵢ)², so the distance is 3.5.
    expected = float(np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2))
    # Sampling error at n = 20k: sd ≈ 0.034 over 40 seeds, so 0.15 is > 4 standard errors.
    assert frechet_distance(x, y) == pytest.approx(expected, abs=0.15)


# -- MS-SSIM -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_ms_ssim_of_a_volume_with_itself_is_one(size: int) -> None:
    v = smooth_volumes(2, size, seed=0)
    same = ms_ssim(v, v)
    assert same.shape == (2,)
    np.testing.assert_allclose(same, 1.0, atol=1e-5)
    assert ms_ssim(v[:1], v[1:])[0] < 0.5  # independent volumes are far from identical


@pytest.mark.parametrize(("size", "kernel", "scales"), [(8, 3, 2), (16, 5, 2), (32, 5, 3), (64, 5, 4), (128, 5, 5)])
def test_ms_ssim_settings_use_the_most_scales_monai_accepts(size: int, kernel: int, scales: int) -> None:
    got_kernel, weights = ms_ssim_settings(size)
    assert (got_kernel, len(weights)) == (kernel, scales)
    assert sum(weights) == pytest.approx(1.0)
    np.testing.assert_allclose(np.array(weights) / weights[0], np.array(MS_SSIM_WEIGHTS[:scales]) / MS_SSIM_WEIGHTS[0])

    v = torch.from_numpy(smooth_volumes(1, size, seed=1))[:, None]
    kwargs = {"spatial_dims": 3, "data_range": 2.0, "kernel_size": kernel, "reduction": "none"}
    assert MultiScaleSSIMMetric(weights=weights, **kwargs)(v, v).item() == pytest.approx(1.0, abs=1e-5)
    if scales < len(MS_SSIM_WEIGHTS):  # one scale more is rejected (size check) or fails (conv)
        with pytest.raises((ValueError, RuntimeError)):
            MultiScaleSSIMMetric(weights=MS_SSIM_WEIGHTS[: scales + 1], **kwargs)(v, v)


def test_ms_ssim_within_is_near_one_for_a_collapsed_set_and_lower_for_a_diverse_one() -> None:
    diverse = smooth_volumes(6, 16, seed=2)
    noise = 1e-3 * np.random.default_rng(3).normal(size=diverse.shape)
    collapsed = np.clip(diverse[:1] + noise, -1, 1).astype(np.float32)
    assert ms_ssim_within(collapsed) > 0.99
    assert ms_ssim_within(diverse) < 0.5
    # 15 pairs exist: n_pairs=5 samples 5 of them, seeded.
    assert ms_ssim_within(diverse, n_pairs=5, seed=1) == ms_ssim_within(diverse, n_pairs=5, seed=1) < 0.5


# -- MMD ---------------------------------------------------------------------------------------


def test_mmd_gaussian_matches_a_hand_computed_value() -> None:
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    # within x: k(0,1) = e^-1/2; within y: k(0,2) = e^-2; cross mean: (1 + e^-2 + 2 e^-1/2) / 4.
    expected = math.exp(-0.5) + math.exp(-2) - (1 + math.exp(-2) + 2 * math.exp(-0.5)) / 2
    mmd2, sigma = mmd_gaussian(x, y, bandwidth=1.0)
    assert (mmd2, sigma) == (pytest.approx(expected, abs=1e-12), 1.0)


def test_mmd_gaussian_is_near_zero_for_identical_sets_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    mmd2, sigma = mmd_gaussian(real, real)
    assert -2 / len(real) <= mmd2 <= 0.0  # unbiased estimator on identical sets: (2/n)(mean k − 1)
    assert sigma == pytest.approx(np.median(pdist(np.concatenate([real, real]))))
    values = [mmd_gaussian(real, real + shift)[0] for shift in (0.25, 0.5, 1.0, 2.0)]
    assert values[0] > 0.01
    assert values == sorted(values) and len(set(values)) == len(values)


def test_mmd_linear_voxels_matches_its_closed_form() -> None:
    real = smooth_volumes(20, 8, seed=4)
    n, voxels = len(real), real[0].size
    total_var = real.reshape(n, -1).astype(np.float64).var(axis=0, ddof=1).sum()
    # Unbiased linear MMD² of X against X + c is c²·S³ − (2/n)·Σ var: slightly negative for c = 0.
    same, shifted = mmd_linear_voxels(real, real), mmd_linear_voxels(real, real + 0.5)
    assert same == pytest.approx(-2 / n * total_var, rel=1e-9)
    assert shifted == pytest.approx(0.25 * voxels - 2 / n * total_var, rel=1e-9)
    assert abs(same) < 0.1 * shifted


def test_mmd_linear_voxels_subsamples_to_equal_counts_deterministically() -> None:
    real, fake = smooth_volumes(9, 8, seed=5), smooth_volumes(5, 8, seed=6)
    value = mmd_linear_voxels(real, fake, seed=1)
    assert value == mmd_linear_voxels(real, fake, seed=1)
    assert value != mmd_linear_voxels(real, fake, seed=2)  # different 5 of the 9 real volumes
    assert math.isfinite(mmd_linear_voxels(real, fake, max_samples=3))


# -- precision / recall / density / coverage ---------------------------------------------------


def test_prdc_flags_a_collapsed_set_and_accepts_a_faithful_one() -> None:
    rng = np.random.default_rng(0)
    real, faithful = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    collapsed = real[0] + 1e-3 * rng.normal(size=(400, 8))
    bad, good = prdc(real, collapsed, k=5), prdc(real, faithful, k=5)
    assert set(bad) == {"precision", "recall", "density", "coverage"}
    assert bad["recall"] < 0.2 and bad["coverage"] < 0.2
    assert bad["precision"] > 0.9  # every collapsed sample sits on the real manifold
    assert good["recall"] > 0.6 and good["coverage"] > 0.6


# -- intensities -------------------------------------------------------------------------------


@pytest.mark.parametrize("max_voxels", [200_000, 1000])  # whole sets, and a seeded subsample
def test_wasserstein_is_zero_for_identical_sets_and_equals_a_constant_shift(max_voxels: int) -> None:
    real = smooth_volumes(4, 16, seed=7)
    assert wasserstein_intensity(real, real, max_voxels=max_voxels) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein_intensity(real, real - 0.3, max_voxels=max_voxels) == pytest.approx(0.3, abs=1e-6)


def test_intensity_stats_are_over_all_voxels() -> None:
    v = smooth_volumes(3, 8, seed=8)
    stats = intensity_stats(v)
    assert stats == {"mean": pytest.approx(float(v.mean())), "std": pytest.approx(float(v.std()))}


# -- bootstrap and reference splits ------------------------------------------------------------


def test_bootstrap_ci_brackets_the_point_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(200, 2)), rng.normal(loc=1.0, size=(200, 2))
    lo, hi = bootstrap_ci(frechet_distance, real, fake, n_boot=50, seed=3)
    assert lo < frechet_distance(real, fake) < hi
    assert (lo, hi) == bootstrap_ci(frechet_distance, real, fake, n_boot=50, seed=3)


def test_real_vs_real_split_without_labels_halves_the_set() -> None:
    a, b = real_vs_real_split(11, seed=0)
    assert set(a).isdisjoint(b) and sorted([*a, *b]) == list(range(11))
    assert sorted([len(a), len(b)]) == [5, 6]


def test_real_vs_real_split_halves_each_class() -> None:
    labels = np.array([0] * 7 + [1] * 4 + [2] * 5)
    a, b = real_vs_real_split(len(labels), labels=labels, seed=1)
    assert set(a).isdisjoint(b) and sorted([*a, *b]) == list(range(len(labels)))
    for cls in (0, 1, 2):
        assert abs(int(np.sum(labels[a] == cls)) - int(np.sum(labels[b] == cls))) <= 1
    assert abs(len(a) - len(b)) <= 1  # odd classes send their extra sample to alternate halves


# -- errors ------------------------------------------------------------------------------------

_F = np.random.default_rng(0).normal(size=(20, 4))
_V = np.zeros((3, 8, 8, 8), dtype=np.float32)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: frechet_distance(_F[:1], _F), r"real features need at least 2 samples, got 1"),
        (lambda: frechet_distance(_F, _F[:, :3]), r"same dimension, got 4 and 3"),
        (lambda: frechet_distance(_F, np.where(_F > 1, np.nan, _F)), r"fake features contain NaN"),
        (lambda: frechet_distance(_F[0], _F), r"2-D \(N, F\) array, got shape \(4,\)"),
        (lambda: mmd_gaussian(_F, _F[:1]), r"fake features need at least 2 samples, got 1"),
        (lambda: mmd_gaussian(_F, _F, bandwidth=0.0), r"bandwidth must be a finite number > 0, got 0.0"),
        (lambda: prdc(_F, _F[:6], k=5), r"k=5 needs at least 7 samples per set \(k \+ 2\), got 20 real and 6 fake"),
        (lambda: prdc(_F, _F, k=0), r"k must be an integer >= 1, got 0"),
        (lambda: mmd_linear_voxels(_V[:1], _V), r"real volumes need at least 2 samples, got 1"),
        (lambda: mmd_linear_voxels(_V, np.zeros((3, 9, 9, 9))), r"share one grid"),
        (lambda: ms_ssim(_V, _V[:2]), r"equal-length stacks"),
        (lambda: ms_ssim_within(_V[:1]), r"input volumes need at least 2 samples, got 1"),
        (lambda: ms_ssim_settings(4), r"at least 8³, got size 4"),
        (lambda: wasserstein_intensity(_V, np.zeros((3, 8, 8))), r"\(N, S, S, S\) array, got shape \(3, 8, 8\)"),
        (lambda: intensity_stats(np.full((2, 8, 8, 8), np.nan)), r"input volumes contain NaN"),
        (lambda: bootstrap_ci(frechet_distance, _F, _F, alpha=1.5), r"alpha must be in \(0, 1\), got 1.5"),
        (lambda: real_vs_real_split(1), r"at least 2 samples, got 1"),
        (lambda: real_vs_real_split(3, labels=np.array([0, 0, 1])), r"class 1 has 1 sample"),
        (lambda: real_vs_real_split(3, labels=np.array([0, 1])), r"labels must have shape \(3,\), got \(2,\)"),
    ],
)
def test_bad_inputs_raise_one_line_metric_errors(call: Callable[[], object], match: str) -> None:
    with pytest.raises(MetricError, match=match) as info:
        call()
    assert isinstance(info.value, VolganError)
    assert "\n" not in str(info.value)
