"""``volgan evaluate``: how faithful, diverse and useful a synthetic set is, next to real-vs-real.

The plan, top to bottom (:func:`evaluate`):

1. The real test set is split into two class-stratified halves, A and B. B stands in for a
   *perfect generator*: every distribution metric is computed for (A, B) and for (A, synthetic),
   the synthetic set subsampled to B's size per class, so both rows carry the same small-sample
   bias. The synthetic row is the mean over ``n_draws`` subsamples; their min/max is its spread.
2. Features come from the real-trained judge classifier (or a user's TorchScript network).
   Fréchet distance, precision/recall/density/coverage and a Gaussian MMD (bandwidth fixed once
   from the real features, so the two rows are comparable) use them; the linear voxel MMD and
   the Wasserstein-1 intensity distance use voxels.
3. Diversity: MS-SSIM within each class, synthetic vs real.
4. Conditional accuracy: the judge's accuracy on synthetic volumes of each class, next to its
   accuracy on the real test volumes.
5. Usefulness: TSTR (a classifier trained on synthetic only, tested on real) against TRTR (the
   same recipe trained on real training data), and real + synthetic against real alone.
6. Structure no network shapes: speckle and holes per class at the real set's Otsu level, and with
   real training data, FD in a PCA space of pooled voxels fitted on it (:mod:`.structure`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from volgan.errors import VolganError
from volgan.evaluation import metrics as M
from volgan.evaluation.classifier import (
    VolumeClassifier,
    extract_features,
    per_class_accuracy,
    predict,
    train_classifier,
)
from volgan.evaluation.labelled import Labelled

log = logging.getLogger("volgan")

OVERALL = "overall"

# name -> (what it measures, which direction is better); the report and README use these words.
METRICS: dict[str, tuple[str, str]] = {
    "fd": ("Fréchet distance of classifier features", "lower"),
    "precision": ("share of synthetic inside the real feature manifold (fidelity)", "higher"),
    "recall": ("share of real inside the synthetic feature manifold (coverage of modes)", "higher"),
    "density": ("expected real neighbourhoods a synthetic sample falls in (~1 for a match)", "closer to 1"),
    "coverage": ("share of real samples with a synthetic sample in their neighbourhood", "higher"),
    "mmd_gaussian": ("MMD² of features, Gaussian kernel, bandwidth = median same-class real distance", "lower"),
    "mmd_linear_voxel": ("MMD² of raw voxels, linear kernel (MONAI MMDMetric)", "closer to 0"),
    "w1_intensity": ("Wasserstein-1 distance between voxel-intensity histograms", "lower"),
}


@dataclass
class Outcome:
    """``metrics``: JSON-ready dict; the sets (synthetic relabelled to real class indices) and
    their features (N, F), for the figures."""

    metrics: dict[str, Any]
    real: Labelled
    synthetic: Labelled
    real_features: np.ndarray
    synthetic_features: np.ndarray
    audit: Any = None  # an audit.AuditResult when the memorisation audit ran


@dataclass
class EvalSettings:
    seed: int = 0
    k: int = 5  # neighbours for precision/recall/density/coverage
    n_pairs: int = 50  # MS-SSIM pairs per class
    n_draws: int = 10  # synthetic subsamples matched to the real reference half
    tstr: bool = True
    tstr_epochs: int = 20
    tstr_max_minutes: float | None = None
    batch_size: int = 16  # TSTR/TRTR recipe: the judge's batch size and learning rate
    lr: float = 1e-3
    device: str | torch.device = "cpu"
    audit: bool = True  # memorisation audit, when real training data is given


def align_classes(real: Labelled, synthetic: Labelled) -> Labelled:
    """Relabel ``synthetic`` with the real set's class indices (matched by name); a synthetic class
    the real data lacks is an error, as is an empty synthetic set."""
    if len(synthetic.labels) == 0:
        raise VolganError(f"{synthetic.source}: no synthetic volumes to evaluate")
    index = {name: k for k, name in enumerate(real.class_names)}
    missing = [n for n in synthetic.class_names if n not in index]
    if missing:
        raise VolganError(
            f"{synthetic.source}: class {missing[0]!r} is absent from the real data {real.source} "
            f"(real classes: {', '.join(real.class_names)})"
        )
    mapping = np.array([index[n] for n in synthetic.class_names])
    if synthetic.volumes.shape[1:] != real.volumes.shape[1:]:
        raise VolganError(
            f"{synthetic.source}: synthetic volumes are {synthetic.volumes.shape[1]}³, "
            f"the real ones {real.volumes.shape[1]}³; evaluate on one grid"
        )
    return Labelled(synthetic.volumes, mapping[synthetic.labels], list(real.class_names), synthetic.source)


def check_judge(judge: VolumeClassifier, judge_meta: dict[str, Any], real: Labelled, where: str) -> None:
    """The judge must know the real classes, in order, and take volumes of the real grid."""
    if list(judge_meta["class_names"]) != list(real.class_names):
        raise VolganError(
            f"{where}: the classifier knows classes {judge_meta['class_names']}, the real data has "
            f"{real.class_names}; train the classifier on data with the same class folders"
        )
    if int(judge_meta["size"]) != real.volumes.shape[1]:
        raise VolganError(
            f"{where}: the classifier takes {judge_meta['size']}³ volumes, the real data is "
            f"{real.volumes.shape[1]}³ (shape mismatch with the classifier)"
        )


def _compare(
    real_f: np.ndarray, fake_f: np.ndarray, real_v: np.ndarray, fake_v: np.ndarray, k: int, sigma: float, seed: int
) -> dict[str, float | None]:
    """Every distribution metric for one (real, other) pair of sets."""
    out: dict[str, float | None] = {"fd": M.frechet_distance(real_f, fake_f)}
    if min(len(real_f), len(fake_f)) > k:
        out.update(M.prdc(real_f, fake_f, k))
    else:
        out.update(dict.fromkeys(("precision", "recall", "density", "coverage")))
    out["mmd_gaussian"] = M.mmd_gaussian(real_f, fake_f, bandwidth=sigma)[0]
    out["mmd_linear_voxel"] = M.mmd_linear_voxels(real_v, fake_v, seed=seed)
    out["w1_intensity"] = M.wasserstein_intensity(real_v, fake_v, seed=seed)
    return out


def _summarise(draws: list[dict[str, float | None]]) -> dict[str, Any]:
    """Mean over the synthetic draws, with their min/max as the spread."""
    out: dict[str, Any] = {}
    for key in draws[0]:
        values = np.array([d[key] for d in draws if d[key] is not None], dtype=np.float64)
        if not len(values):
            out[key] = None
            continue
        out[key] = float(values.mean())
        out[f"{key}_range"] = [float(values.min()), float(values.max())]
    return out


def _matched_draw(rng: np.random.Generator, synthetic: np.ndarray, b_labels: np.ndarray) -> np.ndarray:
    """Synthetic indices with B's class make-up: per class, as many as B has (or all there are)."""
    picks = []
    for k, count in zip(*np.unique(b_labels, return_counts=True), strict=True):
        pool = np.flatnonzero(synthetic == k)
        picks.append(rng.choice(pool, size=min(count, len(pool)), replace=False))
    return np.concatenate(picks)


