"""Each family's step with explicit inputs, no Trainer: networks, optimisers, services, the step's plan."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

from volgan.config import build_config
from volgan.losses import label_targets
from volgan.models import build_models
from volgan.schedule import step_plan
from volgan.updates import DCGANStep, Nets, StepServices, WGANGPStep


def _setup(family: str, **section: Any) -> tuple[Any, Nets, StepServices, list[int]]:
    """A 16³ model of ``family`` and its step's inputs; ``section``: keys of train.<family>."""
    cfg = build_config(
        {
            "data": {"size": 16},
            "model": {"family": family, "latent_dim": 8, "embed_dim": 4, "ngf": 4, "ndf": 4},
            "train": {"batch_size": 4, family: section},
        },
        "<test>",
    )
    torch.manual_seed(0)
    g, d = build_models(cfg, 2)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3)
    d_params = [p for p in d.parameters() if p.requires_grad]
    opt_d = torch.optim.Adam(d_params, lr=1e-3)

    def d_call(method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(d, method)(*args, **kwargs)

    batches: list[int] = []

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        batches.append(1)
        return torch.rand(4, 1, 16, 16, 16) * 2 - 1, torch.tensor([0, 1, 0, 1])

    def update(loss: torch.Tensor) -> None:
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

    services = StepServices(
        batch=batch,
        draw=lambda fn, *shape: fn(4, *shape),
        amp=contextlib.nullcontext,
        augment=lambda x: x,
        paired=lambda y: y,
        targets=lambda real: label_targets(4, real, real_label=0.9, noise=0.0, flip=0.0, device=torch.device("cpu")),
        noisy=lambda x, sigma: x,
        check_finite=lambda what, value: bool(torch.isfinite(value)),
        generator_update=update,
    )
    return cfg, Nets(g, g, d, d_call, d_params, opt_g, opt_d), services, batches


@pytest.mark.parametrize("family", ["wgan_gp", "dcgan"])
def test_a_family_step_trains_both_networks_without_a_trainer(family: str) -> None:
    cfg, nets, services, batches = _setup(family, **({"n_critic": 3} if family == "wgan_gp" else {}))
    g0 = [p.detach().clone() for p in nets.g.parameters()]
    d0 = [p.detach().clone() for p in nets.d_params]
    step = WGANGPStep(cfg) if family == "wgan_gp" else DCGANStep(cfg)
    values = step(nets, services, step_plan(cfg.train, 0, 0.0))
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, nets.g.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d0, nets.d_params, strict=True))
    if family == "wgan_gp":
        assert set(values) == {"loss_d", "loss_g", "gp", "w_dist"} and len(batches) == 3  # one batch a critic step
    else:
        assert {"d_acc", "d_updated"} <= set(values) and len(batches) == 1


def test_the_lazy_penalty_follows_the_plans_step() -> None:
    """gp_every 2 with 3 critic steps: the run's critic steps 0, 2, 4, ... take the penalty, so
    generator step 0 takes two (critic steps 0 and 2) and step 1 one (critic step 4)."""
    cfg, nets, services, _ = _setup("wgan_gp", n_critic=3, gp_every=2)
    alphas: list[int] = []

    def draw(fn: Any, *shape: int) -> torch.Tensor:
        if fn is torch.rand:  # the penalty's interpolation weights: one draw per penalty
            alphas.append(1)
        return fn(4, *shape)

    services.draw = draw
    step = WGANGPStep(cfg)
    counts = []
    for s in range(3):
        alphas.clear()
        step(nets, services, step_plan(cfg.train, s, 0.0))
        counts.append(len(alphas))
    assert counts == [2, 1, 2]
