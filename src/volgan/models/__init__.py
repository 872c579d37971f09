"""Model families. Each module holds one family's networks."""

from volgan.models.wgan_gp import Critic, Generator

__all__ = ["Critic", "Generator"]
