"""The 3D-GAN family: shapes, the BCE on logits, the accuracy gate, and training through the shared loop."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config, tiny_data
from volgan.config import DCGANTrainConfig
from volgan.ema import EMA, recalibrate_batchnorm
from volgan.losses import bce_discriminator_loss, bce_generator_loss, discriminator_accuracy, label_targets
from volgan.models.dcgan import DCGANDiscriminator, DCGANGenerator, minibatch_stddev
from volgan.models.wgan_gp import Generator
from volgan.training import Trainer


def dcgan_config(run_dir: Path, **train: object):
    """A 16³ 3D-GAN; ``train``: keys of train, or of train.dcgan (the family's own)."""
    own = {k: v for k, v in train.items() if k in DCGANTrainConfig.model_fields}
    common = {k: v for k, v in train.items() if k not in own}
    return tiny_config(
        run_dir,
        model={"family": "dcgan", "latent_dim": 8, "embed_dim": 4, "ngf": 4, "ndf": 4},
        train={"steps": 4, "batch_size": 4, **common, "dcgan": own},
    )


@pytest.mark.parametrize(("size", "num_classes"), [(16, 0), (32, 2), (64, 0), (64, 3)])
def test_shapes_and_ranges(size: int, num_classes: int) -> None:
    g = DCGANGenerator(size, latent_dim=8, num_classes=num_classes, ngf=2, embed_dim=4)
    d = DCGANDiscriminator(size, num_classes=num_classes, ndf=2)
    labels = torch.tensor([0, 1]) if num_classes else None
    x = g(torch.randn(2, 8), labels)
    assert x.shape == (2, 1, size, size, size)
    assert x.min() >= 0.0 and x.max() <= 1.0  # sigmoid output
    p = d(x, labels)
    assert p.shape == (2,) and p.min() >= 0.0 and p.max() <= 1.0
    torch.testing.assert_close(p, torch.sigmoid(d.logits(x, labels)))


def test_published_channel_plan_at_64() -> None:
    g = DCGANGenerator(64, latent_dim=200)
    convs = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert [c.out_channels for c in convs] == [512, 256, 128, 64, 1]
    assert convs[0].in_channels == 200


def test_bce_on_logits_equals_bce_on_probabilities() -> None:
    torch.manual_seed(0)
    real_logits, fake_logits = torch.randn(8) * 3, torch.randn(8) * 3
    real_t, fake_t = torch.full((8,), 0.9), torch.rand(8) * 0.1
    prob_space = torch.nn.functional.binary_cross_entropy(
        torch.sigmoid(real_logits), real_t
    ) + torch.nn.functional.binary_cross_entropy(torch.sigmoid(fake_logits), fake_t)
    torch.testing.assert_close(
        bce_discriminator_loss(real_logits, fake_logits, real_t, fake_t), prob_space, rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        bce_generator_loss(fake_logits),
        torch.nn.functional.binary_cross_entropy(torch.sigmoid(fake_logits), torch.ones(8)),
    )
    # where probabilities saturate (sigmoid(-120) == 0 in float32) the logit form stays finite
    assert torch.isfinite(bce_generator_loss(torch.tensor([-120.0])))


def test_discriminator_accuracy_and_targets() -> None:
    assert discriminator_accuracy(torch.tensor([1.0, -1.0]), torch.tensor([-2.0, -3.0])).item() == 0.75
    assert torch.equal(label_targets(3, True), torch.ones(3)) and torch.equal(label_targets(3, False), torch.zeros(3))
    assert torch.equal(label_targets(3, True, real_label=0.9), torch.full((3,), 0.9))
    torch.manual_seed(0)
    noisy = label_targets(1000, False, noise=0.1)
    assert noisy.min() >= 0.0 and noisy.max() <= 0.1 and noisy.std() > 0
    flipped = label_targets(1000, True, flip=0.3)
    assert 0.2 < (flipped == 0).float().mean() < 0.4


@pytest.mark.parametrize(("threshold", "updates"), [(1.0, True), (0.0, False)])
def test_accuracy_gate_performs_or_skips_the_discriminator_update(
    tmp_path: Path, threshold: float, updates: bool
) -> None:
    trainer = Trainer(dcgan_config(tmp_path / "run", d_acc_threshold=threshold), tiny_data())
    before = [p.clone() for p in trainer.discriminator.parameters()]
    g_before = [p.clone() for p in trainer.generator.parameters()]
    values = trainer.train_step()
    changed = any(not torch.equal(a, b) for a, b in zip(before, trainer.discriminator.parameters(), strict=True))
    assert changed is updates and values["d_updated"] == float(updates)
    assert any(not torch.equal(a, b) for a, b in zip(g_before, trainer.generator.parameters(), strict=True))


def test_gate_follows_the_measured_accuracy(tmp_path: Path) -> None:
    """With the gate at the accuracy the step reports, the update happens iff accuracy <= threshold."""
    trainer = Trainer(dcgan_config(tmp_path / "run", d_acc_threshold=0.5), tiny_data())
    for _ in range(4):
        before = [p.clone() for p in trainer.discriminator.parameters()]
        values = trainer.train_step()
        changed = any(not torch.equal(a, b) for a, b in zip(before, trainer.discriminator.parameters(), strict=True))
        # the weights themselves, not the logged flag, must follow the accuracy the step measured
        assert changed is (values["d_acc"] <= 0.5), values
        assert values["d_updated"] == float(changed)


def test_dcgan_resume_is_exact(tmp_path: Path) -> None:
    data = tiny_data()
    straight = Trainer(dcgan_config(tmp_path / "a"), data)
    straight.fit()
    first = Trainer(dcgan_config(tmp_path / "b"), data)
    first.fit(stop_after=2)
    second = Trainer(dcgan_config(tmp_path / "b"), data, resume=tmp_path / "b")
    second.fit()
    for a, b in zip(straight.generator.state_dict().values(), second.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.module.state_dict().values(), second.ema.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_instance_noise_anneals_linearly_to_zero(tmp_path: Path) -> None:
    trainer = Trainer(dcgan_config(tmp_path / "run", instance_noise=0.2, instance_noise_steps=4), tiny_data())
    seen = []
    for _ in range(6):
        seen.append(trainer.next_plan().instance_noise)
        trainer.train_step()
    torch.testing.assert_close(torch.tensor(seen), torch.tensor([0.2, 0.15, 0.1, 0.05, 0.0, 0.0]))
    constant = Trainer(dcgan_config(tmp_path / "c", instance_noise=0.1), tiny_data())
    constant.step = 10_000
    assert constant.next_plan().instance_noise == 0.1


def test_tensorboard_gets_step_and_epoch_scalars_and_renders(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(
        tmp_path / "run",
        model={"family": "dcgan", "latent_dim": 8, "embed_dim": 4, "ngf": 4, "ndf": 4},
        train={"steps": 6, "batch_size": 4},  # 10 volumes: an epoch ends every 2-3 steps
        log={"every": 1, "image_every": 3, "checkpoint_every": 100, "progress_bar": False},
    )
    Trainer(cfg, tiny_data()).fit()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"train/loss_d", "train/loss_g", "train/d_acc", "train/d_real", "train/d_fake"} <= scalars
    assert {"epoch/loss_d", "epoch/d_acc"} <= scalars
    assert {"samples/c0", "renders/c0", "renders/c1"} <= images
    assert len(events.Scalars("train/d_acc")) == 6 and len(events.Scalars("epoch/d_acc")) >= 2


def test_ema_batchnorm_statistics_are_recalibrated_for_the_averaged_weights() -> None:
    torch.manual_seed(0)
    g = DCGANGenerator(16, latent_dim=16, num_classes=2, ngf=8, embed_dim=8)
    ema = EMA(g, decay=0.9)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    ema.update(g)
    norms = [m for m in ema.module.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    for m in norms:  # statistics that fit nothing
        m.running_mean.fill_(100.0)
    module = ema.ready(batches=1, batch_size=64, seed=3)
    assert not module.training
    # With one calibration batch, eval mode on that batch reproduces train mode on it.
    rng = torch.Generator().manual_seed(3)
    z, y = torch.randn(64, 16, generator=rng), torch.randint(2, (64,), generator=rng)
    with torch.no_grad():
        eval_out = module(z, y)
        module.train()
        train_out = module(z, y)
        module.eval()
    assert torch.allclose(eval_out, train_out, atol=2e-3)
    before = [m.running_mean.clone() for m in norms]
    assert ema.ready(batches=1, batch_size=64, seed=3) is module  # no new update: no recalibration
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, norms, strict=True))


def test_recalibration_leaves_generators_without_batchnorm_alone() -> None:
    g = Generator(16, latent_dim=16, num_classes=2, ngf=8, embed_dim=8)
    state = {k: v.clone() for k, v in g.state_dict().items()}
    recalibrate_batchnorm(g)
    assert all(torch.equal(state[k], v) for k, v in g.state_dict().items())


def test_minibatch_stddev_sees_a_collapsed_batch() -> None:
    torch.manual_seed(0)
    varied = torch.randn(8, 6, 2, 2, 2)
    collapsed = varied[:1].expand(8, -1, -1, -1, -1).contiguous()
    a, b = minibatch_stddev(varied), minibatch_stddev(collapsed)
    assert a.shape == b.shape == (8, 1, 2, 2, 2)
    assert b.max() < 1e-3 < 0.5 < a.min()
    assert minibatch_stddev(torch.randn(6, 3, 2, 2, 2)).shape == (6, 1, 2, 2, 2)  # 6 % 4 != 0: one group


def test_discriminator_with_minibatch_std_scores_a_volume_by_its_batch() -> None:
    torch.manual_seed(0)
    d = DCGANDiscriminator(16, num_classes=0, ndf=8, minibatch_std=True).eval()  # eval: BN not coupling
    x = torch.rand(4, 1, 16, 16, 16)
    with torch.no_grad():
        alone_ish = d.logits(x[:1].expand(4, -1, -1, -1, -1))[0]
        in_batch = d.logits(x)[0]
    assert not torch.isclose(alone_ish, in_batch)
    assert d.logits(x).shape == (4,)


def test_auxiliary_classifier_head_and_its_training(tmp_path: Path) -> None:
    d = DCGANDiscriminator(16, num_classes=3, ndf=4, aux_classifier=True)
    x, y = torch.rand(4, 1, 16, 16, 16), torch.tensor([0, 1, 2, 0])
    logits, classes = d.logits_and_classes(x, y)
    assert logits.shape == (4,) and classes is not None and classes.shape == (4, 3)
    assert DCGANDiscriminator(16, num_classes=3, ndf=4).logits_and_classes(x, y)[1] is None
    cfg = tiny_config(
        tmp_path / "run",
        model={"family": "dcgan", "latent_dim": 8, "embed_dim": 4, "ngf": 4, "ndf": 4, "ac_weight": 1.0},
        train={"steps": 2, "batch_size": 4, "dcgan": {"d_acc_threshold": 1.0}},
    )
    trainer = Trainer(cfg, tiny_data(classes=2))
    head = trainer.discriminator.classifier
    assert head is not None
    before = head.weight.clone()
    trainer.train_step()
    assert not torch.equal(before, head.weight)  # cross-entropy on real volumes reached the head


def test_mode_seeking_trains_the_dcgan_generator_on_paired_classes(tmp_path: Path) -> None:
    trainer = Trainer(dcgan_config(tmp_path / "run", mode_seeking=1.0), tiny_data())
    assert torch.equal(trainer.services.paired(torch.tensor([0, 1, 1, 0])), torch.tensor([0, 0, 1, 1]))
    before = [p.clone() for p in trainer.generator.parameters()]
    values = trainer.train_step()
    assert np.isfinite(values["loss_g"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.generator.parameters(), strict=True))
