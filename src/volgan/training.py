"""One training run of either family: :class:`Trainer` sets it up, steps it and saves it.

What one iteration does per family (``n_critic`` critic updates then a generator update, or the
3D-GAN's gated discriminator update then a generator update) is in :mod:`volgan.updates`, what it
asks of the run (batches, draws, checks) in :mod:`volgan.run_services`, the per-step schedule in
:mod:`volgan.schedule`, the loop in :mod:`volgan.loop`, the checkpoint file in :mod:`volgan.checkpoint`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volgan import checkpoint as ckpt
from volgan import distributed, growth, loop, perf, schedule, updates
from volgan.config import Config, surface_level
from volgan.data.dataset import VolumeSet
from volgan.data.stream import BatchStream
from volgan.device import resolve_device
from volgan.ema import EMA
from volgan.errors import CheckpointError, ConfigError, TrainingDiverged, VolganError
from volgan.loop import TrainResult
from volgan.models import Critic, build_models
from volgan.models.wgan_gp import count_parameters
from volgan.rng import RunRNG
from volgan.run_services import RunServices
from volgan.runlock import check_unlocked

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "resolve_num_classes"]

log = logging.getLogger("volgan")


def resolve_num_classes(cfg: Config, data: VolumeSet) -> int:
    """model.num_classes, or from the data: its class count, 0 (unconditional) for a single class."""
    if cfg.model.num_classes is not None:
        if cfg.model.num_classes and cfg.model.num_classes != data.num_classes:
            raise VolganError(
                f"model.num_classes is {cfg.model.num_classes} but the data has {data.num_classes} classes"
            )
        return cfg.model.num_classes
    return data.num_classes if data.num_classes >= 2 else 0


class Trainer:
    """Owns the models, optimisers, EMA, data order and random streams of one run folder.

    ``fit()`` runs the loop (:func:`volgan.loop.fit`); ``train_step()`` is one iteration of the
    family's step (:mod:`volgan.updates`); ``state_dict()`` / ``load_state_dict()`` are the run's
    round trip through a checkpoint (:mod:`volgan.checkpoint` is the file format)."""

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
        self.num_classes = resolve_num_classes(cfg, data)
        # the run's own random streams: weight init and every draw of a step, never the global seed
        self.rng = RunRNG(cfg.seed, self.device)
        self._build_networks()
        self.growth = growth.GrowthSchedule.for_run(cfg)  # progressive growing's level each step
        growing = self.growth is not None  # a coarse level leaves some layers unused: DDP must know
        # Under torchrun both networks run inside DistributedDataParallel (gradients averaged over
        # ranks); the discriminator's entry points are called by name through its forward.
        g_call = distributed.wrap(self.generator, dist, self.device, find_unused=growing)
        d_call = distributed.wrap(distributed.MethodCall(self.discriminator), dist, self.device, find_unused=growing)
        self.services = RunServices(
            cfg,
            data,
            device=self.device,
            dist=dist,
            generator=self.generator,
            ema=self.ema,
            opt_g=self.opt_g,
            growing=growing,
            autocast=self.autocast,
        )
        # the family's step, and what it is called with: explicit inputs, no Trainer
        self.family_step = (updates.WGANGPStep if isinstance(self.discriminator, Critic) else updates.DCGANStep)(cfg)
        self.nets = updates.Nets(
            self.generator, g_call, self.discriminator, d_call, self.d_params, self.opt_g, self.opt_d
        )
        self.step_services = self.services.step_services()
        self.step = 0
        # wall-clock seconds this run has trained, over all its fit() calls and resumes
        # (train.budget_minutes); read from ``clock``, which tests replace
        self.trained_seconds = 0.0
        self.clock = time.perf_counter
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
        # the newest checkpoint when set up: fit() refuses if another process wrote one since
        self.newest_seen = ckpt.newest_checkpoint(self.run_dir) if dist.is_main else None

    def _build_networks(self) -> None:
        """Generator and critic/discriminator (from the run's random stream), EMA, both optimisers."""
        cfg, dist, t = self.cfg, self.dist, self.cfg.train
        share = len(range(t.batch_size)[dist.rows(t.batch_size)])  # this process's volumes per batch
        if t.mode_seeking and share < 2:
            log.warning("train.mode_seeking needs >= 2 volumes per process to form a pair; it has no effect here")
        if cfg.model.minibatch_std and share < 2:
            raise ConfigError(
                f"model.minibatch_std compares the volumes of each process's share of the batch: "
                f"train.batch_size {t.batch_size} over {dist.world_size} processes leaves {share}"
            )
        # `discriminator` is the critic of the WGAN-GP or the discriminator of the DCGAN.
        with self.rng.active():
            self.generator, self.discriminator = build_models(cfg, self.num_classes, share)
        self.generator.to(self.device)
        self.discriminator.to(self.device)
        perf.configure_models(cfg.perf, self.generator, self.discriminator)
        self.autocast = perf.autocast_dtype(cfg.perf, self.device)
        self.ema = EMA(self.generator, t.ema_decay, t.ema_warmup)  # a copy of the plain generator: no collectives in it
        if dist.enabled and cfg.model.family == "dcgan" and cfg.dist.sync_batchnorm:
            for net in (self.generator, self.discriminator):  # replaces the layers inside, before the optimisers exist
                distributed.convert_sync_batchnorm(net, self.device)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=t.lr_g, betas=t.betas)
        self.d_params = [p for p in self.discriminator.parameters() if p.requires_grad]
        self.opt_d = torch.optim.Adam(self.d_params, lr=t.lr_d, betas=t.betas)

    @property
    def epoch(self) -> int:
        """Epochs of the data order begun so far."""
        return self.services.stream.epoch

    # -- checkpoint round trip -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: weights, optimisers, EMA, random streams, data order, the
        augmentation's p, and what sampling needs without the data (classes, intensities, geometry)."""
        sv = self.services
        augment = {} if sv.augment is None else {"p": sv.augment.p, **(sv.ada.state() if sv.ada else {})}
        return {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "num_classes": self.num_classes,
            "class_names": list(self.data.class_names),
            "intensity_range": [float(v) for v in self.data.intensity_range],
            "spacing": float(self.data.spacing),
            "affine": np.asarray(self.data.affine, dtype=np.float64).tolist(),
            "cleanup": None if sv.cleanup is None else sv.cleanup.to_dict(),
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.ready(seed=self.cfg.seed).state_dict(),
            "ema_updates": self.ema.updates,
            "trained_seconds": self.trained_seconds,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": self.rng.state(),
            "data_state": self.services.stream.state(),
            "distributed": self.dist.facts(self.cfg.train.batch_size),
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
        sv = self.services
        if sv.augment is not None and "p" in augment_state:  # a run without augmentation restarts it at p
            sv.augment.p = float(augment_state["p"])
            if sv.ada is not None and "total" in augment_state:
                sv.ada.load(augment_state)
        self.ema.updates = int(state["ema_updates"])
        self.ema.mark_calibrated()
        self.step = int(state["step"])
        self.trained_seconds = float(state.get("trained_seconds", 0.0))  # absent before train.budget_minutes
        sv.stream = BatchStream(len(self.data.labels), self.cfg.train.batch_size, self.cfg.seed, **state["data_state"])
        self.rng.load(state["rng"])
        self.last_checkpoint = path
        log.info("resumed from %s at step %d", path, self.step)

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
        self.newest_seen = ckpt.newest_checkpoint(self.run_dir)
        return path

    # -- one generator iteration -----------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One generator update and what precedes it (family-specific), then the EMA update.

        Draws from the run's own random streams (``self.rng``), not the global ones."""
        with self.rng.active():
            plan = self.next_plan()
            self._apply_plan(plan)
            self.services.step = self.step
            try:
                values = self.family_step(self.nets, self.step_services, plan)
            except TrainingDiverged as e:
                raise TrainingDiverged(f"{e}; last good checkpoint: {self.last_checkpoint or 'none yet'}") from None
            self.step += 1
            self.services.step = self.step
            self.services.update_augmentation(values)
            return values

    def _apply_plan(self, plan: schedule.StepPlan) -> None:
        """This step's learning rates (train.lr_decay; resumed from the checkpointed step and seconds), growth
        level (the EMA restarts with each finer level) and if the critic sees its top-hats (model.top_hats_from)."""
        if self.cfg.train.lr_decay != "none":
            for opt, base in ((self.opt_g, self.cfg.train.lr_g), (self.opt_d, self.cfg.train.lr_d)):
                for group in opt.param_groups:
                    group["lr"] = base * plan.lr_scale
        self.discriminator.top_hats_on = plan.part_done >= self.cfg.model.top_hats_from
        if plan.level is not None:
            self.generator.set_growth(plan.level, plan.fade)
            self.discriminator.set_growth(plan.level, plan.fade)
            if plan.new_phase:
                self.ema.restart()
                log.info("step %d: growing to %d³", self.step + 1, self.cfg.data.size // 2**plan.level)

    def next_plan(self) -> schedule.StepPlan:
        """The schedule of the step ``train_step`` would train next (:func:`volgan.schedule.step_plan`)."""
        return schedule.step_plan(self.cfg.train, self.step, self.trained_seconds, self.growth)

    def budget_spent(self, ahead_s: float = 0.0) -> float:
        """The part of train.budget_minutes this run has trained, ``ahead_s`` seconds from now (0 without
        a budget; 1 = spent)."""
        return schedule.budget_spent(self.cfg.train, self.trained_seconds + ahead_s)

    # -- the loop and what it shows --------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train until train.steps, the budget, train.max_minutes, a signal or ``stop_after`` more
        steps, holding the run folder's lock (:func:`volgan.loop.fit`)."""
        return loop.fit(self, stop_after)

    @contextlib.contextmanager
    def process_settings(self) -> Iterator[None]:
        """What a training run sets process-wide, for the ``with`` block only (``fit`` runs in one):
        the run's random streams in torch's global generators, TF32 and cuDNN autotuning on CUDA, the
        glibc allocator setting on the CPU (``perf.*``). Each is put back as it was on exit."""
        with perf.backend_settings(self.cfg.perf, self.device), self.rng.active():
            yield

    def summary(self) -> str:
        """One line: family, device, data and parameter counts."""
        return (
            f"{self.cfg.model.family} on {self.device} | {len(self.data.labels)} volumes, {self.num_classes} classes"
            f" | generator {count_parameters(self.generator) / 1e6:.2f}M,"
            f" discriminator {count_parameters(self.discriminator) / 1e6:.2f}M parameters"
        )

    def preview(self) -> dict[str, np.ndarray]:
        """Two EMA samples per class from fixed latents, as ``volgan sample`` gives them: name -> (2, S, S, S)."""
        from volgan.sampling import preview

        names = self.data.class_names if self.num_classes else ["samples"]
        generator = self.ema.ready(seed=self.cfg.seed)
        return preview(generator, names, self.cfg.seed, self.device, self.autocast, self.services.cleanup)

    @property
    def surface_level(self) -> float | None:
        """DCGAN runs are occupancy/surface data: they also get surface renders, at this level in [-1, 1]."""
        return surface_level(self.cfg.data.threshold) if self.cfg.model.family == "dcgan" else None
