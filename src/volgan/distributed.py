"""Multi-process training and sampling under ``torchrun``: the process group, the rank's share of a
batch, and the few collective decisions the training loop needs.

A run started by ``torchrun`` finds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment;
anything else is a single process (world size 1) and none of this does any communication.

The mathematics does not depend on the world size: ``train.batch_size`` is the *global* batch, each
of N processes takes its contiguous 1/N of it, and every random draw (latents, penalty weights,
noise) is made for the whole global batch from a generator all ranks keep in step, then sliced.
DistributedDataParallel averages the gradients, so the update equals the single-process update on
the whole batch (tests/training/test_distributed.py checks this), the learning rate needs no
scaling, and a checkpoint resumes at any world size that divides the batch.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from volgan.errors import ConfigError, VolganError

log = logging.getLogger("volgan")


class DistributedError(VolganError):
    """Another process of the job failed or stopped answering."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, writes TensorBoard, figures and checkpoints."""
        return self.rank == 0

    def rows(self, global_batch: int) -> slice:
        """This rank's rows of a global batch (contiguous blocks, rank order)."""
        if global_batch % self.world_size:
            raise ConfigError(
                f"train.batch_size ({global_batch}) is the global batch and must be divisible by the "
                f"number of processes ({self.world_size})"
            )
        n = global_batch // self.world_size
        return slice(self.rank * n, (self.rank + 1) * n)

    def facts(self, global_batch: int) -> dict[str, Any]:
        """World size and batch split of a run (saved with every checkpoint and in the run folder)."""
        return {
            "world_size": self.world_size,
            "global_batch": global_batch,
            "per_process_batch": global_batch // self.world_size,
            "lr_scaling": "none (train.batch_size is the global batch; the update does not depend on the world size)",
        }


SINGLE = DistContext()


def env_context() -> DistContext:
    """The context ``torchrun`` describes in the environment (single process if it describes none)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise ConfigError(f"malformed torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None
    return DistContext(rank, world, local) if world > 1 else SINGLE


def init(ctx: DistContext, device: torch.device, backend: str = "auto", timeout_s: float = 600.0) -> None:
    """Join the process group (``env://``, as torchrun sets it up): NCCL on CUDA, Gloo on the CPU.

    ``timeout_s`` bounds every collective, so a rank that dies or hangs ends the job with an error
    instead of a silent wait.
    """
    if not ctx.enabled or dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if backend == "nccl" else None,
    )
    log.info(
        "rank %d of %d (local rank %d), backend %s, device %s",
        ctx.rank,
        ctx.world_size,
        ctx.local_rank,
        backend,
        device,
    )


# How long shutdown() hands the GIL to Gloo's worker threads (see there).
GLOO_DRAIN_S = 0.2


def shutdown() -> None:
    """Leave the process group, then give Gloo's worker threads a moment before the interpreter ends.

    With DistributedDataParallel, Gloo's worker threads outlive ``destroy_process_group`` (torch
    2.13: the reducer keeps a reference to the group), and one may still be freeing a finished
    collective that was started during a backward pass. That object holds a Python object (the
    autograd context torch keeps in thread-local state), so freeing it takes the GIL; if the
    interpreter has begun finalising by then, the thread cannot have it and the process aborts
    ("terminate called without an active exception", SIGABRT), failing a job that had finished.
    Sleeping releases the GIL, so a thread waiting for it finishes first.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(GLOO_DRAIN_S)


def rank_device(ctx: DistContext, device: torch.device) -> torch.device:
    """One GPU per process: local rank r uses cuda:r; CPU processes share the CPU."""
    if device.type == "cuda" and ctx.enabled:
        if ctx.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {ctx.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (torchrun --nproc-per-node)"
            )
        return torch.device("cuda", ctx.local_rank)
    return device


