"""The plan against the best hand-picked recipe and the seed design, point by point, from the result files.

    python benchmarks/planned_verdicts.py              # one block per data set and budget
    python benchmarks/planned_verdicts.py --markdown   # the same as the table in docs/planner.md

Each row names the runs of ``time_to_quality.py --contenders planned`` with the plan as it is now
(one file per seed), the best hand-picked recipe's runs for that data and budget, and the seed
design's (``config/default.yaml``, or the yardstick: its plain implementation). Runs scored by
different judges are compared as FD over each run's own real-vs-real reference. At each point of a
planned run, matched by minute:

- **within** the recipe's reach: at or below the highest of the recipe's seeds at that minute, or
  below its lowest times the real-vs-real spread (the 90th percentile of FD between halves of the
  held-out set over its median), or itself no further than that spread (as close as real halves);
- **ahead** of the seed design: below every seed-design run at that minute, or both as close as
  real halves.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

RESULTS = Path(__file__).resolve().parent / "results" / "time_to_quality"
# Two points are the same point when their minutes differ by less than this.
MINUTE_TOLERANCE = 1.0


@dataclass(frozen=True)
class Row:
    """One data set and budget: file globs (under ``RESULTS``) for each side."""

    label: str
    planned: tuple[str, ...]
    recipe: tuple[str, ...]
    recipe_label: str
    seed_design: tuple[str, ...]


ROWS = (
    Row(
        "AdrenalMNIST3D 64³ masks at 32³, 20 min",
        ("adrenal32_20min_planned_now_amd_seed?.json",),
        ("adrenal32_20min_cpu_fast32_ms1e0_amd_seed?.json",),
        "cpu-fast32",
        ("adrenal32_20min_defaults_amd_seed?.json",),
    ),
    Row(
        "AdrenalMNIST3D 64³, 30 min",
        ("adrenal64_30min_planned_decay_amd_seed?.json",),
        ("adrenal64_60min_cpu_fast64_amd_seed?.json",),
        "cpu-fast64 (its hour, at 15 / 30 min)",
        ("adrenal64_60min_yardstick_amd_seed?.json", "adrenal64_60min_yardstick_amd_seed0_2026-12-07.json"),
    ),
    Row(
        "AdrenalMNIST3D 64³, 60 min",
        ("adrenal64_60min_planned_amd_seed?.json",),
        ("adrenal64_60min_cpu_fast64_amd_seed?.json",),
        "cpu-fast64",
        ("adrenal64_60min_yardstick_amd_seed?.json", "adrenal64_60min_yardstick_amd_seed0_2026-12-07.json"),
    ),
    Row(
        "ModelNet10 32³, 20 min",
        ("modelnet32_20min_planned_top_hats_from_amdavx2_seed?.json",),
        ("modelnet32_20min_dcgan_w16_b16_amd_seed?.json",),
        "voxel32, half widths, batch 16",
        ("modelnet32_20min_yardstick_amd_seed?.json",),
    ),
    Row(
        "built-in phantoms 64³, 20 min",
        ("phantom64_20min_planned_decay_amd_seed?.json",),
        (
            "phantom64_20min_w16nc2_budget60_amd_seed0.json",
            "phantom64_20min_w16nc2_budget60_beside_planned_amd_seed1.json",
        ),
        "half widths, 2 critic steps, rates over 60 min",
        ("phantom64_20min_seed_design_amd_seed0.json",),
    ),
)


@dataclass(frozen=True)
class Curve:
    """One contender's run: its seed, (minute, FD / reference) points and the real-vs-real spread."""

    file: str
    seed: int
    points: tuple[tuple[float, float], ...]
    spread: float

    def at(self, minute: float) -> float | None:
        near = [r for m, r in self.points if abs(m - minute) < MINUTE_TOLERANCE]
        return near[0] if near else None


def load(path: Path, contender: str | None = None) -> Curve:
    """The named contender of a ``time_to_quality.py`` result (or its only one)."""
    try:
        result = json.loads(path.read_text())
        contenders = result["contenders"]
        name = contender or ("planned" if "planned" in contenders else next(iter(contenders)))
        spread = result.get("reference_spread") or {}
        top = spread["q90"] / spread["median"] if spread.get("q90") and spread.get("median") else 1.0
        points = tuple(
            (float(p["minutes"]), float(p["fd_ratio"])) for p in contenders[name]["points"] if p.get("fd_ratio")
        )
        return Curve(path.name, int(result["settings"]["seed"]), points, top)
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
        raise SystemExit(f"{path}: not a time_to_quality.py result ({type(e).__name__}: {e})") from None


