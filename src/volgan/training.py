"""The training loop shared by both families, their update steps, and the checkpoint round trip.

``model.family: wgan_gp`` runs ``n_critic`` critic updates (Wasserstein loss + gradient penalty)
per generator update; ``dcgan`` alternates one discriminator update (binary cross-entropy, skipped
while the discriminator's batch accuracy is above ``train.d_acc_threshold``) and one generator
update. Everything else (data order, EMA, logging, checkpoints, signals) is the same code.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional as F

from volgan import checkpoint as ckpt
from volgan import distributed, growth, perf
from volgan.augment import AdaptiveP, DiffAugment3d
from volgan.config import Config, save_config, surface_level
from volgan.data.dataset import VolumeSet
from volgan.data.stream import BatchStream
from volgan.device import resolve_device
from volgan.ema import EMA
from volgan.errors import CheckpointError, ConfigError, VolganError
from volgan.losses import (
    bce_discriminator_loss,
    bce_generator_loss,
    critic_loss,
    discriminator_accuracy,
    drift_penalty,
    generator_loss,
    gradient_penalty,
    label_targets,
    mode_seeking_loss,
)
from volgan.models import Critic, DCGANDiscriminator, build_models
from volgan.models.wgan_gp import count_parameters
from volgan.rng import RunRNG
from volgan.runlock import RunLock, check_unlocked
from volgan.runlog import RunLogger, log_preview_images, write_run_figures

if TYPE_CHECKING:
    from volgan.api import VolumeGenerator

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
    run_dir: Path
    step: int
    checkpoint: Path | None
    interrupted: bool = False

    def load(self, **kwargs: Any) -> VolumeGenerator:
        """The run's generator (``volgan.load`` of its checkpoint; same keyword arguments)."""
        from volgan.api import load

        return load(self.checkpoint or self.run_dir, **kwargs)


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
        self.ema = EMA(self.generator, t.ema_decay)  # a copy of the plain generator: no collectives in it
        if dist.enabled and cfg.model.family == "dcgan" and cfg.dist.sync_batchnorm:
            for net in (self.generator, self.discriminator):  # replaces the layers inside, before the optimisers exist
                distributed.convert_sync_batchnorm(net, self.device)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=t.lr_g, betas=t.betas)
        self._d_params = [p for p in self.discriminator.parameters() if p.requires_grad]
        self.opt_d = torch.optim.Adam(self._d_params, lr=t.lr_d, betas=t.betas)
        # Under torchrun both networks run inside DistributedDataParallel (gradients averaged over
        # ranks); the discriminator's entry points are called by name through its forward.
        # progressive growing: the level each step trains at (None: the full grid throughout)
        m = cfg.model
        self.growth = (
            growth.GrowthSchedule.from_config(cfg.data.size, m.grow_from, t.grow_steps, t.grow_fade)
            if m.grow_from is not None
            else None
        )
        self._native = {"native": True} if self.growth is not None else {}  # generator calls in training
        growing = self.growth is not None  # a coarse level leaves some layers unused: DDP must know
        self.g_call = distributed.wrap(self.generator, dist, self.device, find_unused=growing)
        self.d_call = distributed.wrap(
            distributed.MethodCall(self.discriminator), dist, self.device, find_unused=growing
        )
        a = cfg.augment
        value_range = (0.0, 1.0) if cfg.model.family == "dcgan" else (-1.0, 1.0)  # what the discriminator sees
        self.augment = DiffAugment3d(a, value_range) if a.enabled else None
        self.ada = AdaptiveP(a) if a.enabled and a.adaptive else None
        self.step = 0
        self.stream = BatchStream(len(data.labels), t.batch_size, cfg.seed)
        self._stop_signal: int | None = None
        self.last_checkpoint: Path | None = None
        if dist.is_main:  # only rank 0 touches the run folder
            check_unlocked(self.run_dir)  # refuse early; fit() takes the lock itself
        if resume is not None:
            self._restore(resume, resume_state)
        elif dist.is_main and ckpt.list_checkpoints(self.run_dir):
            raise VolganError(
                f"{self.run_dir}: run folder already holds checkpoints; "
                f"pass --resume {self.run_dir} or choose another --run-dir"
            )
        self._newest_seen = ckpt.newest_checkpoint(self.run_dir) if dist.is_main else None

    # -- checkpoint round trip -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
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
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": self.rng.state(),
            "data_state": self.stream.state(),
            "distributed": self.run_facts(),
            "augment": self._augment_state(),
        }

    def _augment_state(self) -> dict[str, Any]:
        if self.augment is None:
            return {}
        return {"p": self.augment.p, **(self.ada.state() if self.ada is not None else {})}

    def run_facts(self) -> dict[str, Any]:
        """World size and batch split of this run (saved with every checkpoint and in the run folder)."""
        b = self.cfg.train.batch_size
        return {
            "world_size": self.dist.world_size,
            "global_batch": b,
            "per_process_batch": b // self.dist.world_size,
            "lr_scaling": "none (train.batch_size is the global batch; the update does not depend on the world size)",
        }

    def _restore(self, where: Path, state: dict[str, Any] | None = None) -> None:
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
        self.stream = BatchStream(
            len(self.data.labels), self.cfg.train.batch_size, self.cfg.seed, **state["data_state"]
        )
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
        self._newest_seen = ckpt.newest_checkpoint(self.run_dir)
        return path

    # -- one generator iteration -----------------------------------------------------------
    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the next global batch: volumes (b, 1, S, S, S), labels (b,)."""
        idx = np.sort(self.stream.next())[self.rows]
        x = torch.from_numpy(np.ascontiguousarray(self.data.volumes[idx], dtype=np.float32)).unsqueeze(1)
        y = torch.from_numpy(self.data.labels[idx].astype(np.int64))
        x = x.to(self.device)
        if self.growth is not None:  # the grid the critic reads at this level
            x = growth.real_at_level(x, *self.generator.growth())
        return perf.to_format(x, self.cfg.perf), y.to(self.device)

    def _draw(self, fn: Any, *shape: int) -> torch.Tensor:
        """``fn`` (torch.randn / torch.rand) for the whole global batch, then this rank's rows: every
        rank draws the same numbers, so N processes use what one process would."""
        return fn(self.cfg.train.batch_size, *shape, device=self.device)[self.rows]

    def _amp(self) -> contextlib.AbstractContextManager[None]:
        """bf16 autocast for network passes on CUDA (perf.amp); a no-op in float32."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _check_finite(self, what: str, value: torch.Tensor) -> bool:
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
        d = self.discriminator
        self._set_growth()
        values = self._critic_step(d) if isinstance(d, Critic) else self._dcgan_step(d)
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

    def _set_growth(self) -> None:
        """Progressive growing: this step's level and fade on both networks. The EMA restarts its
        warm-up when a finer level begins, so it averages the weights that level trains."""
        if self.growth is None:
            return
        level, alpha = self.growth.at(self.step)
        self.generator.set_growth(level, alpha)
        self.discriminator.set_growth(level, alpha)
        if self.step and self.growth.phase(self.step) != self.growth.phase(self.step - 1):
            self.ema.restart()
            log.info("step %d: growing to %d³", self.step + 1, self.cfg.data.size // 2**level)

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        """What the critic/discriminator sees of a batch: x augmented (augment.enabled), else x."""
        return x if self.augment is None else self.augment(x, self._draw)

    def _critic_step(self, d: Critic) -> dict[str, float]:
        """WGAN-GP: n_critic critic updates, then one generator update."""
        t, g = self.cfg.train, self.generator
        labels = None
        for _ in range(t.n_critic):
            real, labels = self._real_batch()
            b = real.shape[0]
            with torch.no_grad(), self._amp():
                fake = g(self._draw(torch.randn, g.latent_dim), labels, **self._native)
                fake = perf.to_format(fake.float(), self.cfg.perf)
            # The critic sees augmented volumes only (augment.enabled); the penalty below is taken on
            # interpolates of exactly these augmented reals and fakes, i.e. where the critic is used.
            real, fake = self._aug(real), self._aug(fake)
            # InstanceNorm is per-sample, so one pass over real+fake equals two separate passes.
            with self._amp():
                both = perf.to_format(torch.cat([real, fake]), self.cfg.perf)
                scores, logits = self.d_call("score_and_logits", both, torch.cat([labels, labels]))
            scores = scores.float()
            real_scores, fake_scores = scores[:b], scores[b:]
            alpha = self._draw(torch.rand)
            # The penalty's pass runs in float32 even under AMP: it differentiates the critic twice
            # and its target (a gradient norm of 1) is a precision-sensitive quantity.
            gp = gradient_penalty(functools.partial(self.d_call, "forward", labels=labels), real, fake, alpha)
            w_loss = critic_loss(real_scores, fake_scores)
            loss_d = w_loss + t.gp_weight * gp + t.drift_weight * drift_penalty(real_scores)
            if logits is not None:  # auxiliary classifier learns the classes from real volumes only
                loss_d = loss_d + self.cfg.model.ac_weight * F.cross_entropy(logits[:b].float(), labels)
            if self.ada is not None:  # overfitting signal: reals scored above the fake they are paired with
                self.ada.observe(torch.sign(real_scores.detach() - fake_scores.detach()))
            self.opt_d.zero_grad(set_to_none=True)
            if self._check_finite("critic loss", loss_d.detach()):
                # inputs=: only the critic's weights; the penalty's graph also reaches the interpolated
                # volumes, whose (unused) second-order gradient would cost ~10% of the step.
                loss_d.backward(inputs=self._d_params)
                self.opt_d.step()
        assert labels is not None
        z = self._draw(torch.randn, g.latent_dim)
        labels = self._paired(labels)
        d.requires_grad_(False)  # the generator step needs gradients through the critic, not for it
        with self._amp():  # the critic is called directly: its frozen weights need no synchronising
            generated = self.g_call(z, labels, **self._native)
            fake = perf.to_format(self._aug(generated), self.cfg.perf)
            fake_scores, logits = d.score_and_logits(fake, labels)
        d.requires_grad_(True)
        loss_g = generator_loss(fake_scores.float())
        if t.mode_seeking:
            loss_g = loss_g + t.mode_seeking * mode_seeking_loss(generated, z)
        if logits is not None:
            loss_g = loss_g + self.cfg.model.ac_weight * F.cross_entropy(logits.float(), labels)
        self._generator_update(loss_g)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "gp": gp.item(), "w_dist": -w_loss.item()}

    def _dcgan_step(self, d: DCGANDiscriminator) -> dict[str, float]:
        """3D-GAN: one discriminator update (only while its accuracy is <= the gate), one generator update."""
        t, g = self.cfg.train, self.generator
        real, labels = self._real_batch()
        real = (real + 1) / 2  # the data's [-1, 1] -> the sigmoid's [0, 1]
        sigma = self._instance_noise()
        z, fake_labels = self._draw(torch.randn, g.latent_dim), self._paired(labels)
        with self._amp():
            fake = self.g_call(z, fake_labels)
            real_logits, real_classes = self.d_call("logits_and_classes", self._aug(self._noisy(real, sigma)), labels)
            fake_logits = self.d_call("logits", self._aug(self._noisy(fake.detach(), sigma)), fake_labels)
        if self.ada is not None:  # ADA's overfitting signal: the sign of D on reals
            self.ada.observe(torch.sign(real_logits.detach().float()))
        targets = {k: self._targets(k) for k in (True, False)}
        loss_d = bce_discriminator_loss(real_logits, fake_logits, targets[True], targets[False])
        if real_classes is not None:  # the auxiliary classifier learns the classes from real volumes
            loss_d = loss_d + self.cfg.model.ac_weight * F.cross_entropy(real_classes.float(), labels)
        accuracy = discriminator_accuracy(real_logits.detach(), fake_logits.detach())
        accuracy = torch.tensor(distributed.mean(float(accuracy), self.dist, self.device))  # the global batch's
        update_d = float(accuracy) <= t.d_acc_threshold  # the 3D-GAN gate: let G catch up
        self.opt_d.zero_grad(set_to_none=True)
        if update_d and self._check_finite("discriminator loss", loss_d.detach()):
            loss_d.backward()
            self.opt_d.step()
        d.requires_grad_(False)
        with self._amp():  # called directly: the frozen discriminator's weights need no synchronising
            fake_scores, fake_classes = d.logits_and_classes(self._aug(self._noisy(fake, sigma)), fake_labels)
        loss_g = bce_generator_loss(fake_scores)
        if fake_classes is not None:  # ... and asks the generator for volumes of the requested class
            loss_g = loss_g + self.cfg.model.ac_weight * F.cross_entropy(fake_classes.float(), fake_labels)
        if t.mode_seeking:
            loss_g = loss_g + t.mode_seeking * mode_seeking_loss(fake, z)
        d.requires_grad_(True)
        self._generator_update(loss_g)
        return {
            "loss_d": loss_d.item(),
            "loss_g": loss_g.item(),
            "d_acc": float(accuracy),
            "d_real": torch.sigmoid(real_logits).mean().item(),
            "d_fake": torch.sigmoid(fake_logits).mean().item(),
            "d_updated": float(update_d),
        }

    def _paired(self, labels: torch.Tensor) -> torch.Tensor:
        """With train.mode_seeking, the generator's batch is adjacent pairs of one class (the first
        label of each pair; pairs never straddle two processes; an odd last volume keeps its label);
        else ``labels`` unchanged."""
        n = 2 * (len(labels) // 2)
        if not self.cfg.train.mode_seeking or n == 0:
            return labels
        paired = labels[:n].view(-1, 2)[:, :1].expand(-1, 2).reshape(-1)
        return torch.cat([paired, labels[n:]])

    def _targets(self, real: bool) -> torch.Tensor:
        """This rank's rows of the global batch's (soft, noisy, flipped) discriminator targets."""
        t = self.cfg.train
        targets = label_targets(
            t.batch_size, real, real_label=t.real_label, noise=t.label_noise, flip=t.label_flip, device=self.device
        )
        return targets[self.rows]

    def _noisy(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """x plus Gaussian instance noise of std ``sigma`` (drawn for the global batch, like every draw)."""
        return x + sigma * self._draw(torch.randn, *x.shape[1:]).to(x.dtype) if sigma > 0 else x

    def _instance_noise(self) -> float:
        """Std of the noise on the discriminator's inputs at this step (Sønderby et al. 2016): real
        occupancy grids are exactly binary, so without it D wins on "softness" alone."""
        t = self.cfg.train
        if not t.instance_noise_steps:
            return t.instance_noise
        return t.instance_noise * max(0.0, 1.0 - self.step / t.instance_noise_steps)

    def _generator_update(self, loss_g: torch.Tensor) -> None:
        self.opt_g.zero_grad(set_to_none=True)
        if self._check_finite("generator loss", loss_g.detach()):
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

    def _fit_loop(self, stop_after: int | None) -> TrainResult:
        cfg, every, main = self.cfg, self.cfg.log, self.dist.is_main
        self._stop_signal = None  # a signal that stopped an earlier fit() does not stop this one
        if main:
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
        target = cfg.train.steps if stop_after is None else min(cfg.train.steps, self.step + stop_after)
        logger = RunLogger(self.run_dir, cfg.train.steps, self.step, every.progress_bar) if main else None
        old_handlers = self._install_signal_handlers()
        start, last_log, saved_at = time.perf_counter(), time.perf_counter(), self.step
        log_start_step, epoch, epoch_values = self.step, self.stream.epoch, []
        try:
            while self.step < target:
                values = self.train_step()
                over_budget = bool(cfg.train.max_minutes and time.perf_counter() - start > 60 * cfg.train.max_minutes)
                # every rank stops at the same step, whichever rank got the signal or ran out of time
                stop = distributed.any_true(over_budget or self._stop_signal is not None, self.dist, self.device)
                # the last step is always logged, so stats.jsonl (and losses.png) hold where the run stopped
                log_now = self.step % every.every == 0 or self.step == target or stop
                if log_now:  # the same steps on every rank
                    values = distributed.mean_values(values, self.dist, self.device)
                epoch_values.append(values)
                if logger is not None:
                    logger.advance()
                    if self.stream.epoch != epoch:  # per-epoch means for TensorBoard
                        logger.epoch_scalars(epoch, epoch_values)
                    if log_now:
                        now = time.perf_counter()
                        values["sec_per_step"] = (now - last_log) / max(1, self.step - log_start_step)
                        last_log, log_start_step = now, self.step
                        logger.scalars(self.step, values)
                    if self.step % every.image_every == 0:
                        log_preview_images(logger, self.preview(), self.step, self.surface_level)
                    if self.step % every.checkpoint_every == 0:
                        self.save()
                        saved_at = self.step
                if self.stream.epoch != epoch:
                    epoch, epoch_values = self.stream.epoch, []
                if stop:
                    if over_budget:
                        log.info("time budget of %.1f min reached at step %d", cfg.train.max_minutes, self.step)
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
