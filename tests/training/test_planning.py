"""The planner: fingerprints of small folders, its rules under a stand-in step timer, and the probe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from volgan.config import DataConfig, build_config
from volgan.errors import ConfigError
from volgan.planning import Fingerprint, StepTime, fingerprint_path, fingerprint_volumes, make_plan
from volgan.planning.planner import MIN_STEPS, POLISH_STEPS, WIDE_STEPS
from volgan.planning.probe import scaled, time_config
from volgan.planning.setup import planned_config, resolve_config, write_plan
from volgan.schedule import part_done, step_plan


def _fp(*, occupancy: bool = False, edge: int = 64, classes: int = 2) -> Fingerprint:
    return Fingerprint(
        source="test",
        n_volumes=20 * classes,
        classes={str(k): 20 for k in range(classes)},
        shape_median=(edge,) * 3,
        shape_min=(edge,) * 3,
        shape_max=(edge,) * 3,
        spacing_median=(1.0, 1.0, 1.0),
        anisotropy=1.0,
        intensity={"min": 0.0, "p0.5": 0.0, "median": 0.0, "p99.5": 1.0, "max": 1.0},
        two_valued_share=1.0 if occupancy else 0.0,
        occupancy_like=occupancy,
        foreground_fraction=0.1,
        sampled=20,
    )


def _timer(at32_w16: float) -> object:
    """A machine whose 32³ width-16 step takes ``at32_w16`` seconds; the work grows with the voxels and
    3x from width 16 to 32 (as the real probe's scaling assumes)."""

    def timer(grid: int, width: int) -> StepTime:
        s = at32_w16 * (grid / 32) ** 3 * (3.0 if width >= 32 else 1.0)
        return StepTime(grid, width, s, True, "stand-in")

    return timer


def test_occupancy_grids_are_planned_as_the_3dgan_with_binary_data() -> None:
    plan = make_plan(_fp(occupancy=True, edge=32), 20, timer=_timer(0.1))
    assert plan.value("model.family") == "dcgan" and plan.value("data.binary") is True
    assert "two values" in next(c.reason for c in plan.choices if c.key == "model.family")
    assert build_config(plan.overrides(), "<plan>").model.output_head == "resize"
    assert build_config(plan.overrides(), "<plan>").sample.clean is True
    assert "pieces" in next(c.reason for c in plan.choices if c.key == "sample.clean")
    # from half-way the discriminator sees the top-hats (the perforated walls close)
    model = build_config(plan.overrides(), "<plan>").model
    assert model.top_hats == "both" and model.top_hats_from == 0.5
    assert "holes" in next(c.reason for c in plan.choices if c.key == "model.top_hats")


def test_masks_on_a_finer_grid_than_planned_are_resampled_intensities_for_the_wgan_gp() -> None:
    slow = make_plan(_fp(occupancy=True, edge=64), 20, timer=_timer(0.4))  # 64³ does not fit: 32³
    assert slow.value("data.size") == 32 and slow.value("model.family") == "wgan_gp"
    assert "data.binary" not in slow.overrides()["data"]  # partial volumes kept
    assert slow.value("data.intensity_percentiles") == [0.0, 100.0]  # a sparse mask's foreground is not clipped
    assert "resampled from 64 to 32" in next(c.reason for c in slow.choices if c.key == "model.family")
    fast = make_plan(_fp(occupancy=True, edge=64), 20, timer=_timer(0.01))  # its own 64³: two-valued
    assert fast.value("data.size") == 64 and fast.value("model.family") == "wgan_gp"
    assert fast.value("data.binary") is True
    # two-valued masks: the critic sees the top-hats from half-way; resampled ones (unmeasured) do not
    assert fast.value("model.top_hats") == "both" and fast.value("model.top_hats_from") == 0.5
    assert "holes" in next(c.reason for c in fast.choices if c.key == "model.top_hats")
    assert build_config(slow.overrides(), "<plan>").model.top_hats == "none"
    up = make_plan(_fp(occupancy=True, edge=24), 20, timer=_timer(0.01))  # upsampled to 32³: still the 3D-GAN
    assert up.value("model.family") == "dcgan" and up.value("data.binary") is True


def test_intensities_are_planned_as_the_conditional_wgan_gp() -> None:
    plan = make_plan(_fp(edge=64), 30, timer=_timer(0.05))
    assert plan.value("model.family") == "wgan_gp"
    assert plan.value("model.ac_weight") == 1.0  # two classes: the auxiliary-classifier head
    assert plan.value("model.output_head") == "resize"
    assert "fewer holes" in next(c.reason for c in plan.choices if c.key == "model.output_head")
    assert plan.value("sample.clean") is True  # specks removed, intensities elsewhere kept
    assert "data.binary" not in plan.overrides()["data"]
    assert build_config(plan.overrides(), "<plan>").model.top_hats == "none"  # measured on two-valued data only
    one = make_plan(_fp(edge=64, classes=1), 30, timer=_timer(0.05))
    assert one.value("model.ac_weight") == 0.0


def test_the_budget_is_the_runs_budget_and_its_schedules() -> None:
    plan = make_plan(_fp(), 12.5, timer=_timer(0.05))
    cfg = build_config(plan.overrides(), "<plan>")
    assert cfg.train.budget_minutes == 12.5 and cfg.train.lr_decay == "linear"
    assert plan.predicted_steps == int(12.5 * 60 / plan.step_time.seconds)
    # the budget, not the step count, ends the run and sets the decay, even on a machine 5x faster
    # than the probe saw (e.g. the probe ran beside another job)
    budget_s = 60 * cfg.train.budget_minutes
    assert part_done(cfg.train, 5 * plan.predicted_steps, 0.9 * budget_s) == pytest.approx(0.9)


def test_grid_steps_down_until_the_budget_holds_the_steps_it_needs() -> None:
    # 64³ at width 16: 8 x 0.4 s = 3.2 s a step; 30 minutes hold ~560 < 1000 needed -> 32³
    plan = make_plan(_fp(edge=64), 30, timer=_timer(0.4))
    assert plan.value("data.size") == 32
    assert "64³ would hold only" in next(c.reason for c in plan.choices if c.key == "data.size")
    # a faster machine: the data's own 64³
    fast = make_plan(_fp(edge=64), 30, timer=_timer(0.05))
    assert fast.value("data.size") == 64


def test_a_budget_short_of_the_steps_needed_says_so_and_how_long_would_do() -> None:
    plan = make_plan(_fp(edge=32), 3, timer=_timer(0.3))  # 600 steps at 32³, 1000 needed
    assert plan.value("data.size") == 32
    assert "smallest grid planned: ~600 steps" in next(c.reason for c in plan.choices if c.key == "data.size")
    assert any("fewer than the ~1000" in n and "--minutes 5 would hold them" in n for n in plan.notes), plan.notes
    assert plan.value("train.lr_decay") == "none"  # too few steps for rates falling to 0
    assert "~600 steps are fewer than 1000" in next(c.reason for c in plan.choices if c.key == "train.lr_decay")
    enough = make_plan(_fp(edge=32), 30, timer=_timer(0.3))
    assert not enough.notes and enough.value("train.lr_decay") == "linear"
    assert "lr_decay_to" not in enough.overrides()["train"]  # ~6000 steps: the rates reach 0


def test_rates_in_a_run_short_of_polishing_stop_part_way() -> None:
    plan = make_plan(_fp(edge=32), 7.5, timer=_timer(0.3))  # ~1500 steps: enough to decay, too few to reach 0
    assert plan.value("train.lr_decay") == "linear"
    assert plan.value("train.lr_decay_to") == pytest.approx(1 - plan.predicted_steps / POLISH_STEPS, abs=0.01)
    assert 0.5 < plan.value("train.lr_decay_to") < 0.7
    assert "fewer than the ~4000" in next(c.reason for c in plan.choices if c.key == "train.lr_decay_to")
    cfg = build_config(plan.overrides(), "<plan>")
    assert step_plan(cfg.train, 0, 60 * 7.5).lr_scale == pytest.approx(plan.value("train.lr_decay_to"))


def test_small_volumes_are_not_upsampled_beyond_a_quarter() -> None:
    assert make_plan(_fp(edge=40), 30, timer=_timer(0.01)).value("data.size") == 32
    assert make_plan(_fp(edge=52), 30, timer=_timer(0.01)).value("data.size") == 64


def test_a_cpu_plans_at_most_64_and_says_so() -> None:
    plan = make_plan(_fp(edge=256), 240, timer=_timer(0.001))
    assert plan.value("data.size") == 64
    assert any("not planned on a CPU" in n for n in plan.notes)


def test_a_gpu_may_plan_128_and_is_marked_as_unmeasured() -> None:
    plan = make_plan(_fp(edge=256), 240, device="cuda", timer=_timer(0.001))
    assert plan.value("data.size") == 128
    assert any("not been checked against quality curves" in n for n in plan.notes)


def test_a_gpu_plans_no_step_its_memory_cannot_hold() -> None:
    def gpu(grid: int, width: int) -> StepTime:  # fast, but 128³ takes 12 GB at width 16 and 24 GB at 32
        return StepTime(grid, width, 1e-4 * (grid / 32) ** 3, True, "stand-in", 12.0 * (grid / 128) ** 3 * width / 16)

    roomy = make_plan(_fp(edge=256), 240, device="cuda", memory_gb=80, timer=gpu)
    assert roomy.value("data.size") == 128 and roomy.value("model.ngf") == 32
    mid = make_plan(_fp(edge=256), 240, device="cuda", memory_gb=20, timer=gpu)  # 0.8 x 20 = 16 GB
    assert mid.value("data.size") == 128 and mid.value("model.ngf") == 16
    small = make_plan(_fp(edge=256), 240, device="cuda", memory_gb=8, timer=gpu)
    assert small.value("data.size") == 64


def test_a_probe_out_of_gpu_memory_is_a_candidate_never_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from volgan.planning import planner

    def fake_probe(cfg: dict, num_classes: int) -> StepTime:
        grid, width = cfg["data"]["size"], cfg["model"]["ngf"]
        if grid >= 128:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return StepTime(grid, width, 1e-3 * (grid / 32) ** 3, True, "stand-in", 1.0)

    monkeypatch.setattr(planner, "time_config", fake_probe)
    plan = make_plan(_fp(edge=256), 240, device="cuda", memory_gb=80)
    assert plan.value("data.size") == 64
    assert any(p.how == "out of GPU memory here" and p.grid == 128 for p in plan.probes)
    json.loads(json.dumps(plan.to_dict()), parse_constant=lambda c: pytest.fail(f"{c} in plan.json"))


def test_full_widths_only_where_the_budget_holds_many_of_their_steps() -> None:
    need = WIDE_STEPS["wgan_gp"]
    s_wide = 3.0 * 0.01 * 8  # a 64³ width-32 step of the stand-in machine
    long = make_plan(_fp(edge=64), 1.2 * need * s_wide / 60, timer=_timer(0.01))
    short = make_plan(_fp(edge=64), 0.8 * need * s_wide / 60, timer=_timer(0.01))
    assert long.value("model.ngf") == 32 and long.value("train.wgan_gp.n_critic") == 5
    assert short.value("model.ngf") == 16 and short.value("train.wgan_gp.n_critic") == 2
    assert "half widths" in next(c.reason for c in short.choices if c.key == "model.ngf")


def test_what_the_user_sets_wins_and_is_shown_as_theirs() -> None:
    user = {"data": {"size": 48}, "model": {"ngf": 24}, "train": {"batch_size": 2, "lr_g": 3e-4}}
    plan = make_plan(_fp(edge=64), 30, user, timer=_timer(0.05))
    by = {c.key: (c.value, c.by) for c in plan.choices}
    assert by["data.size"] == (48, "you") and by["model.ngf"] == (24, "you")
    assert by["train.batch_size"] == (2, "you") and by["train.lr_g"] == (3e-4, "you")
    assert by["model.family"][1] == "plan"
    assert "train" not in plan.overrides() or "batch_size" not in plan.overrides()["train"]
    assert "[set by you]" in plan.summary()
    forced = make_plan(_fp(occupancy=True, edge=32), 30, {"model": {"family": "wgan_gp"}}, timer=_timer(0.05))
    assert forced.value("model.family") == "wgan_gp"


def test_a_budget_too_small_for_one_step_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"0\.01 minutes hold no generator step at 32³"):
        make_plan(_fp(edge=32), 0.01, timer=_timer(5.0))
    for bad in (0, -1, float("nan")):
        with pytest.raises(ConfigError, match="--minutes must be > 0"):
            make_plan(_fp(), bad, timer=_timer(0.05))


