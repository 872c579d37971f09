"""One iteration of each family: what happens between two generator steps, beside the losses it uses.

``wgan_gp_step``: ``n_critic`` critic updates (Wasserstein loss, drift, and on every
``train.gp_every``-th of them the gradient penalty, weighted ``gp_every``; by default on the first
of each generator step's critic steps), then one generator update. ``dcgan_step``: one
discriminator update (binary cross-entropy; skipped while the discriminator's batch accuracy is
above ``train.d_acc_threshold``, the 3D-GAN gate), then one generator update. Both take the
:class:`~volgan.training.Trainer` for its networks, optimisers and random draws; the generator
update ends with the EMA update (``Trainer.generator_update``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from volgan import distributed, perf
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

if TYPE_CHECKING:
    from volgan.models import Critic, DCGANDiscriminator
    from volgan.training import Trainer


def wgan_gp_step(tr: Trainer, d: Critic) -> dict[str, float]:
    """WGAN-GP: n_critic critic updates, then one generator update."""
    t, g = tr.cfg.train, tr.generator
    labels = None
    penalties = []
    every = t.gp_every or t.n_critic
    for i in range(t.n_critic):
        real, labels = tr.real_batch()
        b = real.shape[0]
        with torch.no_grad(), tr.amp():
            fake = g(tr.draw(torch.randn, g.latent_dim), labels, **tr.native)
            fake = perf.to_format(fake.float(), tr.cfg.perf)
        # The critic sees augmented volumes only (augment.enabled); the penalty below is taken on
        # interpolates of exactly these augmented reals and fakes, i.e. where the critic is used.
        real, fake = tr.augmented(real), tr.augmented(fake)
        # InstanceNorm is per-sample, so one pass over real+fake equals two separate passes.
        with tr.amp():
            both = perf.to_format(torch.cat([real, fake]), tr.cfg.perf)
            scores, logits = tr.d_call("score_and_logits", both, torch.cat([labels, labels]))
        scores = scores.float()
        real_scores, fake_scores = scores[:b], scores[b:]
        w_loss = critic_loss(real_scores, fake_scores)
        loss_d = w_loss + t.drift_weight * drift_penalty(real_scores)
        # Lazy regularisation: the penalty on every gp_every-th critic step of the run (counted
        # across generator steps, so resuming keeps the schedule), weighted gp_every.
        if (tr.step * t.n_critic + i) % every == 0:
            alpha = tr.draw(torch.rand)
            # The penalty's pass runs in float32 even under AMP: it differentiates the critic twice
            # and its target (a gradient norm of 1) is a precision-sensitive quantity.
            gp = gradient_penalty(functools.partial(tr.d_call, "forward", labels=labels), real, fake, alpha)
            loss_d = loss_d + every * t.gp_weight * gp
            penalties.append(gp.detach())
        if logits is not None:  # auxiliary classifier learns the classes from real volumes only
            loss_d = loss_d + tr.cfg.model.ac_weight * F.cross_entropy(logits[:b].float(), labels)
        if tr.ada is not None:  # overfitting signal: reals scored above the fake they are paired with
            tr.ada.observe(torch.sign(real_scores.detach() - fake_scores.detach()))
        tr.opt_d.zero_grad(set_to_none=True)
        if tr.check_finite("critic loss", loss_d.detach()):
            # inputs=: only the critic's weights; the penalty's graph also reaches the interpolated
            # volumes, whose (unused) second-order gradient would cost ~10% of the step.
            loss_d.backward(inputs=tr.d_params)
            tr.opt_d.step()
    assert labels is not None
    z = tr.draw(torch.randn, g.latent_dim)
    labels = tr.paired(labels)
    d.requires_grad_(False)  # the generator step needs gradients through the critic, not for it
    with tr.amp():  # the critic is called directly: its frozen weights need no synchronising
        generated = tr.g_call(z, labels, **tr.native)
        fake = perf.to_format(tr.augmented(generated), tr.cfg.perf)
        fake_scores, logits = d.score_and_logits(fake, labels)
    d.requires_grad_(True)
    loss_g = generator_loss(fake_scores.float())
    if t.mode_seeking:
        loss_g = loss_g + tr.plan.mode_seeking * mode_seeking_loss(generated, z, pool=t.mode_seeking_pool)
    if logits is not None:
        loss_g = loss_g + tr.cfg.model.ac_weight * F.cross_entropy(logits.float(), labels)
    tr.generator_update(loss_g)
    gp = torch.stack(penalties).mean()  # gp_every <= n_critic (config check): never empty
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "gp": gp.item(), "w_dist": -w_loss.item()}


def dcgan_step(tr: Trainer, d: DCGANDiscriminator) -> dict[str, float]:
    """3D-GAN: one discriminator update (only while its accuracy is <= the gate), one generator update."""
    t, g = tr.cfg.train, tr.generator
    real, labels = tr.real_batch()
    real = (real + 1) / 2  # the data's [-1, 1] -> the sigmoid's [0, 1]
    sigma = tr.plan.instance_noise
    z, fake_labels = tr.draw(torch.randn, g.latent_dim), tr.paired(labels)
    with tr.amp():
        fake = tr.g_call(z, fake_labels)
        real_logits, real_classes = tr.d_call("logits_and_classes", tr.augmented(tr.noisy(real, sigma)), labels)
        fake_logits = tr.d_call("logits", tr.augmented(tr.noisy(fake.detach(), sigma)), fake_labels)
    if tr.ada is not None:  # ADA's overfitting signal: the sign of D on reals
        tr.ada.observe(torch.sign(real_logits.detach().float()))
    targets = {k: tr.targets(k) for k in (True, False)}
    loss_d = bce_discriminator_loss(real_logits, fake_logits, targets[True], targets[False])
    if real_classes is not None:  # the auxiliary classifier learns the classes from real volumes
        loss_d = loss_d + tr.cfg.model.ac_weight * F.cross_entropy(real_classes.float(), labels)
    accuracy = discriminator_accuracy(real_logits.detach(), fake_logits.detach())
    accuracy = torch.tensor(distributed.mean(float(accuracy), tr.dist, tr.device))  # the global batch's
    update_d = float(accuracy) <= t.d_acc_threshold  # the 3D-GAN gate: let G catch up
    tr.opt_d.zero_grad(set_to_none=True)
    if update_d and tr.check_finite("discriminator loss", loss_d.detach()):
        loss_d.backward()
        tr.opt_d.step()
    d.requires_grad_(False)
    with tr.amp():  # called directly: the frozen discriminator's weights need no synchronising
        fake_scores, fake_classes = d.logits_and_classes(tr.augmented(tr.noisy(fake, sigma)), fake_labels)
    loss_g = bce_generator_loss(fake_scores)
    if fake_classes is not None:  # ... and asks the generator for volumes of the requested class
        loss_g = loss_g + tr.cfg.model.ac_weight * F.cross_entropy(fake_classes.float(), fake_labels)
    if t.mode_seeking:
        loss_g = loss_g + tr.plan.mode_seeking * mode_seeking_loss(fake, z, pool=t.mode_seeking_pool)
    d.requires_grad_(True)
    tr.generator_update(loss_g)
    return {
        "loss_d": loss_d.item(),
        "loss_g": loss_g.item(),
        "d_acc": float(accuracy),
        "d_real": torch.sigmoid(real_logits).mean().item(),
        "d_fake": torch.sigmoid(fake_logits).mean().item(),
        "d_updated": float(update_d),
    }
