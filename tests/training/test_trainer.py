import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import assert_same_weights, tiny_config, tiny_data
from volgan import checkpoint as ckpt
from volgan import loop
from volgan.data.stream import BatchStream
from volgan.errors import CheckpointError, ConfigError, VolganError
from volgan.run_setup import start_trainer
from volgan.training import Trainer, TrainingDiverged


def assert_resumes_exactly(tmp_path: Path, train: dict[str, Any], stop_after: int) -> Trainer:
    """A run of ``train`` straight through equals one stopped after ``stop_after`` steps and
    resumed, bit for bit on the CPU; returns the straight run."""
    data = tiny_data()
    straight = Trainer(tiny_config(tmp_path / "straight", train=train), data)
    straight.fit()
    Trainer(tiny_config(tmp_path / "split", train=train), data).fit(stop_after=stop_after)
    resumed = Trainer(tiny_config(tmp_path / "split", train=train), data, resume=tmp_path / "split")
    resumed.fit()
    assert_same_weights(straight, resumed)
    return straight


def test_batch_stream_covers_each_epoch_once_and_resumes() -> None:
    s = BatchStream(7, 3, seed=5)
    first = np.concatenate([s.next() for _ in range(7)])  # 21 indices = 3 epochs
    for e in range(3):
        assert sorted(first[7 * e : 7 * e + 7]) == list(range(7))
    s2 = BatchStream(7, 3, seed=5)
    for _ in range(3):
        s2.next()
    resumed = BatchStream(7, 3, seed=5, **s2.state())
    assert np.array_equal(np.concatenate([resumed.next() for _ in range(4)]), first[9:])


def test_same_seed_same_weights(tmp_path: Path) -> None:
    data = tiny_data()
    a = Trainer(tiny_config(tmp_path / "a"), data)
    a.fit()
    b = Trainer(tiny_config(tmp_path / "b"), data)
    b.fit()
    assert_same_weights(a, b)
    c = Trainer(tiny_config(tmp_path / "c", seed=1), data)
    c.fit()
    assert not torch.equal(a.generator.to_volume.weight, c.generator.to_volume.weight)


def test_resume_is_exact(tmp_path: Path) -> None:
    """4 steps straight == 2 steps + resume + 2 steps, bit for bit on the CPU."""
    data = tiny_data()
    straight = Trainer(tiny_config(tmp_path / "straight"), data)
    straight.fit()
    first = Trainer(tiny_config(tmp_path / "split"), data)
    first.fit(stop_after=2)
    assert first.step == 2
    second = Trainer(tiny_config(tmp_path / "split"), data, resume=tmp_path / "split")
    assert second.step == 2
    second.fit()
    assert second.step == 4
    assert_same_weights(straight, second)
    for a, b in zip(
        straight.opt_d.state_dict()["state"].values(),
        second.opt_d.state_dict()["state"].values(),
        strict=True,
    ):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_run_folder_outputs(tmp_path: Path) -> None:
    result = Trainer(tiny_config(tmp_path / "run"), tiny_data()).fit()
    run = result.run_dir
    assert (run / "config.yaml").exists() and (run / "class_to_idx.json").exists()
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000002.pt", "step_00000004.pt"]
    lines = (run / "stats.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"loss_d"' in lines[0] and '"sec_per_step"' in lines[0]
    assert any((run / "tensorboard").iterdir())
    assert (run / "figures" / "samples.png").stat().st_size > 1000
    assert (run / "figures" / "losses.png").stat().st_size > 1000
    state = ckpt.load_checkpoint(result.checkpoint)
    assert state["class_names"] == ["c0", "c1"] and state["step"] == 4


def test_refuses_to_overwrite_a_run_without_resume(tmp_path: Path) -> None:
    Trainer(tiny_config(tmp_path / "run"), tiny_data()).fit()
    with pytest.raises(VolganError, match="already holds checkpoints; pass --resume"):
        Trainer(tiny_config(tmp_path / "run"), tiny_data())


def test_resume_with_another_architecture_is_refused(tmp_path: Path) -> None:
    Trainer(tiny_config(tmp_path / "run"), tiny_data()).fit()
    other = tiny_config(tmp_path / "run", model={"latent_dim": 8, "embed_dim": 4, "ngf": 8, "ndf": 4})
    with pytest.raises(CheckpointError, match=r"checkpoint of another config: model\.ngf is 4 there, 8 here"):
        Trainer(other, tiny_data(), resume=tmp_path / "run")


def test_nan_loss_stops_with_step_and_last_good_checkpoint(tmp_path: Path) -> None:
    data = tiny_data()
    trainer = Trainer(tiny_config(tmp_path / "run"), data)
    trainer.fit(stop_after=2)
    good = trainer.last_checkpoint
    before = good.read_bytes()
    with torch.no_grad():
        trainer.discriminator.head.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=rf"step 3: critic loss is nan .*last good checkpoint: .*{good.name}"):
        trainer.fit()
    assert good.read_bytes() == before
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == [good.name]