def _within_class_bandwidth(feats: np.ndarray, labels: np.ndarray) -> float:
    """Median distance between real feature vectors of the same class: the Gaussian MMD's
    bandwidth, fixed once per group so the synthetic and reference rows use one kernel. (Over
    all pairs, between-class distances would set it and blind the overall MMD to within-class
    differences.)"""
    from scipy.spatial.distance import cdist

    d = cdist(feats, feats)
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    sigma = float(np.median(d[same])) if same.any() else float(np.median(d[~np.eye(len(labels), dtype=bool)]))
    return sigma if sigma > 0 else 1.0


def distribution_metrics(
    real: Labelled, synthetic: Labelled, real_f: np.ndarray, fake_f: np.ndarray, s: EvalSettings
) -> dict[str, dict[str, dict[str, Any]]]:
    """{group: {"synthetic": metrics, "reference": metrics, "n": counts}} for "overall" and each class."""
    half_a, half_b = M.real_vs_real_split(len(real.labels), real.labels, seed=s.seed)
    rng = np.random.default_rng(s.seed)
    groups: dict[str, list[int]] = {OVERALL: list(range(len(real.class_names)))}
    groups.update({name: [k] for k, name in enumerate(real.class_names)})
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group, classes in groups.items():
        a = half_a[np.isin(real.labels[half_a], classes)]
        b = half_b[np.isin(real.labels[half_b], classes)]
        n_fake = int(np.isin(synthetic.labels, classes).sum())
        if min(len(a), len(b), n_fake) < 2:
            log.warning("evaluate: %s has too few volumes for distribution metrics; skipped", group)
            continue
        sigma = _within_class_bandwidth(real_f[np.concatenate([a, b])], real.labels[np.concatenate([a, b])])
        reference = _compare(real_f[a], real_f[b], real.volumes[a], real.volumes[b], s.k, sigma, s.seed)
        draws, n_match = [], 0
        for _ in range(s.n_draws):
            pick = _matched_draw(rng, synthetic.labels, real.labels[b])
            n_match = len(pick)
            draws.append(
                _compare(real_f[a], fake_f[pick], real.volumes[a], synthetic.volumes[pick], s.k, sigma, s.seed)
            )
        out[group] = {
            "synthetic": _summarise(draws),
            "reference": dict(reference),
            "n": {"real_a": len(a), "real_b": len(b), "synthetic_per_draw": n_match, "synthetic_total": n_fake},
        }
    return out


