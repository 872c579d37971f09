"""One point of a quality-over-training-time curve: ``volgan evaluate``'s headline metrics, flat.

:func:`curve_metrics` runs :func:`~volgan.evaluation.evaluate.evaluate` without the slow parts
(no TSTR, no memorisation audit) and returns one flat dict per point, each synthetic figure next
to its real-vs-real (``*_ref``) or real (``*_real``) counterpart, so a benchmark can tabulate
and plot many points cheaply. :func:`correlation_diversity` adds a plain voxel-space diversity.

The real-vs-real reference comes from one random half split of the held-out set, and with a few
dozen volumes per half the Fréchet distance between two halves of the *same* data varies by an
order of magnitude from split to split. :func:`reference_spread` measures that spread;
``curve_metrics(..., n_splits=R)`` averages every metric over R splits, so a ratio against the
reference stops depending on which split one seed happened to draw.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from volgan.evaluation import metrics as M
from volgan.evaluation.classifier import VolumeClassifier, extract_features
from volgan.evaluation.evaluate import OVERALL, EvalSettings, Labelled, align_classes, evaluate

# evaluate()'s overall distribution metrics that a curve point keeps, each with its real-vs-real "_ref"
DISTRIBUTION_KEYS = ("fd", "precision", "recall", "density", "coverage", "w1_intensity")


def correlation_diversity(volumes: np.ndarray, labels: np.ndarray, n_pairs: int = 50, seed: int = 0) -> float | None:
    """1 − mean Pearson correlation of the voxels of random same-class pairs, averaged over classes.

    ``volumes`` (N, S, S, S), ``labels`` (N,). 0 means every volume of a class is the same up to
    brightness and contrast; higher is more diverse. A pair with a constant volume counts as
    correlation 1 (it carries no variation). None when no class has two volumes.
    """
    rng = np.random.default_rng(seed)
    per_class = []
    for k in np.unique(labels):
        vols = volumes[labels == k].reshape(int((labels == k).sum()), -1).astype(np.float64)
        n = len(vols)
        if n < 2:
            continue
        pairs = np.array([rng.choice(n, size=2, replace=False) for _ in range(n_pairs)])
        a, b = vols[pairs[:, 0]], vols[pairs[:, 1]]
        a = a - a.mean(1, keepdims=True)
        b = b - b.mean(1, keepdims=True)
        norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        corr = np.where(norm > 0, (a * b).sum(1) / np.where(norm > 0, norm, 1.0), 1.0)
        per_class.append(1.0 - float(corr.mean()))
    return float(np.mean(per_class)) if per_class else None


def reference_spread(
    judge: VolumeClassifier,
    real: Labelled,
    *,
    n_splits: int = 20,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float | int]:
    """The real-vs-real FD of ``n_splits`` class-stratified half splits of ``real`` (split seeds
    ``seed`` … ``seed + n_splits − 1``, the splits :func:`curve_metrics` uses for those seeds), in
    the judge's features: ``median``, ``q10``, ``q90``, ``min``, ``max`` and ``n_splits``.

    A wide spread means one split's reference is a poor yardstick: compare against the median, or
    average metrics over several splits (``curve_metrics(..., n_splits=R)``).
    """
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    features = extract_features(judge, real.volumes, device=device)
    fds = []
    for s in range(seed, seed + n_splits):
        a, b = M.real_vs_real_split(len(real.labels), real.labels, seed=s)
        if min(len(a), len(b)) < 2:
            raise ValueError(f"{real.source}: {len(real.labels)} volumes are too few to split into halves of 2")
        fds.append(M.frechet_distance(features[a], features[b]))
    v = np.asarray(fds)
    out: dict[str, float | int] = {k: float(f(v)) for k, f in (("median", np.median), ("min", np.min), ("max", np.max))}
    out |= {"q10": float(np.quantile(v, 0.1)), "q90": float(np.quantile(v, 0.9)), "n_splits": n_splits}
    return out


def curve_metrics(
    judge: VolumeClassifier,
    judge_meta: dict[str, Any],
    real: Labelled,
    synthetic: Labelled,
    *,
    seed: int = 0,
    n_draws: int = 3,
    n_pairs: int = 50,
    n_splits: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, float | None]:
    """The headline metrics of ``synthetic`` against the held-out ``real`` set, flat:

    ``fd``/``fd_ref``/``fd_ratio`` (FD and its real-vs-real reference), precision, recall, density,
    coverage, ``w1_intensity`` (voxel intensities: sees blur and grey values that a judge's
    features may not; each with ``_ref``), ``ms_ssim``/``ms_ssim_real`` (within-class diversity),
    ``cond_acc``/``cond_acc_real`` (the judge's balanced accuracy) and
    ``diversity``/``diversity_real`` (:func:`correlation_diversity`). None where a metric is
    undefined for these set sizes.

    ``n_splits`` > 1: every metric is the mean over the real-vs-real splits of seeds ``seed`` …
    ``seed + n_splits − 1`` (each with its own synthetic draws), and ``fd_ratio`` is the ratio of
    the two means; ``fd_ref_min``/``fd_ref_max`` are the splits' extreme references.
    """
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    rows = []
    for r in range(n_splits):
        settings = EvalSettings(seed=seed + r, n_draws=n_draws, n_pairs=n_pairs, tstr=False, audit=False, device=device)
        rows.append(_one_split(judge, judge_meta, real, synthetic, settings))
    if n_splits == 1:
        return rows[0]
    out: dict[str, float | None] = {}
    for key in rows[0]:
        values = [v for r in rows if (v := r[key]) is not None]
        out[key] = float(np.mean(values)) if len(values) == n_splits else None
    fd, ref = out["fd"], out["fd_ref"]
    out["fd_ratio"] = fd / ref if fd is not None and ref else None
    refs = [v for r in rows if (v := r["fd_ref"]) is not None]
    out["fd_ref_min"] = min(refs) if refs else None
    out["fd_ref_max"] = max(refs) if refs else None
    return out


def _one_split(
    judge: VolumeClassifier, judge_meta: dict[str, Any], real: Labelled, synthetic: Labelled, settings: EvalSettings
) -> dict[str, float | None]:
    m = evaluate(real, synthetic, judge, judge_meta, settings).metrics
    overall = m["distribution"].get(OVERALL, {"synthetic": {}, "reference": {}})
    out: dict[str, float | None] = {}
    for key in DISTRIBUTION_KEYS:
        out[key] = overall["synthetic"].get(key)
        out[f"{key}_ref"] = overall["reference"].get(key)
    fd, ref = out["fd"], out["fd_ref"]
    out["fd_ratio"] = fd / ref if fd is not None and ref else None
    for flat, section in (("ms_ssim", "diversity_ms_ssim"), ("cond_acc", "conditional_accuracy")):
        out[flat] = m[section][OVERALL]["synthetic"]
        out[f"{flat}_real"] = m[section][OVERALL]["real"]
    aligned = align_classes(real, synthetic)
    out["diversity"] = correlation_diversity(aligned.volumes, aligned.labels, settings.n_pairs, settings.seed)
    out["diversity_real"] = correlation_diversity(real.volumes, real.labels, settings.n_pairs, settings.seed)
    return out