def test_nan_loss_can_be_skipped(tmp_path: Path) -> None:
    trainer = Trainer(
        tiny_config(
            tmp_path / "run", train={"steps": 2, "batch_size": 3, "wgan_gp": {"n_critic": 2}, "on_nonfinite": "skip"}
        ),
        tiny_data(),
    )
    with torch.no_grad():
        trainer.discriminator.head.weight.fill_(float("nan"))
    g_before = trainer.generator.to_volume.weight.clone()
    trainer.train_step()
    assert torch.equal(trainer.generator.to_volume.weight, g_before)  # no update from a NaN loss


def test_sigterm_writes_a_checkpoint_and_stops(tmp_path: Path) -> None:
    trainer = Trainer(
        tiny_config(
            tmp_path / "run",
            train={"steps": 50, "batch_size": 3, "wgan_gp": {"n_critic": 1}},
            log={"checkpoint_every": 1000, "progress_bar": False},
        ),
        tiny_data(),
    )
    original = trainer.train_step

    def step_then_signal() -> dict[str, float]:
        out = original()
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    trainer.train_step = step_then_signal  # type: ignore[method-assign]
    handler_before = signal.getsignal(signal.SIGTERM)
    result = trainer.fit()
    assert result.interrupted and result.step == 3
    assert ckpt.load_checkpoint(result.checkpoint)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == handler_before  # our handler is removed again


def test_single_class_data_trains_an_unconditional_model(tmp_path: Path) -> None:
    from volgan.sampling import generate, load_generator, write_samples

    trainer = Trainer(
        tiny_config(tmp_path / "run", train={"steps": 1, "batch_size": 2, "wgan_gp": {"n_critic": 1}}),
        tiny_data(classes=1),
    )
    assert trainer.num_classes == 0
    assert trainer.generator.embed is None and trainer.discriminator.embed is None
    trainer.fit()
    loaded = load_generator(tmp_path / "run")
    vols = generate(loaded.generator, torch.zeros(2, dtype=torch.long), seed=0).numpy()
    paths = write_samples(loaded, vols, [0, 0], [0, 1], 0, tmp_path / "out", "npy")
    assert [p.name for p in paths] == ["all_seed0_00000.npy", "all_seed0_00001.npy"]


def test_a_checkpoint_from_before_the_mapping_network_resumes_and_a_styled_config_is_refused(tmp_path: Path) -> None:
    """Checkpoints written before ``model.mapping_layers`` existed hold the seed design (0 layers)."""
    run = tmp_path / "run"
    Trainer(tiny_config(run, train={"steps": 2}), tiny_data()).fit()
    newest = ckpt.newest_checkpoint(run)
    assert newest is not None
    state = torch.load(newest, weights_only=True)
    del state["config"]["model"]["mapping_layers"]
    torch.save(state, newest)
    resumed = Trainer(tiny_config(run, train={"steps": 3}), tiny_data(), resume=run)
    assert resumed.step == 2
    with pytest.raises(CheckpointError, match=r"model\.mapping_layers is 0 there, 2 here"):
        Trainer(tiny_config(run, model={"mapping_layers": 2}, train={"steps": 3}), tiny_data(), resume=run)


def test_a_run_stopped_by_its_time_budget_logs_its_last_step(tmp_path: Path) -> None:
    """The budget ends the run before its first regular log step; the stop is still logged and plotted."""
    run = tmp_path / "run"
    cfg = tiny_config(run, train={"steps": 50, "max_minutes": 1e-6}, log={"every": 10, "checkpoint_every": 100})
    result = Trainer(cfg, tiny_data()).fit()
    assert result.step == 1 and not result.interrupted
    records = [line for line in (run / "stats.jsonl").read_text().splitlines() if line.strip()]
    assert len(records) == 1 and '"step": 1' in records[0]
    assert (run / "figures" / "losses.png").stat().st_size > 0


