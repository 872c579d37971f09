"""One iteration of each family: what happens between two generator steps, beside the losses it uses.

:class:`WGANGPStep`: ``n_critic`` critic updates (Wasserstein loss, drift, and on every
``train.wgan_gp.gp_every``-th of them the gradient penalty, weighted ``gp_every``; by default on the first
of each generator step's critic steps), then one generator update. :class:`DCGANStep`: one
discriminator update (binary cross-entropy; skipped while the discriminator's batch accuracy is
above ``train.dcgan.d_acc_threshold``, the 3D-GAN gate), then one generator update. Each is built from the
config and called with explicit inputs: the networks and optimisers (:class:`Nets`), the run's
services for one step (:class:`StepServices`: batches, random draws, precision, checks) and the
step's :class:`~volgan.schedule.StepPlan`; none reads a ``Trainer``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from volgan import distributed, perf
from volgan.augment import AdaptiveP
from volgan.config import Config
from volgan.losses import (
    bce_discriminator_loss,
    bce_generator_loss,
    critic_loss,
    discriminator_accuracy,
    drift_penalty,
    generator_loss,
    gradient_penalty,
    mode_seeking_loss,
)
from volgan.schedule import StepPlan


@dataclass
class Nets:
    """What a family step trains: the networks, how to call them (through DDP under torchrun; the
    discriminator's entry points by name), the discriminator's trained parameters, both optimisers."""

    g: nn.Module
    g_call: Callable[..., torch.Tensor]
    d: Any
    d_call: Callable[..., Any]
    d_params: list[nn.Parameter]
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


@dataclass
class StepServices:
    """The run's services one step uses: its batches and random draws (this process's rows of the
    global batch), mixed precision, augmentation, the one-for-all-ranks finiteness check, and the
    generator update that ends with the EMA."""

    batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    draw: Callable[..., torch.Tensor]
    amp: Callable[[], contextlib.AbstractContextManager[None]]
    augment: Callable[[torch.Tensor], torch.Tensor]
    paired: Callable[[torch.Tensor], torch.Tensor]
    targets: Callable[[bool], torch.Tensor]
    noisy: Callable[[torch.Tensor, float], torch.Tensor]
    check_finite: Callable[[str, torch.Tensor], bool]
    generator_update: Callable[[torch.Tensor], None]
    ada: AdaptiveP | None = None
    dist: distributed.DistContext = field(default_factory=distributed.DistContext)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    native: dict[str, bool] = field(default_factory=dict)
    """generator keyword arguments in training (progressive growing: ``native=True``)"""


class WGANGPStep:
    """WGAN-GP: n_critic critic updates, then one generator update."""

    def __init__(self, cfg: Config) -> None:
        self.t, self.w, self.ac_weight, self.perf = cfg.train, cfg.train.wgan_gp, cfg.model.ac_weight, cfg.perf
        self.pool = cfg.experimental.mode_seeking_pool

    def __call__(self, nets: Nets, sv: StepServices, plan: StepPlan) -> dict[str, float]:
        t, w, g, d = self.t, self.w, nets.g, nets.d
        labels = None
        penalties = []
        every = w.gp_every or w.n_critic
        for i in range(w.n_critic):
            real, labels = sv.batch()
            b = real.shape[0]
            with torch.no_grad(), sv.amp():
                fake = g(sv.draw(torch.randn, g.latent_dim), labels, **sv.native)
                fake = perf.to_format(fake.float(), self.perf)
            # The critic sees augmented volumes only (augment.enabled); the penalty below is taken on
            # interpolates of exactly these augmented reals and fakes, i.e. where the critic is used.
            real, fake = sv.augment(real), sv.augment(fake)
            # InstanceNorm is per-sample, so one pass over real+fake equals two separate passes.
            with sv.amp():
                both = perf.to_format(torch.cat([real, fake]), self.perf)
                scores, logits = nets.d_call("score_and_logits", both, torch.cat([labels, labels]))
            scores = scores.float()
            real_scores, fake_scores = scores[:b], scores[b:]
            w_loss = critic_loss(real_scores, fake_scores)
            loss_d = w_loss + w.drift_weight * drift_penalty(real_scores)
            # Lazy regularisation: the penalty on every gp_every-th critic step of the run (counted
            # across generator steps, so resuming keeps the schedule), weighted gp_every.
            if (plan.step * w.n_critic + i) % every == 0:
                alpha = sv.draw(torch.rand)
                # The penalty's pass runs in float32 even under AMP: it differentiates the critic twice
                # and its target (a gradient norm of 1) is a precision-sensitive quantity.
                gp = gradient_penalty(functools.partial(nets.d_call, "forward", labels=labels), real, fake, alpha)
                loss_d = loss_d + every * w.gp_weight * gp
                penalties.append(gp.detach())
            if logits is not None:  # auxiliary classifier learns the classes from real volumes only
                loss_d = loss_d + self.ac_weight * F.cross_entropy(logits[:b].float(), labels)
            if sv.ada is not None:  # overfitting signal: reals scored above the fake they are paired with
                sv.ada.observe(torch.sign(real_scores.detach() - fake_scores.detach()))
            nets.opt_d.zero_grad(set_to_none=True)
            if sv.check_finite("critic loss", loss_d.detach()):
                # inputs=: only the critic's weights; the penalty's graph also reaches the interpolated
                # volumes, whose second-order gradient is never used.
                loss_d.backward(inputs=nets.d_params)
                nets.opt_d.step()
        assert labels is not None
        z = sv.draw(torch.randn, g.latent_dim)
        labels = sv.paired(labels)
        d.requires_grad_(False)  # the generator step needs gradients through the critic, not for it
        with sv.amp():  # the critic is called directly: its frozen weights need no synchronising
            generated = nets.g_call(z, labels, **sv.native)
            fake = perf.to_format(sv.augment(generated), self.perf)
            fake_scores, logits = d.score_and_logits(fake, labels)
        d.requires_grad_(True)
        loss_g = generator_loss(fake_scores.float())
        if t.mode_seeking:
            loss_g = loss_g + plan.mode_seeking * mode_seeking_loss(generated, z, pool=self.pool)
        if logits is not None:
            loss_g = loss_g + self.ac_weight * F.cross_entropy(logits.float(), labels)
        sv.generator_update(loss_g)
        gp = torch.stack(penalties).mean()  # gp_every <= n_critic (config check): never empty
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "gp": gp.item(), "w_dist": -w_loss.item()}


class DCGANStep:
    """3D-GAN: one discriminator update (only while its accuracy is <= the gate), one generator update."""

    def __init__(self, cfg: Config) -> None:
        self.t, self.ac_weight, self.pool = cfg.train, cfg.model.ac_weight, cfg.experimental.mode_seeking_pool

    def __call__(self, nets: Nets, sv: StepServices, plan: StepPlan) -> dict[str, float]:
        t, g, d = self.t, nets.g, nets.d
        real, labels = sv.batch()
        real = (real + 1) / 2  # the data's [-1, 1] -> the sigmoid's [0, 1]
        sigma = plan.instance_noise
        z, fake_labels = sv.draw(torch.randn, g.latent_dim), sv.paired(labels)
        with sv.amp():
            fake = nets.g_call(z, fake_labels)
            real_logits, real_classes = nets.d_call("logits_and_classes", sv.augment(sv.noisy(real, sigma)), labels)
            fake_logits = nets.d_call("logits", sv.augment(sv.noisy(fake.detach(), sigma)), fake_labels)
        if sv.ada is not None:  # ADA's overfitting signal: the sign of D on reals
            sv.ada.observe(torch.sign(real_logits.detach().float()))
        targets = {k: sv.targets(k) for k in (True, False)}
        loss_d = bce_discriminator_loss(real_logits, fake_logits, targets[True], targets[False])
        if real_classes is not None:  # the auxiliary classifier learns the classes from real volumes
            loss_d = loss_d + self.ac_weight * F.cross_entropy(real_classes.float(), labels)
        accuracy = discriminator_accuracy(real_logits.detach(), fake_logits.detach())
        accuracy = torch.tensor(distributed.mean(float(accuracy), sv.dist, sv.device))  # the global batch's
        update_d = float(accuracy) <= t.dcgan.d_acc_threshold  # the 3D-GAN gate: let G catch up
        nets.opt_d.zero_grad(set_to_none=True)
        if update_d and sv.check_finite("discriminator loss", loss_d.detach()):
            loss_d.backward()
            nets.opt_d.step()
        d.requires_grad_(False)
        with sv.amp():  # called directly: the frozen discriminator's weights need no synchronising
            fake_scores, fake_classes = d.logits_and_classes(sv.augment(sv.noisy(fake, sigma)), fake_labels)
        loss_g = bce_generator_loss(fake_scores)
        if fake_classes is not None:  # ... and asks the generator for volumes of the requested class
            loss_g = loss_g + self.ac_weight * F.cross_entropy(fake_classes.float(), fake_labels)
        if t.mode_seeking:
            loss_g = loss_g + plan.mode_seeking * mode_seeking_loss(fake, z, pool=self.pool)
        d.requires_grad_(True)
        sv.generator_update(loss_g)
        return {
            "loss_d": loss_d.item(),
            "loss_g": loss_g.item(),
            "d_acc": float(accuracy),
            "d_real": torch.sigmoid(real_logits).mean().item(),
            "d_fake": torch.sigmoid(fake_logits).mean().item(),
            "d_updated": float(update_d),
        }
