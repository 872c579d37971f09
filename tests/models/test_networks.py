from pathlib import Path

import pytest
import torch

from volgan.config import Config, grid_stages
from volgan.models.dcgan import DCGANGenerator
from volgan.models.layers import ResizeConv3d, output_layer
from volgan.models.wgan_gp import Critic, Generator, stage_channels


@pytest.mark.parametrize(
    ("size", "num_classes"),
    [(8, 0), (16, 3), (24, 2), (32, 0), (32, 3), (48, 2), (64, 0), (64, 3), (128, 2)],
)
def test_generator_and_critic_shapes(size: int, num_classes: int) -> None:
    g = Generator(size, latent_dim=8, num_classes=num_classes, ngf=2, embed_dim=4)
    d = Critic(size, num_classes=num_classes, ndf=2)
    labels = torch.tensor([0, 1]) if num_classes else None
    x = g(torch.randn(2, 8), labels)
    assert x.shape == (2, 1, size, size, size)
    assert x.abs().max() <= 1.0  # Tanh output
    assert d(x, labels).shape == (2,)


def test_stage_channels_follow_width_and_cap() -> None:
    assert stage_channels(32, 4, 512) == [256, 128, 64, 32]
    assert stage_channels(32, 5, 256) == [256, 256, 128, 64, 32]


@pytest.mark.parametrize(("size", "expected"), [(8, (4, 1)), (64, (4, 4)), (96, (6, 4)), (112, (7, 4)), (128, (4, 5))])
def test_grid_stages(size: int, expected: tuple[int, int]) -> None:
    assert grid_stages(size) == expected


@pytest.mark.parametrize("size", [4, 50, 66, 36 * 3])
def test_grid_stages_rejects_sizes_that_cannot_be_built(size: int) -> None:
    with pytest.raises(ValueError, match=r"data\.size"):
        grid_stages(size)


def test_conditioning_changes_the_output() -> None:
    torch.manual_seed(0)
    g = Generator(16, latent_dim=8, num_classes=3, ngf=4, embed_dim=4)
    for p in g.parameters():  # the class path starts at zero; give it weights as training would
        torch.nn.init.normal_(p, std=0.2)
    z = torch.randn(1, 8).repeat(2, 1)
    a, b = g(z, torch.tensor([0, 2]))
    assert not torch.allclose(a, b)


def test_critic_is_per_sample() -> None:
    """No batch statistics: a sample's score must not depend on its batch mates (needed for the GP)."""
    torch.manual_seed(0)
    d = Critic(16, num_classes=2, ndf=4)
    x, y = torch.randn(4, 1, 16, 16, 16), torch.tensor([0, 1, 1, 0])
    torch.testing.assert_close(d(x, y)[:1], d(x[:1], y[:1]), rtol=1e-5, atol=1e-5)


def test_conditional_models_require_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        Generator(8, latent_dim=4, num_classes=2, ngf=2)(torch.randn(1, 4))
    with pytest.raises(ValueError, match="labels"):
        Critic(8, num_classes=2, ndf=2)(torch.randn(1, 1, 8, 8, 8))


def test_critic_starts_with_a_moderate_input_gradient() -> None:
    """At initialisation the gradient norm is O(1), so the penalty does not dominate the first steps."""
    torch.manual_seed(0)
    d = Critic(64, num_classes=3, ndf=8)
    x = (torch.rand(2, 1, 64, 64, 64) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x, torch.tensor([0, 2])).sum(), x)
    assert grad.flatten(1).norm(dim=1).max() < 5.0


@pytest.mark.parametrize(("size", "num_classes"), [(8, 0), (16, 3), (48, 2)])
def test_generator_with_a_mapping_network_keeps_its_shape_contract(size: int, num_classes: int) -> None:
    g = Generator(size, latent_dim=8, num_classes=num_classes, ngf=2, embed_dim=4, mapping_layers=2)
    labels = torch.tensor([0, 1]) if num_classes else None
    x = g(torch.randn(2, 8), labels)
    assert x.shape == (2, 1, size, size, size) and x.abs().max() <= 1.0


