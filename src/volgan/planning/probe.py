"""The hardware probe: a few timed training steps of a candidate configuration on this machine.

Each probe builds the candidate's networks and optimisers through :class:`~volgan.training.Trainer`
on random volumes of the candidate's grid and times whole generator steps (the critic or
discriminator updates that precede one included), exactly what a run repeats. Nothing is written:
the run folder is a temporary one, removed again.
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volgan.config import Config, build_config, merge_dicts


@dataclass(frozen=True)
class StepTime:
    """Seconds per generator step of one candidate, and how the figure was obtained."""

    grid: int
    width: int
    seconds: float
    measured: bool
    """True: timed here; False: scaled from a timed candidate (see ``how``)"""
    how: str
    memory_gb: float | None = None
    """peak CUDA memory of the timed steps (None on a CPU)"""

    def to_dict(self) -> dict[str, Any]:
        """As plan.json keeps it (strict JSON: a step that did not fit is null, not Infinity)."""

        def finite(v: float | None) -> float | None:
            return v if v is not None and math.isfinite(v) else None

        return {
            "grid": self.grid,
            "width": self.width,
            "seconds_per_step": finite(self.seconds),
            "measured": self.measured,
            "how": self.how,
            "memory_gb": finite(self.memory_gb),
        }


def time_config(cfg_dict: dict[str, Any], num_classes: int, steps: int = 2, warmup: int = 1) -> StepTime:
    """Median seconds of ``steps`` generator steps (after ``warmup`` untimed ones) of the config.

    A critic that sees its top-hats from part ``f`` of the budget on (``model.top_hats_from``) is
    timed both ways; a budget-bound run spends part ``f`` of its time at the plain step and the
    rest at the dearer one, so its mean step is the time-weighted (harmonic) mean of the two."""
    part = float(cfg_dict.get("model", {}).get("top_hats_from") or 0.0)
    before = _time_steps(cfg_dict, num_classes, steps, warmup)
    if part <= 0.0:  # (a part without top-hats is refused by the config check)
        return before
    after = _time_steps(merge_dicts(cfg_dict, {"model": {"top_hats_from": 0.0}}), num_classes, steps, warmup)
    seconds = 1.0 / (part / before.seconds + (1.0 - part) / after.seconds)
    how = f"timed {steps} steps here each way: {before.seconds:.3g} s before the top-hats, {after.seconds:.3g} s after"
    memory = None if before.memory_gb is None else max(before.memory_gb, after.memory_gb or 0.0)
    return StepTime(before.grid, before.width, seconds, True, how, memory)


def _time_steps(cfg_dict: dict[str, Any], num_classes: int, steps: int, warmup: int) -> StepTime:
    """Median seconds of ``steps`` generator steps of the config as it starts (after ``warmup``)."""
    from volgan.training import Trainer

    run_dir = Path(tempfile.mkdtemp(prefix="volgan-probe-"))
    logger = logging.getLogger("volgan")
    level = logger.level
    logger.setLevel(logging.WARNING)  # the probe's set-up messages are not the run's
    try:
        forced = {"run_dir": str(run_dir), "log": {"progress_bar": False}, "model": {"num_classes": None}}
        cfg = build_config(merge_dicts(cfg_dict, forced), "<probe>")
        data = _random_set(cfg, max(num_classes, 1))
        trainer = Trainer(cfg, data)
        cuda = trainer.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(trainer.device)
        times = []
        with trainer.process_settings():
            for k in range(warmup + steps):
                if cuda:
                    torch.cuda.synchronize(trainer.device)
                start = time.perf_counter()
                trainer.train_step()
                if cuda:
                    torch.cuda.synchronize(trainer.device)
                if k >= warmup:
                    times.append(time.perf_counter() - start)
        memory = torch.cuda.max_memory_allocated(trainer.device) / 2**30 if cuda else None
        width = cfg.model.ngf
        return StepTime(cfg.data.size, width, statistics.median(times), True, f"timed {steps} steps here", memory)
    finally:
        logger.setLevel(level)
        shutil.rmtree(run_dir, ignore_errors=True)


def scaled(base: StepTime, grid: int, width: int) -> StepTime:
    """An estimate for another grid and width from a timed candidate: the work grows with the voxels,
    and between widths as measured on CPUs (~3x from 16 to 32, i.e. width**1.6); GPU memory with the
    voxels and the width."""
    factor = (grid / base.grid) ** 3 * (width / base.width) ** 1.6
    how = f"estimated: {factor:.3g}x the timed {base.grid}³ width-{base.width} step"
    # activations dominate a step's memory: they grow with the voxels and the channels
    memory = None if base.memory_gb is None else base.memory_gb * (grid / base.grid) ** 3 * (width / base.width)
    return StepTime(grid, width, base.seconds * factor, False, how, memory)


def _random_set(cfg: Config, num_classes: int) -> Any:
    """Enough random volumes for a few batches of every class, on the config's grid, in [-1, 1]."""
    from volgan.data.volume_set import VolumeSet

    n = max(2 * cfg.train.batch_size, num_classes)
    rng = np.random.default_rng(0)
    size = cfg.data.size
    volumes = rng.uniform(-1, 1, (n, size, size, size)).astype(np.float32)
    if cfg.data.binary:
        volumes = np.where(volumes > 0, np.float32(1), np.float32(-1))
    names = [str(k) for k in range(num_classes)]
    return VolumeSet.from_arrays(volumes, np.arange(n) % num_classes, names)
