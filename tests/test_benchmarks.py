"""Every benchmark script runs once at a tiny size, so none of them rots (speed itself is not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
YARDSTICK = REPO.parent / "shared" / "bench" / "naive_cwgan.py"
# with ../shared/bench the yardstick runs too; without it (a clean clone) volgan's rows alone
BASELINE = "yardstick" if YARDSTICK.exists() else "volgan"
YARDSTICK_ARGS = () if YARDSTICK.exists() else ("--yardstick", "none")


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def rows(out: str) -> dict[str, list[str]]:
    """Table rows by name -> their numeric columns."""
    table = {}
    for line in out.splitlines():
        m = re.match(r"^(\S.*?)\s{2,}([\d.]+(?:\s+[\d.nan]+)+x?)$", line)
        if m:
            table[m.group(1)] = m.group(2).split()
    return table


def test_train_step_benchmark_prints_a_table_with_ablation() -> None:
    args = ("--size", "16", "--batch", "2", "--n-critic", "2", "--rounds", "1", "--ablation", *YARDSTICK_ARGS)
    table = rows(out := run("train_step.py", *args))
    assert {BASELINE, "volgan", "volgan, all perf off", "volgan, fused_norm=off"} <= set(table), out
    assert table[BASELINE][-1] == "1.00x"
    gflops = float(table["volgan"][2])
    assert gflops > 0  # the FLOP counter saw the convolutions, double backward included


def test_sample_benchmark_prints_a_table() -> None:
    table = rows(out := run("sample.py", "--size", "16", "--batch", "2", "--rounds", "1", *YARDSTICK_ARGS))
    assert {BASELINE, "volgan"} <= set(table), out
    assert float(table["volgan"][1]) > 0  # volumes/s


def test_memory_benchmark_reports_each_setting() -> None:
    out = run("memory.py", "--configs", "16:1,16:2", "--n-critic", "1")
    peaks = [int(line.split()[-1]) for line in out.splitlines() if re.match(r"^\s+16\s+[12]\s", line)]
    assert len(peaks) == 2 and all(p > 100 for p in peaks), out  # MiB: at least torch itself is resident


def test_data_loading_benchmark_reports_the_ratio() -> None:
    out = run("data_loading.py", "--size", "16", "--volumes", "6", "--batch", "2", "--n-critic", "1")
    assert re.search(r"ratio cached loading / training: \d+x", out), out
