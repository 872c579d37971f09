"""Reading volumes, bringing them onto the training grid, and the cached :class:`VolumeSet`."""

from volgan.data.cache import CACHE_VERSION, default_cache_dir
from volgan.data.dataset import load_volumes
from volgan.data.io import SUPPORTED_SUFFIXES, read_npz, read_volume
from volgan.data.preprocess import grid_affine, intensity_bounds, scale_to_unit, to_grid, unscale
from volgan.data.volume_set import VolumeSet

__all__ = [
    "CACHE_VERSION",
    "SUPPORTED_SUFFIXES",
    "VolumeSet",
    "default_cache_dir",
    "grid_affine",
    "intensity_bounds",
    "load_volumes",
    "read_npz",
    "read_volume",
    "scale_to_unit",
    "to_grid",
    "unscale",
]
