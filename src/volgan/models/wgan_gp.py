"""Conditional 3D WGAN-GP: generator and critic.

Both networks are built from the grid size: the generator starts from a ``base``³ block and
doubles ``n_stages`` times (``size == base * 2**n_stages``); the critic mirrors it. With
``num_classes == 0`` the models are unconditional and the class arguments are ignored.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from volgan.config import grid_stages, grow_grids
from volgan.growth import Growing, downsample, upsample
from volgan.models.layers import (
    TOP_HAT_CHANNELS,
    InputConv3d,
    InstanceNorm3d,
    StemConvTranspose3d,
    SubpixelConvTranspose3d,
    class_embedding,
    output_layer,
    top_hats,
    up_layer,
    zero_top_hat_weights,
)


def stage_channels(width: int, n_stages: int, max_channels: int) -> list[int]:
    """Channels at each resolution from coarse to fine, e.g. width 32, 4 stages -> [256, 128, 64, 32]."""
    return [min(width * 2 ** (n_stages - 1 - i), max_channels) for i in range(n_stages)]


class ConditionalInstanceNorm3d(nn.Module):
    """InstanceNorm3d whose scale and shift come from the class embedding (plain affine if cond_dim == 0).

    Conditioning every stage this way keeps the class signal alive through the per-sample
    normalisation, which would otherwise wash out a label given only at the input.
    """

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.norm = InstanceNorm3d(channels, affine=cond_dim == 0)
        if cond_dim:
            self.to_scale_shift = nn.Linear(cond_dim, 2 * channels)
            nn.init.zeros_(self.to_scale_shift.weight)
            nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """x: (B, C, D, H, W); cond: (B, cond_dim) or None -> (B, C, D, H, W)."""
        if not self.cond_dim:
            return self.norm(x)
        assert cond is not None
        scale, shift = self.to_scale_shift(cond).view(x.shape[0], 2, -1).unbind(1)
        return self.norm(x, 1 + scale, shift)


class MappingNetwork(nn.Module):
    """Latent (+ class embedding) -> style vector that sets every stage's instance-norm scale and shift.

    Instance normalisation removes each sample's per-channel statistics, which is where a latent
    given only at the stem lives after the first stage: the later stages then see the class alone
    and the generator collapses to one volume per class. Re-injecting a style computed from the
    latent at every stage (adaptive instance norm, as in style-based generators, Karras et al.
    2019) keeps the latent's influence at every resolution while keeping InstanceNorm's per-sample
    statistics, so batch size 1 stays stable.
    """

    def __init__(self, in_dim: int, style_dim: int, layers: int) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(in_dim if i == 0 else style_dim, style_dim), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, in_dim) -> (B, style_dim)."""
        # unit-length inputs, as StyleGAN's pixel norm: the style does not depend on |z|'s spread
        return self.net(z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8))


class _UpStage(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, upsampling: str = "transposed") -> None:
        super().__init__()
        self.conv = up_layer(c_in, c_out, upsampling)
        self.norm = ConditionalInstanceNorm3d(c_out, cond_dim)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.act(self.norm(self.conv(x), cond))


