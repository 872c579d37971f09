"""The per-step plan as a pure function of the settings, the step and the seconds trained."""

import pytest

from volgan.config import DCGANTrainConfig, TrainConfig
from volgan.growth import GrowthSchedule
from volgan.schedule import budget_spent, part_done, step_plan


def test_a_constant_run_has_a_constant_plan() -> None:
    t = TrainConfig(steps=100)
    first, last = step_plan(t, 0, 0.0), step_plan(t, 99, 3600.0)
    assert first.lr_scale == last.lr_scale == 1.0 and first.mode_seeking == last.mode_seeking == t.mode_seeking
    assert first.level is None and first.instance_noise == 0.0


def test_linear_decay_and_mode_seeking_end_follow_the_larger_of_steps_and_budget() -> None:
    t = TrainConfig(steps=100, lr_decay="linear", mode_seeking=1.0, mode_seeking_end=0.0, budget_minutes=10)
    assert step_plan(t, 25, 0.0).lr_scale == pytest.approx(0.75)
    assert step_plan(t, 25, 0.0).mode_seeking == pytest.approx(0.75)
    assert step_plan(t, 25, 300.0).part_done == pytest.approx(0.5)  # half the budget beats a quarter of the steps
    assert step_plan(t, 25, 900.0).lr_scale == 0.0 and budget_spent(t, 900.0) == 1.0
    assert part_done(TrainConfig(steps=10), 20, 0.0) == 1.0


def test_linear_decay_stops_at_lr_decay_to_and_leaves_the_mode_seeking_clock_alone() -> None:
    t = TrainConfig(steps=100, lr_decay="linear", lr_decay_to=0.6, mode_seeking=1.0, mode_seeking_end=0.0)
    assert [step_plan(t, s, 0.0).lr_scale for s in (0, 50, 100)] == pytest.approx([1.0, 0.8, 0.6])
    assert step_plan(t, 50, 0.0).mode_seeking == pytest.approx(0.5)
    assert step_plan(TrainConfig(steps=100, lr_decay_to=0.6), 100, 0.0).lr_scale == 1.0  # no decay: constant


def test_instance_noise_anneals_to_zero() -> None:
    t = TrainConfig(dcgan=DCGANTrainConfig(instance_noise=0.2, instance_noise_steps=4))
    assert [step_plan(t, s, 0.0).instance_noise for s in range(6)] == pytest.approx([0.2, 0.15, 0.1, 0.05, 0, 0])


def test_growth_levels_fade_and_new_phases() -> None:
    g = GrowthSchedule(levels=2, steps=(2, 2), fade=2)
    plans = [step_plan(TrainConfig(), s, 0.0, g) for s in range(6)]
    assert [(p.level, p.fade) for p in plans] == [(2, 1.0), (2, 1.0), (1, 0.5), (1, 1.0), (0, 0.5), (0, 1.0)]
    assert [p.new_phase for p in plans] == [False, False, True, False, True, False]
