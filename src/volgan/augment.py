"""3D differentiable augmentation of everything the critic/discriminator sees (DiffAugment, Zhao et
al. 2020; with ADA's adaptive probability, Karras et al. 2020), for training on a few hundred volumes.

Real and fake volumes go through the same random transforms, drawn independently per volume and
shared by all channels of a volume; every operation is made of differentiable tensor ops, so the
generator's gradient flows back through them. Each operation is applied to each volume with
probability ``p`` (fixed, or steered by :class:`AdaptiveP`) at the strength the config gives;
``p = 0`` returns the input unchanged.

Operations, in order: flips (per enabled axis), integer translation, a small affine transform
(rotation about the three axes, isotropic scaling and sub-voxel translation, trilinear
resampling), cutout (a random box set to the background), brightness, contrast and gamma jitter,
additive Gaussian noise. Voxels moved in from outside the grid take the background value (the low
end of the value range).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from volgan.config import AugmentConfig

# Draws random numbers for a batch: draw(torch.rand, *shape) -> (B, *shape). The trainer passes one
# that draws for the whole global batch and keeps this rank's rows (see volgan.distributed).
Draw = Callable[..., torch.Tensor]


def _local_draw(batch: int, device: torch.device) -> Draw:
    def draw(fn: Callable[..., torch.Tensor], *shape: int) -> torch.Tensor:
        return fn(batch, *shape, device=device)

    return draw


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def flip(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Flip the volumes where ``mask`` (B,) is true along spatial ``dim`` (2, 3 or 4)."""
    return torch.where(_per_sample(mask, x).bool(), x.flip(dim), x)


def translate(x: torch.Tensor, shifts: torch.Tensor, background: float) -> torch.Tensor:
    """Shift each volume by whole voxels: shifts (B, 3) int64, one per spatial axis; background fills in."""
    pad = int(shifts.abs().max()) if shifts.numel() else 0
    if pad == 0:
        return x
    padded = F.pad(x, (pad,) * 6, value=background)
    d, h, w = x.shape[2:]
    out = []
    for i, (sd, sh, sw) in enumerate(shifts.tolist()):
        out.append(padded[i, :, pad - sd : pad - sd + d, pad - sh : pad - sh + h, pad - sw : pad - sw + w])
    return torch.stack(out)


def affine(x: torch.Tensor, theta: torch.Tensor, background: float) -> torch.Tensor:
    """Resample each volume (trilinear) through the affine map theta (B, 3, 4) of normalised coordinates."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """angles (B, 3) in radians about the three axes -> rotation matrices (B, 3, 3)."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(-1, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(-1, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


def cutout(x: torch.Tensor, centres: torch.Tensor, size: float, mask: torch.Tensor, background: float) -> torch.Tensor:
    """Set a cube of side ``size`` (fraction of each axis) around centres (B, 3) in [0, 1] to the
    background, in the volumes where ``mask`` (B,) is true."""
    inside = torch.ones(x.shape[0], 1, *x.shape[2:], dtype=torch.bool, device=x.device)
    for axis in range(3):
        n = x.shape[2 + axis]
        coords = (torch.arange(n, device=x.device, dtype=x.dtype) + 0.5) / n
        near = (coords.view(1, -1) - centres[:, axis : axis + 1].to(x.dtype)).abs() < size / 2  # (B, n)
        shape = [x.shape[0], 1, 1, 1, 1]
        shape[2 + axis] = n
        inside = inside & near.view(shape)
    box = inside & _per_sample(mask, x).bool()
    return torch.where(box, torch.full_like(x, background), x)