def test_no_budget_means_the_stated_default() -> None:
    plan = make_plan(_fp(), None, timer=_timer(0.05))
    assert plan.minutes == 30 and "default" in plan.budget_from
    assert plan.summary().startswith("budget:   30 min of training (default")


def test_the_fewest_steps_the_rules_ask_for_are_the_measured_ones() -> None:
    assert MIN_STEPS == {"wgan_gp": 1000, "dcgan": 2000}  # docs/planner.md names the measurements


def _class_folders(root: Path, values: str, size: int = 12, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for k in range(2):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(n + k):
            if values == "occupancy":
                v = (rng.uniform(size=(size,) * 3) > 0.8).astype(np.uint8) * 255
            else:
                v = rng.normal(100 + 50 * k, 10, (size,) * 3).astype(np.float32)
            np.save(root / f"c{k}" / f"v{i}.npy", v)
    return root


def test_fingerprint_of_occupancy_class_folders(tmp_path: Path) -> None:
    fp = fingerprint_path(DataConfig(), _class_folders(tmp_path / "d", "occupancy"))
    assert fp.classes == {"c0": 3, "c1": 4} and fp.n_volumes == 7 and fp.num_classes == 2
    assert fp.occupancy_like and fp.two_valued_share == 1.0
    assert fp.shape_median == (12, 12, 12) and fp.native_edge == 12
    assert fp.intensity["min"] == 0 and fp.intensity["max"] == 255
    assert 0.1 < fp.foreground_fraction < 0.3  # ~20 % of the voxels are set
    assert "occupancy grids" in fp.summary()


def test_fingerprint_of_intensity_volumes(tmp_path: Path) -> None:
    fp = fingerprint_path(DataConfig(), _class_folders(tmp_path / "d", "intensity"))
    assert not fp.occupancy_like and fp.two_valued_share == 0.0
    assert 90 < fp.intensity["median"] < 160
    json.dumps(fp.to_dict())  # plan.json holds it


def test_fingerprint_reads_voxel_sizes_and_anisotropy_from_nifti(tmp_path: Path) -> None:
    for k in range(2):
        (tmp_path / str(k)).mkdir()
        for i in range(2):
            volume = np.random.default_rng(i).normal(size=(20, 16, 8)).astype(np.float32)
            img = nib.Nifti1Image(volume, np.diag([1.0, 1.0, 3.0, 1.0]))  # 3 mm slices
            nib.save(img, tmp_path / str(k) / f"s{i}.nii.gz")
    fp = fingerprint_path(DataConfig(), tmp_path)
    assert fp.shape_median == (20, 16, 8) and fp.native_edge == 20
    assert fp.spacing_median == pytest.approx((1.0, 1.0, 3.0))
    assert fp.anisotropy == pytest.approx(3.0)


def test_fingerprint_of_volumes_in_memory() -> None:
    from volgan.data.volume_set import VolumeSet

    vols = np.where(np.random.default_rng(0).uniform(size=(6, 16, 16, 16)) > 0.5, 1.0, -1.0).astype(np.float32)
    fp = fingerprint_volumes(VolumeSet.from_arrays(vols, np.arange(6) % 3, ["a", "b", "c"]))
    assert fp.classes == {"a": 2, "b": 2, "c": 2} and fp.occupancy_like and fp.native_edge == 16


def test_probe_times_real_steps_and_scaling_follows_the_work() -> None:
    cfg = {"data": {"size": 16}, "model": {"ngf": 4, "ndf": 4, "latent_dim": 8}, "train": {"batch_size": 2}}
    t = time_config(cfg, num_classes=2, steps=1, warmup=1)
    assert t.measured and t.grid == 16 and t.width == 4 and t.seconds > 0
    up = scaled(t, 32, 8)
    assert not up.measured and up.seconds == pytest.approx(t.seconds * 8 * 2**1.6)


def test_probe_times_a_part_way_critic_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    from volgan.planning import probe

    seen: list[float] = []

    def fake(cfg: dict, num_classes: int, steps: int, warmup: int) -> StepTime:
        part = cfg["model"].get("top_hats_from", 0.0)
        seen.append(part)
        return StepTime(32, 16, 0.3 if part else 0.5, True, "stand-in")  # on from the start: dearer

    monkeypatch.setattr(probe, "_time_steps", fake)
    cfg = {"model": {"family": "dcgan", "top_hats": "both", "top_hats_from": 0.5}}
    t = time_config(cfg, num_classes=2)
    assert seen == [0.5, 0.0]  # as the run starts, then with the channels seen from the first step
    # half the budget at 0.3 s and half at 0.5 s: 1/0.3 + 1/0.5 steps per 2 s
    assert t.seconds == pytest.approx(2 / (1 / 0.3 + 1 / 0.5)) and "0.3 s" in t.how and "0.5 s" in t.how
    seen.clear()
    assert time_config({"model": {"top_hats": "both"}}, num_classes=2).seconds == 0.5 and seen == [0.0]


def test_probe_of_a_part_way_critic_runs_real_steps() -> None:
    model = {"ngf": 4, "ndf": 4, "latent_dim": 8, "family": "dcgan", "top_hats": "both", "top_hats_from": 0.5}
    cfg = {"data": {"size": 16}, "model": model, "train": {"batch_size": 2}}
    t = time_config(cfg, num_classes=2, steps=1, warmup=1)
    assert t.measured and t.seconds > 0 and "each way" in t.how


def test_planned_config_from_a_folder_with_the_real_probe(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "d", "intensity", size=16)
    user = {"data": {"root": str(root), "size": 16}, "model": {"latent_dim": 8}, "device": "cpu"}
    cfg, plan = planned_config(values=user, minutes=1.0)
    assert cfg.data.size == 16 and cfg.model.latent_dim == 8 and cfg.train.budget_minutes == 1.0
    assert plan.probes and all(p.measured for p in plan.probes)
    assert plan.planning_seconds < 0.5 * 60  # the probe stays in its share of a minute's budget (plus set-up)
    (tmp_path / "run").mkdir()
    written = json.loads(write_plan(tmp_path / "run", plan).read_text())
    assert written["choices"] and written["fingerprint"]["classes"] == {"c0": 3, "c1": 4}


def test_a_config_file_or_preset_is_taken_as_given_with_the_budget(tmp_path: Path) -> None:
    cfg, plan = resolve_config({"model": {"ngf": 8}}, minutes=7.0, values={"data": {"root": str(tmp_path)}})
    assert plan is None and cfg.model.ngf == 8 and cfg.train.budget_minutes == 7.0
    with pytest.raises(ConfigError, match="--minutes must be > 0"):
        resolve_config({}, minutes=0.0)


# --- through the command line ---------------------------------------------------------------------


def _cli_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from conftest import write_class_folders

    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(tmp_path / "cache"))
    return write_class_folders(tmp_path / "data", n_per_class=3, size=16, classes=2)


