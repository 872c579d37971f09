"""The training loop shared by both families: :class:`Trainer` sets a run up and ``fit`` runs it.

What one iteration does per family (``n_critic`` critic updates then a generator update, or the
3D-GAN's gated discriminator update then a generator update) is in :mod:`volgan.updates`; how a
run is written to and read back from a checkpoint is in :mod:`volgan.checkpoint`. Everything else
(data order, progressive growing's level, EMA, logging, checkpoints, signals) is the same code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from volgan import checkpoint as ckpt
from volgan import distributed, growth, perf, schedule, updates
from volgan.augment import AdaptiveP, DiffAugment3d
from volgan.config import Config, save_config, surface_level
from volgan.data.dataset import VolumeSet
from volgan.data.stream import BatchStream
from volgan.device import resolve_device
from volgan.ema import EMA
from volgan.errors import CheckpointError, ConfigError, VolganError
from volgan.losses import (
    label_targets,
)
from volgan.models import Critic, build_models
from volgan.models.wgan_gp import count_parameters
from volgan.rng import RunRNG
from volgan.runlock import RunLock, check_unlocked
from volgan.runlog import RunLogger, log_preview_images, write_run_figures

log = logging.getLogger("volgan")


class TrainingDiverged(VolganError):
    """A loss became NaN/Inf."""


def resolve_num_classes(cfg: Config, data: VolumeSet) -> int:
    """model.num_classes, or from the data: its class count, 0 (unconditional) for a single class."""
    if cfg.model.num_classes is not None:
        if cfg.model.num_classes and cfg.model.num_classes != data.num_classes:
            raise VolganError(
                f"model.num_classes is {cfg.model.num_classes} but the data has {data.num_classes} classes"
            )
        return cfg.model.num_classes
    return data.num_classes if data.num_classes >= 2 else 0


@dataclass
class TrainResult:
    """Where a run stands after ``fit()``: its folder, step, newest checkpoint, and whether a signal
    stopped it (:func:`volgan.train` returns it with ``.load()``)."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    interrupted: bool = False


class _Recorder:
    """The loop's bookkeeping for logs: the log line's seconds per step, per-epoch means, and the
    mean over ranks of the logged values (the same steps on every rank; rank 0 writes)."""

    def __init__(self, trainer: Trainer, logger: RunLogger | None) -> None:
        self.trainer, self.logger = trainer, logger
        self.last_time, self.last_step = time.perf_counter(), trainer.step
        self.epoch = trainer.stream.epoch
        self.epoch_values: list[dict[str, float]] = []

    def step(self, values: dict[str, float], log_now: bool) -> None:
        tr = self.trainer
        if log_now:
            values = distributed.mean_values(values, tr.dist, tr.device)
        self.epoch_values.append(values)
        if self.logger is not None:
            self.logger.advance()
            if tr.stream.epoch != self.epoch:  # per-epoch means for TensorBoard
                self.logger.epoch_scalars(self.epoch, self.epoch_values)
            if log_now:
                now = time.perf_counter()
                values["sec_per_step"] = (now - self.last_time) / max(1, tr.step - self.last_step)
                self.last_time, self.last_step = now, tr.step
                self.logger.scalars(tr.step, values)
        if tr.stream.epoch != self.epoch:
            self.epoch, self.epoch_values = tr.stream.epoch, []


