"""The training loop: :func:`fit` runs a set-up run (:class:`volgan.training.Trainer`) to its end.

The loop holds the run folder's lock, the signal handlers, the budget and the logging cadence; what
one iteration trains is the run's ``train_step`` (:mod:`volgan.updates`). It reads the run through
the :class:`Trainable` protocol, so it imports no ``Trainer``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

import numpy as np
import torch

from volgan import checkpoint as ckpt
from volgan import distributed
from volgan.config import Config, save_config
from volgan.data.dataset import VolumeSet
from volgan.errors import VolganError
from volgan.runlock import RunLock
from volgan.runlog import RunLogger, log_preview_images, write_run_figures

# The run's end writes a checkpoint and the figures (renders too): the budget keeps this many times the
# last preview's and checkpoint's seconds for it, so `--minutes N` is over within N minutes.
END_WORK = 2.0

log = logging.getLogger("volgan")


@dataclass
class TrainResult:
    """Where a run stands after ``fit()``: its folder, step, newest checkpoint, and whether a signal
    stopped it (:func:`volgan.train` returns it with ``.load()``)."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    interrupted: bool = False


class Trainable(Protocol):
    """What the loop reads and calls of a run (:class:`volgan.training.Trainer` is one)."""

    cfg: Config
    data: VolumeSet
    dist: distributed.DistContext
    device: torch.device
    run_dir: Path
    step: int
    trained_seconds: float
    last_checkpoint: Path | None
    newest_seen: Path | None
    clock: Callable[[], float]

    @property
    def epoch(self) -> int: ...
    @property
    def surface_level(self) -> float | None: ...

    def train_step(self) -> dict[str, float]: ...
    def save(self) -> Path: ...
    def preview(self) -> dict[str, np.ndarray]: ...
    def budget_spent(self, ahead_s: float = 0.0) -> float: ...
    def summary(self) -> str: ...
    def process_settings(self) -> contextlib.AbstractContextManager[None]: ...


class _Recorder:
    """The loop's bookkeeping for logs: the log line's seconds per step, per-epoch means, and the
    mean over ranks of the logged values (the same steps on every rank; rank 0 writes)."""

    def __init__(self, run: Trainable, logger: RunLogger | None) -> None:
        self.run, self.logger = run, logger
        self.last_time, self.last_step = time.perf_counter(), run.step
        self.epoch = run.epoch
        self.epoch_values: list[dict[str, float]] = []

    def step(self, values: dict[str, float], log_now: bool) -> None:
        run = self.run
        if log_now:
            values = distributed.mean_values(values, run.dist, run.device)
        self.epoch_values.append(values)
        if self.logger is not None:
            self.logger.advance()
            if run.epoch != self.epoch:  # per-epoch means for TensorBoard
                self.logger.epoch_scalars(self.epoch, self.epoch_values)
            if log_now:
                now = time.perf_counter()
                values["sec_per_step"] = (now - self.last_time) / max(1, run.step - self.last_step)
                self.last_time, self.last_step = now, run.step
                self.logger.scalars(run.step, values)
        if run.epoch != self.epoch:
            self.epoch, self.epoch_values = run.epoch, []


