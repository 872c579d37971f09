"""The fast paths compute the same mathematics as the stock layers (stated tolerances), and switch off."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import tiny_config, tiny_data
from volgan import perf
from volgan.config import PerfConfig, build_config
from volgan.losses import gradient_penalty
from volgan.models import build_models
from volgan.models.layers import (
    InstanceNorm3d,
    StemConvTranspose3d,
    SubpixelConvTranspose3d,
    channel_moments,
    instance_norm,
)
from volgan.models.wgan_gp import Critic, Generator
from volgan.training import Trainer

pytestmark = pytest.mark.numerics  # results depend on the CPU kernels: rerun limited to AVX2

# every fast path on, including dense_stem (off by default: it did not pay on the CPUs measured)
ALL_ON = PerfConfig(channels_last=True, fused_norm=True, subpixel_conv=True, dense_stem=True, tune_allocator=True)
ALL_OFF = PerfConfig(channels_last=False, fused_norm=False, subpixel_conv=False, dense_stem=False, tune_allocator=False)
F32 = {"rtol": 1e-4, "atol": 1e-5}


@pytest.mark.parametrize("shape", [(2, 3, 5, 6, 7), (1, 4, 8, 8, 8), (3, 1, 4, 9, 2)])
def test_instance_norm_matches_torch_with_and_without_scale_and_shift(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 1
    b, c = shape[:2]
    torch.testing.assert_close(instance_norm(x), F.instance_norm(x), **F32)
    scale, shift = torch.randn(b, c), torch.randn(b, c)
    expected = F.instance_norm(x) * scale.view(b, c, 1, 1, 1) + shift.view(b, c, 1, 1, 1)
    torch.testing.assert_close(instance_norm(x, 1e-5, scale, shift), expected, **F32)
    w, bias = torch.randn(c), torch.randn(c)
    torch.testing.assert_close(instance_norm(x, 1e-5, w, bias), F.instance_norm(x, weight=w, bias=bias), **F32)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("offset", "spread"), [(0.0, 1.0), (3.0, 1.0), (1000.0, 0.01)])
def test_channel_moments_are_accurate_even_where_the_one_pass_formula_would_cancel(
    channels_last: bool, offset: float, spread: float
) -> None:
    """offset 1000, spread 0.01: E[x²] - E[x]² keeps no correct digit in float32; the fallback must."""
    torch.manual_seed(0)
    x = offset + spread * torch.randn(2, 3, 6, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    var, mean = channel_moments(x)
    ref_var, ref_mean = torch.var_mean(x.double(), dim=(2, 3, 4), keepdim=True, correction=0)
    torch.testing.assert_close(mean, ref_mean.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, ref_var.float(), rtol=1e-3, atol=0.0)


def test_instance_norm_second_derivatives_are_exact() -> None:
    """The gradient penalty differentiates the critic twice: check both orders in float64."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda *a: instance_norm(*a[:1], 1e-5, *a[1:]), (x, scale, shift))


@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_module_fast_equals_stock(affine: bool) -> None:
    torch.manual_seed(0)
    m = InstanceNorm3d(4, affine=affine)
    if affine:
        nn.init.normal_(m.weight)
        nn.init.normal_(m.bias)
    x, scale, shift = torch.randn(2, 4, 5, 6, 7), torch.randn(2, 4), torch.randn(2, 4)
    for extra in [(), (scale,), (scale, shift), (None, shift)]:
        m.fast = True
        fast = m(x, *extra)
        m.fast = False
        torch.testing.assert_close(fast, m(x, *extra), **F32)


