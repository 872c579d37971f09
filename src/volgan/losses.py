"""WGAN-GP losses as pure functions over tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch

CriticFn = Callable[[torch.Tensor], torch.Tensor]


def gradient_penalty(critic: CriticFn, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of (‖∇x D(x̂)‖₂ − 1)², x̂ = α·real + (1 − α)·fake.

    real, fake: (B, C, D, H, W); alpha: (B,) in [0, 1]; critic maps (B, C, D, H, W) -> (B,).
    The norm is taken over *all* non-batch dimensions of each sample, in float32.
    """
    a = alpha.to(real.dtype).view(-1, *([1] * (real.dim() - 1)))
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grad.float().flatten(1).norm(dim=1)
    return ((norms - 1) ** 2).mean()


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Negative Wasserstein estimate: E[D(fake)] − E[D(real)] (the critic minimises it)."""
    return fake_scores.mean() - real_scores.mean()


def drift_penalty(real_scores: torch.Tensor) -> torch.Tensor:
    """E[D(real)²], which keeps critic outputs near zero (Karras et al. 2018)."""
    return (real_scores.float() ** 2).mean()


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """−E[D(G(z))]."""
    return -fake_scores.mean()
