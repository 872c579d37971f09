"""Every benchmark script runs once at a tiny size, so none of them rots (speed itself is not asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
YARDSTICK = REPO.parent / "shared" / "bench" / "naive_cwgan.py"
# with ../shared/bench the yardstick runs too; without it (a clean clone) volgan's rows alone
BASELINE = "yardstick" if YARDSTICK.exists() else "volgan"
YARDSTICK_ARGS = () if YARDSTICK.exists() else ("--yardstick", "none")


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True, timeout=600
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
    args = ("--size", "16", "--batch", "2", "--n-critic", "2", "--rounds", "1", "--ablation", "--end-to-end", "4")
    args += ("--variant", "every step:wgan_gp.gp_every=1")
    table = rows(out := run("train_step.py", *args, *YARDSTICK_ARGS))
    named = {BASELINE, "volgan", "volgan, all perf off", "volgan, fused_norm=off", "volgan, every step"}
    assert named <= set(table), out
    assert table[BASELINE][-1] == "1.00x"
    gflops = float(table["volgan"][2])
    assert gflops > 0  # the FLOP counter saw the convolutions, double backward included
    loop = re.search(r"^end to end: volgan train ([\d.]+) s/critic step .* the loop adds ([+-][\d.]+)%$", out, re.M)
    assert loop and float(loop[1]) > 0, out


def test_train_step_benchmark_races_the_3d_gan_with_its_variants() -> None:
    args = ("--family", "dcgan", "--size", "16", "--batch", "2", "--rounds", "1", "--no-flops")
    out = run("train_step.py", *args, "--variant", "seen:model.top_hats=both")
    table = rows(out)
    assert set(table) == {"volgan", "volgan, seen"}, out  # no yardstick: it is a WGAN-GP
    assert table["volgan"][-1] == "1.00x" and "1 D + 1 G step" in out
    assert float(table["volgan, seen"][0]) > 0


def test_sample_benchmark_prints_a_table() -> None:
    table = rows(out := run("sample.py", "--size", "16", "--batch", "2", "--rounds", "1", *YARDSTICK_ARGS))
    assert {BASELINE, "volgan"} <= set(table), out
    assert float(table["volgan"][1]) > 0  # volumes/s


def test_memory_benchmark_reports_each_setting() -> None:
    out = run("memory.py", "--configs", "16:1,64:1", "--n-critic", "1")
    peaks = {int(m[1]): int(m[2]) for m in re.finditer(r"^\s+(16|64)\s+1\s+[\d.]+\s+(\d+)$", out, re.M)}
    assert set(peaks) == {16, 64}, out
    # The peak must see the activations, not only torch: 64³ holds 64x the voxels of 16³ (seen on the
    # CI machine: 497 vs 732 MiB); the double backward's activations at 64³ alone exceed 100 MiB.
    assert peaks[64] > peaks[16] + 100, out


def test_data_loading_benchmark_reports_the_ratio() -> None:
    out = run("data_loading.py", "--size", "16", "--volumes", "6", "--batch", "2", "--n-critic", "1")
    assert re.search(r"ratio cached loading / training: \d+x", out), out


def test_time_to_quality_records_every_point_with_finite_metrics(tmp_path: Path) -> None:
    import json
    import math

    args = ("--data", "phantom64", "--size", "16", "--minutes", "0.1", "--points", "2", "--n", "8", "--draws", "2")
    args += ("--splits", "2")
    tiny = ("model.ngf=4", "model.ndf=4", "model.latent_dim=8", "model.embed_dim=4", "train.batch_size=2")
    args += ("--judge-epochs", "1", "--phantom-train", "8", "--phantom-held-out", "8", "--out", str(tmp_path))
    args += tuple(x for s in tiny for x in ("--set", s)) + YARDSTICK_ARGS
    args += ("--variant", "short:train.steps=1,train.lr_decay=linear")  # its own steps end it early
    out = run("time_to_quality.py", *args)
    result = json.loads((tmp_path / "time_to_quality.json").read_text())
    contenders = result["contenders"]
    assert set(contenders) == {BASELINE, "volgan", "short"}, out
    short = contenders.pop("short")
    assert [(p["point"], p["steps"]) for p in short["points"]] == [(1, 1)], short["points"]
    assert short["config"]["train"]["steps"] == 1
    for name, c in contenders.items():
        assert [p["point"] for p in c["points"]] == [1, 2], name
        for p in c["points"]:
            for key in ("minutes", "fd", "fd_ref", "recall", "coverage", "w1_intensity", "ms_ssim", "cond_acc"):
                assert math.isfinite(p[key]), (name, key, p)
            assert p["diversity"] is not None and math.isfinite(p["diversity"]), (name, p)
            assert p["w1_intensity_ref"] < p["w1_intensity"], (name, p)  # an untrained generator is far
        assert c["points"][0]["steps"] <= c["points"][1]["steps"]
        for p in c["points"]:  # the mean over two real-vs-real splits, each split's reference kept
            assert p["fd_ref_min"] <= p["fd_ref"] <= p["fd_ref_max"], (name, p)
    spread = result["reference_spread"]
    assert spread["n_splits"] == 20 and spread["min"] <= spread["median"] <= spread["max"], spread
    assert result["settings"]["splits"] == 2
    assert "over 20 half splits" in out and "the mean of splits 0-1" in out, out
    assert result["machine"] and result["threads"] >= 1
    assert (tmp_path / "time_to_quality.png").stat().st_size > 0
    assert (tmp_path / "time_to_quality_samples.png").stat().st_size > 0
    assert "FD/ref" in out

    # --rescore: every point's weights were kept, so the same splits give the same scores again
    # (the same volumes from the same weights; the same process settings), no training
    common = ("--data", "phantom64", "--size", "16", "--n", "8", "--draws", "2", "--judge-epochs", "1")
    common += ("--phantom-train", "8", "--phantom-held-out", "8", "--out", str(tmp_path), *YARDSTICK_ARGS)
    common += ("--rescore", str(tmp_path / "time_to_quality.json"))
    out = run("time_to_quality.py", *common, "--splits", "2")
    again = json.loads((tmp_path / "time_to_quality_rescored.json").read_text())["contenders"]
    assert set(again) == {BASELINE, "volgan", "short"}, out
    for name, c in contenders.items():
        for before, after in zip(c["points"], again[name]["points"], strict=True):
            assert (after["point"], after["steps"]) == (before["point"], before["steps"])
            for key in ("fd", "fd_ref", "recall", "coverage", "ms_ssim", "cond_acc"):
                assert math.isclose(after[key], before[key], rel_tol=1e-6, abs_tol=1e-9), (name, key)
    wrong = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "time_to_quality.py"), *common, "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert wrong.returncode != 0 and "pass its --seed 0 and --n 8" in wrong.stderr, wrong.stderr[-500:]


def test_time_to_quality_planned_contender_takes_set_as_the_users_own(tmp_path: Path) -> None:
    args = ("--data", "phantom64", "--size", "16", "--minutes", "0.05", "--points", "1", "--n", "8", "--draws", "2")
    args += ("--splits", "2", "--judge-epochs", "1", "--phantom-train", "8", "--phantom-held-out", "8")
    args += ("--out", str(tmp_path), "--contenders", "planned", "--set", "model.output_head=resize")
    out = run("time_to_quality.py", *args, "--yardstick", "none")
    planned = json.loads((tmp_path / "time_to_quality.json").read_text())["contenders"]["planned"]
    assert planned["config"]["model"]["output_head"] == "resize", out
    by = {c["key"]: c["by"] for c in planned["plan"]["choices"]}
    assert by["model.output_head"] == "you" and by["model.family"] == "plan", by


def test_samples_figure_shows_the_slice_with_the_most_foreground_of_the_first_volumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small object away from the grid's centre would miss the middle slice: the figure takes
    the axial slice holding most of it, for the first volumes of each class, classes in order."""
    import importlib

    import numpy as np

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the script and its sibling _harness
    ttq = importlib.import_module("time_to_quality")
    vols = -np.ones((5, 8, 8, 8), np.float32)
    for i, z in enumerate([1, 2, 6, 7, 3]):
        vols[i, 2:5, 3:6, z] = 1.0  # volume i's object lies in axial slice z
    labels = np.array([1, 0, 1, 0, 1])
    slices = ttq.fullest_slices(vols, labels, per_class=2)
    # class 0 first (volumes 1, 3), then class 1 (volumes 0, 2; volume 4 is past per_class)
    expected = np.stack([vols[i][:, :, z] for i, z in ((1, 2), (3, 7), (0, 1), (2, 6))])
    np.testing.assert_array_equal(slices, expected)
    assert slices[:, 2:5, 3:6].min() == 1.0  # every shown slice holds its object


