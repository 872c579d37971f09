"""3D differentiable augmentation: shapes, identity at p = 0, gradients, per-volume parameters,
the adaptive controller, determinism, and its place in both training steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config, tiny_data
from volgan.augment import AdaptiveP, DiffAugment3d, affine, cutout, flip, rotation_matrices, translate
from volgan.config import AugmentConfig
from volgan.losses import gradient_penalty
from volgan.training import Trainer

OFF = {
    "flip": (False, False, False),
    "translate": 0.0,
    "subvoxel": 0.0,
    "rotate_deg": 0.0,
    "scale": 0.0,
    "cutout": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "gamma": 0.0,
    "noise": 0.0,
}
# each operation alone, at a clearly visible strength
ONLY = {
    "flip": {"flip": (True, True, True)},
    "translate": {"translate": 0.25},
    "subvoxel": {"subvoxel": 1.0},
    "rotate": {"rotate_deg": 20.0},
    "scale": {"scale": 0.3},
    "cutout": {"cutout": 0.5},
    "brightness": {"brightness": 0.3},
    "contrast": {"contrast": 0.5},
    "gamma": {"gamma": 0.5},
    "noise": {"noise": 0.1},
}


def pipeline(op: str | None, p: float, value_range: tuple[float, float] = (-1.0, 1.0)) -> DiffAugment3d:
    settings = {**OFF, **(ONLY[op] if op else {k: v for o in ONLY.values() for k, v in o.items()})}
    return DiffAugment3d(AugmentConfig(enabled=True, p=p, **settings), value_range)


def volumes(b: int = 4, c: int = 1, shape: tuple[int, int, int] = (10, 9, 8)) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(b, c, *shape) * 2 - 1


@pytest.mark.parametrize("op", [*ONLY, None])
def test_shape_and_dtype_kept_and_identity_at_p0(op: str | None) -> None:
    x = volumes()
    torch.manual_seed(1)
    y = pipeline(op, p=1.0)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(y, x)  # at p = 1 every operation changes something
    assert torch.equal(pipeline(op, p=0.0)(x), x)


@pytest.mark.parametrize("op", [*ONLY, None])
def test_gradients_flow_to_the_input(op: str | None) -> None:
    x = volumes().requires_grad_(True)
    torch.manual_seed(2)
    (grad,) = torch.autograd.grad((pipeline(op, p=1.0)(x) * torch.randn(x.shape)).sum(), x)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("op", [*ONLY, None])
def test_a_volumes_channels_get_the_same_transform(op: str | None) -> None:
    one = volumes(c=1)
    two = one.repeat(1, 2, 1, 1, 1)  # two identical channels
    aug = pipeline(op, p=1.0)
    if op is None:  # everything but the per-voxel noise, checked on its own below
        aug.cfg = aug.cfg.model_copy(update={"noise": 0.0})
    torch.manual_seed(3)
    y = aug(two)
    if op == "noise":  # the noise itself is drawn per voxel; its strength is per volume
        torch.testing.assert_close((y[:, 0] - one[:, 0]).std(), (y[:, 1] - one[:, 0]).std(), rtol=0.1, atol=0)
    else:
        assert torch.equal(y[:, 0], y[:, 1])


def test_deterministic_under_a_fixed_seed() -> None:
    x, aug = volumes(), pipeline(None, p=0.7)
    torch.manual_seed(5)
    a = aug(x)
    torch.manual_seed(5)
    assert torch.equal(aug(x), a)
    torch.manual_seed(6)
    assert not torch.equal(aug(x), a)


def test_probability_is_per_volume() -> None:
    x = volumes(b=400, shape=(4, 4, 4))
    torch.manual_seed(7)
    y = pipeline("brightness", p=0.3)(x)
    changed = (y != x).flatten(1).any(1).float().mean()
    assert 0.22 < float(changed) < 0.38


def test_operations_do_what_they_say() -> None:
    x = volumes(b=2)
    yes, no = torch.tensor([True, False]), torch.tensor([False, True])
    assert torch.equal(flip(x, yes, 3)[0], x[0].flip(2)) and torch.equal(flip(x, yes, 3)[1], x[1])
    moved = translate(x, torch.tensor([[2, 0, 0], [0, 0, -1]]), background=-1.0)
    assert torch.equal(moved[0, :, 2:], x[0, :, :-2]) and (moved[0, :, :2] == -1).all()
    assert torch.equal(moved[1, :, :, :, :-1], x[1, :, :, :, 1:])
    theta = torch.eye(3, 4).repeat(2, 1, 1)
    torch.testing.assert_close(affine(x, theta, -1.0), x)  # identity map, voxel centres
    rot = rotation_matrices(torch.tensor([[0.3, -0.2, 0.5]]))
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).unsqueeze(0))  # orthonormal
    boxed = cutout(x, torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]), 0.5, no, -1.0)
    assert (
        torch.equal(boxed[0], x[0]) and (boxed[1, :, 5, 4, 4] == -1).all() and torch.equal(boxed[1, :, 0], x[1, :, 0])
    )


def test_background_fills_what_moves_in() -> None:
    x = torch.zeros(1, 1, 8, 8, 8)  # 0 is mid-range; background is -1
    torch.manual_seed(0)
    y = pipeline("translate", p=1.0)(x)
    assert set(torch.unique(y).tolist()) <= {-1.0, 0.0} and (y == -1).any()


def test_adaptive_p_moves_up_above_target_and_down_below_within_bounds() -> None:
    cfg = AugmentConfig(enabled=True, target=0.6, speed=0.1, interval=2, p_max=0.5)
    ada = AdaptiveP(cfg)
    p = 0.2
    for _ in range(5):  # reals always win: overfitting
        ada.observe(torch.ones(8))
        p = ada.update(p, ada.total, ada.count)
    assert p == pytest.approx(0.5)  # rose by 0.1 per update, capped at p_max
    for _ in range(10):  # a coin flip: below target
        ada.observe(torch.tensor([1.0, -1.0]))
        p = ada.update(p, ada.total, ada.count)
    assert p == 0.0
    assert ada.last_signal == 0.0 and ada.count == 0  # the window restarts after each update
    assert ada.due(4) and not ada.due(3)


def test_penalty_is_taken_on_interpolates_of_the_augmented_volumes() -> None:
    """The chosen design: gradient norm of the critic at α·T(real) + (1 − α)·T(fake), the tensors it scored.

    For a linear critic <w, x> that is ‖w‖ whatever T does; a penalty through T (∇ of D∘T) would
    see T's Jacobian instead, e.g. 0 where cutout blanks the volume, so this tells them apart."""
    torch.manual_seed(0)
    w = torch.randn(1, 1, 8, 8, 8)

    def critic(x: torch.Tensor) -> torch.Tensor:
        return (x * w).flatten(1).sum(1)

    aug = pipeline("cutout", p=1.0)
    real, fake = aug(volumes(b=2, shape=(8, 8, 8))), aug(volumes(b=2, shape=(8, 8, 8)) * 0.5)
    gp = gradient_penalty(critic, real, fake, torch.tensor([0.3, 0.8]))
    assert float(gp) == pytest.approx(float((w.norm() - 1) ** 2), rel=1e-5)


