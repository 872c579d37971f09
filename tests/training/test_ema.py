"""The generator EMA: its formula and warm-up against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from volgan.ema import EMA


class _One(nn.Module):
    """One weight and one buffer: enough to follow the average by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(1))


def test_warm_up_decay_follows_the_formula_by_hand() -> None:
    live = _One()
    ema = EMA(live, decay=0.999)
    expected = []
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            live.w.fill_(value)
            live.count += 1
        ema.update(live)
        expected.append(ema.module.w.item())
    # update k uses decay min(0.999, (1 + k) / (10 + k)): 2/11, 3/12, 4/13
    # 1: 2/11·0 + 9/11·1 = 0.818181…; 2: 3/12·0.818181… + 9/12·2 = 1.704545…; 3: 4/13·1.704545… + 9/13·3
    assert expected == pytest.approx([9 / 11, 0.25 * 9 / 11 + 1.5, 4 / 13 * (0.25 * 9 / 11 + 1.5) + 27 / 13], rel=1e-12)
    assert ema.module.count.item() == 3.0  # buffers are copied, not averaged
    assert live.w.item() == 3.0  # the live weights are untouched


def test_decay_is_capped_once_the_warm_up_passes_it() -> None:
    live = _One()
    ema = EMA(live, decay=0.5)
    for _ in range(8):  # (1 + k) / (10 + k) stays below 0.5 up to k = 8
        ema.update(live)
    with torch.no_grad():
        ema.module.w.fill_(4.0)
        live.w.fill_(2.0)
    ema.update(live)  # k = 9: 10/19 > 0.5, so the cap 0.5 applies
    assert ema.module.w.item() == pytest.approx(0.5 * 4.0 + 0.5 * 2.0, rel=1e-12)
    ema.update(live)
    assert ema.module.w.item() == pytest.approx(0.5 * 3.0 + 0.5 * 2.0, rel=1e-12)


def test_averaged_module_is_a_frozen_copy() -> None:
    live = _One()
    ema = EMA(live, decay=0.9)
    assert ema.module is not live and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_warmup_sets_the_horizon_and_a_bad_one_is_refused() -> None:
    live = _One()
    ema = EMA(live, decay=0.999, warmup=4.0)
    with torch.no_grad():
        live.w.fill_(1.0)
    ema.update(live)  # decay (1 + 1) / (4 + 1) = 0.4
    assert ema.module.w.item() == pytest.approx(0.6, rel=1e-12)
    ema.update(live)  # decay 3/6 = 0.5
    assert ema.module.w.item() == pytest.approx(0.5 * 0.6 + 0.5, rel=1e-12)
    with pytest.raises(ValueError, match="warmup must be > 1"):
        EMA(live, decay=0.9, warmup=1.0)