@contextmanager
def collective_errors(ctx: DistContext) -> Iterator[None]:
    """Turn a failed or timed-out collective into one readable error naming this rank."""
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        if not ctx.enabled or not _looks_distributed(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world_size}: lost the other processes ({first[:200]}); "
            "see the first failing rank's message above"
        ) from None


def _looks_distributed(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return isinstance(e, dist.DistError) or any(
        k in text for k in ("gloo", "nccl", "timed out", "timeout", "connection", "peer", "collective")
    )


def _reduce(value: float, op: Any, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t, op=op)
    return float(t.item())


def all_true(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank iff ``flag`` is true on every rank (one decision for all)."""
    return flag if not ctx.enabled else _reduce(float(flag), dist.ReduceOp.MIN, device) > 0.5


def mean(value: float, ctx: DistContext, device: torch.device) -> float:
    """The mean of a per-rank number over the ranks (each rank holds an equal share of the batch)."""
    return value if not ctx.enabled else _reduce(value, dist.ReduceOp.SUM, device) / ctx.world_size


def mean_values(values: dict[str, float], ctx: DistContext, device: torch.device) -> dict[str, float]:
    """Each logged number averaged over the ranks (one all-reduce for the whole dict)."""
    if not ctx.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64 if device.type == "cpu" else torch.float32)
    t = t.to(device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


class MethodCall(nn.Module):
    """Calls ``method`` of the wrapped network through ``forward``.

    DistributedDataParallel synchronises gradients only for what passes through the ``forward`` of
    the module it wraps; the discriminators have several entry points (score and class logits,
    logits only), so the training step calls them by name through this module.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.network, method)(*args, **kwargs)


def wrap(module: nn.Module, ctx: DistContext, device: torch.device, find_unused: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel when the job has several processes, else itself.

    ``find_unused``: some parameters get no gradient in a step (progressive growing's other levels)."""
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # Channels-last weights whose gradient autograd returns in the plain layout (one-channel
    # convolutions are ambiguous) make DDP copy that gradient into its bucket: correct, and cheap
    # next to the convolutions, but DDP warns every step.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        # SyncBatchNorm (or InstanceNorm) already makes the statistics equal on every rank
        forward_sync_buffers=False,
        find_unused_parameters=find_unused,
    )


class _GatherRanks(torch.autograd.Function):
    """Stack every rank's tensor (world, *shape); the backward hands each rank the sum over ranks of
    the gradient for its own slice. Synchronous ``all_gather``/``all_reduce``: no work outlives a step."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


class SyncBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d whose training statistics span the whole global batch, on any backend.

    ``torch.nn.SyncBatchNorm`` (used on CUDA) refuses CPU tensors; this one gathers each rank's
    per-channel (count, mean, variance) with a differentiable all-gather
    and combines them with the parallel-variance formula, so forward and backward equal those of
    one BatchNorm3d over the concatenated batch. Same parameters and buffers as BatchNorm3d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, D, H, W) -> (B, C, D, H, W)."""
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        var, mean = torch.var_mean(x, dim=(0, 2, 3, 4), correction=0)
        count = torch.full_like(mean, x.numel() / x.shape[1])
        stats = _GatherRanks.apply(torch.stack([count, mean, var]))  # (world, 3, C), gradients flow back
        counts, means, variances = stats.unbind(1)
        total = counts.sum(0)
        g_mean = (counts * means).sum(0) / total
        g_var = (counts * (variances + (means - g_mean) ** 2)).sum(0) / total
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():
                self.running_mean.lerp_(g_mean.detach(), m)
                self.running_var.lerp_(g_var.detach() * total / (total - 1).clamp_min(1), m)
        shape = (1, -1, 1, 1, 1)
        y = (x - g_mean.view(shape)) * torch.rsqrt(g_var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm3d in ``module`` made synchronous across ranks (in place where possible)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm3d:
            sync = SyncBatchNorm3d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync.to(device))
        else:
            convert_sync_batchnorm(child, device)
    return module
