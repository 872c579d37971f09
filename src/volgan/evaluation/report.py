"""Writing an evaluation: ``metrics.json``, a readable ``report.md`` and PNG figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from volgan.evaluation.evaluate import METRICS, OVERALL, Outcome
from volgan.files import atomic_write

FIGURE_METRICS = ("fd", "precision", "recall", "coverage")


def write_report(outcome: Outcome, out_dir: Path, command: str = "") -> dict[str, Path]:
    """Write every output of an evaluation into ``out_dir``; returns name -> path."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "slices": _slices_figure(outcome, out_dir / "slices.png"),
        "histograms": _histogram_figure(outcome, out_dir / "intensity_histograms.png"),
        "pca": _pca_figure(outcome, out_dir / "features_pca.png"),
        "bars": _bar_figure(outcome.metrics, out_dir / "metrics_by_class.png"),
    }
    if outcome.audit is not None:
        from volgan.evaluation.audit import write_audit_figures

        paths.update(write_audit_figures(outcome.audit, out_dir))
    text = json.dumps(outcome.metrics, indent=2, allow_nan=False)
    atomic_write(out_dir / "metrics.json", lambda f: f.write(text.encode()))
    markdown = render_markdown(outcome.metrics, {k: p.name for k, p in paths.items()}, command)
    atomic_write(out_dir / "report.md", lambda f: f.write(markdown.encode()))
    return {"metrics": out_dir / "metrics.json", "report": out_dir / "report.md", **paths}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e3 or (value != 0 and abs(value) < 1e-3) else f"{value:.3f}"
    return str(value)


def render_markdown(m: dict[str, Any], figures: dict[str, str], command: str = "") -> str:
    """The human-readable report (tables with the real-vs-real reference next to every number)."""
    lines = _inputs_section(m["inputs"], command)
    lines += _distribution_section(m["distribution"], m["inputs"]["class_names"])
    lines += _two_column_section(
        "Diversity: mean MS-SSIM within a class (lower = more diverse; near 1 = collapsed)",
        ["class", "synthetic", "real"],
        [[g, _fmt(r["synthetic"]), _fmt(r["real"])] for g, r in m["diversity_ms_ssim"].items()],
    )
    lines += _two_column_section(
        "Conditional accuracy: the real-trained judge on volumes of each class (overall: balanced)",
        ["class", "synthetic", "real test"],
        [[g, _fmt(r["synthetic"]), _fmt(r["real"])] for g, r in m["conditional_accuracy"].items()],
    )
    if m.get("structure") is not None:
        lines += _structure_section(m["structure"])
    if m.get("usefulness") is not None:
        lines += _usefulness_section(m["usefulness"])
    rows = []
    for group, row in m["intensity"].items():
        cells = [f"{_fmt(r['mean'])} ± {_fmt(r['std'])}" if r else "–" for r in (row["synthetic"], row["real"])]
        rows.append([group, *cells])
    lines += _two_column_section(
        "Intensity statistics (mean ± std of voxel values, [-1, 1] scale)", ["class", "synthetic", "real"], rows
    )
    audit_figures = {k: v for k, v in figures.items() if k.startswith("memorisation")}
    if "memorisation" in m:
        from volgan.evaluation.audit import audit_markdown

        lines += audit_markdown(m["memorisation"], audit_figures)
    lines += ["", "## Figures", ""] + [f"![{k}]({v})" for k, v in figures.items() if k not in audit_figures]
    return "\n".join(lines) + "\n"


