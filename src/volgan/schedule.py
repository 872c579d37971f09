"""Everything that changes from one generator step to the next, as one frozen plan per step.

:func:`step_plan` is a pure function of the train settings, the step and the seconds trained: the
learning-rate scale (``train.lr_decay``), the mode-seeking weight (``train.mode_seeking`` →
``mode_seeking_end``), the instance-noise std, and the progressive-growing level and fade. The
``Trainer`` applies it; the family updates read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from volgan.config import TrainConfig
from volgan.growth import GrowthSchedule


@dataclass(frozen=True)
class StepPlan:
    """The settings of one generator step (0-based ``step``)."""

    step: int
    part_done: float
    """the part of the run done: step / train.steps, or of train.budget_minutes if larger (0 .. 1)"""
    lr_scale: float
    """multiplies train.lr_g and train.lr_d (1 without a decay; train.lr_decay_to at the end of a linear one)"""
    mode_seeking: float
    instance_noise: float
    level: int | None
    """progressive growing: the level trained (0 = the full grid), None without growing"""
    fade: float
    """progressive growing: how far the level has faded in (1 = fully)"""
    new_phase: bool
    """progressive growing: this step starts a level (the EMA restarts its warm-up)"""


def budget_spent(t: TrainConfig, trained_seconds: float) -> float:
    """The part of train.budget_minutes trained (0 without a budget; 1 = spent)."""
    return min(1.0, trained_seconds / (60 * t.budget_minutes)) if t.budget_minutes else 0.0


def part_done(t: TrainConfig, step: int, trained_seconds: float) -> float:
    """step / train.steps, or the part of train.budget_minutes spent if that is larger (0 .. 1)."""
    return min(1.0, max(step / t.steps, budget_spent(t, trained_seconds)))


def step_plan(t: TrainConfig, step: int, trained_seconds: float, growth: GrowthSchedule | None = None) -> StepPlan:
    """The plan of generator step ``step`` after ``trained_seconds`` of training."""
    done = part_done(t, step, trained_seconds)
    ms = t.mode_seeking if t.mode_seeking_end is None else t.mode_seeking + (t.mode_seeking_end - t.mode_seeking) * done
    noise = t.dcgan.instance_noise
    if t.dcgan.instance_noise_steps:  # annealed to 0 (Sønderby et al. 2016)
        noise = t.dcgan.instance_noise * max(0.0, 1.0 - step / t.dcgan.instance_noise_steps)
    level, fade, new_phase = None, 1.0, False
    if growth is not None:
        level, fade = growth.at(step)
        new_phase = bool(step) and growth.phase(step) != growth.phase(step - 1)
    return StepPlan(
        step=step,
        part_done=done,
        lr_scale=1.0 - done * (1.0 - t.lr_decay_to) if t.lr_decay == "linear" else 1.0,
        mode_seeking=ms,
        instance_noise=noise,
        level=level,
        fade=fade,
        new_phase=new_phase,
    )
