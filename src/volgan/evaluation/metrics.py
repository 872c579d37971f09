"""Distribution metrics for generated volumes: pure functions over numpy arrays, float64 inside.

Conventions: volumes are ``(N, S, S, S)`` arrays in [-1, 1] with S >= 8; features are ``(N, F)``
arrays (e.g. pooled classifier features). Every function returns plain Python floats (or a numpy
array for per-pair values) and raises :class:`~volgan.errors.MetricError` on unusable input.

The field's reference code does the work where it exists: MONAI for the Fréchet distance, the
linear-kernel voxel MMD and MS-SSIM; ``prdc`` (Naeem et al. 2020) for precision, recall, density
and coverage; SciPy for the Wasserstein distance. Only the Gaussian-kernel MMD is written here.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from typing import cast

import numpy as np
import torch

from volgan.errors import MetricError

MIN_SIZE = 8
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Wang et al. (2003) scale weights, finest first; MONAI's default for 5 scales."""


# -- input checks ------------------------------------------------------------------------------


def _features(x: np.ndarray, what: str, min_samples: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise MetricError(f"{what} features must be a 2-D (N, F) array, got shape {x.shape}")
    if x.shape[0] < min_samples:
        raise MetricError(f"{what} features need at least {min_samples} samples, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise MetricError(f"{what} features contain NaN or inf; expected finite values")
    return x


def _feature_pair(real: np.ndarray, fake: np.ndarray, min_samples: int = 2) -> tuple[np.ndarray, np.ndarray]:
    real, fake = _features(real, "real", min_samples), _features(fake, "fake", min_samples)
    if real.shape[1] != fake.shape[1]:
        raise MetricError(
            f"real and fake features must have the same dimension, got {real.shape[1]} and {fake.shape[1]}"
        )
    return real, fake


def _volumes(v: np.ndarray, what: str, min_samples: int = 1) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    if v.ndim != 4 or not v.shape[1] == v.shape[2] == v.shape[3]:
        raise MetricError(f"{what} volumes must be an (N, S, S, S) array, got shape {v.shape}")
    if v.shape[1] < MIN_SIZE:
        raise MetricError(f"{what} volumes must be at least {MIN_SIZE}³, got {v.shape[1]}³")
    if v.shape[0] < min_samples:
        raise MetricError(f"{what} volumes need at least {min_samples} samples, got {v.shape[0]}")
    if not np.isfinite(v).all():
        raise MetricError(f"{what} volumes contain NaN or inf; expected finite values in [-1, 1]")
    return v


def _same_grid(real: np.ndarray, fake: np.ndarray) -> None:
    if real.shape[1:] != fake.shape[1:]:
        raise MetricError(f"real and fake volumes must share one grid, got {real.shape[1:]} and {fake.shape[1:]}")


# -- feature metrics ---------------------------------------------------------------------------


def frechet_distance(real_feats: np.ndarray, fake_feats: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to (N, F) and (M, F) features (MONAI, float64).

    ``‖μr − μf‖² + Tr(Σr + Σf − 2(Σr Σf)^½)``; needs >= 2 samples per set, and more samples
    than features for a well-conditioned estimate.
    """
    from monai.metrics.fid import get_fid_score
    from scipy.linalg import LinAlgWarning

    real, fake = _feature_pair(real_feats, fake_feats)
    try:
        # MONAI passes scipy's deprecated ``disp`` argument and prints (and scipy warns) when it
        # regularises a singular product, as with fewer samples than feature dims or a collapsed
        # set; none of that is actionable for the caller.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=LinAlgWarning)
            warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)
            value = float(get_fid_score(torch.from_numpy(fake), torch.from_numpy(real)))
    except ValueError as e:
        raise MetricError(
            f"Fréchet distance is numerically unstable ({e}); use more samples than the "
            f"{real.shape[1]} feature dims (got {real.shape[0]} real, {fake.shape[0]} fake)"
        ) from None
    if not np.isfinite(value):
        raise MetricError(f"Fréchet distance is not finite; check the features (got {real.shape}, {fake.shape})")
    # Rounding leaves values like -1e-12 for identical sets; a squared distance is never negative.
    return max(value, 0.0)


def prdc(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of (M, F) fake features against (N, F) real ones.

    k-nearest-neighbour manifold estimates via the ``prdc`` reference code (Naeem et al. 2020).
    Returns ``{"precision", "recall", "density", "coverage"}``; density may exceed 1.
    Needs at least k + 2 samples per set (the reference code's neighbour search requires it).
    """
    from prdc import compute_prdc

    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise MetricError(f"k must be an integer >= 1, got {k!r}")
    real, fake = _feature_pair(real_feats, fake_feats)
    if min(len(real), len(fake)) < k + 2:
        raise MetricError(
            f"prdc with k={k} needs at least {k + 2} samples per set (k + 2), "
            f"got {len(real)} real and {len(fake)} fake; lower k or add samples"
        )
    with contextlib.redirect_stdout(io.StringIO()):  # the reference code prints the set sizes
        result = compute_prdc(real_features=real, fake_features=fake, nearest_k=int(k))
    return {name: float(result[name]) for name in ("precision", "recall", "density", "coverage")}


def _sq_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.maximum(d, 0.0)  # cancellation can leave tiny negatives for (near-)equal rows


def mmd_gaussian(real_feats: np.ndarray, fake_feats: np.ndarray, bandwidth: float | None = None) -> tuple[float, float]:
    """Unbiased MMD² between (N, F) and (M, F) features with a Gaussian kernel; returns (mmd2, sigma).

    Kernel ``exp(-‖x − y‖² / (2σ²))``; ``σ = bandwidth`` or, when None, the median of all pairwise
    distances in the pooled set (diagonal excluded). The unbiased estimator drops the i = j terms,
    so it can be slightly negative: for two identical sets of n rows it equals
    ``(2/n)(mean off-diagonal k − 1)``, within ``[-2/n, 0]``. Memory is O((N + M)²).
    """
    real, fake = _feature_pair(real_feats, fake_feats)
    d_rr, d_ff, d_rf = _sq_distances(real, real), _sq_distances(fake, fake), _sq_distances(real, fake)
    if bandwidth is None:
        pooled = np.concatenate([real, fake])
        upper = np.triu_indices(len(pooled), k=1)
        sigma = float(np.median(np.sqrt(_sq_distances(pooled, pooled)[upper])))
        if sigma == 0.0:
            raise MetricError("median pairwise distance is 0 (most feature rows are equal); pass bandwidth > 0")
    else:
        sigma = float(bandwidth)
        if not (np.isfinite(sigma) and sigma > 0):
            raise MetricError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")
    gamma = 1.0 / (2.0 * sigma**2)
    n, m = len(real), len(fake)
    k_rr, k_ff, k_rf = np.exp(-gamma * d_rr), np.exp(-gamma * d_ff), np.exp(-gamma * d_rf)
    within_r = (k_rr.sum() - np.trace(k_rr)) / (n * (n - 1))
    within_f = (k_ff.sum() - np.trace(k_ff)) / (m * (m - 1))
    return float(within_r + within_f - 2.0 * k_rf.mean()), sigma


# -- voxel metrics -----------------------------------------------------------------------------


def mmd_linear_voxels(
    real_vols: np.ndarray, fake_vols: np.ndarray, max_samples: int | None = None, seed: int = 0
) -> float:
    """Unbiased linear-kernel MMD² between (N, S, S, S) and (M, S, S, S) volumes (MONAI ``MMDMetric``).

    The voxel-space MMD that 3dbraingen reports: an unbiased estimate of ‖mean_real − mean_fake‖²
    over raw voxels, so it scales with S³ and is only comparable at one size. MONAI needs equal
    counts, so both sets are subsampled (seeded, without replacement) to
    ``min(N, M, max_samples)`` >= 2 volumes. For one set against itself it equals
    ``-(2/n) · Σ_voxels var`` (unbiasedness), not 0. Computed in float64.
    """
    from monai.metrics import MMDMetric

    real, fake = _volumes(real_vols, "real", 2), _volumes(fake_vols, "fake", 2)
    _same_grid(real, fake)
    if max_samples is not None and max_samples < 2:
        raise MetricError(f"max_samples must be >= 2 (or None), got {max_samples}")
    count = min(len(real), len(fake), max_samples or len(real))
    rng = np.random.default_rng(seed)
    picked = []
    for v in (real, fake):
        idx = np.sort(rng.choice(len(v), size=count, replace=False)) if len(v) > count else np.arange(len(v))
        picked.append(torch.from_numpy(v[idx].astype(np.float64))[:, None])
    with torch.no_grad():
        return float(MMDMetric()(picked[0], picked[1]))


def ms_ssim_settings(size: int) -> tuple[int, tuple[float, ...]]:
    """MS-SSIM ``(kernel_size, weights)`` for S³ volumes: as many scales as MONAI accepts, up to 5.

    MONAI's defaults (kernel 11, 5 scales) need S >= 176. Here the kernel is 5 and the number of
    scales n is the largest that fits, with the standard weights truncated to n and renormalised
    to sum to 1. Kernel 3 is used only when kernel 5 cannot give a multi-scale (n >= 2) measure,
    i.e. S = 8, 9. A setting fits when MONAI's own size check passes
    (``S // max(1, n − 1)² > kernel − 1``) and the coarsest scale, ``S // 2^(n−1)``, is still at
    least one kernel wide (MONAI's check misses this at n = 2, where the convolution then fails).
    Checked by running MONAI 1.6 for every S in 8..176 (one scale more fails at each):

    ====================  ======  ======
    S                     kernel  scales
    ====================  ======  ======
    8-9                   3       2
    10-19 (16)            5       2
    20-44 (32)            5       3
    45-79 (64)            5       4
    >= 80 (128)           5       5
    ====================  ======  ======
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < MIN_SIZE:
        raise MetricError(f"MS-SSIM needs volumes of at least {MIN_SIZE}³, got size {size}")

    def scales(kernel: int) -> int:
        fits = [
            n
            for n in range(1, len(MS_SSIM_WEIGHTS) + 1)
            if size // max(1, n - 1) ** 2 > kernel - 1 and size // 2 ** (n - 1) >= kernel
        ]
        return max(fits, default=0)

    kernel = 5 if scales(5) >= 2 else 3
    n = scales(kernel)
    total = sum(MS_SSIM_WEIGHTS[:n])
    return kernel, tuple(w / total for w in MS_SSIM_WEIGHTS[:n])


def ms_ssim(a: np.ndarray, b: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """MS-SSIM of each pair (a[i], b[i]) of two (N, S, S, S) stacks in [-1, 1] -> (N,) float64.

    MONAI ``MultiScaleSSIMMetric`` with ``data_range=2`` and :func:`ms_ssim_settings`; 1 means
    identical. Computed ``batch_size`` pairs at a time to bound memory.
    """
    from monai.metrics import MultiScaleSSIMMetric

    a, b = _volumes(a, "first"), _volumes(b, "second")
    if a.shape != b.shape:
        raise MetricError(f"MS-SSIM compares equal-length stacks on one grid, got shapes {a.shape} and {b.shape}")
    kernel, weights = ms_ssim_settings(a.shape[1])
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=2.0, kernel_size=kernel, weights=weights, reduction="none")
    out = []
    with torch.no_grad():
        for start in range(0, len(a), batch_size):
            x = torch.from_numpy(a[start : start + batch_size])[:, None]
            y = torch.from_numpy(b[start : start + batch_size])[:, None]
            values = cast(torch.Tensor, metric(y_pred=x, y=y))  # (B, 1); MONAI's hint is wider
            out.append(values.reshape(-1).double().numpy())
    return np.concatenate(out)


def ms_ssim_within(vols: np.ndarray, n_pairs: int = 50, seed: int = 0) -> float:
    """Mean MS-SSIM over up to ``n_pairs`` random distinct pairs (i < j) of one (N, S, S, S) set.

    A diversity measure: near 1 for a collapsed set, lower for a more diverse one. Uses every
    pair when there are at most ``n_pairs``; otherwise a seeded sample without repeats.
    """
    vols = _volumes(vols, "input", 2)
    if n_pairs < 1:
        raise MetricError(f"n_pairs must be >= 1, got {n_pairs}")
    n = len(vols)
    if n * (n - 1) // 2 <= n_pairs:
        first, second = np.triu_indices(n, k=1)
    else:
        rng, chosen = np.random.default_rng(seed), set[tuple[int, int]]()
        while len(chosen) < n_pairs:
            i, j = sorted(int(k) for k in rng.choice(n, size=2, replace=False))
            chosen.add((i, j))
        first, second = np.array(sorted(chosen)).T
    return float(ms_ssim(vols[first], vols[second]).mean())


def wasserstein_intensity(
    real_vols: np.ndarray, fake_vols: np.ndarray, max_voxels: int = 200_000, seed: int = 0
) -> float:
    """Wasserstein-1 distance between the voxel-intensity distributions of two (N, S, S, S) sets.

    SciPy ``wasserstein_distance``; a set with more than ``max_voxels`` voxels is replaced by a
    seeded sample of that many (without replacement; the same positions for sets of equal size,
    so a constant shift c gives exactly c).
    """
    from scipy.stats import wasserstein_distance

    real, fake = _volumes(real_vols, "real").reshape(-1), _volumes(fake_vols, "fake").reshape(-1)
    if max_voxels < 1:
        raise MetricError(f"max_voxels must be >= 1, got {max_voxels}")

    def sample(v: np.ndarray) -> np.ndarray:
        if v.size <= max_voxels:
            return v
        return v[np.random.default_rng(seed).choice(v.size, size=max_voxels, replace=False)]

    return float(wasserstein_distance(sample(real).astype(np.float64), sample(fake).astype(np.float64)))


def intensity_stats(vols: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation over all voxels of an (N, S, S, S) set -> {"mean", "std"}."""
    v = _volumes(vols, "input")
    return {"mean": float(v.mean(dtype=np.float64)), "std": float(v.std(dtype=np.float64))}


# -- uncertainty and references ----------------------------------------------------------------


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    real: np.ndarray,
    fake: np.ndarray,
    n_boot: int = 100,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile (1 − alpha) bootstrap interval of ``metric(real, fake)``; resamples both sets' rows.

    Each of ``n_boot`` rounds draws len(real) rows of ``real`` and len(fake) rows of ``fake`` with
    replacement. Metrics biased by repeated rows (Fréchet distance, prdc with small sets) shift
    the interval; report it next to the point estimate, not instead of it.
    """
    if n_boot < 2:
        raise MetricError(f"n_boot must be >= 2, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise MetricError(f"alpha must be in (0, 1), got {alpha}")
    if len(real) < 1 or len(fake) < 1:
        raise MetricError(f"bootstrap needs non-empty sets, got {len(real)} real and {len(fake)} fake")
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            metric(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))])
            for _ in range(n_boot)
        ],
        dtype=np.float64,
    )
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def real_vs_real_split(n: int, labels: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, sorted index halves covering ``range(n)``; each class halved when labels (n,) given.

    Metrics between the halves of the real set are the "perfect generator" reference values.
    Odd-sized classes give their extra index to whichever half is smaller so far.
    """
    if n < 2:
        raise MetricError(f"a real-vs-real split needs at least 2 samples, got {n}")
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n)
        return np.sort(order[: n // 2]), np.sort(order[n // 2 :])
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise MetricError(f"labels must have shape ({n},), got {labels.shape}")
    halves: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    sizes = [0, 0]
    classes, counts = np.unique(labels, return_counts=True)
    for cls, count in zip(classes, counts, strict=True):
        if count < 2:
            raise MetricError(f"class {cls} has {count} sample; a stratified split needs >= 2 per class")
        members = rng.permutation(np.flatnonzero(labels == cls))
        cut = count // 2 + (count % 2 if sizes[0] < sizes[1] else 0)
        for h, part in enumerate((members[:cut], members[cut:])):
            halves[h].append(part)
            sizes[h] += len(part)
    return np.sort(np.concatenate(halves[0])), np.sort(np.concatenate(halves[1]))