@pytest.mark.parametrize("mapping_layers", [0, 2])
def test_the_latent_sets_every_stage_only_with_a_mapping_network(mapping_layers: int) -> None:
    """Without a mapping network every stage's norm sees the class alone (the latent enters at the stem
    and per-sample normalisation washes its statistics out); with one, the latent sets each stage."""
    torch.manual_seed(0)
    g = Generator(32, latent_dim=8, num_classes=2, ngf=4, embed_dim=4, mapping_layers=mapping_layers)
    for p in g.parameters():  # scale/shift projections start at zero; give them weights as training would
        torch.nn.init.normal_(p, std=0.2)
    seen: list[torch.Tensor] = []
    last_norm = g.stages[-1].norm
    handle = last_norm.register_forward_hook(lambda mod, args, out: seen.append(args[1]))
    g(torch.randn(2, 8), torch.tensor([1, 1]))  # two latents, one class
    handle.remove()
    (cond,) = seen
    assert cond.shape == (2, 8 if mapping_layers else 4)
    assert torch.equal(cond[0], cond[1]) is (mapping_layers == 0)


def test_critic_minibatch_stddev_groups_stay_inside_the_real_and_fake_halves() -> None:
    """With the feature, a volume's score depends on its group only: cat([real, fake]) scores the
    real half exactly as the reals alone, and a group of copies scores differently from a varied one."""
    torch.manual_seed(0)
    d = Critic(16, num_classes=2, ndf=4, minibatch_std_group=2)
    real, fake, y = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16), torch.tensor([0, 1])
    both = d(torch.cat([real, fake]), torch.cat([y, y]))
    torch.testing.assert_close(both[:2], d(real, y), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[2:], d(fake, y), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        d.head.weight[:, -1].fill_(1.0)  # the head reads the stddev map
    copies = real[:1].repeat(2, 1, 1, 1, 1)
    assert not torch.allclose(d(copies, y)[0], d(torch.cat([real[:1], fake[:1]]), y)[0])
    with pytest.raises(ValueError, match="batch 3 is not divisible by the group size 2"):
        d(torch.randn(3, 1, 16, 16, 16), torch.tensor([0, 1, 0]))


def test_the_resize_output_head_leaves_no_checkerboard() -> None:
    """On spatially constant features the transposed head's interior alternates with the voxel's parity
    (the checkerboard); the resize head's interior is one value."""
    torch.manual_seed(0)
    flat = torch.ones(1, 6, 6, 6, 6)
    inner = (slice(None), 0, slice(2, -2), slice(2, -2), slice(2, -2))
    transposed = output_layer(6, "transposed")(flat)[inner]
    resized = output_layer(6, "resize")(flat)[inner]
    assert transposed.shape == resized.shape == (1, 8, 8, 8)
    assert transposed.std() > 1e-3
    torch.testing.assert_close(resized, resized[0, 0, 0, 0].expand_as(resized), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["wgan_gp", "dcgan"])
def test_both_families_build_the_resize_head(family: str) -> None:
    gen = (Generator if family == "wgan_gp" else DCGANGenerator)(
        size=16, latent_dim=8, num_classes=2, ngf=4, embed_dim=4, output_head="resize"
    )
    assert any(isinstance(m, ResizeConv3d) for m in gen.modules())
    assert gen(torch.randn(2, 8), torch.tensor([0, 1])).shape == (2, 1, 16, 16, 16)


@pytest.mark.parametrize("family", ["wgan_gp", "dcgan"])
def test_resize_stages_replace_every_transposed_up_sampling_and_leave_no_checkerboard(family: str) -> None:
    """With ``stage_upsampling="resize"`` no stride-2 transposed convolution is left in the generator
    (the stem's dense 1³ -> base³ layer is not an up-sampling), and its stages, fed spatially constant
    features, give spatially constant features away from the border."""
    torch.manual_seed(0)
    gen = (Generator if family == "wgan_gp" else DCGANGenerator)(
        size=32, latent_dim=8, num_classes=2, ngf=4, embed_dim=4, output_head="resize", stage_upsampling="resize"
    )
    strided = [m for m in gen.modules() if isinstance(m, torch.nn.ConvTranspose3d) and m.stride == (2, 2, 2)]
    assert strided == []
    assert sum(isinstance(m, ResizeConv3d) for m in gen.modules()) == 3  # 4³ -> 8³ -> 16³, then the head
    assert gen(torch.randn(2, 8), torch.tensor([0, 1])).shape == (2, 1, 32, 32, 32)
    stage = next(m for m in gen.modules() if isinstance(m, ResizeConv3d))
    out = stage(torch.ones(1, stage.conv.in_channels, 6, 6, 6))[:, :, 2:-2, 2:-2, 2:-2]
    torch.testing.assert_close(out, out[:, :, :1, :1, :1].expand_as(out), rtol=0, atol=1e-6)
    plain = (Generator if family == "wgan_gp" else DCGANGenerator)(size=32, latent_dim=8, ngf=4)
    assert sum(isinstance(m, torch.nn.ConvTranspose3d) and m.stride == (2, 2, 2) for m in plain.modules()) == 3


def test_the_resize_heads_fast_path_is_the_up_sampling_and_convolution() -> None:
    """The fast path (a tied transposed kernel at the coarse grid) gives the same volume and gradients
    as nearest up-sampling followed by the 3³ convolution, borders included (float64)."""
    torch.manual_seed(0)
    head = ResizeConv3d(5, 2).double()
    x = torch.randn(2, 5, 6, 7, 8, dtype=torch.float64, requires_grad=True)
    results = []
    for fast in (True, False):
        head.fast = fast
        y = head(x)
        results.append((y, *torch.autograd.grad((y * y.detach().sin()).sum(), [x, *head.parameters()])))
    assert results[0][0].shape == (2, 2, 12, 14, 16)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_top_hats_mark_a_pinhole_and_a_lone_voxel_and_nothing_else() -> None:
    """A one-voxel wall with one pinhole: the black top-hat is the pinhole alone, the white top-hat the
    wall (thinner than the 3³ cube); a lone voxel is all white top-hat; a solid block has neither."""
    from volgan.models.layers import top_hats

    wall = torch.zeros(1, 1, 7, 7, 7)
    wall[0, 0, 3] = 1
    wall[0, 0, 3, 3, 3] = 0
    out = top_hats(wall)
    assert out.shape == (1, 3, 7, 7, 7)
    torch.testing.assert_close(out[:, :1], wall)
    expected_hole = torch.zeros_like(wall)
    expected_hole[0, 0, 3, 3, 3] = 1
    torch.testing.assert_close(out[:, 2:], expected_hole, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1:2], wall, rtol=0, atol=0)
    lone = torch.zeros(1, 1, 7, 7, 7)
    lone[0, 0, 2, 4, 5] = 1
    torch.testing.assert_close(top_hats(lone)[:, 1:2], lone, rtol=0, atol=0)
    block = torch.zeros(1, 1, 9, 9, 9)
    block[0, 0, 2:7, 2:7, 2:7] = 1
    assert top_hats(block)[:, 1:].abs().max() == 0
    torch.testing.assert_close(top_hats(wall, "black"), out[:, [0, 2]], rtol=0, atol=0)
    assert top_hats(wall, "none") is wall