def _inputs_section(inputs: dict[str, Any], command: str) -> list[str]:
    """What was compared with what, in which feature space, and how to read the tables."""
    lines = [
        "# volgan evaluation report",
        "",
        f"- real (test): `{inputs['real']}` — {inputs['n_real']}",
        f"- synthetic: `{inputs['synthetic']}` — {inputs['n_synthetic']}",
        f"- real training data for TSTR/TRTR and the memorisation audit: `{inputs['real_train']}`",
        f"- grid {inputs['size']}³; features: {inputs['features']} ({inputs['feature_dim']}-d); "
        f"settings {json.dumps(inputs['settings'])}",
    ]
    if command:
        lines.append(f"- command: `{command}`")
    extractor = inputs.get("feature_extractor")
    if extractor:
        lines += [
            f"- feature extractor: {extractor['architecture']}; weights `{extractor['weights']}` "
            f"(sha256 `{extractor['weights_sha256']}`); preprocessing: {extractor['preprocessing']}; input size "
            f"{extractor['input_size'] or inputs['size']}³; {extractor['feature_dim']}-d",
            "",
            f"**Comparability.** {extractor['comparability']}",
        ]
    else:
        from volgan.evaluation.extractors import COMPARABILITY

        lines += ["", f"**Comparability.** {COMPARABILITY} The judge classifier's space is specific to this study."]
    return [
        *lines,
        "",
        "**How to read it.** The real test set is split into two class-stratified halves A and B. The "
        "*reference* column compares B with A: what a perfect generator would score with this many "
        "volumes. The *synthetic* column compares the synthetic set with A, subsampled to B's size "
        "(mean over draws; the range in brackets), so both columns carry the same sample-size bias.",
    ]


def _distribution_section(dist: dict[str, Any], names: list[str]) -> list[str]:
    """FD, precision/recall, ... over all classes (with what each measures), then per class."""
    lines = [
        "",
        "## Distribution metrics (all classes)",
        "",
        "| metric | synthetic | reference (real B vs real A) | better | what it measures |",
        "|---|---|---|---|---|",
    ]
    for group in [OVERALL, *names]:
        if group not in dist:
            continue
        if group != OVERALL:
            lines += [
                "",
                f"### class `{group}`",
                "",
                "| metric | synthetic | reference | better |",
                "|---|---|---|---|",
            ]
        row = dist[group]
        for key, (meaning, better) in METRICS.items():
            syn = row["synthetic"].get(key)
            spread = row["synthetic"].get(f"{key}_range")
            cell = _fmt(syn) + (f" [{_fmt(spread[0])}, {_fmt(spread[1])}]" if spread else "")
            ref = _fmt(row["reference"].get(key))
            lines.append(
                f"| {key} | {cell} | {ref} | {better} | {meaning} |"
                if group == OVERALL
                else f"| {key} | {cell} | {ref} | {better} |"
            )
        n = row["n"]
        lines.append(
            f"\n_n: real A {n['real_a']}, real B {n['real_b']}, synthetic {n['synthetic_per_draw']} per draw "
            f"of {n['synthetic_total']}_"
        )
    return lines