def diversity(real: Labelled, synthetic: Labelled, s: EvalSettings) -> dict[str, dict[str, float | None]]:
    """Mean within-class MS-SSIM (lower = more diverse) of synthetic and of real volumes."""
    out: dict[str, dict[str, float | None]] = {}
    for k, name in enumerate(real.class_names):
        row: dict[str, float | None] = {}
        for what, data in (("synthetic", synthetic), ("real", real)):
            vols = data.of(k)
            row[what] = M.ms_ssim_within(vols, s.n_pairs, s.seed) if len(vols) >= 2 else None
        out[name] = row
    present = [r for r in out.values() if r["synthetic"] is not None and r["real"] is not None]
    out[OVERALL] = {
        what: float(np.mean([r[what] for r in present])) if present else None for what in ("synthetic", "real")
    }
    return out


def structure_metrics(
    real: Labelled, synthetic: Labelled, real_train: Labelled | None, s: EvalSettings
) -> dict[str, Any]:
    """Speckle and holes of each class's volumes at the real set's Otsu level, synthetic beside real;
    with ``real_train``, FD in the PCA space fitted on it, beside its real-vs-real reference."""
    from volgan.evaluation.structure import PCASpace, otsu_level, pca_fd, structure

    level = otsu_level(real.volumes)
    by_class: dict[str, dict[str, dict[str, float] | None]] = {}
    for k, name in enumerate(real.class_names):
        by_class[name] = {
            what: structure(vols, level) if len(vols) else None
            for what, vols in (("synthetic", synthetic.of(k)), ("real", real.of(k)))
        }
    out: dict[str, Any] = {"level": level, "by_class": by_class, "pca": None}
    if real_train is not None and len(real_train.volumes) >= 3:
        space = PCASpace.fit(real_train.volumes, seed=s.seed)
        out["pca"] = pca_fd(
            space.features(real.volumes), real.labels, space.features(synthetic.volumes), seed=s.seed, n_draws=s.n_draws
        )
    return out


def conditional_accuracy(
    judge: VolumeClassifier, real: Labelled, synthetic: Labelled, s: EvalSettings
) -> dict[str, dict[str, float | None]]:
    """The judge's accuracy on synthetic volumes of each requested class and on the real test volumes;
    "overall" is the balanced accuracy (mean over the classes the synthetic set has)."""
    fake = per_class_accuracy(judge, synthetic.volumes, synthetic.labels, device=s.device)
    true = per_class_accuracy(judge, real.volumes, real.labels, device=s.device)
    out = {name: {"synthetic": fake.get(k), "real": true.get(k)} for k, name in enumerate(real.class_names)}
    # Balanced (mean over classes): the synthetic set is usually class-balanced, the real one not.
    out[OVERALL] = {
        "synthetic": float(np.mean(list(fake.values()))),
        "real": float(np.mean([true[k] for k in fake if k in true])) if any(k in true for k in fake) else None,
    }
    return out


