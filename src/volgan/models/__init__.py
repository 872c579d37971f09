"""Model families, one module each, and the factory that builds a family's pair of networks."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from volgan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from volgan.models.wgan_gp import Critic, Generator

if TYPE_CHECKING:
    from volgan.config import Config

AnyGenerator: TypeAlias = Generator | DCGANGenerator
AnyDiscriminator: TypeAlias = Critic | DCGANDiscriminator


def critic_std_group(batch_per_process: int) -> int:
    """Group size of the WGAN-GP critic's minibatch-stddev feature: the largest of 4, 3, 2 that
    divides each process's share of the batch (groups never straddle the real and fake halves)."""
    return next((g for g in (4, 3, 2) if batch_per_process % g == 0), 1)


def build_models(
    cfg: Config, num_classes: int, batch_per_process: int | None = None
) -> tuple[AnyGenerator, AnyDiscriminator]:
    """The generator and the critic (WGAN-GP) or discriminator (DCGAN) that ``cfg`` describes.

    ``batch_per_process`` (default: the whole batch) sets the critic's minibatch-stddev groups."""
    m, size, grow_from = cfg.model, cfg.data.size, cfg.experimental.grow_from
    if m.family == "dcgan":
        return (
            DCGANGenerator(
                size, m.latent_dim, num_classes, m.ngf, m.embed_dim, m.max_channels, m.output_head, m.stage_upsampling
            ),
            DCGANDiscriminator(
                size,
                num_classes,
                m.ndf,
                m.max_channels,
                m.minibatch_std,
                aux_classifier=m.ac_weight > 0,
                top_hats=m.top_hats,
                top_hats_from=m.top_hats_from,
            ),
        )
    return (
        Generator(
            size,
            m.latent_dim,
            num_classes,
            m.ngf,
            m.embed_dim,
            m.max_channels,
            m.mapping_layers,
            grow_from,
            m.output_head,
            m.stage_upsampling,
        ),
        Critic(
            size,
            num_classes,
            m.ndf,
            m.max_channels,
            aux_classifier=m.ac_weight > 0,
            minibatch_std_group=critic_std_group(batch_per_process or cfg.train.batch_size) if m.minibatch_std else 0,
            grow_from=grow_from,
            top_hats=m.top_hats,
            top_hats_from=m.top_hats_from,
        ),
    )


__all__ = [
    "AnyDiscriminator",
    "AnyGenerator",
    "Critic",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "Generator",
    "build_models",
]