def _two_column_section(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A ``## title`` and a table of one row per class."""
    lines = ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _usefulness_section(use: dict[str, Any]) -> list[str]:
    """TSTR / TRTR / real + synthetic accuracies with their intervals, or why they are absent."""
    lines = ["", "## Usefulness: a classifier trained on … and tested on the real test set", ""]
    if "tstr" in use:
        lines += ["| trained on | accuracy [95 % CI] | balanced accuracy | n train |", "|---|---|---|---|"]
        for key, label in (
            ("tstr", "synthetic only (TSTR)"),
            ("trtr", "real only (TRTR)"),
            ("real_plus_synthetic", "real + synthetic"),
        ):
            if key in use:
                r = use[key]
                lo, hi = r["accuracy_ci95"]
                lines.append(
                    f"| {label} | {_fmt(r['accuracy'])} [{_fmt(lo)}, {_fmt(hi)}] | {_fmt(r['balanced_accuracy'])} "
                    f"| {r['n_train']} |"
                )
        lines.append(f"\n_recipe: {json.dumps(use['recipe'])}_")
    if "note" in use:
        lines.append(f"\n_{use['note']}_")
    return lines


def _slices_figure(o: Outcome, path: Path, n: int = 4) -> Path:
    import matplotlib.pyplot as plt

    names = o.real.class_names
    fig, axes = plt.subplots(len(names), 2 * n, figsize=(2 * n * 1.3, len(names) * 1.45), squeeze=False)
    for k, name in enumerate(names):
        for col, (what, data) in enumerate((("real", o.real), ("synthetic", o.synthetic))):
            vols = data.of(k)[:n]
            for j in range(n):
                ax = axes[k, col * n + j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j < len(vols):
                    v = vols[j]
                    ax.imshow(v[:, :, v.shape[2] // 2].T, cmap="gray", vmin=-1, vmax=1, origin="lower")
                if k == 0 and j == 0:
                    ax.set_title(what, fontsize=9, loc="left")
            axes[k, 0].set_ylabel(name, fontsize=9)
    fig.suptitle("axial mid-slices: real (left) vs synthetic (right)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _histogram_figure(o: Outcome, path: Path) -> Path:
    import matplotlib.pyplot as plt

    names = o.real.class_names
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.6), squeeze=False)
    bins = np.linspace(-1, 1, 65)
    for k, name in enumerate(names):
        ax = axes[0, k]
        for what, data, colour in (("real", o.real, "tab:blue"), ("synthetic", o.synthetic, "tab:orange")):
            vols = data.of(k)
            if len(vols):
                ax.hist(vols.ravel(), bins=bins, density=True, histtype="step", color=colour, label=what)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("intensity")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pca_figure(o: Outcome, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(o.real_features)
    real_xy, fake_xy = pca.transform(o.real_features), pca.transform(o.synthetic_features)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    colours = plt.get_cmap("tab10")
    for k, name in enumerate(o.real.class_names):
        r, f = real_xy[o.real.labels == k], fake_xy[o.synthetic.labels == k]
        ax.scatter(r[:, 0], r[:, 1], s=14, color=colours(k), marker="o", label=f"{name} real", alpha=0.8)
        ax.scatter(f[:, 0], f[:, 1], s=14, color=colours(k), marker="x", label=f"{name} synthetic", alpha=0.8)
    ax.set_xlabel("PC 1 (fitted on real features)")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bar_figure(m: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    dist = m["distribution"]
    groups = [g for g in [OVERALL, *m["inputs"]["class_names"]] if g in dist]
    panels = [*FIGURE_METRICS, "ms_ssim", "cond_acc"]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        if key == "ms_ssim":
            rows = m["diversity_ms_ssim"]
            syn = [rows.get(g, {}).get("synthetic") for g in groups]
            ref = [rows.get(g, {}).get("real") for g in groups]
            title = "MS-SSIM within class"
        elif key == "cond_acc":
            rows = m["conditional_accuracy"]
            syn = [rows.get(g, {}).get("synthetic") for g in groups]
            ref = [rows.get(g, {}).get("real") for g in groups]
            title = "judge accuracy"
        else:
            syn = [dist[g]["synthetic"].get(key) for g in groups]
            ref = [dist[g]["reference"].get(key) for g in groups]
            title = key
        x = np.arange(len(groups))
        ax.bar(x, [np.nan if v is None else v for v in syn], color="tab:orange", label="synthetic")
        ax.scatter(
            x,
            [np.nan if v is None else v for v in ref],
            color="black",
            marker="_",
            s=400,
            zorder=3,
            label="real-vs-real",
        )
        ax.set_xticks(x, groups, rotation=30, fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _structure_section(st: dict[str, Any]) -> list[str]:
    """Speckle and holes per class (synthetic | real), and the PCA-space FD where it was measured."""

    def cells(r: dict[str, float] | None) -> list[str]:
        return ["–"] * 3 if r is None else [f"{r['components']:.1f}", f"{r['speckle_share']:.2%}", f"{r['holes']:.1f}"]

    lines = _two_column_section(
        f"Structure at the real set's Otsu level ({st['level']:.3g}): pieces per volume, share of the "
        "foreground in pieces under 8 voxels, holes",
        ["class", "pieces", "in small pieces", "holes", "real: pieces", "in small pieces", "holes"],
        [[name, *cells(r["synthetic"]), *cells(r["real"])] for name, r in st["by_class"].items()],
    )
    if st.get("pca") is not None:
        p = st["pca"]
        lines += [
            "",
            "FD in a PCA space of 2x-pooled voxels fitted on the real training data (no network): "
            f"{_fmt(p['pca_fd'])}, real-vs-real {_fmt(p['pca_fd_ref'])} ({p['pca_fd_ratio']:.2f}x).",
        ]
    return lines