def curve_file(path: Path, seed: int, contenders: dict[str, list[float]], ref: float = 0.02, top: float = 1.5) -> Path:
    """A time_to_quality.json with FD / reference at each point, every split's reference <= top × ref."""

    def points(ratios: list[float]) -> list[dict[str, float]]:
        return [
            {"point": i + 1, "minutes": 5.0 * (i + 1), "fd": r * ref, "fd_ratio": r}
            | {"fd_ref": ref, "fd_ref_max": top * ref}
            for i, r in enumerate(ratios)
        ]

    result = {
        "settings": {"seed": seed},
        "reference_spread": {"q90": 2 * ref, "median": ref},
        "contenders": {name: {"kind": "volgan", "points": points(r)} for name, r in contenders.items()},
    }
    path.write_text(json.dumps(result))
    return path


def test_compare_curves_calls_a_point_a_tie_only_where_both_are_as_close_as_real_halves(tmp_path: Path) -> None:
    files = [
        curve_file(tmp_path / "a0.json", 0, {"ours": [0.9, 1.2, 3.0]}),
        curve_file(tmp_path / "b0.json", 0, {"yardstick": [40.0, 1.0, 2.0]}),
        curve_file(tmp_path / "s1.json", 1, {"renamed": [1.6, 0.5], "yardstick": [1.7, 0.4]}),
    ]
    out = run("compare_curves.py", "ours,renamed=cpu_fast", "yardstick", *map(str, files))
    verdicts = [line.split(None, 7)[-1] for line in out.splitlines() if re.match(r"^\s+[01]\s+\d\s", line)]
    # seed 0: 0.9 vs 40 ahead; 1.2 vs 1.0 both <= 1.5 (the highest real-vs-real FD): a tie, B lower;
    # 3.0 vs 2.0 behind. seed 1: 1.6 vs 1.7 both above 1.5: ahead; 0.5 vs 0.4 a tie, B lower
    assert verdicts == ["ahead", "tie, B lower", "behind", "ahead", "tie, B lower"]
    assert "cpu_fast against yardstick: ahead at 2, tied at 2 (lower at 0 of them), behind at 1 of 5 points" in out
    assert "(behind: seed 0 point 3)" in out
    assert re.search(r"point 1: A 1\.20  B 8\.25  \(2 seeds\)", out)  # geometric means: sqrt(0.9·1.6), sqrt(40·1.7)


