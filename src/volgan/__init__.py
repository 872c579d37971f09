"""volgan: train, sample and evaluate 3D GANs on volumetric data.

The public Python API, imported on first use so that ``import volgan`` (and ``volgan --help``)
does not import torch::

    import volgan
    g = volgan.load("runs/mri64")                  # run folder, .pt or .safetensors
    vols = g.sample(n=8, cls="1", seed=0)          # (8, 1, D, H, W) in the data's intensity range
    ds = volgan.SyntheticDataset(g, length=1000, seed=0)
    run = volgan.train("config.yaml", data="data/", run_dir="runs/mine")  # or a VolumeSet / torch Dataset
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from volgan.api import VolumeGenerator, load, train
    from volgan.interpolate import interpolate_classes, interpolate_latents, slerp
    from volgan.onnx_export import export_onnx
    from volgan.synthetic import SyntheticDataset

# public name -> the module that defines it
_LAZY = {
    "load": "volgan.api",
    "train": "volgan.api",
    "VolumeGenerator": "volgan.api",
    "SyntheticDataset": "volgan.synthetic",
    "export_onnx": "volgan.onnx_export",
    "interpolate_latents": "volgan.interpolate",
    "interpolate_classes": "volgan.interpolate",
    "slerp": "volgan.interpolate",
}

__all__ = [
    "SyntheticDataset",
    "VolumeGenerator",
    "__version__",
    "export_onnx",
    "interpolate_classes",
    "interpolate_latents",
    "load",
    "slerp",
    "train",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'volgan' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
