"""Progressive growing (Karras et al. 2018): train the WGAN-GP at a coarse grid first, then finer ones.

With ``experimental.grow_from: 16`` a 64³ run trains at 16³, then 32³, then 64³. At a coarse level the
generator runs only its first stages and a small output layer of that level; the critic reads the
volume through an input layer of that level and runs only its last stages; the real batch is
average-pooled to the level's grid. Each new level fades in over ``experimental.grow_fade`` generator steps:
the output (and the critic's input) is a blend of the new finer path and the coarser one, upsampled
(pooled), with the blend weight ``alpha`` going linearly 0 -> 1. A coarse step costs less than a
full-size one, though not 8x less per halving: the wide coarse stages dominate. Its step costs and
the one configuration measured (it did not beat training at the full grid):
docs/diversity_measurements.md.

Levels count halvings from the full grid: level 0 is ``data.size``, level ``k`` is ``size / 2**k``.
The schedule is a pure function of the generator step, so an exact resume resumes it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from volgan.config import Config


def grow_levels(size: int, grow_from: int | None) -> int:
    """How many levels below the full grid a run passes through: 0 without growing (``grow_from`` None)."""
    if grow_from is None:
        return 0
    return round(math.log2(size / grow_from))


@dataclass(frozen=True)
class GrowthSchedule:
    """Which level trains at each generator step: ``steps[i]`` steps at level ``levels - i`` (coarse
    first), then the full grid for good; every level after the first fades in over ``fade`` steps."""

    levels: int
    steps: tuple[int, ...]
    fade: int

    @classmethod
    def for_run(cls, cfg: Config) -> GrowthSchedule | None:
        """The schedule of a run's config (None: no experimental.grow_from, the full grid throughout)."""
        e = cfg.experimental
        return None if e.grow_from is None else cls.from_config(cfg.data.size, e.grow_from, e.grow_steps, e.grow_fade)

    @classmethod
    def from_config(cls, size: int, grow_from: int | None, grow_steps: int | list[int], fade: int) -> GrowthSchedule:
        levels = grow_levels(size, grow_from)
        per_level = tuple(grow_steps) if isinstance(grow_steps, list) else (grow_steps,) * levels
        return cls(levels, per_level, fade)

    def phase(self, step: int) -> int:
        """Index of the phase that generator step ``step`` (0-based) belongs to: 0 = coarsest level."""
        start = 0
        for i, n in enumerate(self.steps):
            start += n
            if step < start:
                return i
        return self.levels

    def phase_start(self, phase: int) -> int:
        return sum(self.steps[:phase])

    def at(self, step: int) -> tuple[int, float]:
        """(level, alpha) for generator step ``step``: alpha < 1 while that level fades in."""
        phase = self.phase(step)
        level = self.levels - phase
        if phase == 0 or self.fade == 0:
            return level, 1.0
        return level, min(1.0, (step - self.phase_start(phase) + 1) / self.fade)


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool a (B, C, D, H, W) batch by ``factor`` along each axis (1: x itself)."""
    return x if factor == 1 else F.avg_pool3d(x, factor)


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Trilinear upsampling of a (B, C, D, H, W) batch by ``factor`` along each axis (1: x itself)."""
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="trilinear", align_corners=False)


def real_at_level(x: torch.Tensor, level: int, alpha: float) -> torch.Tensor:
    """A full-size real batch as the critic sees it at ``level``: pooled to that grid, and while the
    level fades in (alpha < 1) blended with its coarser version the way the generator's output is."""
    x = downsample(x, 2**level)
    if alpha < 1:
        x = torch.lerp(upsample(downsample(x, 2), 2), x, alpha)
    return x


class Growing(nn.Module):
    """The level / fade state of a progressively grown network (``volgan.growth``), kept as buffers so
    checkpoints, the EMA copy and sampling carry it; without growing there are no buffers at all."""

    grow_levels: int = 0  # levels below the full grid; 0: the network does not grow (the 3D-GAN's never do)
    grow_level: torch.Tensor
    grow_alpha: torch.Tensor

    def _init_growth(self, levels: int) -> None:
        self.grow_levels = levels
        if levels:
            self.register_buffer("grow_level", torch.tensor(levels))
            self.register_buffer("grow_alpha", torch.tensor(1.0))

    def set_growth(self, level: int, alpha: float = 1.0) -> None:
        """Train (and sample) at ``level`` (0 = the full grid), fading it in with weight ``alpha``."""
        if not 0 <= level <= self.grow_levels or not 0 <= alpha <= 1 or (alpha < 1 and level == self.grow_levels):
            raise ValueError(f"growth level {level} alpha {alpha}: outside 0..{self.grow_levels}, 0..1")
        if self.grow_levels:
            self.grow_level.fill_(level)
            self.grow_alpha.fill_(alpha)

    def growth(self) -> tuple[int, float]:
        """(level, alpha) now: (0, 1.0) for a network that does not grow or has finished growing."""
        if not self.grow_levels:
            return 0, 1.0
        return int(self.grow_level), float(self.grow_alpha)
