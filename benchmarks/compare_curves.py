"""Compare two contenders' time-to-quality curves over several seeds, point by point, with FD's own noise.

    python benchmarks/compare_curves.py cpu_fast32 yardstick RUN_SEED0/time_to_quality.json RUN_SEED1/...
    python benchmarks/compare_curves.py ms025e0=cpu_fast32 yardstick OUT*/time_to_quality.json

A and B are contender names as ``time_to_quality.py`` wrote them (``volgan``, ``yardstick`` or a
``--variant`` name); ``NAME=LABEL`` takes NAME from the files and prints LABEL, and several names
for one side (``fast_ms025,ms025e0=cpu_fast32``) collect runs that carry different names. Each file
may hold A, B or both; runs are matched by seed, and the two runs of a seed must have been scored
against the same held-out reference (the same judge and splits: copy the first run's judge folder
into the second's ``--out``), else the comparison stops with the two files named.

At every point of every seed the verdict compares FD / reference (lower is closer to the held-out
data): **tie** (with which one is lower) when both are at or below the highest real-vs-real FD of that point's splits
(``--splits R``: ``fd_ref_max``; one split: the 90th percentile of the run's 20-split spread; neither
recorded: the reference itself), so
that neither can be told from real data by FD and the order between them is split noise; else
**ahead** or **behind**. The last lines give each point's geometric mean over the seeds and the
count of each verdict.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def side(text: str) -> tuple[set[str], str]:
    """'a,b=label' -> ({'a', 'b'}, 'label'); 'a' -> ({'a'}, 'a')."""
    names, _, label = text.partition("=")
    found = {n.strip() for n in names.split(",") if n.strip()}
    if not found:
        raise SystemExit(f"{text!r}: expected NAME[,NAME...][=LABEL]")
    return found, label or names


def collect(paths: list[Path], names: set[str], label: str) -> dict[int, tuple[Path, dict[str, Any]]]:
    """Seed -> (file, contender) for the contender of ``names`` in each file."""
    runs: dict[int, tuple[Path, dict[str, Any]]] = {}
    for path in paths:
        try:
            result = json.loads(path.read_text())
            seed, contenders = int(result["settings"]["seed"]), result["contenders"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}: not a time_to_quality.py result ({type(e).__name__}: {e})") from None
        for name in names & set(contenders):
            if seed in runs:
                raise SystemExit(f"{label}: two runs for seed {seed}: {runs[seed][0]} and {path}")
            runs[seed] = path, {**contenders[name], "reference_spread": result.get("reference_spread") or {}}
    return runs


def tie_ceiling(point: dict[str, Any], spread: dict[str, Any]) -> float:
    """The highest real-vs-real FD of the point's splits, as a multiple of its reference."""
    ref = point["fd_ref"]
    top = point.get("fd_ref_max") or spread.get("q90")
    return top / ref if top and ref else 1.0


def verdict(a: float | None, b: float | None, ceiling: float) -> str:
    if a is None or b is None:
        return "–"
    if a <= ceiling and b <= ceiling:
        return "tie" + (", A lower" if a < b else ", B lower" if b < a else "")
    return "ahead" if a < b else "behind"


def compare(paths: list[Path], a_spec: str, b_spec: str) -> str:
    (a_names, a_label), (b_names, b_label) = side(a_spec), side(b_spec)
    runs_a, runs_b = collect(paths, a_names, a_label), collect(paths, b_names, b_label)
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds:
        raise SystemExit(
            f"no seed has both {a_label} (seeds {sorted(runs_a) or 'none'}) and {b_label} "
            f"(seeds {sorted(runs_b) or 'none'}) in these files"
        )
    lines = [
        f"A = {a_label}, B = {b_label}: FD / real-vs-real reference (lower is closer to the held-out data); "
        "tie = both at or below the highest real-vs-real FD of the point's splits",
        f"{'seed':>4}  {'point':>5}  {'min A':>6}  {'min B':>6}  {'A':>7}  {'B':>7}  {'real up to':>10}  verdict",
    ]
    counts = {"ahead": 0, "tie": 0, "behind": 0, "–": 0}
    behind: list[str] = []
    a_lower_in_ties = 0
    by_point: dict[int, list[tuple[float, float]]] = {}
    for seed in seeds:
        (path_a, a), (path_b, b) = runs_a[seed], runs_b[seed]
        if len(a["points"]) != len(b["points"]):
            raise SystemExit(f"seed {seed}: {len(a['points'])} points in {path_a}, {len(b['points'])} in {path_b}")
        for pa, pb in zip(a["points"], b["points"], strict=True):
            ra, rb = pa["fd_ref"], pb["fd_ref"]
            if not (ra and rb and math.isclose(ra, rb, rel_tol=1e-6)):
                raise SystemExit(
                    f"seed {seed}, point {pa['point']}: {a_label} ({path_a}) and {b_label} ({path_b}) were scored "
                    f"against different real-vs-real references ({ra} and {rb}): another judge or other splits"
                )
            ceiling = tie_ceiling(pa, a["reference_spread"])
            fa, fb = pa.get("fd_ratio"), pb.get("fd_ratio")
            v = verdict(fa, fb, ceiling)
            counts[v.partition(",")[0]] += 1
            a_lower_in_ties += v == "tie, A lower"
            if v == "behind":
                behind.append(f"seed {seed} point {pa['point']}")
            if fa and fb:
                by_point.setdefault(pa["point"], []).append((fa, fb))
            lines.append(
                f"{seed:>4}  {pa['point']:>5}  {pa['minutes']:>6.1f}  {pb['minutes']:>6.1f}  {num(fa):>7}  "
                f"{num(fb):>7}  {ceiling:>10.2f}  {v}"
            )
    lines.append(f"geometric mean over {len(seeds)} seed(s):")
    for point, pairs in sorted(by_point.items()):
        ga = math.exp(sum(math.log(x) for x, _ in pairs) / len(pairs))
        gb = math.exp(sum(math.log(y) for _, y in pairs) / len(pairs))
        lines.append(f"  point {point}: A {num(ga)}  B {num(gb)}  ({len(pairs)} seeds)")
    total = sum(counts[k] for k in ("ahead", "tie", "behind"))
    summary = f"{a_label} against {b_label}: ahead at {counts['ahead']}, tied at {counts['tie']} "
    summary += f"(lower at {a_lower_in_ties} of them), "
    summary += f"behind at {counts['behind']} of {total} points"
    lines.append(summary + (f" (behind: {', '.join(behind)})" if behind else ""))
    return "\n".join(lines)


def num(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if x >= 100 else f"{x:.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("a", help="contender A: NAME[,NAME...][=LABEL]")
    ap.add_argument("b", help="contender B: NAME[,NAME...][=LABEL]")
    ap.add_argument("results", nargs="+", type=Path, help="time_to_quality.json files (any order)")
    args = ap.parse_args(argv)
    print(compare(args.results, args.a, args.b))


if __name__ == "__main__":
    main()