def test_mode_seeking_pairs_classes_and_trains(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tmp_path / "run", train={"batch_size": 4, "mode_seeking": 1.0}), tiny_data())
    before = [p.clone() for p in trainer.generator.parameters()]
    values = trainer.train_step()
    assert np.isfinite(values["loss_g"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.generator.parameters(), strict=True))
    odd = Trainer(tiny_config(tmp_path / "odd", train={"batch_size": 3, "mode_seeking": 1.0}), tiny_data())
    # the last one has no partner
    assert torch.equal(odd.services.paired(torch.tensor([1, 0, 0])), torch.tensor([1, 1, 0]))
    assert np.isfinite(odd.train_step()["loss_g"])


def test_mode_seeking_pool_reaches_the_generator_loss(tmp_path: Path) -> None:
    """Same seed and batch, the term's distance voxelwise or on 2³-block means: the critic's steps
    are the same, the generator's loss is not (block means shrink the distance, so the term grows)."""
    losses = {}
    for pool in (1, 2):
        train = {"batch_size": 4, "mode_seeking": 1.0}
        cfg = tiny_config(tmp_path / f"p{pool}", train=train, experimental={"mode_seeking_pool": pool})
        losses[pool] = Trainer(cfg, tiny_data()).train_step()
    assert losses[1]["loss_d"] == pytest.approx(losses[2]["loss_d"], rel=1e-6)
    assert losses[2]["loss_g"] > losses[1]["loss_g"]


def test_mode_seeking_end_moves_the_weight_along_the_run_and_into_the_generator_loss(tmp_path: Path) -> None:
    """train.steps 4, weight 1 -> 0: 1, 0.75, 0.5, ... by step. Against the constant weight the
    first step is the same and the second step's critic too (same generator so far); its generator
    loss is not (the term enters at 0.75, not 1)."""
    runs = {}
    for end in (None, 0.0):
        train = {"batch_size": 4, "steps": 4, "mode_seeking": 1.0, "mode_seeking_end": end}
        trainer = Trainer(tiny_config(tmp_path / f"e{end}", train=train), tiny_data())
        weights, losses = [], []
        for _ in range(2):
            weights.append(trainer.next_plan().mode_seeking)
            losses.append(trainer.train_step())
        runs[end] = weights, losses
    assert runs[None][0] == [1.0, 1.0]
    assert runs[0.0][0] == [1.0, pytest.approx(0.75)]
    (_, constant), (_, falling) = runs[None], runs[0.0]
    assert constant[0] == pytest.approx(falling[0], rel=1e-6)
    assert constant[1]["loss_d"] == pytest.approx(falling[1]["loss_d"], rel=1e-6)
    assert constant[1]["loss_g"] != pytest.approx(falling[1]["loss_g"], rel=1e-6)
    with pytest.raises(ConfigError, match=r"train\.mode_seeking_end: needs train\.mode_seeking > 0"):
        tiny_config(tmp_path / "off", train={"mode_seeking": 0.0, "mode_seeking_end": 0.5})


def test_wgan_gp_trains_with_the_critic_minibatch_stddev(tmp_path: Path) -> None:
    trainer = Trainer(
        tiny_config(tmp_path / "run", model={"minibatch_std": True}, train={"batch_size": 4}), tiny_data()
    )
    assert trainer.discriminator.minibatch_std_group == 4
    values = trainer.train_step()
    assert np.isfinite(values["loss_d"]) and np.isfinite(values["gp"])
    with pytest.raises(VolganError, match=r"model\.minibatch_std compares .* leaves 1"):
        Trainer(tiny_config(tmp_path / "one", model={"minibatch_std": True}, train={"batch_size": 1}), tiny_data())