@pytest.mark.parametrize("family", ["wgan_gp", "dcgan"])
def test_a_critic_with_top_hats_reads_three_channels_and_passes_gradients_to_the_volume(family: str) -> None:
    """``model.top_hats``: the critic's first convolution reads the volume and its two top-hats, and the
    generator's gradient reaches every voxel's value through them (a pinhole's depth moves the score)."""
    from volgan.models import build_models

    torch.manual_seed(0)
    cfg = Config.model_validate(
        {"data": {"size": 16}, "model": {"family": family, "ngf": 4, "ndf": 4, "top_hats": "both"}}
    )
    _, d = build_models(cfg, 2)
    first = next(m for m in d.modules() if isinstance(m, torch.nn.Conv3d))
    assert first.in_channels == 3
    x = torch.rand(2, 1, 16, 16, 16, requires_grad=True)
    score = d.logits(x, torch.tensor([0, 1])) if family == "dcgan" else d(x, torch.tensor([0, 1]))
    assert score.shape == (2,)
    score.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0
    black_cfg = Config.model_validate(
        {"data": {"size": 16}, "model": {"family": family, "ngf": 4, "ndf": 4, "top_hats": "black"}}
    )
    _, black = build_models(black_cfg, 2)
    assert next(m for m in black.modules() if isinstance(m, torch.nn.Conv3d)).in_channels == 2
    assert Config.model_validate({"model": {"top_hats": True}}).model.top_hats == "both"  # its first form
    plain_cfg = Config.model_validate({"data": {"size": 16}, "model": {"family": family, "ngf": 4, "ndf": 4}})
    _, plain = build_models(plain_cfg, 2)
    assert next(m for m in plain.modules() if isinstance(m, torch.nn.Conv3d)).in_channels == 1