def curves(patterns: tuple[str, ...], root: Path) -> list[Curve]:
    return [load(p) for pattern in patterns for p in sorted(root.glob(pattern))]


def within(planned: float, spread: float, recipe: list[float]) -> bool:
    """As close to real as the recipe's seeds reach, or the spread of real halves above its best."""
    if planned <= spread:
        return True
    return bool(recipe) and (planned <= max(recipe) or planned <= min(recipe) * spread)


def ahead(planned: float, spread: float, seed_design: list[float]) -> bool:
    """Below every seed-design run, or both as close to real as real halves are."""
    return all(planned < s or (planned <= spread and s <= spread) for s in seed_design)


class Verdict(NamedTuple):
    """One planned point against the recipe's and the seed design's runs at the same minute."""

    seed: int
    minute: float
    planned: float
    recipe: list[float]
    seed_design: list[float]
    within: bool
    ahead: bool


@dataclass
class Verdicts:
    row: Row
    lines: list[Verdict]

    def counts(self) -> tuple[int, int, int, int]:
        """(within, points compared with the recipe, ahead, points compared with the seed design)."""
        rec = [v for v in self.lines if v.recipe]
        sd = [v for v in self.lines if v.seed_design]
        return sum(v.within for v in rec), len(rec), sum(v.ahead for v in sd), len(sd)


def judge(row: Row, root: Path = RESULTS) -> Verdicts:
    planned, recipe, design = curves(row.planned, root), curves(row.recipe, root), curves(row.seed_design, root)
    lines = []
    for run in planned:
        for minute, ratio in run.points:
            r = [v for c in recipe if (v := c.at(minute)) is not None]
            s = [v for c in design if (v := c.at(minute)) is not None]
            lines.append(
                Verdict(run.seed, minute, ratio, r, s, within(ratio, run.spread, r), ahead(ratio, run.spread, s))
            )
    return Verdicts(row, lines)


def num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def span(values: list[float]) -> str:
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return num(lo) if math.isclose(lo, hi) else f"{num(lo)}–{num(hi)}"


def text(v: Verdicts) -> str:
    w, nw, a, na = v.counts()
    out = [
        f"{v.row.label}: planned against {v.row.recipe_label} and the seed design (FD / real-vs-real reference)",
        f"  {'seed':>4} {'min':>5} {'planned':>8} {'recipe':>12} {'seed design':>12}  verdict",
    ]
    for x in v.lines:
        verdict = ("within" if x.within else "OUTSIDE") if x.recipe else "no recipe point"
        verdict += ", " + (("ahead" if x.ahead else "NOT ahead") if x.seed_design else "no seed-design point")
        ranges = f"{span(x.recipe):>12} {span(x.seed_design):>12}"
        out.append(f"  {x.seed:>4} {x.minute:>5.1f} {num(x.planned):>8} {ranges}  {verdict}")
    out.append(f"  within at {w} of {nw} points; ahead of the seed design at {a} of {na}")
    return "\n".join(out)


def markdown(all_verdicts: list[Verdicts]) -> str:
    out = [
        "| data, budget | seeds | within the recipe's reach | ahead of the seed design | outside or not ahead |",
        "|---|---|---|---|---|",
    ]
    for v in all_verdicts:
        w, nw, a, na = v.counts()
        seeds = ", ".join(str(s) for s in sorted({x.seed for x in v.lines})) or "none"
        misses = [
            f"seed {x.seed} at {x.minute:.0f} min: {num(x.planned)} (recipe {span(x.recipe)}, "
            f"seed design {span(x.seed_design)})"
            for x in v.lines
            if (x.recipe and not x.within) or (x.seed_design and not x.ahead)
        ]
        out.append(
            f"| {v.row.label} | {seeds} | {w} of {nw} points | {a} of {na} points | {'; '.join(misses) or '–'} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="one summary table instead of every point")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the folder of result files")
    args = ap.parse_args(argv)
    all_verdicts = [judge(row, args.results) for row in ROWS]
    print(markdown(all_verdicts) if args.markdown else "\n\n".join(text(v) for v in all_verdicts))


if __name__ == "__main__":
    main()
