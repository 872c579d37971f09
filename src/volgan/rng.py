"""A training run's own random streams, kept apart from the process's global torch generators.

The networks' weight init and every draw of a training step (latents, penalty weights, label noise,
augmentation) use torch's global generators: layers and ``torch.randn(..., device=...)`` offer no
other route. :class:`RunRNG` holds the run's CPU stream (and its CUDA device's) and swaps it into
the global generators only inside :meth:`RunRNG.active`, putting the caller's state back on exit;
so building or training a ``Trainer`` leaves ``torch.get_rng_state()`` as it found it, and the
stream a checkpoint saves is the run's alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


class RunRNG:
    """The CPU and (on CUDA) device generator states of one run, seeded from ``seed``.

    The states equal those ``torch.manual_seed(seed)`` would give the global generators.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self._depth = 0
        self._cpu = torch.Generator().manual_seed(seed).get_state()
        self._cuda: torch.Tensor | None = None
        if device.type == "cuda":
            outer = torch.cuda.get_rng_state(device)
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
            self._cuda = torch.cuda.get_rng_state(device)
            torch.cuda.set_rng_state(outer, device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside: the global generators draw the run's stream. Re-entrant (an inner use is a no-op)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        outer_cpu = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(self.device) if self._cuda is not None else None
        self._set_global(self._cpu, self._cuda)
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            self._cpu, self._cuda = self._get_global()
            self._set_global(outer_cpu, outer_cuda)

    def state(self) -> dict[str, Any]:
        """``{"torch": cpu state, "cuda": device state (CUDA only)}``, as checkpoints store it."""
        cpu, cuda = self._get_global() if self._depth else (self._cpu, self._cuda)
        return {"torch": cpu.clone(), **({"cuda": cuda.clone()} if cuda is not None else {})}

    def load(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state` (a checkpoint's ``rng``); a CPU run ignores a CUDA state."""
        cpu = state["torch"].cpu()
        cuda = state["cuda"].cpu() if "cuda" in state and self._cuda is not None else self._cuda
        if self._depth:
            self._set_global(cpu, cuda)
        else:
            self._cpu, self._cuda = cpu, cuda

    def _get_global(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self._cuda is not None else None
        return torch.get_rng_state(), cuda

    def _set_global(self, cpu: torch.Tensor, cuda: torch.Tensor | None) -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
