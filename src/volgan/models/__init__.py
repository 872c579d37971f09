"""Model families, one module each, and the factory that builds a family's pair of networks."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from volgan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from volgan.models.wgan_gp import Critic, Generator

if TYPE_CHECKING:
    from volgan.config import Config

AnyGenerator: TypeAlias = Generator | DCGANGenerator
AnyDiscriminator: TypeAlias = Critic | DCGANDiscriminator


def build_models(cfg: Config, num_classes: int) -> tuple[AnyGenerator, AnyDiscriminator]:
    """The generator and the critic (WGAN-GP) or discriminator (DCGAN) that ``cfg`` describes."""
    m, size = cfg.model, cfg.data.size
    if m.family == "dcgan":
        return (
            DCGANGenerator(size, m.latent_dim, num_classes, m.ngf, m.embed_dim, m.max_channels),
            DCGANDiscriminator(
                size, num_classes, m.ndf, m.max_channels, m.minibatch_std, aux_classifier=m.ac_weight > 0
            ),
        )
    return (
        Generator(size, m.latent_dim, num_classes, m.ngf, m.embed_dim, m.max_channels, m.mapping_layers),
        Critic(size, num_classes, m.ndf, m.max_channels, aux_classifier=m.ac_weight > 0),
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