def test_compare_curves_refuses_runs_scored_against_different_references(tmp_path: Path) -> None:
    a = curve_file(tmp_path / "a.json", 0, {"ours": [1.0]}, ref=0.02)
    b = curve_file(tmp_path / "b.json", 0, {"yardstick": [1.0]}, ref=0.03)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compare_curves.py"), "ours", "yardstick", str(a), str(b)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert f"seed 0, point 1: ours ({a}) and yardstick ({b}) were scored against different" in proc.stderr
    assert "Traceback" not in proc.stderr
    missing = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compare_curves.py"), "other", "yardstick", str(a), str(b)],
        capture_output=True,
        text=True,
    )
    assert "no seed has both other (seeds none) and yardstick (seeds [0])" in missing.stderr


def test_planned_verdicts_calls_a_point_within_reach_and_ahead_only_where_it_is(tmp_path: Path) -> None:
    # the phantom row's files; real halves spread up to 2x the reference (q90 / median)
    curve_file(tmp_path / "phantom64_20min_planned_decay_amd_seed0.json", 0, {"planned": [3.0, 50.0]})
    curve_file(tmp_path / "phantom64_20min_planned_decay_amd_seed1.json", 1, {"planned": [1.5, 70.0]})
    curve_file(tmp_path / "phantom64_20min_w16nc2_budget60_amd_seed0.json", 0, {"w16nc2decay": [10.0, 30.0]})
    curve_file(tmp_path / "phantom64_20min_seed_design_amd_seed0.json", 0, {"volgan": [2.5, 100.0]})
    out = run("planned_verdicts.py", "--results", str(tmp_path))
    block = out.split("built-in phantoms")[1]
    verdicts = [line.split(None, 5)[-1] for line in block.splitlines() if re.match(r"^\s+[01]\s+\d", line)]
    # 3.0: below the recipe's 10 but not the seed design's 2.5; 50: under 30 x 2; 1.5: as close as real
    # halves (<= 2); 70: past 30 x 2
    assert verdicts == ["within, NOT ahead", "within, ahead", "within, ahead", "OUTSIDE, ahead"]
    table = run("planned_verdicts.py", "--results", str(tmp_path), "--markdown")
    assert (
        "| built-in phantoms 64³, 20 min | 0, 1 | 3 of 4 points | 3 of 4 points | seed 0 at 5 min: 3.00 (recipe 10.0, "
        "seed design 2.50); seed 1 at 10 min: 70.0 (recipe 30.0, seed design 100) |" in table
    )
    assert "| ModelNet10 32³, 20 min | none | 0 of 0 points | 0 of 0 points | – |" in table
