"""Run logging: `logging` lines for people, JSON lines for machines, TensorBoard for curves and pictures."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("volgan")

STATS_FILE = "stats.jsonl"


class RunLogger:
    """Writes every logged step to the log, ``RUN/stats.jsonl`` and TensorBoard (``RUN/tensorboard``)."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, progress: bool = True) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.run_dir = run_dir
        self.total_steps = total_steps
        self.stats_path = run_dir / STATS_FILE
        self._stats = self.stats_path.open("a")
        self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        # disable=None: the bar shows on a terminal and stays out of CI logs and pipes.
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            disable=None if progress else True,
            unit="step",
            dynamic_ncols=True,
        )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        fields = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        log.info("step %d/%d %s", step, self.total_steps, fields)
        self._stats.write(json.dumps({"step": step, **{k: _plain(v) for k, v in values.items()}}) + "\n")
        self._stats.flush()
        for k, v in values.items():
            self.tb.add_scalar(f"train/{k}", v, step)

    def epoch_scalars(self, epoch: int, records: list[dict[str, float]]) -> None:
        """Means over an epoch's steps, as ``epoch/<key>`` in TensorBoard (x axis = epoch)."""
        for key in records[0] if records else []:
            self.tb.add_scalar(f"epoch/{key}", float(np.mean([r[key] for r in records if key in r])), epoch)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """image: (H, W) grey or (H, W, 3) RGB, floats in [0, 1]."""
        self.tb.add_image(tag, image, step, dataformats="HW" if image.ndim == 2 else "HWC")

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        self.tb.close()
        self._stats.close()


def _plain(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def read_stats(run_dir: Path) -> list[dict[str, Any]]:
    """All records of ``RUN/stats.jsonl`` (the last record wins for a step that was logged twice)."""
    path = run_dir / STATS_FILE
    if not path.exists():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def log_preview_images(logger: RunLogger, samples: Mapping[str, np.ndarray], step: int, level: float | None) -> None:
    """TensorBoard images of preview samples (class name -> (n, S, S, S)): mid-slice montages, and
    surface renders at ``level`` (in [-1, 1]) for occupancy models."""
    from volgan.figures import slice_montage

    for name, vols in samples.items():
        logger.image(f"samples/{name}", slice_montage(vols), step)
        if level is not None:
            from volgan.render import render_surface  # skimage and mplot3d: occupancy runs only

            logger.image(f"renders/{name}", np.concatenate([render_surface(v, level) for v in vols], 1), step)


def write_run_figures(run_dir: Path, samples: Mapping[str, np.ndarray], step: int, level: float | None) -> None:
    """RUN/figures/: samples.png, losses.png (from stats.jsonl) and, for occupancy models, renders.png."""
    from volgan.figures import save_loss_curves, save_sample_grid

    figures = run_dir / "figures"
    save_sample_grid(samples, figures / "samples.png", title=f"EMA generator, step {step}")
    occupancy = level is not None
    keys = ("loss_d", "loss_g", "d_acc", "d_real", "d_fake") if occupancy else ("loss_d", "loss_g", "gp", "w_dist")
    save_loss_curves(read_stats(run_dir), figures / "losses.png", keys=keys)
    if level is not None:
        from volgan.render import save_render_grid

        save_render_grid(samples, figures / "renders.png", level=level, title=f"EMA generator, step {step}")
