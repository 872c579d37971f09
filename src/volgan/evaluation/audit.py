"""Memorisation audit: is any synthetic volume a (near) copy of a training volume?

For every synthetic volume, the distance to its nearest training volume ("distance to closest
record") is compared with the same distance for held-out real volumes, which the generator never
saw. A generator that learned the distribution puts its volumes about as close to the training
set as new patients are; one that copies puts many closer than almost any new patient.

* Distances: RMS voxel difference on the evaluation grid (both sets after the same preprocessing)
  and Euclidean distance in the evaluation's feature space.
* Thresholds: the 1st and 5th percentiles of the held-out distances, taken as order statistics
  (the k-th smallest, k = ceil(p·n)); a synthetic volume below one is a "likely copy".
* Verdict: an honest generator puts a share q of its volumes below such a threshold, where q is
  the threshold's true quantile; with n held-out volumes q ~ Beta(k, n + 1 - k), so q is at most
  its 99 % point ``q_hi``. The set is flagged when the count below either threshold is
  significant against ``Binomial(n_synthetic, q_hi)`` at 0.005 (0.01 over the two tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from volgan.evaluation.labelled import Labelled

OVERALL = "overall"
PERCENTILES = (1, 5)
ALPHA = 0.005  # per test; two thresholds -> 0.01 overall
MIN_CLASS_HELDOUT = 10  # fewer held-out volumes of a class: that class uses the overall thresholds
N_PAIRS = 6


def nearest(query: np.ndarray, ref: np.ndarray, chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each row of ``query`` (Q, F) to its nearest row of ``ref`` (R, F),
    and that row's index: (Q,) float64, (Q,) int64. Computed in float64, so a near-copy's small
    distance does not drown in the rounding of two large norms."""
    r = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float64))
    r_sq = (r * r).sum(1)
    dists, index = [], []
    for i in range(0, len(query), chunk):
        q = torch.from_numpy(np.ascontiguousarray(query[i : i + chunk], dtype=np.float64))
        d2 = ((q * q).sum(1)[:, None] + r_sq[None, :] - 2.0 * q @ r.T).clamp_min(0.0)
        best = d2.min(1)
        dists.append(best.values.sqrt())
        index.append(best.indices)
    return torch.cat(dists).numpy(), torch.cat(index).numpy()


def voxel_rows(volumes: np.ndarray) -> np.ndarray:
    """(N, S, S, S) -> (N, S³) scaled by 1/sqrt(S³): Euclidean distances become RMS voxel differences."""
    flat = volumes.reshape(len(volumes), -1).astype(np.float64)
    return flat / math.sqrt(flat.shape[1])


def _threshold_test(d_heldout: np.ndarray, d_synthetic: np.ndarray, percentile: int) -> dict[str, Any]:
    from scipy.stats import beta, binom

    n_h, n_g = len(d_heldout), len(d_synthetic)
    k = max(1, math.ceil(percentile / 100 * n_h))
    threshold = float(np.sort(d_heldout)[k - 1])
    count = int((d_synthetic < threshold).sum())
    q_hi = float(beta.ppf(0.99, k, n_h + 1 - k))
    p_value = float(binom.sf(count - 1, n_g, q_hi)) if count else 1.0
    return {
        "threshold": threshold,
        "count": count,
        "share": count / n_g,
        "expected_share_max": q_hi,
        "p_value": p_value,
    }


def _group(d_h: np.ndarray, d_g: np.ndarray, source: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "n_synthetic": len(d_g),
        "n_heldout": len(d_h),
        "thresholds_from": source,
        "median_synthetic": float(np.median(d_g)) if len(d_g) else None,
        "median_heldout": float(np.median(d_h)),
        "identical": int((d_g <= 1e-6).sum()),
    }
    if len(d_g):
        for p in PERCENTILES:
            row[f"p{p}"] = _threshold_test(d_h, d_g, p)
    row["flagged"] = bool(len(d_g)) and any(row[f"p{p}"]["p_value"] < ALPHA for p in PERCENTILES)
    return row