SMALL = ["--set", "data.size=16", "--set", "model.latent_dim=8", "--device", "cpu"]


def test_volgan_plan_prints_the_plan_and_how_to_train_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from volgan.cli import main

    data = _cli_data(tmp_path, monkeypatch)
    saved = tmp_path / "plan.yaml"
    assert main(["plan", "--data", str(data), "--minutes", "2", *SMALL, "--save-config", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "volumes:     6 in 2 class(es) (0: 3, 1: 3)" in out and "budget:   2 min of training (--minutes)" in out
    assert re.search(r"data\.size +16 +your grid +\[set by you\]", out), out
    assert f"train it: volgan train --data {data} --minutes 2 --set data.size=16" in out
    from volgan.config import load_config

    cfg = load_config(saved)  # the plan as a config file: trains as given (e.g. under torchrun)
    assert cfg.train.budget_minutes == 2 and cfg.model.family == "wgan_gp" and cfg.data.size == 16
    assert main(["plan", "--data", str(data), "--minutes", "2", *SMALL, "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["minutes"] == 2 and {c["key"] for c in as_json["choices"]} >= {
        "model.family",
        "train.wgan_gp.n_critic",
    }
    assert as_json["planning_seconds"] < 30


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["train", "--minutes", "0"], r"--minutes: must be a finite number > 0, got '0'"),
        (["train", "--minutes", "-1"], r"--minutes: must be a finite number > 0"),
        (["train", "--minutes", "abc"], r"--minutes: expected a number, got 'abc'"),
        (["plan", "--minutes", "nan"], r"--minutes: must be a finite number > 0"),
        (["train", "--config", "a.yaml", "--preset", "cpu-fast32"], r"--preset: not allowed with argument --config"),
        (["train", "--preset", "nope"], r"unknown preset 'nope'; presets: 3dgan-published, cpu-fast32"),
        (["plan", "--preset", "cpu-fast32"], r"a config file or preset is a whole recipe"),
    ],
)
def test_bad_budget_or_base_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    match: str,
) -> None:
    from volgan.cli import main

    data = _cli_data(tmp_path, monkeypatch)
    run = tmp_path / "run"
    argv = [*args, "--data", str(data), *(["--run-dir", str(run)] if args[0] == "train" else [])]
    try:
        code = main(argv)
    except SystemExit as stop:  # the argument parser's own refusals
        code = int(stop.code or 0)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("volgan: error: ") and len(err.splitlines()) == 1, err
    assert re.search(match, err), err
    assert not run.exists()


