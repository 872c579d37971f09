"""Apply the ``perf.*`` switches: memory format, fast layers, allocator, and the CUDA precision settings.

Everything here changes how the mathematics is computed, never what is computed; the switches exist
so each fast path can be measured (``benchmarks/``) and turned off where a platform misbehaves.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Iterator

import torch
from torch import nn

from volgan.config import PerfConfig
from volgan.models.layers import InstanceNorm3d, ResizeConv3d, StemConvTranspose3d, SubpixelConvTranspose3d

log = logging.getLogger("volgan")

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
# glibc's values at start-up (malloc/malloc.c: DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX), unless the
# environment set them; restore_allocator() puts these back.
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_ENV_NAMES = {
    _M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
    _M_MMAP_MAX: ("MALLOC_MMAP_MAX_", "glibc.malloc.mmap_max"),
}
_allocator_tuned = False


def memory_format(cfg: PerfConfig) -> torch.memory_format:
    return torch.channels_last_3d if cfg.channels_last else torch.contiguous_format


def configure_models(cfg: PerfConfig, *models: nn.Module) -> None:
    """Set each fast layer's switch and the models' memory format from ``cfg`` (in place)."""
    for model in models:
        for module in model.modules():
            if isinstance(module, InstanceNorm3d):
                module.fast = cfg.fused_norm
            elif isinstance(module, SubpixelConvTranspose3d | ResizeConv3d):
                module.fast = cfg.subpixel_conv
            elif isinstance(module, StemConvTranspose3d):
                module.fast = cfg.dense_stem
        model.to(memory_format=memory_format(cfg))  # type: ignore[call-overload]  # documented, not in the stubs


def to_format(x: torch.Tensor, cfg: PerfConfig) -> torch.Tensor:
    """A batch (B, C, D, H, W) in the models' memory format.

    A one-channel volume is "contiguous" in both formats, and ``.contiguous(memory_format=...)``
    keeps its strides, so oneDNN would read it as NCDHW and carry that layout through the whole
    network; an explicit channels-last copy makes every activation after it channels-last.
    """
    if not cfg.channels_last:
        return x.contiguous()
    if x.is_contiguous(memory_format=torch.channels_last_3d) and x.stride(1) == 1:
        return x
    return torch.empty_like(x, memory_format=torch.channels_last_3d).copy_(x)


def autocast_dtype(cfg: PerfConfig, device: torch.device) -> torch.dtype | None:
    """bf16 for the networks on a CUDA device that supports it (``amp: auto|bf16``), else None (float32).

    CPU never gets bf16 here: without AMX its bf16 matrix products are slower than float32.
    """
    if cfg.amp == "off" or device.type != "cuda":
        return None
    if not torch.cuda.is_bf16_supported():
        if cfg.amp == "bf16":
            log.warning("perf.amp: bf16 requested but %s does not support it; using float32", device)
        return None
    return torch.bfloat16


def configure_backend(cfg: PerfConfig, device: torch.device) -> None:
    """Process-wide settings for ``device``, for the rest of the process: TF32 and cuDNN autotuning
    on CUDA, the allocator on CPU. For CLI commands; a training run uses :func:`backend_settings`."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    elif cfg.tune_allocator:
        tune_allocator()


@contextlib.contextmanager
def backend_settings(cfg: PerfConfig, device: torch.device) -> Iterator[None]:
    """:func:`configure_backend` for the ``with`` block only: on exit the TF32 and cuDNN flags are
    put back as they were, and the allocator setting, if this block applied it, is undone
    (:func:`restore_allocator`)."""
    flags = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    tuned_here = device.type != "cuda" and cfg.tune_allocator and not _allocator_tuned
    try:
        configure_backend(cfg, device)
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = flags
        if tuned_here and _allocator_tuned:
            restore_allocator()


def tune_allocator() -> bool:
    """Ask glibc to serve large blocks from its heap and keep freed memory there.

    By default glibc maps every block above 128 KiB-32 MiB afresh and unmaps it on free, so each
    training step page-faults (and the kernel zeroes) its activations again: ~70,000 faults per critic
    step at 64³. Keeping the memory costs nothing the peak did not already need. Returns whether it
    applied (only on Linux with glibc; a no-op elsewhere).
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _allocator_tuned = ok
    if ok:
        log.debug("glibc allocator: no per-block mmap, no trimming (perf.tune_allocator)")
    return ok


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator`'s setting is in force (mallopt itself cannot be read back)."""
    return _allocator_tuned


def _startup_value(param: int) -> int:
    """What glibc started with for ``param``: the environment's value if it set one, else the default."""
    env, tunable = _ENV_NAMES[param]
    for item in reversed(os.environ.get("GLIBC_TUNABLES", "").replace(":", " ").split()):
        name, _, value = item.partition("=")
        if name == tunable and value.isdigit():
            return int(value)
    value = os.environ.get(env, "")
    return int(value) if value.isdigit() else _GLIBC_DEFAULTS[param]


def restore_allocator() -> bool:
    """Undo :func:`tune_allocator`: the start-up trim threshold and mmap block count again.

    One thing stays: glibc turns off its dynamic mmap threshold (which grows as large blocks are
    freed) at any mallopt of these parameters, and has no call to turn it back on; the threshold
    stays where it was. Returns whether anything was restored.
    """
    global _allocator_tuned
    if not _allocator_tuned:
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for param in (_M_MMAP_MAX, _M_TRIM_THRESHOLD):
        mallopt(param, _startup_value(param))
    _allocator_tuned = False
    log.debug("glibc allocator: start-up settings restored")
    return True