def audit_space(
    train: np.ndarray, heldout: np.ndarray, synthetic: np.ndarray, h_labels: np.ndarray, g_labels: np.ndarray,
    class_names: list[str],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # fmt: skip
    """One space (rows are points): per group (overall and each class) the threshold tests, and
    the raw nearest distances/indices for the figures."""
    d_h, _ = nearest(heldout, train)
    d_g, i_g = nearest(synthetic, train)
    groups: dict[str, Any] = {OVERALL: _group(d_h, d_g, "all held-out")}
    for k, name in enumerate(class_names):
        h, g = d_h[h_labels == k], d_g[g_labels == k]
        if len(h) >= MIN_CLASS_HELDOUT:
            groups[name] = _group(h, g, f"held-out {name}")
        else:
            groups[name] = _group(d_h, g, f"all held-out (only {len(h)} of class {name})")
    return groups, {"heldout": d_h, "synthetic": d_g, "synthetic_nearest": i_g}


@dataclass
class AuditResult:
    """``metrics``: JSON-ready; ``raw``: per space, the nearest distances and indices (figures)."""

    metrics: dict[str, Any]
    raw: dict[str, dict[str, np.ndarray]]
    train: Labelled
    synthetic: Labelled


def memorisation_audit(
    train: Labelled,
    heldout: Labelled,
    synthetic: Labelled,
    features: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    features_name: str = "features",
) -> AuditResult:
    """Audit ``synthetic`` against the generator's ``train`` set with ``heldout`` real volumes as
    the reference (all on one grid, classes aligned). ``features``: (train, heldout, synthetic)
    feature arrays (N, F) for the feature-space audit."""
    spaces: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
        "voxel": (voxel_rows(train.volumes), voxel_rows(heldout.volumes), voxel_rows(synthetic.volumes))
    }
    if features is not None:
        spaces["features"] = features
    metrics: dict[str, Any] = {
        "method": "nearest training volume of every synthetic and every held-out real volume; "
        "likely copies = synthetic closer than the 1st/5th percentile of the held-out distances",
        "distance": {"voxel": "RMS voxel difference on the evaluation grid ([-1, 1] scale)", "features": features_name},
        "n": {"train": len(train.labels), "heldout": len(heldout.labels), "synthetic": len(synthetic.labels)},
        "alpha_per_test": ALPHA,
        "spaces": {},
    }
    raw: dict[str, dict[str, np.ndarray]] = {}
    for space, (t, h, g) in spaces.items():
        metrics["spaces"][space], raw[space] = audit_space(
            t, h, g, heldout.labels, synthetic.labels, heldout.class_names
        )
    d_h = raw["voxel"]["heldout"]
    metrics["heldout_identical_to_train"] = int((d_h <= 1e-6).sum())
    order = np.argsort(raw["voxel"]["synthetic"])[:N_PAIRS]
    names = heldout.class_names
    metrics["closest_pairs"] = [
        {
            "synthetic_index": int(i),
            "synthetic_class": names[int(synthetic.labels[i])],
            "train_index": int(raw["voxel"]["synthetic_nearest"][i]),
            "train_class": names[int(train.labels[raw["voxel"]["synthetic_nearest"][i]])],
            "distance": float(raw["voxel"]["synthetic"][i]),
            "heldout_share_closer": float((d_h < raw["voxel"]["synthetic"][i]).mean()),
        }
        for i in order
    ]
    flagged = [s for s, groups in metrics["spaces"].items() if groups[OVERALL]["flagged"]]
    flagged_classes = sorted(
        {g for groups in metrics["spaces"].values() for g, row in groups.items() if g != OVERALL and row["flagged"]}
    )
    metrics["flagged"] = bool(flagged or flagged_classes)
    metrics["verdict"] = (
        f"FLAGGED: more synthetic volumes lie closer to a training volume than held-out real ones do "
        f"(space: {', '.join(flagged) or '–'}; classes: {', '.join(flagged_classes) or '–'}); inspect the closest "
        "pairs before sharing this model or its samples"
        if metrics["flagged"]
        else "not flagged: synthetic volumes are no closer to the training set than held-out real volumes are"
    )
    return AuditResult(metrics, raw, train, synthetic)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def audit_markdown(m: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """The report's memorisation section."""
    n = m["n"]
    lines = [
        "",
        "## Memorisation audit: nearest training volume",
        "",
        f"**{m['verdict']}.**",
        "",
        f"Each of the {n['synthetic']} synthetic and {n['heldout']} held-out real (test) volumes is matched to its "
        f"nearest of the {n['train']} training volumes. A *likely copy* is a synthetic volume closer to a training "
        "volume than the 1st (or 5th) percentile of the held-out real volumes' distances; an honest generator "
        "puts about 1 % (5 %) there, at most *expected max* (the 99 % bound from the held-out sample size). "
        f"*p*: one-sided binomial test against that bound; flagged below {m['alpha_per_test']}.",
        "",
    ]
    if m["heldout_identical_to_train"]:
        lines += [
            f"_Warning: {m['heldout_identical_to_train']} held-out volumes are identical to a training volume: the "
            "test set overlaps the training set, so the reference is too strict._",
            "",
        ]
    for space, groups in m["spaces"].items():
        lines += [
            f"### {'voxel space' if space == 'voxel' else 'feature space'}: {m['distance'][space]}",
            "",
            "| group | n synthetic / held-out | median distance synthetic / held-out "
            "| below p1: share (expected max, p) | below p5: share (expected max, p) | identical | flagged |",
            "|---|---|---|---|---|---|---|",
        ]
        for group, r in groups.items():
            cells = [
                f"{r[f'p{p}']['share']:.3f} ({r[f'p{p}']['expected_share_max']:.3f}, {r[f'p{p}']['p_value']:.2g})"
                if f"p{p}" in r
                else "–"
                for p in PERCENTILES
            ]
            lines.append(
                f"| {group} | {r['n_synthetic']} / {r['n_heldout']} | {_fmt(r['median_synthetic'])} / "
                f"{_fmt(r['median_heldout'])} | {cells[0]} | {cells[1]} | {r['identical']} | "
                f"{'**yes**' if r['flagged'] else 'no'} |"
            )
        lines.append("")
    lines += [
        "Closest pairs (voxel space): synthetic volume, its nearest training volume, their distance and the "
        "share of held-out real volumes that are closer to the training set than that.",
        "",
        "| synthetic (class) | training (class) | distance | held-out closer |",
        "|---|---|---|---|",
    ]
    for p in m["closest_pairs"]:
        lines.append(
            f"| #{p['synthetic_index']} ({p['synthetic_class']}) | #{p['train_index']} ({p['train_class']}) | "
            f"{p['distance']:.3g} | {p['heldout_share_closer']:.3f} |"
        )
    lines += ["", *[f"![{k}]({v})" for k, v in figures.items()]]
    return lines


def write_audit_figures(result: AuditResult, out_dir: Path) -> dict[str, Path]:
    """``memorisation_pairs.png`` (closest pairs, mid-slices) and ``memorisation_distances.png``."""
    import matplotlib.pyplot as plt

    pairs = result.metrics["closest_pairs"]
    fig, axes = plt.subplots(len(pairs), 6, figsize=(6 * 1.25, len(pairs) * 1.35), squeeze=False)
    for row, p in enumerate(pairs):
        vols = (result.synthetic.volumes[p["synthetic_index"]], result.train.volumes[p["train_index"]])
        for j, v in enumerate(vols):
            c = v.shape[0] // 2
            for a, img in enumerate((v[c, :, :], v[:, c, :], v[:, :, c])):
                ax = axes[row, 3 * j + a]
                ax.imshow(img.T, cmap="gray", vmin=-1, vmax=1, origin="lower")
                ax.set_xticks([])
                ax.set_yticks([])
        axes[row, 0].set_ylabel(f"d={p['distance']:.3g}\n{p['synthetic_class']}", fontsize=7)
    axes[0, 1].set_title("synthetic", fontsize=9)
    axes[0, 4].set_title("nearest training volume", fontsize=9)
    fig.suptitle("closest synthetic–training pairs (mid-slices of the three axes)", fontsize=9)
    fig.tight_layout()
    paths = {"memorisation_pairs": out_dir / "memorisation_pairs.png"}
    fig.savefig(paths["memorisation_pairs"], dpi=100)
    plt.close(fig)

    spaces = list(result.raw)
    fig, axes = plt.subplots(1, len(spaces), figsize=(4 * len(spaces), 2.8), squeeze=False)
    for ax, space in zip(axes[0], spaces, strict=True):
        raw = result.raw[space]
        bins = np.histogram_bin_edges(np.concatenate([raw["heldout"], raw["synthetic"]]), bins=40)
        ax.hist(raw["heldout"], bins=bins, density=True, histtype="step", color="tab:blue", label="held-out real")
        ax.hist(raw["synthetic"], bins=bins, density=True, histtype="step", color="tab:orange", label="synthetic")
        for p, style in zip(PERCENTILES, (":", "--"), strict=True):
            t = result.metrics["spaces"][space][OVERALL][f"p{p}"]["threshold"]
            ax.axvline(t, color="black", linestyle=style, linewidth=1, label=f"held-out p{p}")
        ax.set_title(f"{space}: distance to nearest training volume", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    paths["memorisation_distances"] = out_dir / "memorisation_distances.png"
    fig.savefig(paths["memorisation_distances"], dpi=100)
    plt.close(fig)
    return paths