def test_train_with_no_config_trains_the_plan_and_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from volgan.cli import main

    data = _cli_data(tmp_path, monkeypatch)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--run-dir", str(run), "--minutes", "1", *SMALL, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "foreground:" in out and "budget:   1 min of training" in out and not run.exists()
    steps = ["--steps", "2", "--set", "log.progress_bar=false"]
    assert main(["train", "--data", str(data), "--run-dir", str(run), "--minutes", "1", *SMALL, *steps]) == 0
    plan = json.loads((run / "plan.json").read_text())
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert plan["minutes"] == 1 and saved["train"]["budget_minutes"] == 1
    planned = {c["key"]: c["value"] for c in plan["choices"]}
    assert (
        saved["model"]["ngf"] == planned["model.ngf"]
        and saved["train"]["wgan_gp"]["n_critic"] == planned["train.wgan_gp.n_critic"]
    )
    assert saved["train"]["steps"] == 2  # --steps is the user's and wins over the plan
    assert (run / "checkpoints" / "step_00000002.pt").exists()


def test_a_preset_trains_as_given_with_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from volgan.cli import main

    data = _cli_data(tmp_path, monkeypatch)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--run-dir", str(run), "--preset", "cpu-fast32", "--minutes", "3"]
    assert main([*args, "--steps", "1", *SMALL, "--set", "log.progress_bar=false"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["budget_minutes"] == 3 and saved["model"]["ngf"] == 16 and not (run / "plan.json").exists()


def test_torchrun_without_a_config_says_how_to_plan_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from volgan.cli import main

    data = _cli_data(tmp_path, monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["train", "--data", str(data), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--save-config plan.yaml`, then pass --config plan.yaml" in err and len(err.splitlines()) == 1


def test_python_api_plans_from_volumes_in_memory(tmp_path: Path) -> None:
    import volgan
    from volgan.data.volume_set import VolumeSet

    rng = np.random.default_rng(0)
    data = VolumeSet.from_arrays(rng.uniform(-1, 1, (6, 16, 16, 16)).astype(np.float32), np.arange(6) % 2, ["a", "b"])
    run = tmp_path / "run"
    small = {"model": {"latent_dim": 8}, "train": {"steps": 2}, "log": {"progress_bar": False}, "device": "cpu"}
    result = volgan.train(data=data, minutes=1.5, run_dir=run, **small)
    assert result.step == 2
    plan = json.loads((run / "plan.json").read_text())
    assert plan["minutes"] == 1.5 and plan["fingerprint"]["classes"] == {"a": 3, "b": 3}
    assert {c["key"]: c["by"] for c in plan["choices"]}["data.size"] == "you"  # the volumes' own grid
    with pytest.raises(ConfigError, match="config= and preset= both"):
        volgan.train({"seed": 1}, data, preset="cpu-fast32")
    cube = VolumeSet.from_arrays(rng.uniform(-1, 1, (4, 32, 32, 32)).astype(np.float32), np.arange(4) % 2, ["a", "b"])
    small["train"] = {"steps": 1, "batch_size": 2}
    preset_run = volgan.train(data=cube, preset="cpu-fast32", minutes=2, run_dir=tmp_path / "p", **small)
    saved = yaml.safe_load((preset_run.run_dir / "config.yaml").read_text())
    assert saved["train"]["budget_minutes"] == 2 and saved["model"]["ngf"] == 16  # the preset, with the budget
    assert not (preset_run.run_dir / "plan.json").exists()
