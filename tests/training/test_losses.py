import pytest
import torch

from volgan.losses import critic_loss, generator_loss, gradient_penalty, mode_seeking_loss


def test_gradient_penalty_of_a_linear_critic_is_exact() -> None:
    """f(x) = <w, x> has gradient w everywhere, so the penalty is (‖w‖ − 1)² for every sample."""
    torch.manual_seed(0)
    w = torch.randn(1, 1, 4, 5, 6, dtype=torch.float64)
    real, fake = (
        torch.randn(3, 1, 4, 5, 6, dtype=torch.float64),
        torch.randn(3, 1, 4, 5, 6, dtype=torch.float64),
    )
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, torch.rand(3))
    expected = (w.norm() - 1) ** 2
    torch.testing.assert_close(gp.double(), expected, rtol=1e-6, atol=1e-9)


def test_gradient_penalty_norm_spans_every_voxel_not_only_dims_1_to_3() -> None:
    """A norm over dims [1, 2, 3] only (a common 2-D leftover) would give a different value here."""
    w = torch.zeros(1, 1, 2, 2, 2)
    w[..., 0] = 1.0  # gradient non-zero on half of the last axis
    real = fake = torch.zeros(1, 1, 2, 2, 2)
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, torch.ones(1))
    torch.testing.assert_close(gp, torch.tensor((2.0 - 1.0) ** 2))  # ‖w‖ = sqrt(4) = 2


def test_gradient_penalty_has_a_gradient_for_the_critic() -> None:
    w = torch.full((1, 1, 2, 2, 2), 0.3, requires_grad=True)
    real, fake = torch.randn(2, 1, 2, 2, 2), torch.randn(2, 1, 2, 2, 2)
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, torch.rand(2))
    (g,) = torch.autograd.grad(gp, w)
    # d/dw (‖w‖ − 1)² = 2(‖w‖ − 1) w / ‖w‖
    norm = w.detach().norm()
    torch.testing.assert_close(g, 2 * (norm - 1) * w.detach() / norm)


def test_wasserstein_losses() -> None:
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([1.0, -1.0])
    assert critic_loss(real, fake).item() == -3.0
    assert generator_loss(fake).item() == 0.0


def test_mode_seeking_loss_by_hand() -> None:
    """Pairs (0, 1) and (2, 3): |Δx| means 2 and 0.5, |Δz| means 1 and 1 -> mean of 1/2 and 1/0.5."""
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, 1.0], [1.5, 0.5]])
    z = torch.tensor([[0.0], [1.0], [3.0], [2.0]])
    torch.testing.assert_close(mode_seeking_loss(fake, z, eps=0.0), torch.tensor((1 / 2 + 1 / 0.5) / 2))


def test_mode_seeking_loss_grows_as_a_generator_collapses_and_pushes_pairs_apart() -> None:
    z = torch.randn(4, 8)
    spread = torch.randn(4, 1, 4, 4, 4)
    collapsed = spread[:1].repeat(4, 1, 1, 1, 1) + 1e-3 * spread
    assert mode_seeking_loss(collapsed, z) > 100 * mode_seeking_loss(spread, z)
    x = collapsed.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mode_seeking_loss(x, z), x)
    stepped = x.detach() - 1e-6 * grad  # one small descent step moves each pair's volumes apart
    assert mode_seeking_loss(stepped, z) < mode_seeking_loss(collapsed, z)


def test_mode_seeking_loss_leaves_an_odd_volume_out_and_is_zero_without_pairs() -> None:
    fake, z = torch.tensor([[0.0], [2.0], [9.0]]), torch.tensor([[0.0], [1.0], [5.0]])
    torch.testing.assert_close(mode_seeking_loss(fake, z, eps=0.0), torch.tensor(0.5))  # pair (0, 1) only
    assert mode_seeking_loss(fake[:1], z[:1]).item() == 0.0


def test_pooled_mode_seeking_loss_ignores_voxel_noise_but_not_a_difference_of_shape() -> None:
    """Two volumes of one shape that differ by independent voxel noise look far apart voxelwise and
    close on 4³-block means; two different shapes stay apart either way."""
    gen = torch.Generator().manual_seed(0)
    z = torch.tensor([[0.0], [1.0]])
    shape = -torch.ones(1, 1, 16, 16, 16)
    shape[..., 4:12, 4:12, 4:12] = 1.0
    noisy = shape.repeat(2, 1, 1, 1, 1) + 0.3 * torch.randn(2, 1, 16, 16, 16, generator=gen)
    assert mode_seeking_loss(noisy, z, pool=4) > 3 * mode_seeking_loss(noisy, z)
    moved = torch.cat([shape, shape.roll(4, dims=2)])  # the same box, moved by 4 voxels
    torch.testing.assert_close(mode_seeking_loss(moved, z, pool=4), mode_seeking_loss(moved, z), rtol=0.05, atol=0)
    # a grid smaller than the pool is averaged whole, not refused
    assert torch.isfinite(mode_seeking_loss(noisy[..., :2, :2, :2], z, pool=4))
    with pytest.raises(ValueError, match="pool needs volumes"):
        mode_seeking_loss(torch.zeros(2, 8), z, pool=2)