class Generator(Growing):
    """Latent vector + class -> volume in [-1, 1] (Tanh).

    With ``grow_from`` (progressive growing, :mod:`volgan.growth`) it also has an output layer at each
    coarser grid down to ``grow_from``³; at a coarse level its volumes are upsampled to the full grid
    unless ``native=True`` (what the trainer asks for)."""

    output_range = (-1.0, 1.0)

    def __init__(
        self,
        size: int = 64,
        latent_dim: int = 128,
        num_classes: int = 0,
        ngf: int = 32,
        embed_dim: int = 64,
        max_channels: int = 512,
        mapping_layers: int = 0,
        grow_from: int | None = None,
        output_head: str = "transposed",
        stage_upsampling: str = "transposed",
    ) -> None:
        super().__init__()
        self.size, self.latent_dim, self.num_classes = size, latent_dim, num_classes
        base, n_stages = grid_stages(size)
        chans = stage_channels(ngf, n_stages, max_channels)
        class_dim = embed_dim if num_classes else 0
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        # mapping_layers > 0: every norm's scale/shift come from a style of (latent, class); else
        # from the class embedding alone (the seed design: the latent enters at the stem only).
        self.mapping = MappingNetwork(latent_dim + class_dim, latent_dim, mapping_layers) if mapping_layers else None
        cond_dim = latent_dim if mapping_layers else class_dim
        # A transposed conv with kernel `base` on a 1³ input is a dense layer to a base³ block.
        self.stem = StemConvTranspose3d(latent_dim + class_dim, chans[0], base, bias=False)
        self.stem_norm = ConditionalInstanceNorm3d(chans[0], cond_dim)
        self.stages = nn.ModuleList(_UpStage(a, b, cond_dim, stage_upsampling) for a, b in itertools.pairwise(chans))
        self.to_volume = output_layer(chans[-1], output_head)
        levels = _check_growth(size, grow_from)
        self._init_growth(levels)
        if levels:  # the output layer of level k (k = 1..levels) follows stage n_stages - 1 - k
            self.grow_heads = nn.ModuleList(SubpixelConvTranspose3d(chans[-1 - k], 1) for k in range(1, levels + 1))

    def _head(self, level: int) -> nn.Module:
        return self.to_volume if level == 0 else self.grow_heads[level - 1]

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, native: bool = False) -> torch.Tensor:
        """z: (B, latent_dim); labels: (B,) int64 (ignored if unconditional) -> (B, 1, S, S, S).

        While growing, ``native=True`` returns the current level's grid, (B, 1, S/2^k, S/2^k, S/2^k)."""
        cond = class_embedding(self.embed, labels, "generator")
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        if self.mapping is not None:
            cond = self.mapping(z)
        x = torch.relu(self.stem_norm(self.stem(z[:, :, None, None, None]), cond))
        level, alpha = self.growth()
        used = len(self.stages) - level  # the stages this level runs
        for stage in self.stages[: max(used - 1, 0)]:
            x = stage(x, cond)
        coarse = None
        if used >= 1:
            if alpha < 1:  # fading in: the coarser level's volume, upsampled, blended with this one's
                coarse = upsample(torch.tanh(self._head(level + 1)(x)), 2)
            x = self.stages[used - 1](x, cond)
        out = torch.tanh(self._head(level)(x))
        if coarse is not None:  # alpha 0: exactly the coarser level's volume, so growing starts smoothly
            out = torch.lerp(coarse, out, alpha)
        return out if native else upsample(out, 2**level)


def _check_growth(size: int, grow_from: int | None) -> int:
    """Levels below ``size`` down to ``grow_from`` (0 without growing); ValueError for a grid the
    stages cannot reach by halving (the config check names the key first)."""
    if grow_from is None:
        return 0
    grids = grow_grids(size)
    if grow_from not in grids:
        raise ValueError(f"grow_from {grow_from}: use one of {grids}")
    return grids.index(grow_from) + 1


