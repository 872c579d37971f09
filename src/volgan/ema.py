"""Exponential moving average of the generator's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

from volgan.models import AnyGenerator


class EMA:
    """EMA of a generator's parameters, with a warm-up (decay ramps from ~0.1 towards ``decay``)
    so short runs benefit too.

    After ``u`` updates the decay is ``min(decay, (1 + u) / (warmup + u))``: until ``decay`` caps it,
    the average spans about the last ``1 / (warmup - 1)`` of the updates so far (``warmup`` 10: the
    last ~11 %; 4: the last third), a horizon that grows with the run like the power-function EMA
    of Karras et al. 2024.

    Buffers are copied from the live generator. For BatchNorm generators (the 3D-GAN family) those
    running statistics belong to the live weights, not to the averaged ones, so :meth:`ready`
    re-estimates them for the averaged weights ("standing statistics", Brock et al. 2019) before
    the module is used for samples or written to a checkpoint.
    """

    def __init__(self, model: AnyGenerator, decay: float, warmup: float = 10.0) -> None:
        if warmup <= 1:
            raise ValueError(f"EMA warmup must be > 1, got {warmup}")
        self.module: AnyGenerator = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self._calibrated_at = 0

    @torch.no_grad()
    def update(self, model: AnyGenerator) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (self.warmup + self.updates))
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1 - decay)
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)

    def restart(self) -> None:
        """Start the warm-up again (the next update takes mostly the live weights): progressive
        growing does this when a finer level begins, whose new layers the old average has not seen."""
        self.updates = 0

    def ready(self, batches: int = 16, batch_size: int = 16, seed: int = 0) -> AnyGenerator:
        """The averaged generator in eval mode, its BatchNorm statistics matching its weights."""
        if self._calibrated_at != self.updates:
            recalibrate_batchnorm(self.module, batches, batch_size, seed)
            self._calibrated_at = self.updates
        return self.module

    def mark_calibrated(self) -> None:
        """The module's statistics are already right (e.g. just loaded from a checkpoint)."""
        self._calibrated_at = self.updates


@torch.no_grad()
def recalibrate_batchnorm(generator: AnyGenerator, batches: int = 16, batch_size: int = 16, seed: int = 0) -> None:
    """Re-estimate every BatchNorm's running mean/var as the plain average over ``batches`` batches
    of random latents and classes (deterministic for a seed). No-op for generators without BatchNorm."""
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    device = next(generator.parameters()).device
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: all batches weigh the same
    rng = torch.Generator().manual_seed(seed)
    num_classes = int(generator.num_classes)
    try:
        generator.train()
        for _ in range(batches):
            z = torch.randn(batch_size, int(generator.latent_dim), generator=rng).to(device)
            labels = torch.randint(max(num_classes, 1), (batch_size,), generator=rng).to(device)
            generator(z, labels if num_classes else None)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        generator.eval()