def _trainer(tmp_path: Path, family: str, augment: dict) -> Trainer:
    model = {"family": family}
    cfg = tiny_config(tmp_path / family, model=model, train={"batch_size": 2}, augment=augment)
    return Trainer(cfg, tiny_data(6))


@pytest.mark.parametrize("family", ["wgan_gp", "dcgan"])
def test_both_families_train_with_augmentation_and_log_p(tmp_path: Path, family: str) -> None:
    trainer = _trainer(tmp_path, family, {"enabled": True, "p": 0.5, "interval": 1, "speed": 0.05})
    seen: list[torch.Tensor] = []
    first = trainer.discriminator.features[0]
    hook = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    values = trainer.train_step()
    hook.remove()
    assert all(np.isfinite(v) for v in values.values())
    assert values["aug_p"] in (pytest.approx(0.45), pytest.approx(0.55))  # one adjustment after one step
    assert -1.0 <= values["aug_signal"] <= 1.0
    # what the discriminator saw is not the plain batch: same seed without augmentation differs
    plain = _trainer(tmp_path / "plain", family, {"enabled": False})
    plain_seen: list[torch.Tensor] = []
    plain_first = plain.discriminator.features[0]
    hook = plain_first.register_forward_pre_hook(lambda m, args: plain_seen.append(args[0].detach().clone()))
    plain.train_step()
    hook.remove()
    assert not torch.equal(seen[0], plain_seen[0])


def test_augmentation_state_survives_a_checkpoint(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "wgan_gp", {"enabled": True, "p": 0.3, "interval": 3})
    trainer.train_step()
    assert trainer.services.augment is not None and trainer.services.ada is not None
    trainer.services.augment.p = 0.37
    path = trainer.save()
    resumed = Trainer(trainer.cfg, trainer.data, resume=path)
    assert resumed.services.augment is not None and resumed.services.ada is not None
    assert resumed.services.augment.p == pytest.approx(0.37)
    assert (
        resumed.services.ada.count == trainer.services.ada.count
        and resumed.services.ada.total == trainer.services.ada.total
    )


def test_penalty_with_augmentation_off_is_unchanged(tmp_path: Path) -> None:
    """augment.enabled with p = 0 (not adaptive) trains exactly like no augmentation."""
    a = _trainer(tmp_path / "a", "wgan_gp", {"enabled": True, "p": 0.0, "adaptive": False})
    b = _trainer(tmp_path / "b", "wgan_gp", {"enabled": False})
    torch.manual_seed(1)
    va = a.train_step()
    torch.manual_seed(1)
    vb = b.train_step()
    assert va["gp"] == vb["gp"] and va["loss_d"] == vb["loss_d"]
    for p, q in zip(a.discriminator.parameters(), b.discriminator.parameters(), strict=True):
        assert torch.equal(p, q)
