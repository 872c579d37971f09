"""Progressive growing (experimental.grow_from): schedule, the fade's continuity, training, resume, sampling."""

from pathlib import Path

import pytest
import torch

from conftest import assert_same_weights, tiny_config, tiny_data
from volgan.config import build_config
from volgan.errors import ConfigError
from volgan.growth import GrowthSchedule, downsample, real_at_level, upsample
from volgan.models.wgan_gp import Critic, Generator
from volgan.training import Trainer

GROW = {"experimental": {"grow_from": 8, "grow_steps": 3, "grow_fade": 2}, "train": {"steps": 6}}


def test_schedule_levels_and_fade() -> None:
    s = GrowthSchedule.from_config(64, 16, [10, 20], fade=5)
    assert s.levels == 2
    assert [s.at(i) for i in (0, 9)] == [(2, 1.0), (2, 1.0)]
    assert [s.at(i) for i in (10, 11, 14, 15, 29)] == [(1, 0.2), (1, 0.4), (1, 1.0), (1, 1.0), (1, 1.0)]
    assert [s.at(i) for i in (30, 34, 10_000)] == [(0, 0.2), (0, 1.0), (0, 1.0)]
    assert [s.phase(i) for i in (9, 10, 29, 30)] == [0, 1, 1, 2]
    assert GrowthSchedule.from_config(64, 16, 7, fade=0).at(7) == (1, 1.0)  # one number: each level


def small_pair(**kw: int) -> tuple[Generator, Critic]:
    torch.manual_seed(0)
    g = Generator(32, latent_dim=8, num_classes=2, ngf=4, embed_dim=4, grow_from=8, **kw)
    d = Critic(32, num_classes=2, ndf=4, grow_from=8)
    return g.eval(), d.eval()


def test_each_level_has_its_grid_and_full_size_samples() -> None:
    g, d = small_pair()
    z, y = torch.randn(2, 8), torch.tensor([0, 1])
    for level, grid in ((2, 8), (1, 16), (0, 32)):
        g.set_growth(level)
        d.set_growth(level)
        native = g(z, y, native=True)
        assert native.shape == (2, 1, grid, grid, grid)
        torch.testing.assert_close(g(z, y), upsample(native, 32 // grid))  # what sampling gets
        assert d(native, y).shape == (2,)
    # the coarsest level cannot fade in from below; alpha outside 0..1 is refused
    with pytest.raises(ValueError):
        g.set_growth(2, 0.5)
    with pytest.raises(ValueError):
        g.set_growth(1, 1.5)


def test_a_new_level_starts_where_the_coarser_one_ended() -> None:
    """alpha = 0: the generator's volume is the coarser level's, upsampled, and the critic scores a
    volume as the coarser level scores its pooled version; alpha = 1: the new path alone."""
    g, d = small_pair()
    z, y = torch.randn(3, 8), torch.tensor([0, 1, 1])
    x = torch.randn(3, 1, 16, 16, 16)
    g.set_growth(2)
    d.set_growth(2)
    coarse, coarse_score = g(z, y, native=True), d(downsample(x, 2), y)
    g.set_growth(1, 0.0)
    d.set_growth(1, 0.0)
    torch.testing.assert_close(g(z, y, native=True), upsample(coarse, 2))
    torch.testing.assert_close(d(x, y), coarse_score)
    g.set_growth(1, 0.5)
    half = g(z, y, native=True)
    g.set_growth(1, 1.0)
    torch.testing.assert_close(half, (upsample(coarse, 2) + g(z, y, native=True)) / 2, rtol=1e-5, atol=1e-6)
    # the real batch follows the same blend
    full = torch.randn(3, 1, 32, 32, 32)
    torch.testing.assert_close(real_at_level(full, 1, 0.0), upsample(downsample(full, 4), 2))
    torch.testing.assert_close(real_at_level(full, 1, 1.0), downsample(full, 2))


def grow_config(run_dir: Path, **sections: dict) -> object:
    merged = {k: {**GROW.get(k, {}), **sections.get(k, {})} for k in {*GROW, *sections}}
    return tiny_config(run_dir, data={"size": 32}, **merged)


def test_training_grows_through_every_level_and_restarts_the_ema(tmp_path: Path) -> None:
    trainer = Trainer(grow_config(tmp_path / "run"), tiny_data(size=32))
    seen = []
    for _ in range(7):
        trainer.train_step()
        seen.append((trainer.generator.growth(), trainer.ema.updates))
    # 3 steps at 8³, 3 at 16³ (2 fading in), then 32³ fading in; the EMA restarts at each new grid
    assert [lvl for lvl, _ in seen] == [(2, 1.0)] * 3 + [(1, 0.5), (1, 1.0), (1, 1.0), (0, 0.5)]
    assert [u for _, u in seen] == [1, 2, 3, 1, 2, 3, 1]
    assert trainer.ema.module.growth() == (0, 0.5)  # the EMA copy carries the level


def test_resume_across_a_new_level_is_exact(tmp_path: Path) -> None:
    data = tiny_data(size=32)
    straight = Trainer(grow_config(tmp_path / "straight"), data)
    straight.fit()
    first = Trainer(grow_config(tmp_path / "split"), data)
    first.fit(stop_after=2)
    second = Trainer(grow_config(tmp_path / "split"), data, resume=tmp_path / "split")
    second.fit()
    assert second.step == straight.step == 6
    assert_same_weights(straight, second)
    assert second.ema.updates == straight.ema.updates == 3


def test_checkpoint_of_a_growing_run_samples_full_size_volumes(tmp_path: Path) -> None:
    import volgan

    cfg = grow_config(tmp_path / "run", train={"steps": 4})  # stops at 16³, fading in
    Trainer(cfg, tiny_data(size=32)).fit()
    g = volgan.load(tmp_path / "run")
    vols = g.sample(n=3, cls="c1", seed=0)
    assert vols.shape == (3, 1, 32, 32, 32)
    again = volgan.load(tmp_path / "run").sample(n=3, cls="c1", seed=0)
    assert torch.equal(vols, again)


def test_layers_of_unused_levels_get_no_gradient(tmp_path: Path) -> None:
    trainer = Trainer(grow_config(tmp_path / "run"), tiny_data(size=32))
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    for _ in range(3):  # 8³ only
        trainer.train_step()
    after = trainer.generator.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "grow_heads.1.weight" in changed  # the 8³ output layer trains
    assert not any(k.startswith(("to_volume", "stages.1", "grow_heads.0")) for k in changed)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"experimental": {"grow_from": 12}}, "experimental.grow_from"),
        ({"experimental": {"grow_from": 32}}, "experimental.grow_from"),
        ({"experimental": {"grow_from": 8, "grow_steps": [5]}}, "experimental.grow_steps"),
        ({"experimental": {"grow_from": 8}, "model": {"family": "dcgan"}}, "wgan_gp"),
        ({"experimental": {"grow_steps": 0}}, "grow_steps"),
    ],
)
def test_bad_growth_settings_name_the_key(override: dict, words: str) -> None:
    base = {"data": {"size": 32}, **override}
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        build_config(base, "<test>")