def group_stddev(h: torch.Tensor, group: int) -> torch.Tensor:
    """Minibatch-stddev feature (Karras et al. 2018) over **contiguous** groups of ``group`` volumes.

    Each group's features get one number, their standard deviation across the group averaged over
    channels and voxels, broadcast as an extra feature map. Contiguous groups keep the critic's
    real half and fake half of a ``cat([real, fake])`` batch apart when ``group`` divides each half.
    h: (B, C, D, H, W), B divisible by ``group`` -> (B, 1, D, H, W).
    """
    b = h.shape[0]
    if b % group:
        raise ValueError(f"minibatch stddev: batch {b} is not divisible by the group size {group}")
    std = h.float().view(b // group, group, *h.shape[1:]).var(dim=1, unbiased=False).add(1e-8).sqrt()
    per_group = std.mean(dim=(1, 2, 3, 4))  # (B // group,)
    return per_group.repeat_interleave(group).view(b, 1, 1, 1, 1).expand(b, 1, *h.shape[2:]).to(h.dtype)


class Critic(Growing):
    """Volume + class -> unbounded score (B,). Class conditioning by projection (Miyato & Koyama 2018).

    No BatchNorm anywhere: it mixes samples in a batch and so breaks the per-sample gradient
    penalty; InstanceNorm3d normalises each sample on its own. The one deliberate exception is the
    optional minibatch-stddev feature (``minibatch_std_group`` > 1, as ProGAN used with WGAN-GP): the
    head then also sees how much the volumes of each contiguous group differ, which lets the critic
    score a collapsed generator down; the penalty's gradient then includes the small cross terms
    of that one feature.
    """

    def __init__(
        self,
        size: int = 64,
        num_classes: int = 0,
        ndf: int = 32,
        max_channels: int = 512,
        aux_classifier: bool = False,
        minibatch_std_group: int = 0,
        grow_from: int | None = None,
        top_hats: str = "none",
        top_hats_from: float = 0.0,
    ) -> None:
        super().__init__()
        self.size, self.num_classes = size, num_classes
        self.top_hats = top_hats
        self.top_hats_on = not top_hats_from
        """whether the top-hat channels hold the top-hats yet (the trainer sets it by model.top_hats_from)"""
        c_in = TOP_HAT_CHANNELS[top_hats]
        self.minibatch_std_group = minibatch_std_group
        base, n_stages = grid_stages(size)
        chans = stage_channels(ndf, n_stages, max_channels)[::-1]  # fine -> coarse
        layers: list[nn.Module] = [
            InputConv3d(c_in, chans[0], 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for a, b in itertools.pairwise(chans):
            layers += [
                nn.Conv3d(a, b, 4, stride=2, padding=1, bias=False),
                InstanceNorm3d(b, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        levels = _check_growth(size, grow_from)
        self._init_growth(levels)
        if levels:  # the input layer of level k reads a (S/2^k)³ volume into stage k's channels
            self.grow_inputs = nn.ModuleList(
                nn.Sequential(InputConv3d(c_in, chans[k], 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True))
                for k in range(1, levels + 1)
            )
        if top_hats_from:
            for conv in [layers[0], *(seq[0] for seq in getattr(self, "grow_inputs", []))]:
                zero_top_hat_weights(conv)
        # dense layer over the base³ block (+ the minibatch-stddev map)
        self.head = nn.Conv3d(chans[-1] + int(minibatch_std_group > 1), 1, base)
        self.embed = nn.Embedding(num_classes, chans[-1]) if num_classes else None
        if self.embed is not None:
            # nn.Embedding's N(0, 1) init would make the projection term ~70x the rest of the
            # critic's input gradient at 64³, so the first steps would fight the gradient penalty.
            nn.init.normal_(self.embed.weight, std=0.02)
        self.classifier = nn.Linear(chans[-1], num_classes) if num_classes and aux_classifier else None

    def score_and_logits(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, 1, S, S, S); labels: (B,) -> scores (B,) and, with the auxiliary classifier, logits (B, K)."""
        h = self._features(x)
        g = self.minibatch_std_group
        out = self.head(torch.cat([h, group_stddev(h, g)], dim=1) if g > 1 else h).flatten(1).squeeze(1)
        pooled = h.sum(dim=(2, 3, 4))
        cond = class_embedding(self.embed, labels, "critic")
        if cond is not None:
            out = out + (cond * pooled).sum(dim=1)
        logits = self.classifier(pooled) if self.classifier is not None else None
        return out, logits

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """x at the current level's grid -> the features of the coarsest stage (B, C, base, base, base)."""
        x = top_hats(x, self.top_hats, self.top_hats_on)
        if not self.grow_levels:
            return self.features(x)
        level, alpha = self.growth()
        n_blocks = (len(self.features) - 2) // 3  # input conv + activation, then conv, norm, act per stage
        inputs = [self.features[:2], *self.grow_inputs]

        def block(j: int) -> nn.Module:
            return self.features[2 + 3 * j : 5 + 3 * j]

        h = inputs[level](x)
        first = level
        if alpha < 1:  # fading in: blend with the coarser level's input layer on the pooled volume
            h = torch.lerp(inputs[level + 1](downsample(x, 2)), block(level)(h), alpha)
            first = level + 1
        for j in range(first, n_blocks):
            h = block(j)(h)
        return h

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, 1, S, S, S); labels: (B,) int64 (ignored if unconditional) -> (B,).

        While growing, x is at the current level's grid, (B, 1, S/2^k, S/2^k, S/2^k)."""
        return self.score_and_logits(x, labels)[0]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