def _train_and_test(train: Labelled, test: Labelled, s: EvalSettings, what: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, report = train_classifier(
        train.volumes,
        train.labels,
        len(test.class_names),
        epochs=s.tstr_epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        val_fraction=0.0,  # never select a model on the test data
        seed=s.seed,
        device=s.device,
        max_minutes=s.tstr_max_minutes,
    )
    hits = (predict(model, test.volumes, device=s.device) == test.labels).astype(np.float64)
    per_class = {k: float(hits[test.labels == k].mean()) for k in np.unique(test.labels).tolist()}
    acc = float(hits.mean())
    # 95 % bootstrap interval over the test volumes (the second set is unused by this metric)
    ci = M.bootstrap_ci(lambda h, _: float(h.mean()), hits, hits[:1], n_boot=1000, seed=s.seed)
    balanced = float(np.mean(list(per_class.values())))
    log.info("evaluate: %s -> accuracy %.3f on %s (%.0f s)", what, acc, test.source, time.perf_counter() - t0)
    return {
        "accuracy": acc,
        "accuracy_ci95": list(ci),
        "balanced_accuracy": balanced,
        "per_class": {test.class_names[k]: v for k, v in per_class.items()},
        "n_train": len(train.labels),
        "epochs": report.epochs_run,
    }


def usefulness(real: Labelled, synthetic: Labelled, real_train: Labelled | None, s: EvalSettings) -> dict[str, Any]:
    """TSTR, TRTR and real+synthetic augmentation, all tested on the real test set with one recipe."""
    out: dict[str, Any] = {
        "recipe": {
            "epochs": s.tstr_epochs,
            "batch_size": s.batch_size,
            "lr": s.lr,
            "seed": s.seed,
            "model_selection": "none",
        }
    }
    present = set(np.unique(synthetic.labels).tolist())
    if present != set(range(len(real.class_names))):
        out["note"] = "skipped: the synthetic set does not cover every real class"
        return out
    out["tstr"] = _train_and_test(synthetic, real, s, "train on synthetic")
    if real_train is None:
        out["note"] = "no real training data given (--real-train): TRTR and augmentation not measured"
        return out
    out["trtr"] = _train_and_test(real_train, real, s, "train on real")
    both = Labelled(
        np.concatenate([real_train.volumes, synthetic.volumes]),
        np.concatenate([real_train.labels, synthetic.labels]),
        real.class_names,
        f"{real_train.source} + synthetic",
    )
    out["real_plus_synthetic"] = _train_and_test(both, real, s, "train on real + synthetic")
    return out


def evaluate(
    real: Labelled,
    synthetic: Labelled,
    judge: VolumeClassifier,
    judge_meta: dict[str, Any],
    settings: EvalSettings,
    *,
    features: nn.Module | None = None,
    features_name: str = "judge classifier",
    features_info: dict[str, Any] | None = None,
    real_train: Labelled | None = None,
) -> Outcome:
    """All metrics (see the module docstring for the plan) and what the figures need."""
    s = settings
    torch.manual_seed(s.seed)
    synthetic = align_classes(real, synthetic)
    if real_train is not None:
        real_train = align_classes(real, real_train)
    extractor: Any = features if features is not None else judge
    real_f = extract_features(extractor, real.volumes, s.batch_size, s.device)
    fake_f = extract_features(extractor, synthetic.volumes, s.batch_size, s.device)
    log.info("evaluate: %d real and %d synthetic volumes, %d-d features", len(real_f), len(fake_f), real_f.shape[1])
    result: dict[str, Any] = {
        "inputs": {
            "real": real.source,
            "synthetic": synthetic.source,
            "real_train": real_train.source if real_train is not None else None,
            "class_names": real.class_names,
            "size": int(real.volumes.shape[1]),
            "n_real": {n: int((real.labels == k).sum()) for k, n in enumerate(real.class_names)},
            "n_synthetic": {n: int((synthetic.labels == k).sum()) for k, n in enumerate(real.class_names)},
            "features": features_name,
            "feature_dim": int(real_f.shape[1]),
            "feature_extractor": features_info,
            "judge": {k: judge_meta.get(k) for k in ("held_out_accuracy", "data", "epochs")},
            "settings": {
                "seed": s.seed,
                "k": s.k,
                "n_pairs": s.n_pairs,
                "n_draws": s.n_draws,
                "ms_ssim": dict(
                    zip(("kernel", "weights"), M.ms_ssim_settings(int(real.volumes.shape[1])), strict=True)
                ),
            },
        },
        "distribution": distribution_metrics(real, synthetic, real_f, fake_f, s),
        "diversity_ms_ssim": diversity(real, synthetic, s),
        "conditional_accuracy": conditional_accuracy(judge, real, synthetic, s),
        "intensity": {
            name: {
                "synthetic": M.intensity_stats(synthetic.of(k)) if len(synthetic.of(k)) else None,
                "real": M.intensity_stats(real.of(k)) if len(real.of(k)) else None,
            }
            for k, name in enumerate(real.class_names)
        },
    }
    result["structure"] = structure_metrics(real, synthetic, real_train, s)
    if s.tstr:
        result["usefulness"] = usefulness(real, synthetic, real_train, s)
    audit = None
    if s.audit and real_train is not None:
        from volgan.evaluation.audit import memorisation_audit

        train_f = extract_features(extractor, real_train.volumes, s.batch_size, s.device)
        audit = memorisation_audit(real_train, real, synthetic, (train_f, real_f, fake_f), features_name)
        result["memorisation"] = audit.metrics
        log.info("evaluate: memorisation audit: %s", audit.metrics["verdict"])
    return Outcome(result, real, synthetic, real_f, fake_f, audit)
