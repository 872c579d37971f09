"""The README's "How long, and what to expect" table, written from the planned runs' own JSONs.

    python benchmarks/expected_table.py            # print the table
    python benchmarks/expected_table.py --check README.md   # exit 1 unless README.md holds exactly it

Each row is one data set and budget of ``time_to_quality.py --contenders planned`` (what
``volgan train --data D --minutes N`` trains); its figures are the last point of each run, the
median over the runs (seeds) found. ``tests/test_docs.py`` runs ``--check``, so the README and the
measurements cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "time_to_quality"
# (what the reader has, the runs' files: the plan as it is now, one file per seed; a run from before
# the resize head and sample.clean counts only re-scored with its volumes cleaned, "_cleaned"; "_decay":
# the rates stopping part-way, train.lr_decay_to)
ROWS = (
    ("head MRI-like intensities (150 phantoms), 64³, 3 classes", ("phantom150_30min_planned_decay_amd_seed?.json",)),
    ("adrenal masks (AdrenalMNIST3D), 64³, 2 classes", ("adrenal64_6min_planned_amd_seed?.json",)),
    ("adrenal masks (AdrenalMNIST3D), 64³, 2 classes", ("adrenal64_30min_planned_decay_amd_seed?.json",)),
    ("adrenal masks (AdrenalMNIST3D), 64³, 2 classes", ("adrenal64_60min_planned_amd_seed?.json",)),
    (
        "voxel shapes (ModelNet10 chair, monitor), 32³",
        ("modelnet32_20min_planned_top_hats_from_amdavx2_seed?.json",),
    ),
)
HEAD = (
    "| your data | budget | runs | steps | family | FD / real's | voxel-PCA FD / real's | recall | coverage | "
    "pieces per volume (real) |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def row(label: str, runs: list[dict[str, Any]]) -> str:
    last = [r["contenders"]["planned"]["points"][-1] for r in runs]
    family = {
        c["value"] for r in runs for c in r["contenders"]["planned"]["plan"]["choices"] if c["key"] == "model.family"
    }
    names = {"wgan_gp": "WGAN-GP", "dcgan": "3D-GAN"}
    minutes = _median([r["settings"]["minutes"] for r in runs])
    pieces = [p["components"] for p in last if p.get("components") is not None]
    pieces_real = [p["components_real"] for p in last if p.get("components_real") is not None]
    pieces_cell = f"{_median(pieces):.2f} ({_median(pieces_real):.2f})" if len(pieces) == len(last) else "–"
    return (
        f"| {label} | {minutes:g} min | {len(runs)} | {_median([p['steps'] for p in last]):.0f} | "
        f"{', '.join(names[f] for f in sorted(family))} | {_median([p['fd_ratio'] for p in last]):.2f} | "
        f"{_median([p['pca_fd_ratio'] for p in last]):.2f} | "
        f"{_median([p['recall'] for p in last]):.2f} | {_median([p['coverage'] for p in last]):.2f} | {pieces_cell} |"
    )


def table() -> str:
    lines = [HEAD]
    for label, patterns in ROWS:
        runs = [json.loads(p.read_text()) for pattern in patterns for p in sorted(RESULTS.glob(pattern))]
        if runs:
            lines.append(row(label, runs))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", type=Path, help="exit 1 unless this file holds the table exactly")
    a = ap.parse_args()
    text = table()
    if a.check is None:
        print(text)
        return
    if text not in a.check.read_text():
        print(f"{a.check}: its expected-quality table differs from the runs'; the runs say:\n{text}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