class _Signals:
    """SIGINT/SIGTERM while the loop runs: remember the signal, finish the step, checkpoint, return."""

    def __init__(self) -> None:
        self.received: int | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        log.warning("received %s: finishing the current step and writing a checkpoint", signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handlers for the ``with`` block (only possible in the main thread), then the old ones."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("training outside the main thread: Ctrl-C/SIGTERM will not write a final checkpoint")
            yield
            return
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def fit(run: Trainable, stop_after: int | None = None) -> TrainResult:
    """Train until train.steps (or the budget, train.max_minutes, a signal, or ``stop_after`` more steps).

    The run folder's lock (``RUN/.lock``) is held throughout, so a second training pointed at the
    same folder is refused; it is released however this returns or raises. Under torchrun every
    rank trains; rank 0 alone holds the lock and writes the run folder.
    """
    if not run.dist.is_main:
        with distributed.collective_errors(run.dist), run.process_settings():
            return _loop(run, stop_after)
    with RunLock(run.run_dir), distributed.collective_errors(run.dist):
        newest = ckpt.newest_checkpoint(run.run_dir)
        if newest != run.newest_seen:
            raise VolganError(
                f"{run.run_dir}: another training changed the checkpoints after this one was set up "
                f"(newest: {newest.name if newest else 'none'}); pass --resume {run.run_dir} to continue from it"
            )
        # temp files of checkpoint writes a killed run never finished: nobody else can be writing now
        for stale in ckpt.checkpoint_dir(run.run_dir).glob(".step_*.tmp"):
            stale.unlink(missing_ok=True)
        with run.process_settings():
            return _loop(run, stop_after)


def _start(run: Trainable) -> None:
    """The run folder's config, class map and process facts (rank 0); the run's summary in the log."""
    cfg = run.cfg
    facts = run.dist.facts(cfg.train.batch_size)
    if run.dist.is_main:
        save_config(cfg, run.run_dir / "config.yaml", facts=facts)
        (run.run_dir / "class_to_idx.json").write_text(json.dumps(run.data.class_to_idx, indent=2))
        (run.run_dir / "distributed.json").write_text(json.dumps(facts, indent=2))
    log.info(
        "world size %d: global batch %d, %d per process; learning rates not scaled",
        run.dist.world_size,
        facts["global_batch"],
        facts["per_process_batch"],
    )
    log.info("%s", run.summary())


def _loop(run: Trainable, stop_after: int | None) -> TrainResult:
    cfg, every, main = run.cfg, run.cfg.log, run.dist.is_main
    _start(run)
    target = cfg.train.steps if stop_after is None else min(cfg.train.steps, run.step + stop_after)
    logger = RunLogger(run.run_dir, cfg.train.steps, run.step, every.progress_bar) if main else None
    signals = _Signals()  # a signal that stopped an earlier fit() does not stop this one
    start, saved_at, trained_before = run.clock(), run.step, run.trained_seconds
    record = _Recorder(run, logger)
    preview_s = save_s = end_s = 0.0  # rank 0: the last preview's and checkpoint's seconds, and the end's
    over_budget = run.budget_spent() >= 1.0  # a resumed run whose budget is spent trains no step
    if over_budget:
        log.info("time budget already spent (%.1f min trained): no step to train", run.trained_seconds / 60)
    try:
        with signals.installed():
            while run.step < target and not over_budget:
                # 1. n_critic critic updates (WGAN-GP) or one discriminator update (3D-GAN), then one
                #    generator update and the EMA update: volgan.updates
                values = run.train_step()
                # 2. out of time, or signalled? every rank decides the same at the same step, and
                #    keeps the same trained seconds (the mean over ranks: the lr schedule reads them)
                elapsed = run.clock() - start
                shared = distributed.mean_values(
                    {"elapsed": elapsed, "signal": float(signals.received is not None), "end": end_s},
                    run.dist,
                    run.device,
                )
                run.trained_seconds = trained_before + shared["elapsed"]
                limit = cfg.train.max_minutes
                # the budget keeps room for the end's work (rank 0's alone: the mean times the ranks)
                ahead = shared["end"] * run.dist.world_size
                over_budget = bool(limit and shared["elapsed"] > 60 * limit) or run.budget_spent(ahead) >= 1.0
                stop = over_budget or shared["signal"] > 0
                # 3. log line, stats.jsonl, TensorBoard (the last step is always logged)
                record.step(values, log_now=run.step % every.every == 0 or run.step == target or stop)
                if logger is not None:  # rank 0
                    # 4. preview images of the EMA generator
                    if run.step % every.image_every == 0:
                        began = run.clock()
                        log_preview_images(logger, run.preview(), run.step, run.surface_level)
                        preview_s = run.clock() - began
                    # 5. checkpoint
                    if run.step % every.checkpoint_every == 0:
                        began = run.clock()
                        run.save()
                        saved_at, save_s = run.step, run.clock() - began
                    end_s = END_WORK * (preview_s + save_s)
                if stop:
                    if over_budget:
                        minutes = run.trained_seconds / 60
                        log.info("time budget reached at step %d (%.1f min trained)", run.step, minutes)
                    elif signals.received is None:
                        signals.received = signal.SIGTERM  # another rank was signalled
                    break
    finally:
        if logger is not None:
            logger.close()
    if main:
        if run.step != saved_at or run.last_checkpoint is None:
            run.save()
        write_run_figures(run.run_dir, run.preview(), run.step, run.surface_level)
    distributed.barrier(run.dist)  # no rank leaves before rank 0's checkpoint is written
    interrupted = signals.received is not None
    log.info(
        "%s at step %d; checkpoint %s", "interrupted" if interrupted else "finished", run.step, run.last_checkpoint
    )
    return TrainResult(run.run_dir, run.step, run.last_checkpoint, interrupted)
