"""3D-GAN (Wu et al. 2016) style DCGAN: generator and discriminator for occupancy grids and volumes.

Generator: latent (default 200-d) -> ConvTranspose3d stages with BatchNorm3d + ReLU -> sigmoid,
channels 512 -> 256 -> 128 -> 64 -> 1 at 64³ (one stage fewer/more at 32³/128³).
Discriminator: Conv3d stages with BatchNorm3d + LeakyReLU(0.2) -> a dense layer -> sigmoid.
The discriminator returns logits from :meth:`Discriminator.logits` (what the loss uses, for
numerical safety) and probabilities from ``forward``. ``num_classes > 0`` adds class conditioning:
a learned embedding concatenated to the latent, and a projection term on the discriminator.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from volgan.config import grid_stages
from volgan.growth import Growing
from volgan.models.layers import (
    TOP_HAT_CHANNELS,
    InputConv3d,
    StemConvTranspose3d,
    class_embedding,
    output_layer,
    top_hats,
    up_layer,
    zero_top_hat_weights,
)
from volgan.models.wgan_gp import stage_channels


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al. 2016): convs N(0, 0.02), norm scales N(1, 0.02), shifts 0."""
    if isinstance(module, nn.Conv3d | nn.ConvTranspose3d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm3d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 0.02)


def minibatch_stddev(h: torch.Tensor, group: int = 4) -> torch.Tensor:
    """One extra feature map (Karras et al. 2018): the standard deviation of each feature across a
    group of ``group`` volumes of the batch, averaged to one number per group and broadcast over the
    grid. A generator whose volumes all look alike then gets a low value the discriminator can use,
    which counters mode collapse. ``h``: (B, C, D, H, W) -> (B, 1, D, H, W)."""
    b = h.shape[0]
    g = group if b % group == 0 else b
    std = h.float().view(g, b // g, *h.shape[1:]).var(dim=0, unbiased=False).add(1e-8).sqrt()
    per_group = std.mean(dim=(1, 2, 3, 4))  # (B // g,)
    return per_group.repeat(g).view(b, 1, 1, 1, 1).expand(b, 1, *h.shape[2:]).to(h.dtype)


class DCGANGenerator(Growing):
    """Latent vector + class -> occupancy/intensity volume in [0, 1] (sigmoid)."""

    output_range = (0.0, 1.0)

    def __init__(
        self,
        size: int = 64,
        latent_dim: int = 200,
        num_classes: int = 0,
        ngf: int = 64,
        embed_dim: int = 64,
        max_channels: int = 512,
        output_head: str = "transposed",
        stage_upsampling: str = "transposed",
    ) -> None:
        super().__init__()
        self.size, self.latent_dim, self.num_classes = size, latent_dim, num_classes
        base, n_stages = grid_stages(size)
        chans = stage_channels(ngf, n_stages, max_channels)
        cond_dim = embed_dim if num_classes else 0
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        layers: list[nn.Module] = [
            StemConvTranspose3d(latent_dim + cond_dim, chans[0], base, bias=False),
            nn.BatchNorm3d(chans[0]),
            nn.ReLU(inplace=True),
        ]
        for a, b in itertools.pairwise(chans):
            layers += [up_layer(a, b, stage_upsampling), nn.BatchNorm3d(b), nn.ReLU(inplace=True)]
        layers += [output_layer(chans[-1], output_head)]
        self.net = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, latent_dim); labels: (B,) int64 (ignored if unconditional) -> (B, 1, S, S, S) in [0, 1]."""
        cond = class_embedding(self.embed, labels, "generator")
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        return torch.sigmoid(self.net(z[:, :, None, None, None]))


class DCGANDiscriminator(Growing):
    """Volume + class -> probability that the volume is real (B,)."""

    def __init__(
        self,
        size: int = 64,
        num_classes: int = 0,
        ndf: int = 64,
        max_channels: int = 512,
        minibatch_std: bool = False,
        aux_classifier: bool = False,
        top_hats: str = "none",
        top_hats_from: float = 0.0,
    ) -> None:
        super().__init__()
        self.size, self.num_classes, self.minibatch_std = size, num_classes, minibatch_std
        self.top_hats = top_hats
        self.top_hats_on = not top_hats_from
        """whether the top-hat channels hold the top-hats yet (the trainer sets it by model.top_hats_from)"""
        base, n_stages = grid_stages(size)
        chans = stage_channels(ndf, n_stages, max_channels)[::-1]  # fine -> coarse
        c_in = TOP_HAT_CHANNELS[top_hats]
        layers: list[nn.Module] = [InputConv3d(c_in, chans[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in itertools.pairwise(chans):
            layers += [nn.Conv3d(a, b, 4, 2, 1, bias=False), nn.BatchNorm3d(b), nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        self.dense = nn.Linear((chans[-1] + int(minibatch_std)) * base**3, 1)
        self.embed = nn.Embedding(num_classes, chans[-1]) if num_classes else None
        # AC-GAN head (Odena et al. 2017): class logits from the pooled features.
        self.classifier = nn.Linear(chans[-1], num_classes) if num_classes and aux_classifier else None
        self.apply(init_dcgan_weights)
        if top_hats_from:
            zero_top_hat_weights(layers[0])

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, 1, S, S, S) in [0, 1]; labels: (B,) -> real/fake logits (B,)."""
        return self.logits_and_classes(x, labels)[0]

    def logits_and_classes(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, 1, S, S, S); labels: (B,) -> real/fake logits (B,) and, with the auxiliary
        classifier, class logits (B, K)."""
        h = self.features(top_hats(x, self.top_hats, self.top_hats_on))
        flat = torch.cat([h, minibatch_stddev(h)], dim=1) if self.minibatch_std else h
        out = self.dense(flat.flatten(1)).squeeze(1)
        cond = class_embedding(self.embed, labels, "discriminator")
        if cond is not None:  # projection (Miyato & Koyama 2018)
            out = out + (cond * h.mean(dim=(2, 3, 4))).sum(dim=1)
        classes = self.classifier(h.mean(dim=(2, 3, 4))) if self.classifier is not None else None
        return out, classes

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, 1, S, S, S); labels: (B,) -> probability of "real" (B,) (sigmoid of :meth:`logits`)."""
        return torch.sigmoid(self.logits(x, labels))