class DiffAugment3d:
    """The configured augmentation pipeline; call it on every critic/discriminator input batch."""

    def __init__(self, cfg: AugmentConfig, value_range: tuple[float, float]) -> None:
        self.cfg = cfg
        self.lo, self.hi = value_range
        self.p = cfg.p

    def __call__(self, x: torch.Tensor, draw: Draw | None = None) -> torch.Tensor:
        """x: (B, C, D, H, W) in ``value_range`` -> augmented (B, C, D, H, W), same dtype."""
        p, c = self.p, self.cfg
        if p <= 0:
            return x
        draw = draw or _local_draw(x.shape[0], x.device)
        span, bg = self.hi - self.lo, self.lo

        def chosen() -> torch.Tensor:
            return draw(torch.rand) < p

        for axis, enabled in enumerate(c.flip):
            if enabled:
                x = flip(x, chosen(), 2 + axis)
        if c.translate > 0:
            limits = torch.tensor([round(c.translate * n) for n in x.shape[2:]], device=x.device)
            shifts = ((draw(torch.rand, 3) * 2 - 1) * limits).round().long() * chosen().view(-1, 1)
            x = translate(x, shifts, bg)
        if c.rotate_deg > 0 or c.scale > 0 or c.subvoxel > 0:
            mask = chosen().view(-1, 1, 1)
            angles = (draw(torch.rand, 3) * 2 - 1) * math.radians(c.rotate_deg)
            scale = torch.exp((draw(torch.rand) * 2 - 1) * math.log1p(c.scale))
            # sub-voxel shift of up to `subvoxel` voxels; normalised coordinates span 2 per axis
            sizes = torch.tensor(x.shape[2:][::-1], device=x.device, dtype=torch.float32)  # grid order x, y, z
            shift = (draw(torch.rand, 3) * 2 - 1) * c.subvoxel * 2 / sizes
            linear = rotation_matrices(angles) / scale.view(-1, 1, 1)
            theta = torch.cat([linear, shift.view(-1, 3, 1)], 2)
            identity = torch.eye(3, 4, device=x.device).expand_as(theta)
            moved = affine(x, torch.where(mask, theta, identity), bg)
            x = torch.where(_per_sample(mask.view(-1), x).bool(), moved, x)
        if c.cutout > 0:
            x = cutout(x, draw(torch.rand, 3), c.cutout, chosen(), bg)
        if c.brightness > 0:
            shift = (draw(torch.rand) * 2 - 1) * c.brightness * span * chosen()
            x = x + _per_sample(shift, x)
        if c.contrast > 0:
            mask, factor = chosen(), torch.exp((draw(torch.rand) * 2 - 1) * math.log1p(c.contrast))
            mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
            x = torch.where(_per_sample(mask, x).bool(), (x - mean) * _per_sample(factor, x) + mean, x)
        if c.gamma > 0:
            mask, exponent = chosen(), torch.exp((draw(torch.rand) * 2 - 1) * math.log1p(c.gamma))
            unit = ((x - self.lo) / span).clamp(1e-4, 1.0)  # gamma is defined on [0, 1]
            x = torch.where(_per_sample(mask, x).bool(), unit ** _per_sample(exponent, x) * span + self.lo, x)
        if c.noise > 0:
            sigma = draw(torch.rand) * c.noise * span * chosen()
            x = x + _per_sample(sigma, x) * draw(torch.randn, *x.shape[1:]).to(x.dtype)
        return x


class AdaptiveP:
    """ADA's controller: raise p while the overfitting signal is above ``target``, lower it below.

    The signal is averaged over ``interval`` steps (and over all processes), then p moves by
    ``speed`` towards less overfitting, within [0, p_max].
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.target, self.speed, self.interval, self.p_max = cfg.target, cfg.speed, cfg.interval, cfg.p_max
        self.total, self.count = 0.0, 0
        self.last_signal = float("nan")

    def observe(self, signs: torch.Tensor) -> None:
        """signs: (B,) in {-1, 0, 1}, the per-volume overfitting indicator of one step."""
        self.total += float(signs.sum())
        self.count += int(signs.numel())

    def due(self, step: int) -> bool:
        return step % self.interval == 0

    def update(self, p: float, total: float, count: float) -> float:
        """The new p from the signal ``total / count`` (sums over the interval and the processes)."""
        self.last_signal = total / max(count, 1.0)
        self.total, self.count = 0.0, 0
        direction = 1.0 if self.last_signal > self.target else -1.0
        return min(self.p_max, max(0.0, p + direction * self.speed))

    def state(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count, "last_signal": self.last_signal}

    def load(self, state: dict[str, Any]) -> None:
        self.total, self.count = float(state["total"]), int(state["count"])
        self.last_signal = float(state["last_signal"])