def test_wgan_gp_defaults_to_mode_seeking_and_an_older_checkpoint_resumes_without_it(tmp_path: Path) -> None:
    from volgan.checkpoint import config_from_checkpoint

    run = tmp_path / "run"
    cfg = tiny_config(run, train={"steps": 2})
    assert cfg.train.mode_seeking == 1.0  # the family default (README, "Diversity within a class")
    Trainer(cfg, tiny_data()).fit()
    newest = ckpt.newest_checkpoint(run)
    assert newest is not None
    state = torch.load(newest, weights_only=True)
    assert config_from_checkpoint(state, newest).train.mode_seeking == 1.0
    del state["config"]["train"]["mode_seeking"]
    assert config_from_checkpoint(state, newest).train.mode_seeking == 0.0
    state["config"]["train"]["wgan_gp"]["gp_every"] = 2
    assert config_from_checkpoint(state, newest).train.wgan_gp.gp_every == 2
    # a checkpoint from before the family sections holds train.n_critic, train.gp_every, ... flat
    state["config"]["train"] |= state["config"]["train"].pop("wgan_gp")
    assert config_from_checkpoint(state, newest).train.wgan_gp.gp_every == 2
    del state["config"]["train"]["gp_every"]  # a run from before lazy regularisation: every step
    assert config_from_checkpoint(state, newest).train.wgan_gp.gp_every == 1