def test_dilate_is_max_pooling_and_its_gradient_is_the_poolings_where_maxima_are_unique() -> None:
    """The elementwise dilation gives ``max_pool3d(x, 3, 1, 1)``'s values exactly (odd and even grids,
    a grid of one along an axis), the pooling's gradient on continuous values (no ties), is twice
    differentiable (the gradient penalty differentiates it again), and on an occupancy grid, where
    maxima tie, hands each window's gradient on whole: the input's gradient sums to the output's."""
    from volgan.models.layers import dilate

    torch.manual_seed(0)
    for shape in [(2, 1, 9, 8, 7), (1, 2, 1, 2, 3), (3, 1, 5, 6, 7)]:
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        pooled_x = x.detach().clone().requires_grad_(True)
        weights = torch.randn(*shape, dtype=torch.float64)
        out, pooled = dilate(x), torch.nn.functional.max_pool3d(pooled_x, 3, 1, 1)
        torch.testing.assert_close(out, pooled, rtol=0, atol=0)
        (out * weights).sum().backward()
        (pooled * weights).sum().backward()
        torch.testing.assert_close(x.grad, pooled_x.grad, rtol=0, atol=1e-12)
    small = torch.randn(2, 1, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dilate, (small,))
    assert torch.autograd.gradgradcheck(dilate, (small,))
    grid = (torch.rand(2, 1, 6, 6, 6) > 0.5).float().requires_grad_(True)
    weights = torch.rand(2, 1, 6, 6, 6)
    (dilate(grid) * weights).sum().backward()
    torch.testing.assert_close(grid.grad.sum(), weights.sum(), rtol=1e-5, atol=0)
    assert (grid.grad >= 0).all()


@pytest.mark.parametrize("family", ["wgan_gp", "dcgan"])
def test_top_hats_from_brings_the_channels_in_part_way_without_a_jump(family: str, tmp_path: Path) -> None:
    """``model.top_hats_from``: the critic's weights on the top-hat channels start at 0 and stay there
    while the channels are zeros (the first half of the run), so the scores at the switch are the plain
    critic's; from half-way the critic sees the top-hats and learns weights for them."""
    from conftest import tiny_config, tiny_data
    from volgan.training import Trainer

    model = {"family": family, "top_hats": "both", "top_hats_from": 0.5}
    trainer = Trainer(tiny_config(tmp_path / "run", model=model, train={"steps": 4, "batch_size": 4}), tiny_data())
    d = trainer.discriminator
    first = next(m for m in d.modules() if isinstance(m, torch.nn.Conv3d))
    assert first.in_channels == 3 and not d.top_hats_on and first.weight[:, 1:].abs().max() == 0
    v = torch.rand(2, 1, 16, 16, 16)  # before: the volume alone, read as the volume and two zero channels
    padded = torch.cat([v, torch.zeros(2, 2, 16, 16, 16)], dim=1)
    # the same 64 products per output, summed by another kernel (another order on other CPUs): 1e-5
    torch.testing.assert_close(first(v), first(padded), rtol=1e-5, atol=1e-5)
    for _ in range(2):
        trainer.train_step()
    assert not d.top_hats_on and first.weight[:, 1:].abs().max() == 0  # 2 of 4 steps: still zeros
    x, labels = torch.rand(2, 1, 16, 16, 16), torch.tensor([0, 1])
    d.eval()
    before = d.logits(x, labels) if family == "dcgan" else d(x, labels)
    d.top_hats_on = True
    after = d.logits(x, labels) if family == "dcgan" else d(x, labels)
    # zero weights: the top-hats change no score (up to the convolution kernel's summation order)
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    d.train()
    trainer.train_step()
    assert d.top_hats_on and first.weight[:, 1:].abs().max() > 0
    with pytest.raises(ValueError, match=r"model\.top_hats_from"):
        Config.model_validate({"model": {"top_hats_from": 0.5}})