@pytest.mark.parametrize(("c_in", "c_out", "spatial", "bias"), [(3, 1, (5, 6, 7), True), (4, 2, (4, 4, 4), False)])
def test_subpixel_conv_transpose_equals_conv_transpose(
    c_in: int, c_out: int, spatial: tuple[int, int, int], bias: bool
) -> None:
    torch.manual_seed(0)
    m = SubpixelConvTranspose3d(c_in, c_out, bias=bias).double()
    x = torch.randn(2, c_in, *spatial, dtype=torch.float64, requires_grad=True)
    m.fast = True
    fast = m(x)
    m.fast = False
    stock = m(x)
    assert fast.shape == stock.shape == (2, c_out, *(2 * s for s in spatial))
    torch.testing.assert_close(fast, stock, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(stock)
    grads_fast = torch.autograd.grad((fast * g).sum(), [x, *m.parameters()])
    grads_stock = torch.autograd.grad((stock * g).sum(), [x, *m.parameters()])
    for a, b in zip(grads_fast, grads_stock, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [False, True])
def test_stem_dense_layer_equals_the_transposed_conv_on_a_point(bias: bool) -> None:
    torch.manual_seed(0)
    m = StemConvTranspose3d(6, 5, 4, bias=bias)
    x = torch.randn(3, 6, 1, 1, 1, requires_grad=True)
    m.fast = True
    fast = m(x)
    m.fast = False
    stock = m(x)
    torch.testing.assert_close(fast, stock, **F32)
    g = torch.randn_like(stock)
    for a, b in zip(
        torch.autograd.grad((fast * g).sum(), [x, *m.parameters()]),
        torch.autograd.grad((stock * g).sum(), [x, *m.parameters()]),
        strict=True,
    ):
        torch.testing.assert_close(a, b, **F32)


def _models(size: int, cfg: PerfConfig) -> tuple[Generator, Critic]:
    torch.manual_seed(0)
    g, d = Generator(size, 8, 3, ngf=4, embed_dim=4), Critic(size, 3, ndf=4)
    perf.configure_models(cfg, g, d)
    return g, d


def _penalty_gradients(g: Generator, d: Critic, cfg: PerfConfig) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(1)
    y = torch.tensor([0, 2])
    fake = g(torch.randn(2, 8), y)
    real = perf.to_format(torch.rand_like(fake) * 2 - 1, cfg)
    gp = gradient_penalty(functools.partial(d, labels=y), real, fake, torch.tensor([0.3, 0.7]))
    loss = d(fake, y).mean() - d(real, y).mean() + 10 * gp
    return fake, list(torch.autograd.grad(loss, [*g.parameters(), *d.parameters()]))


@pytest.mark.parametrize("size", [16, 24])
def test_fast_models_match_plain_models_including_the_penalty_gradients(size: int) -> None:
    """Same weights, all fast paths vs all off: same volumes, same first- and second-order gradients."""
    fast_cfg = ALL_ON
    fake_fast, grads_fast = _penalty_gradients(*_models(size, fast_cfg), fast_cfg)
    fake_plain, grads_plain = _penalty_gradients(*_models(size, ALL_OFF), ALL_OFF)
    torch.testing.assert_close(fake_fast, fake_plain, **F32)
    for a, b in zip(grads_fast, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_configure_models_sets_every_switch_and_the_memory_format() -> None:
    g, d = _models(16, ALL_ON)
    assert g.to_volume.fast and g.stem.fast and all(m.fast for m in d.modules() if isinstance(m, InstanceNorm3d))
    assert d.features[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    perf.configure_models(ALL_OFF, g, d)
    assert not g.to_volume.fast and not g.stem.fast
    assert not any(m.fast for m in g.modules() if isinstance(m, InstanceNorm3d))
    assert d.features[0].weight.is_contiguous()


def test_dcgan_output_layer_has_the_subpixel_fast_path() -> None:
    cfg = build_config({"model": {"family": "dcgan"}, "data": {"size": 16}})
    g, _ = build_models(cfg, 2)
    z, y = torch.randn(2, cfg.model.latent_dim), torch.tensor([0, 1])
    g.eval()
    perf.configure_models(PerfConfig(), g)
    fast = g(z, y)
    perf.configure_models(ALL_OFF, g)
    torch.testing.assert_close(fast, g(z, y), **F32)


def _trainer(tmp_path: Path, name: str, perf_cfg: dict[str, bool]) -> Trainer:
    return Trainer(tiny_config(tmp_path / name, train={"batch_size": 2}, perf=perf_cfg), tiny_data(6))


def test_a_training_step_is_the_same_with_and_without_fast_paths(tmp_path: Path) -> None:
    fast = _trainer(tmp_path, "fast", {})
    plain = _trainer(tmp_path, "plain", dict(ALL_OFF.model_dump()))
    before = [p.detach().clone() for p in fast.discriminator.parameters()]
    torch.manual_seed(1)  # both draw latents and penalty weights from the global generator
    a = fast.train_step()
    torch.manual_seed(1)
    b = plain.train_step()
    for key in ("loss_d", "gp", "loss_g"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    # Adam's first steps move each weight by about lr * sign(gradient): same direction everywhere
    # the gradient is not ~0, so the two updates are nearly parallel.
    delta_fast = torch.cat([(p - q).flatten() for p, q in zip(fast.discriminator.parameters(), before, strict=True)])
    delta_plain = torch.cat([(p - q).flatten() for p, q in zip(plain.discriminator.parameters(), before, strict=True)])
    assert F.cosine_similarity(delta_fast, delta_plain, dim=0) > 0.99


def test_bf16_autocast_path_runs_and_keeps_the_penalty_in_float32(tmp_path: Path) -> None:
    """The CUDA AMP path, exercised on the CPU (which has bf16 autocast too)."""
    trainer = _trainer(tmp_path, "amp", {})
    trainer.autocast = trainer.services.autocast = torch.bfloat16
    dtypes: list[torch.dtype] = []
    hook = trainer.discriminator.features[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    values = trainer.train_step()
    hook.remove()
    assert all(np.isfinite(v) for v in values.values())
    assert torch.bfloat16 in dtypes  # the networks' passes ran in bf16 ...
    assert torch.float32 in dtypes  # ... and the penalty's pass in float32


def test_autocast_is_never_chosen_on_the_cpu() -> None:
    assert perf.autocast_dtype(PerfConfig(amp="bf16"), torch.device("cpu")) is None
    assert perf.autocast_dtype(PerfConfig(amp="off"), torch.device("cuda")) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_allocator_tuning_applies_on_glibc_and_is_idempotent() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert perf.tune_allocator() is True
    assert perf.tune_allocator() is True
