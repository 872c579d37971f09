"""Exponential moving average of the generator's weights."""

from __future__ import annotations

import copy

import torch

from volgan.models import AnyGenerator


class EMA:
    """EMA of a generator's parameters (buffers such as BatchNorm statistics are copied), with a
    warm-up (decay ramps from ~0.1 towards ``decay``) so short runs benefit too."""

    def __init__(self, model: AnyGenerator, decay: float) -> None:
        self.module: AnyGenerator = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: AnyGenerator) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1 - decay)
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
