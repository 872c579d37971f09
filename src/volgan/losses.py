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


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor, eps: float = 1e-5, pool: int = 1) -> torch.Tensor:
    """Mode-seeking term (Mao et al. 2019) over adjacent pairs (0, 1), (2, 3), … of a batch whose pairs
    share a class: 1 / (mean |G(z_a) − G(z_b)| / mean |z_a − z_b| + eps), one ratio per pair, averaged.

    A generator that maps different latents of a class to the same volume makes the ratio ~0 and
    this term large, so minimising it pushes latents apart in volume space. fake: (B, …), z: (B, L)
    -> scalar; an odd last volume has no partner and is left out; a batch of one gives 0.

    pool > 1 (fake (B, C, D, H, W) only): the distance between the pair's volumes averaged over
    pool³ blocks (fewer where the grid is smaller), so independent voxel noise, which raises the
    voxelwise distance at no cost to the critic's verdict, averages out and only differences of
    shape count.
    """
    pairs = fake.shape[0] // 2
    if pairs == 0:
        return fake.new_zeros((), dtype=torch.float32)
    fake = fake.float()
    if pool > 1:
        if fake.dim() != 5:
            raise ValueError(f"pool needs volumes (B, C, D, H, W), got shape {tuple(fake.shape)}")
        fake = torch.nn.functional.avg_pool3d(fake, min(pool, *fake.shape[2:]))
    flat = fake.flatten(1)[: 2 * pairs]
    fa, fb = flat[0::2], flat[1::2]
    za, zb = z.float()[0 : 2 * pairs : 2], z.float()[1 : 2 * pairs : 2]
    ratio = (fa - fb).abs().mean(dim=1) / (za - zb).abs().mean(dim=1)
    return (1.0 / (ratio + eps)).mean()


# -- DCGAN (binary cross-entropy, computed on logits for numerical safety) ------------------------


def bce_discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_target: torch.Tensor, fake_target: torch.Tensor
) -> torch.Tensor:
    """BCE(D(real), real_target) + BCE(D(fake), fake_target), on logits (B,) with targets (B,) in [0, 1]."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    return bce(real_logits.float(), real_target) + bce(fake_logits.float(), fake_target)


def bce_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss: BCE(D(G(z)), 1)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(
        fake_logits.float(), torch.ones_like(fake_logits.float())
    )


def discriminator_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Share of a batch the discriminator gets right: reals with p > 0.5, fakes with p < 0.5."""
    right = (real_logits > 0).float().sum() + (fake_logits < 0).float().sum()
    return right / (real_logits.numel() + fake_logits.numel())


def label_targets(
    n: int,
    real: bool,
    *,
    real_label: float = 1.0,
    noise: float = 0.0,
    flip: float = 0.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Targets (n,) for the discriminator: soft (``real_label`` < 1), noisy (± ``noise``) and
    randomly flipped (probability ``flip``) labels; plain 1/0 with the defaults."""
    target = torch.full((n,), real_label if real else 0.0, device=device)
    if noise:
        target = target + (torch.rand(n, device=device) * 2 - 1) * noise
    if flip:
        flipped = torch.rand(n, device=device) < flip
        target = torch.where(flipped, torch.full_like(target, 0.0 if real else real_label), target)
    return target.clamp(0.0, 1.0)
