"""What a family step asks of the run it trains in: batches, random draws, precision, checks.

:class:`RunServices` holds the run's data order, this process's rows of every global batch, the
augmentation and the generator's optimiser and EMA; :meth:`RunServices.step_services` hands a family
step (:mod:`volgan.updates`) exactly these, as an :class:`~volgan.updates.StepServices`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import torch

from volgan import cleanup, distributed, growth, perf
from volgan.augment import AdaptiveP, DiffAugment3d
from volgan.config import Config
from volgan.data.dataset import VolumeSet
from volgan.data.stream import BatchStream
from volgan.ema import EMA
from volgan.errors import TrainingDiverged
from volgan.losses import label_targets
from volgan.updates import StepServices

log = logging.getLogger("volgan")


class RunServices:
    """One run's batches (``stream``: the data order, replaced on resume), draws and checks.

    ``step`` is the number of generator steps done (the owner keeps it current, for messages)."""

    def __init__(
        self,
        cfg: Config,
        data: VolumeSet,
        *,
        device: torch.device,
        dist: distributed.DistContext,
        generator: Any,
        ema: EMA,
        opt_g: torch.optim.Optimizer,
        growing: bool,
        autocast: torch.dtype | None,
    ) -> None:
        self.cfg, self.data, self.device, self.dist = cfg, data, device, dist
        self.generator, self.ema, self.opt_g, self.growing, self.autocast = generator, ema, opt_g, growing, autocast
        self.rows = dist.rows(cfg.train.batch_size)  # this rank's share of every global batch
        self.stream = BatchStream(len(data.labels), cfg.train.batch_size, cfg.seed)
        a = cfg.augment
        value_range = (0.0, 1.0) if cfg.model.family == "dcgan" else (-1.0, 1.0)  # what the discriminator sees
        self.augment = DiffAugment3d(a, value_range) if a.enabled else None
        self.ada = AdaptiveP(a) if a.enabled and a.adaptive else None
        # sample.clean's cut, read once from the training volumes (kept in every checkpoint)
        self.cleanup = cleanup.measure(data.volumes, cfg.data.binary, cfg.data.threshold) if cfg.sample.clean else None
        self.step = 0

    def step_services(self) -> StepServices:
        """These services as a family step takes them."""
        return StepServices(
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
            dist=self.dist,
            device=self.device,
            native={"native": True} if self.growing else {},
        )

    def real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the next global batch: volumes (b, 1, S, S, S), labels (b,)."""
        idx = np.sort(self.stream.next())[self.rows]
        x = torch.from_numpy(np.ascontiguousarray(self.data.volumes[idx], dtype=np.float32)).unsqueeze(1)
        y = torch.from_numpy(self.data.labels[idx].astype(np.int64))
        x = x.to(self.device)
        if self.growing:  # the grid the critic reads at this level
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
        """True if ``value`` is finite on every rank; else skip (train.on_nonfinite) or raise."""
        # one decision for all ranks: a rank that skipped its backward would leave the others waiting
        if distributed.all_true(bool(torch.isfinite(value)), self.dist, self.device):
            return True
        if self.cfg.train.on_nonfinite == "skip":
            log.warning("step %d: %s is %s; update skipped", self.step + 1, what, value.item())
            return False
        raise TrainingDiverged(
            f"step {self.step + 1}: {what} is {value.item()} (training diverged; try a lower learning rate)"
        )

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
        t, dc = self.cfg.train, self.cfg.train.dcgan
        targets = label_targets(
            t.batch_size, real, real_label=dc.real_label, noise=dc.label_noise, flip=dc.label_flip, device=self.device
        )
        return targets[self.rows]

    def noisy(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """x plus Gaussian instance noise of std ``sigma`` (drawn for the global batch, like every draw)."""
        return x + sigma * self.draw(torch.randn, *x.shape[1:]).to(x.dtype) if sigma > 0 else x

    def generator_update(self, loss_g: torch.Tensor) -> None:
        """One optimiser step of the generator on ``loss_g`` (if finite), then the EMA update."""
        self.opt_g.zero_grad(set_to_none=True)
        if self.check_finite("generator loss", loss_g.detach()):
            loss_g.backward()
            self.opt_g.step()
            self.ema.update(self.generator)

    def update_augmentation(self, values: dict[str, float]) -> None:
        """After a step: adapt the augmentation's p (augment.adaptive) and log it in ``values``."""
        if self.augment is None:
            return
        if self.ada is not None and self.ada.due(self.step):
            # one all-reduce for both sums; the ratio of the means is the ratio of the sums
            sums = distributed.mean_values(
                {"total": self.ada.total, "count": float(self.ada.count)}, self.dist, self.device
            )
            self.augment.p = self.ada.update(self.augment.p, sums["total"], sums["count"])
        values["aug_p"] = self.augment.p
        if self.ada is not None:
            values["aug_signal"] = self.ada.last_signal
