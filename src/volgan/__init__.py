"""volgan: train, sample and evaluate 3D GANs on volumetric data."""

__version__ = "0.1.0"