class Trainer:
    """Owns the models, optimisers, EMA, data stream and RNG for one run folder."""

    def __init__(
        self,
        cfg: Config,
        data: VolumeSet,
        *,
        resume: Path | None = None,
        resume_state: dict[str, Any] | None = None,
        dist: distributed.DistContext = distributed.SINGLE,
    ) -> None:
        """``resume``: a run folder or checkpoint file to continue; ``resume_state``: that checkpoint,
        if the caller has already loaded it (so it is not read twice); ``dist``: this process's place
        in a torchrun job (its process group must already be initialised)."""
        self.cfg, self.data, self.dist = cfg, data, dist
        self.run_dir = Path(cfg.run_dir)
        self.device = distributed.rank_device(dist, resolve_device(cfg.device))
        self.rows = dist.rows(cfg.train.batch_size)  # this rank's share of every global batch
        share = len(range(cfg.train.batch_size)[self.rows])
        if cfg.train.mode_seeking and share < 2:
            log.warning("train.mode_seeking needs >= 2 volumes per process to form a pair; it has no effect here")
        self.num_classes = resolve_num_classes(cfg, data)
        # the run's own random streams: weight init and every draw of a step, never the global seed
        self.rng = RunRNG(cfg.seed, self.device)
        # `discriminator` is the critic of the WGAN-GP or the discriminator of the DCGAN.
        if cfg.model.minibatch_std and share < 2:
            raise ConfigError(
                f"model.minibatch_std compares the volumes of each process's share of the batch: "
                f"train.batch_size {cfg.train.batch_size} over {dist.world_size} processes leaves {share}"
            )
        with self.rng.active():
            self.generator, self.discriminator = build_models(cfg, self.num_classes, share)
        self.generator.to(self.device)
        self.discriminator.to(self.device)
        perf.configure_models(cfg.perf, self.generator, self.discriminator)
        self.autocast = perf.autocast_dtype(cfg.perf, self.device)
        t = cfg.train
        self.ema = EMA(self.generator, t.ema_decay, t.ema_warmup)  # a copy of the plain generator: no collectives in it
        if dist.enabled and cfg.model.family == "dcgan" and cfg.dist.sync_batchnorm:
            for net in (self.generator, self.discriminator):  # replaces the layers inside, before the optimisers exist
                distributed.convert_sync_batchnorm(net, self.device)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=t.lr_g, betas=t.betas)
        self.d_params = [p for p in self.discriminator.parameters() if p.requires_grad]
        self.opt_d = torch.optim.Adam(self.d_params, lr=t.lr_d, betas=t.betas)
        # Under torchrun both networks run inside DistributedDataParallel (gradients averaged over
        # ranks); the discriminator's entry points are called by name through its forward.
        # progressive growing: the level each step trains at (None: the full grid throughout)
        m = cfg.model
        self.growth = (
            growth.GrowthSchedule.from_config(cfg.data.size, m.grow_from, t.grow_steps, t.grow_fade)
            if m.grow_from is not None
            else None
        )
        self.native = {"native": True} if self.growth is not None else {}  # generator calls in training
        growing = self.growth is not None  # a coarse level leaves some layers unused: DDP must know
        self.g_call = distributed.wrap(self.generator, dist, self.device, find_unused=growing)
        self.d_call = distributed.wrap(
            distributed.MethodCall(self.discriminator), dist, self.device, find_unused=growing
        )
        a = cfg.augment
        value_range = (0.0, 1.0) if cfg.model.family == "dcgan" else (-1.0, 1.0)  # what the discriminator sees
        self.augment = DiffAugment3d(a, value_range) if a.enabled else None
        self.ada = AdaptiveP(a) if a.enabled and a.adaptive else None
        # the family's step, and what it is called with: explicit inputs, no Trainer
        self.family_step = (updates.WGANGPStep if isinstance(self.discriminator, Critic) else updates.DCGANStep)(cfg)
        self.nets = updates.Nets(
            self.generator, self.g_call, self.discriminator, self.d_call, self.d_params, self.opt_g, self.opt_d
        )
        self.services = updates.StepServices(
            batch=self.real_batch,
            draw=self.draw,
            amp=self.amp,
            augment=self.augmented,
            paired=self.paired,
            targets=self.targets,
            noisy=self.noisy,
            check_finite=self.check_finite,
            generator_update=self.generator_update,
            ada=self.ada,
            dist=dist,
            device=self.device,
            native=self.native,
        )
        self.step = 0
        # wall-clock seconds this run has trained, over all its fit() calls and resumes
        # (train.budget_minutes); read from ``clock``, which tests replace
        self.trained_seconds = 0.0
        self.plan = schedule.step_plan(cfg.train, self.step, self.trained_seconds, self.growth)  # the next step's
        self.clock = time.perf_counter
        self.stream = BatchStream(len(data.labels), t.batch_size, cfg.seed)
        self._stop_signal: int | None = None
        self.last_checkpoint: Path | None = None
        if dist.is_main:  # only rank 0 touches the run folder
            check_unlocked(self.run_dir)  # refuse early; fit() takes the lock itself
        if resume is not None:
            self.load_state_dict(resume, resume_state)
        elif dist.is_main and ckpt.list_checkpoints(self.run_dir):
            raise VolganError(
                f"{self.run_dir}: run folder already holds checkpoints; "
                f"pass --resume {self.run_dir} or choose another --run-dir"
            )
        self._newest_seen = ckpt.newest_checkpoint(self.run_dir) if dist.is_main else None

    # -- checkpoint round trip -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: weights, optimisers, EMA, random streams, data order, the
        augmentation's p, and what sampling needs without the data (classes, intensities, geometry)."""
        augment = {} if self.augment is None else {"p": self.augment.p, **(self.ada.state() if self.ada else {})}
        return {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "num_classes": self.num_classes,
            "class_names": list(self.data.class_names),
            "intensity_range": [float(v) for v in self.data.intensity_range],
            "spacing": float(self.data.spacing),
            "affine": np.asarray(self.data.affine, dtype=np.float64).tolist(),
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.ready(seed=self.cfg.seed).state_dict(),
            "ema_updates": self.ema.updates,
            "trained_seconds": self.trained_seconds,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": self.rng.state(),
            "data_state": self.stream.state(),
            "distributed": self.run_facts(),
            "augment": augment,
        }

    def load_state_dict(self, where: Path, state: dict[str, Any] | None = None) -> None:
        """Put the run in ``where`` (a run folder or checkpoint; ``state``: it, already loaded) back,
        refusing a checkpoint of another architecture or other classes with a one-line error."""
        path = ckpt.resolve_checkpoint(where)
        if state is None:
            state = ckpt.load_checkpoint(path, map_location=self.device)
        ckpt.require_keys(state, ckpt.TRAINING_KEYS, path)
        ckpt.check_compatible(state["config"], self.cfg, path)
        if state["class_names"] != list(self.data.class_names) or state["num_classes"] != self.num_classes:
            raise CheckpointError(
                f"{path}: trained on classes {state['class_names']}, the data has {list(self.data.class_names)}"
            )
        try:
            self.generator.load_state_dict(state["generator"])
            self.discriminator.load_state_dict(state["discriminator"])
            self.ema.module.load_state_dict(state["ema"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: weights do not fit this model ({ckpt.describe_load_error(e)})") from None
        augment_state = state.get("augment") or {}
        if self.augment is not None and "p" in augment_state:  # a run without augmentation restarts it at p
            self.augment.p = float(augment_state["p"])
            if self.ada is not None and "total" in augment_state:
                self.ada.load(augment_state)
        self.ema.updates = int(state["ema_updates"])
        self.ema.mark_calibrated()
        self.step = int(state["step"])
        self.trained_seconds = float(state.get("trained_seconds", 0.0))  # absent before train.budget_minutes
        self.stream = BatchStream(
            len(self.data.labels), self.cfg.train.batch_size, self.cfg.seed, **state["data_state"]
        )
        self.rng.load(state["rng"])
        self.last_checkpoint = path
        log.info("resumed from %s at step %d", path, self.step)

    def run_facts(self) -> dict[str, Any]:
        """World size and batch split of this run (saved with every checkpoint and in the run folder)."""
        b = self.cfg.train.batch_size
        return {
            "world_size": self.dist.world_size,
            "global_batch": b,
            "per_process_batch": b // self.dist.world_size,
            "lr_scaling": "none (train.batch_size is the global batch; the update does not depend on the world size)",
        }

    def save(self) -> Path:
        bad = [n for n, p in self.generator.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # never let NaN weights replace a good checkpoint
            raise TrainingDiverged(
                f"step {self.step}: generator weight {bad[0]} is not finite; "
                f"not saving (last good checkpoint: {self.last_checkpoint})"
            )
        path = ckpt.save_checkpoint(self.state_dict(), ckpt.checkpoint_path(self.run_dir, self.step))
        ckpt.prune_checkpoints(self.run_dir, self.cfg.log.keep_checkpoints)
        self.last_checkpoint = path
        self._newest_seen = ckpt.newest_checkpoint(self.run_dir)
        return path

    # -- one generator iteration -----------------------------------------------------------
    def real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the next global batch: volumes (b, 1, S, S, S), labels (b,)."""
        idx = np.sort(self.stream.next())[self.rows]
        x = torch.from_numpy(np.ascontiguousarray(self.data.volumes[idx], dtype=np.float32)).unsqueeze(1)
        y = torch.from_numpy(self.data.labels[idx].astype(np.int64))
        x = x.to(self.device)
        if self.growth is not None:  # the grid the critic reads at this level
            x = growth.real_at_level(x, *self.generator.growth())
        return perf.to_format(x, self.cfg.perf), y.to(self.device)

    def draw(self, fn: Any, *shape: int) -> torch.Tensor:
        """``fn`` (torch.randn / torch.rand) for the whole global batch, then this rank's rows: every
        rank draws the same numbers, so N processes use what one process would."""
        return fn(self.cfg.train.batch_size, *shape, device=self.device)[self.rows]

    def amp(self) -> contextlib.AbstractContextManager[None]:
        """bf16 autocast for network passes on CUDA (perf.amp); a no-op in float32."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def check_finite(self, what: str, value: torch.Tensor) -> bool:
        # one decision for all ranks: a rank that skipped its backward would leave the others waiting
        if distributed.all_true(bool(torch.isfinite(value)), self.dist, self.device):
            return True
        if self.cfg.train.on_nonfinite == "skip":
            log.warning("step %d: %s is %s; update skipped", self.step + 1, what, value.item())
            return False
        raise TrainingDiverged(
            f"step {self.step + 1}: {what} is {value.item()} (training diverged; try a lower learning rate); "
            f"last good checkpoint: {self.last_checkpoint or 'none yet'}"
        )

    def train_step(self) -> dict[str, float]:
        """One generator update and what precedes it (family-specific), then the EMA update.

        Draws from the run's own random streams (``self.rng``), not the global ones."""
        with self.rng.active():
            return self._train_step()

    def _train_step(self) -> dict[str, float]:
        self.plan = schedule.step_plan(self.cfg.train, self.step, self.trained_seconds, self.growth)
        self._apply_plan(self.plan)
        values = self.family_step(self.nets, self.services, self.plan)
        self.step += 1
        if self.augment is not None:
            if self.ada is not None and self.ada.due(self.step):
                # one all-reduce for both sums; the ratio of the means is the ratio of the sums
                sums = distributed.mean_values(
                    {"total": self.ada.total, "count": float(self.ada.count)}, self.dist, self.device
                )
                self.augment.p = self.ada.update(self.augment.p, sums["total"], sums["count"])
            values["aug_p"] = self.augment.p
            if self.ada is not None:
                values["aug_signal"] = self.ada.last_signal
        return values

    def _apply_plan(self, plan: schedule.StepPlan) -> None:
        """This step's learning rates (train.lr_decay; the step and the trained seconds are in every
        checkpoint, so a resumed run continues the schedule) and growth level on both networks (the
        EMA restarts its warm-up when a finer level begins, so it averages the weights that level trains)."""
        if self.cfg.train.lr_decay != "none":
            for opt, base in ((self.opt_g, self.cfg.train.lr_g), (self.opt_d, self.cfg.train.lr_d)):
                for group in opt.param_groups:
                    group["lr"] = base * plan.lr_scale
        if plan.level is not None:
            self.generator.set_growth(plan.level, plan.fade)
            self.discriminator.set_growth(plan.level, plan.fade)
            if plan.new_phase:
                self.ema.restart()
                log.info("step %d: growing to %d³", self.step + 1, self.cfg.data.size // 2**plan.level)

    def mode_seeking_weight(self) -> float:
        """This step's weight of the mode-seeking term (:func:`volgan.schedule.step_plan`)."""
        return schedule.step_plan(self.cfg.train, self.step, self.trained_seconds).mode_seeking

    def budget_spent(self) -> float:
        """The part of train.budget_minutes this run has trained (0 without a budget; 1 = spent)."""
        return schedule.budget_spent(self.cfg.train, self.trained_seconds)

    def augmented(self, x: torch.Tensor) -> torch.Tensor:
        """What the critic/discriminator sees of a batch: x augmented (augment.enabled), else x."""
        return x if self.augment is None else self.augment(x, self.draw)

    def paired(self, labels: torch.Tensor) -> torch.Tensor:
        """With train.mode_seeking, the generator's batch is adjacent pairs of one class (the first
        label of each pair; pairs never straddle two processes; an odd last volume keeps its label);
        else ``labels`` unchanged."""
        n = 2 * (len(labels) // 2)
        if not self.cfg.train.mode_seeking or n == 0:
            return labels
        paired = labels[:n].view(-1, 2)[:, :1].expand(-1, 2).reshape(-1)
        return torch.cat([paired, labels[n:]])

    def targets(self, real: bool) -> torch.Tensor:
        """This rank's rows of the global batch's (soft, noisy, flipped) discriminator targets."""
        t = self.cfg.train
        targets = label_targets(
            t.batch_size, real, real_label=t.real_label, noise=t.label_noise, flip=t.label_flip, device=self.device
        )
        return targets[self.rows]

    def noisy(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """x plus Gaussian instance noise of std ``sigma`` (drawn for the global batch, like every draw)."""
        return x + sigma * self.draw(torch.randn, *x.shape[1:]).to(x.dtype) if sigma > 0 else x

    def instance_noise(self) -> float:
        """Std of the noise on the discriminator's inputs at this step (:func:`volgan.schedule.step_plan`)."""
        return schedule.step_plan(self.cfg.train, self.step, self.trained_seconds).instance_noise

    def generator_update(self, loss_g: torch.Tensor) -> None:
        self.opt_g.zero_grad(set_to_none=True)
        if self.check_finite("generator loss", loss_g.detach()):
            loss_g.backward()
            self.opt_g.step()
            self.ema.update(self.generator)

    # -- the loop ------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum
        log.warning("received %s: finishing the current step and writing a checkpoint", signal.Signals(signum).name)

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM -> finish the step, checkpoint, return (only possible in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("training outside the main thread: Ctrl-C/SIGTERM will not write a final checkpoint")
            return {}
        return {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def preview(self) -> dict[str, np.ndarray]:
        """Two EMA samples per class from fixed latents (same every call): class name -> (2, S, S, S)."""
        from volgan.sampling import generate

        names = self.data.class_names if self.num_classes else ["samples"]
        out = {}
        generator = self.ema.ready(seed=self.cfg.seed)
        for k, name in enumerate(names):
            labels = torch.full((2,), k, dtype=torch.long)
            out[name] = generate(
                generator, labels, seed=self.cfg.seed, device=self.device, autocast=self.autocast
            ).numpy()
        return out

    @property
    def surface_level(self) -> float | None:
        """DCGAN runs are occupancy/surface data: they also get surface renders, at this level in [-1, 1]."""
        return surface_level(self.cfg.data.threshold) if self.cfg.model.family == "dcgan" else None

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train until train.steps (or train.max_minutes, a signal, or ``stop_after`` more steps).

        The run folder's lock (``RUN/.lock``) is held throughout, so a second training pointed at
        the same folder is refused; it is released however this returns or raises. Under torchrun
        every rank trains; rank 0 alone holds the lock and writes the run folder.
        """
        if not self.dist.is_main:
            with distributed.collective_errors(self.dist):
                return self._fit_locked(stop_after)
        with RunLock(self.run_dir), distributed.collective_errors(self.dist):
            self._check_no_new_checkpoints()
            # temp files of checkpoint writes a killed run never finished: nobody else can be writing now
            for stale in ckpt.checkpoint_dir(self.run_dir).glob(".step_*.tmp"):
                stale.unlink(missing_ok=True)
            return self._fit_locked(stop_after)

    def _check_no_new_checkpoints(self) -> None:
        """Refuse if another process wrote checkpoints here after this trainer was set up."""
        newest = ckpt.newest_checkpoint(self.run_dir)
        if newest != self._newest_seen:
            raise VolganError(
                f"{self.run_dir}: another training changed the checkpoints after this one was set up "
                f"(newest: {newest.name if newest else 'none'}); pass --resume {self.run_dir} to continue from it"
            )

    @contextlib.contextmanager
    def process_settings(self) -> Iterator[None]:
        """What a training run sets process-wide, for the ``with`` block only (``fit`` runs in one):
        the run's random streams in torch's global generators, TF32 and cuDNN autotuning on CUDA, the
        glibc allocator setting on the CPU (``perf.*``). Each is put back as it was on exit."""
        with perf.backend_settings(self.cfg.perf, self.device), self.rng.active():
            yield

    def _fit_locked(self, stop_after: int | None) -> TrainResult:
        with self.process_settings():
            return self._fit_loop(stop_after)

    def _start_run(self) -> None:
        """The run folder's config, class map and process facts (rank 0); the run's summary in the log."""
        cfg = self.cfg
        if self.dist.is_main:
            save_config(cfg, self.run_dir / "config.yaml", facts=self.run_facts())
            (self.run_dir / "class_to_idx.json").write_text(json.dumps(self.data.class_to_idx, indent=2))
            (self.run_dir / "distributed.json").write_text(json.dumps(self.run_facts(), indent=2))
        log.info(
            "world size %d: global batch %d, %d per process; learning rates not scaled",
            self.dist.world_size,
            cfg.train.batch_size,
            cfg.train.batch_size // self.dist.world_size,
        )
        log.info(
            "%s on %s | %d volumes, %d classes | generator %.2fM, discriminator %.2fM parameters",
            cfg.model.family,
            self.device,
            len(self.data.labels),
            self.num_classes,
            count_parameters(self.generator) / 1e6,
            count_parameters(self.discriminator) / 1e6,
        )

    def _fit_loop(self, stop_after: int | None) -> TrainResult:
        cfg, every, main = self.cfg, self.cfg.log, self.dist.is_main
        self._stop_signal = None  # a signal that stopped an earlier fit() does not stop this one
        self._start_run()
        target = cfg.train.steps if stop_after is None else min(cfg.train.steps, self.step + stop_after)
        logger = RunLogger(self.run_dir, cfg.train.steps, self.step, every.progress_bar) if main else None
        old_handlers = self._install_signal_handlers()
        start, saved_at, trained_before = self.clock(), self.step, self.trained_seconds
        record = _Recorder(self, logger)
        over_budget = self.budget_spent() >= 1.0  # a resumed run whose budget is spent trains no step
        if over_budget:
            minutes = self.trained_seconds / 60
            log.info("time budget already spent (%.1f min trained): no step to train", minutes)
        try:
            while self.step < target and not over_budget:
                # 1. n_critic critic updates (WGAN-GP) or one discriminator update (3D-GAN), then one
                #    generator update and the EMA update: volgan.updates
                values = self.train_step()
                # 2. out of time, or signalled? every rank decides the same at the same step, and
                #    keeps the same trained seconds (the mean over ranks: the lr schedule reads them)
                elapsed = self.clock() - start
                shared = distributed.mean_values(
                    {"elapsed": elapsed, "signal": float(self._stop_signal is not None)}, self.dist, self.device
                )
                self.trained_seconds = trained_before + shared["elapsed"]
                limit = cfg.train.max_minutes
                over_budget = bool(limit and shared["elapsed"] > 60 * limit) or self.budget_spent() >= 1.0
                stop = over_budget or shared["signal"] > 0
                # 3. log line, stats.jsonl, TensorBoard (the last step is always logged)
                record.step(values, log_now=self.step % every.every == 0 or self.step == target or stop)
                if logger is not None:  # rank 0
                    # 4. preview images of the EMA generator
                    if self.step % every.image_every == 0:
                        log_preview_images(logger, self.preview(), self.step, self.surface_level)
                    # 5. checkpoint
                    if self.step % every.checkpoint_every == 0:
                        self.save()
                        saved_at = self.step
                if stop:
                    if over_budget:
                        minutes = self.trained_seconds / 60
                        log.info("time budget reached at step %d (%.1f min trained)", self.step, minutes)
                    elif self._stop_signal is None:
                        self._stop_signal = signal.SIGTERM  # another rank was signalled
                    break
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if logger is not None:
                logger.close()
        if main:
            if self.step != saved_at or self.last_checkpoint is None:
                self.save()
            write_run_figures(self.run_dir, self.preview(), self.step, self.surface_level)
        distributed.barrier(self.dist)  # no rank leaves before rank 0's checkpoint is written
        interrupted = self._stop_signal is not None
        log.info(
            "%s at step %d; checkpoint %s",
            "interrupted" if interrupted else "finished",
            self.step,
            self.last_checkpoint,
        )
        return TrainResult(self.run_dir, self.step, self.last_checkpoint, interrupted)