def test_lazy_penalty_runs_on_every_kth_critic_step_weighted_k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from volgan import updates

    calls: list[int] = []
    real_penalty = updates.gradient_penalty

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(trainer.step)
        return real_penalty(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(updates, "gradient_penalty", counted)
    trainer = Trainer(tiny_config(tmp_path / "lazy", train={"wgan_gp": {"n_critic": 3, "gp_every": 2}}), tiny_data())
    for _ in range(4):
        assert np.isfinite(trainer.train_step()["gp"])
    # critic steps 0..11 of the run; the penalty on 0, 2, 4, 6, 8, 10 -> generator steps 0, 0, 1, 2, 2, 3
    assert calls == [0, 0, 1, 2, 2, 3]
    with pytest.raises(VolganError, match=r"train\.wgan_gp\.gp_every: 4 is more than train\.wgan_gp\.n_critic \(3\)"):
        tiny_config(tmp_path / "bad", train={"wgan_gp": {"n_critic": 3, "gp_every": 4}})
    # the default (null): once per generator step, on its first critic step
    calls.clear()
    trainer = Trainer(tiny_config(tmp_path / "default", train={"wgan_gp": {"n_critic": 3}}), tiny_data())
    assert trainer.cfg.train.wgan_gp.gp_every is None
    for _ in range(3):
        trainer.train_step()
    assert calls == [0, 1, 2]


def test_lazy_penalty_is_weighted_k_and_resumes_on_schedule(tmp_path: Path) -> None:
    """The first critic step with gp_every=2 takes 2·λ·GP: the same update as one with gp_weight=2·λ;
    a run stopped mid-schedule (3 critic steps per generator step) resumes exactly."""
    data = tiny_data()

    def first_critic_update(name: str, train: dict[str, Any]) -> list[torch.Tensor]:
        tr = Trainer(tiny_config(tmp_path / name, train=train), data)
        snapshots: list[list[torch.Tensor]] = []
        step = tr.opt_d.step

        def recorded(*args: object, **kwargs: object) -> object:
            out = step(*args, **kwargs)
            snapshots.append([p.detach().clone() for p in tr.discriminator.parameters()])
            return out

        tr.opt_d.step = recorded  # type: ignore[method-assign]
        tr.train_step()
        return snapshots[0]

    lazy = first_critic_update("lazy", {"wgan_gp": {"n_critic": 2, "gp_every": 2}})
    heavy = first_critic_update("heavy", {"wgan_gp": {"n_critic": 1, "gp_weight": 20.0}})
    plain = first_critic_update("plain", {"wgan_gp": {"n_critic": 1}})
    for a, b in zip(lazy, heavy, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # same terms, another summation order
    assert any(not torch.allclose(a, b) for a, b in zip(lazy, plain, strict=True))

    assert_resumes_exactly(tmp_path, {"wgan_gp": {"n_critic": 3, "gp_every": 2}, "steps": 3}, stop_after=1)


def test_linear_lr_decay_follows_the_step_and_resumes_exactly(tmp_path: Path) -> None:
    """train.lr_decay linear: the rates of step k are base·(1 − k/steps), on both optimisers; a run
    stopped half way resumes bit for bit; "none" keeps the rates."""
    data = tiny_data()
    train = {"lr_decay": "linear", "steps": 4, "lr_g": 2e-4, "lr_d": 4e-4}
    tr = Trainer(tiny_config(tmp_path / "rates", train=train), data)
    seen = []
    for _ in range(4):
        tr.train_step()
        seen += [tr.opt_g.param_groups[0]["lr"], tr.opt_d.param_groups[0]["lr"]]
    assert seen == pytest.approx([r * s for s in (1.0, 0.75, 0.5, 0.25) for r in (2e-4, 4e-4)], rel=1e-12)
    plain = Trainer(tiny_config(tmp_path / "plain", train={**train, "lr_decay": "none"}), data)
    plain.fit()  # the same 4 steps at constant rates
    assert plain.opt_g.param_groups[0]["lr"] == 2e-4

    straight = assert_resumes_exactly(tmp_path, train, stop_after=2)
    assert not torch.equal(straight.generator.to_volume.weight, plain.generator.to_volume.weight)


class OneSecondPerReading:
    """A clock for Trainer.clock: each reading is one second after the last."""

    def __init__(self) -> None:
        self.now = -1.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_budget_minutes_ends_the_run_and_its_lr_decay_over_resumes(tmp_path: Path) -> None:
    """train.budget_minutes: the run stops when it has trained that long over all its fit() calls,
    and with lr_decay linear its rates fall to 0 there (the trained seconds are in each checkpoint,
    so a stopped run resumes on the same schedule); a run whose budget is spent trains no step."""
    data = tiny_data()
    train = {"lr_decay": "linear", "steps": 100, "budget_minutes": 4 / 60, "lr_g": 2e-4}

    def trainer(name: str, **kw: Any) -> Trainer:
        log = {"image_every": 1000, "checkpoint_every": 1000}  # no preview or checkpoint reads the clock
        tr = Trainer(tiny_config(tmp_path / name, train=train, log=log), data, **kw)
        tr.clock = OneSecondPerReading()  # read once as fit() starts, then once after each step
        return tr

    straight, seen = trainer("straight"), []
    step = straight.train_step

    def recording_step() -> dict[str, float]:
        values = step()
        seen.append(straight.opt_g.param_groups[0]["lr"])
        return values

    straight.train_step = recording_step  # type: ignore[method-assign]
    result = straight.fit()
    assert result.step == 4 and not result.interrupted  # 4 s trained of a 4 s budget, long before step 100
    assert seen == pytest.approx([2e-4 * s for s in (1.0, 0.75, 0.5, 0.25)], rel=1e-12)
    assert ckpt.load_checkpoint(result.checkpoint)["trained_seconds"] == 4.0

    trainer("split").fit(stop_after=2)
    resumed = trainer("split", resume=tmp_path / "split")
    assert resumed.trained_seconds == 2.0
    assert resumed.fit().step == 4
    assert_same_weights(straight, resumed)
    spent = trainer("split", resume=tmp_path / "split")
    assert spent.fit().step == 4


def test_the_budget_keeps_room_for_the_runs_end(tmp_path: Path) -> None:
    """The end of a budgeted run writes a checkpoint and figures: the loop stops once the trained
    seconds plus END_WORK x (the last preview's + checkpoint's seconds) reach the budget."""
    log = {"image_every": 3, "checkpoint_every": 3}
    tr = Trainer(tiny_config(tmp_path / "run", train={"budget_minutes": 10 / 60, "steps": 100}, log=log), tiny_data())
    tr.clock = OneSecondPerReading()  # fit's start 0; steps 1-3 at 1-3 s; preview 4-5, save 6-7: 1 s each
    result = tr.fit()
    # step 4 ends at 8 s; 8 + 2.0 x (1 + 1) >= 10: stop (without the room it would train to step 6)
    assert loop.END_WORK == 2.0 and result.step == 4 and tr.trained_seconds == 8.0


def test_the_budget_counts_the_commands_set_up(tmp_path: Path) -> None:
    """A new run with a budget starts with the seconds since the command started (planning, reading
    the data) as trained; a run without a budget, or a resumed one, starts as before."""
    data = tiny_data()
    started = time.perf_counter() - 30.0
    budgeted = tiny_config(tmp_path / "budget", train={"budget_minutes": 2.0})
    trainer = start_trainer(budgeted, data, started=started)
    assert 30.0 <= trainer.trained_seconds < 60.0
    assert start_trainer(tiny_config(tmp_path / "plain"), data, started=started).trained_seconds == 0.0
    short = tiny_config(tmp_path / "short", train={"budget_minutes": 0.5})  # set-up longer than the budget
    assert start_trainer(short, data, started=started).trained_seconds == 15.0
    trainer.save()
    resumed = start_trainer(budgeted, data, resume=tmp_path / "budget", started=time.perf_counter() - 600)
    assert resumed.trained_seconds == trainer.trained_seconds  # from the checkpoint, nothing added
