"""Choose the compute device once, and say why."""

from __future__ import annotations

import logging

import torch

from volgan.errors import ConfigError

log = logging.getLogger("volgan")


def resolve_device(choice: str = "auto") -> torch.device:
    """'auto' -> CUDA if available else CPU; 'cuda' without a GPU is a clear error."""
    if choice == "cpu":
        log.info("device cpu (requested), %d threads", torch.get_num_threads())
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if choice == "cuda" and not available:
        raise ConfigError("device: 'cuda' requested but no CUDA device is available (use device: cpu or auto)")
    if available:
        dev = torch.device("cuda")
        log.info(
            "device cuda (%s): %s",
            "requested" if choice == "cuda" else "auto, GPU found",
            torch.cuda.get_device_name(dev),
        )
        return dev
    log.info("device cpu (auto, no GPU found), %d threads", torch.get_num_threads())
    return torch.device("cpu")
