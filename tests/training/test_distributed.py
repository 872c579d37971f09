"""Multi-process training (torchrun + DistributedDataParallel, Gloo on the CPU) computes what one
process computes, resumes across world sizes, samples the same files, and fails loudly, not silently."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_class_folders
from volgan import distributed
from volgan.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "training" / "dist_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = [
    "--preset", "seed-design",  # torchrun trains a given recipe (a plan is timed per process)
    "--set", "data.size=16", "--set", "model.ngf=4", "--set", "model.ndf=4", "--set", "model.latent_dim=8",
    "--set", "model.embed_dim=4", "--set", "train.batch_size=4", "--set", "train.wgan_gp.n_critic=2",
    "--set", "log.checkpoint_every=1", "--set", "log.every=1", "--set", "log.image_every=1000",
    "--set", "log.progress_bar=false", "--device", "cpu",
]  # fmt: skip


def launch(*args: str, procs: int = 2, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node procs ARGS`` (procs=1: plain python, no torchrun)."""
    head = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd = [*head, *([] if procs == 1 else ["--nproc-per-node", str(procs)]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def volgan(*args: str, procs: int = 2) -> subprocess.CompletedProcess[str]:
    # `--` keeps torchrun's own option parser away from volgan's options (`--n` would be ambiguous)
    proc = launch("-m", "volgan", "--", *args, procs=procs) if procs > 1 else launch("-m", "volgan", *args, procs=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_worker(tmp_path: Path, name: str, *args: str, procs: int) -> dict:
    out = tmp_path / f"{name}.pt"
    proc = launch(str(WORKER), "--out", str(out), "--run-dir", str(tmp_path / f"run-{name}"), *args, procs=procs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def assert_same(one: dict, many: dict, rtol: float, atol: float) -> None:
    for net in ("generator", "discriminator"):
        for kind in ("params", "grads"):
            assert one[net][kind].keys() == many[net][kind].keys()
            assert one[net][kind], f"no {kind} for the {net}"
            for key, value in one[net][kind].items():
                if kind == "params":
                    # Adam divides each gradient by its own running scale, so a weight whose gradient
                    # is ~0 moves by up to a learning rate either way on float32 rounding: weights get
                    # 1e-5 absolute (under 1 % of one DCGAN step, 2.5e-3).
                    tol = {"rtol": rtol, "atol": max(atol, 1e-5)}
                else:
                    # A gradient entry is a sum over the batch; its rounding error scales with the
                    # summands, not with the sum, so an entry that nearly cancels (seen: the critic's
                    # projection embedding on an AVX2 CPU) keeps an absolute error of the size of the
                    # tensor's large entries times float32 rounding. Hence atol relative to the
                    # tensor's largest entry.
                    tol = {"rtol": rtol, "atol": max(atol, rtol * float(value.abs().max()))}
                torch.testing.assert_close(many[net][kind][key], value, **tol, msg=f"{net} {kind} {key}")


# Tolerance: the two processes sum the same numbers in another order (two half-batch means, then
# their mean), so they agree to float32 rounding, amplified slightly by the double backward.
RTOL, ATOL = 1e-4, 1e-6


@pytest.mark.numerics
def test_wgan_gp_step_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    """Two critic updates (with the gradient penalty's double backward) and one generator update."""
    one = run_worker(tmp_path, "one", "--family", "wgan_gp", procs=1)
    two = run_worker(tmp_path, "two", "--family", "wgan_gp", procs=2)
    assert_same(one, two, RTOL, ATOL)


@pytest.mark.numerics
def test_progressive_growing_on_two_processes_equals_one_process(tmp_path: Path) -> None:
    """A step at 8³ (the 16³ layers unused: DDP must not wait for their gradients), then a step
    while 16³ fades in (both output layers trained)."""
    one = run_worker(tmp_path, "one", "--family", "wgan_gp", "--grow", "--steps", "2", procs=1)
    two = run_worker(tmp_path, "two", "--family", "wgan_gp", "--grow", "--steps", "2", procs=2)
    assert {"grow_heads.0.weight", "to_volume.weight"} <= one["generator"]["grads"].keys()
    assert_same(one, two, RTOL, ATOL)


@pytest.mark.numerics
def test_dcgan_steps_with_sync_batchnorm_equal_one_process_and_differ_without(tmp_path: Path) -> None:
    """Two DCGAN steps (AC head, instance noise, noisy labels) with BatchNorm in both networks."""
    one = run_worker(tmp_path, "one", "--family", "dcgan", "--steps", "2", procs=1)
    two = run_worker(tmp_path, "two", "--family", "dcgan", "--steps", "2", procs=2)
    assert_same(one, two, RTOL, ATOL)
    unsynced = run_worker(tmp_path, "unsynced", "--family", "dcgan", "--steps", "2", "--no-sync-bn", procs=2)
    with pytest.raises(AssertionError):  # per-process statistics are a different computation
        assert_same(one, unsynced, RTOL, ATOL)


@pytest.mark.numerics
@pytest.mark.parametrize("family", ["wgan_gp", "dcgan"])
def test_augmented_steps_on_two_processes_equal_one_process(tmp_path: Path, family: str) -> None:
    """Augmentation parameters are drawn for the global batch, and p adapts from all ranks' signal."""
    args = ("--family", family, "--steps", "2", "--augment")
    one = run_worker(tmp_path, "one", *args, procs=1)
    two = run_worker(tmp_path, "two", *args, procs=2)
    assert_same(one, two, RTOL, ATOL)


@pytest.mark.parametrize("fault", ["exit", "hang"])
def test_a_rank_that_leaves_or_hangs_ends_the_job_with_a_message(tmp_path: Path, fault: str) -> None:
    start = time.monotonic()
    proc = launch(str(WORKER), "--family", "wgan_gp", "--out", str(tmp_path / "x.pt"), "--steps", "3",
                  "--fault", fault, "--timeout", "8", timeout=120)  # fmt: skip
    assert proc.returncode != 0
    assert "volgan: error: rank 0 of 2: lost the other processes" in proc.stderr
    assert time.monotonic() - start < 90  # the 8 s collective timeout, not a hang


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    ENV["VOLGAN_CACHE_DIR"] = str(tmp_path / "cache")
    return write_class_folders(tmp_path / "data", n_per_class=4, size=16, classes=2)


def _weights(run: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    state = torch.load(run / "checkpoints" / f"step_{step:08d}.pt", weights_only=True)
    return {k: state[k] for k in ("generator", "discriminator", "ema")}


@pytest.mark.numerics
def test_torchrun_cli_trains_checkpoints_and_samples_the_files_one_process_writes(
    tmp_path: Path, data_dir: Path
) -> None:
    run = tmp_path / "run"
    volgan("train", "--data", str(data_dir), "--run-dir", str(run), "--steps", "2", *TINY)
    assert (run / "checkpoints" / "step_00000002.pt").exists()
    facts = (run / "distributed.json").read_text()
    assert '"world_size": 2' in facts and '"per_process_batch": 2' in facts
    assert "world size 2: global batch 4, 2 per process" in (run / "train.log").read_text()
    config = (run / "config.yaml").read_text()
    assert "# world_size: 2\n" in config and "# per_process_batch: 2\n" in config and "# lr_scaling: none" in config
    many, one = tmp_path / "many", tmp_path / "one"
    # batches of 2: [0, 1] [2, 3] [4] per class, rank 0 takes the first and third, rank 1 the second
    args = ["sample", "--checkpoint", str(run), "--n", "5", "--batch-size", "2", "--format", "npy", "--seed", "7"]
    out = volgan(*args, "--out", str(many)).stdout
    assert "wrote 10 volumes" in out  # 5 per class, counted over both ranks
    volgan(*args, "--out", str(one), procs=1)
    files = sorted(p.relative_to(one) for p in one.rglob("*.npy"))
    assert len(files) == 10 and files == sorted(p.relative_to(many) for p in many.rglob("*.npy"))
    for f in files:  # bit for bit: each batch is computed exactly as in one process
        np.testing.assert_array_equal(np.load(many / f), np.load(one / f))


@pytest.mark.numerics
def test_resume_across_world_sizes_continues_the_same_run(tmp_path: Path, data_dir: Path) -> None:
    straight = tmp_path / "straight"
    volgan("train", "--data", str(data_dir), "--run-dir", str(straight), "--steps", "3", *TINY, procs=1)
    two_then_one, one_then_two = tmp_path / "a", tmp_path / "b"
    volgan("train", "--data", str(data_dir), "--run-dir", str(two_then_one), "--steps", "2", *TINY, procs=2)
    volgan("train", "--data", str(data_dir), "--resume", str(two_then_one), "--steps", "3", procs=1)
    volgan("train", "--data", str(data_dir), "--run-dir", str(one_then_two), "--steps", "2", *TINY, procs=1)
    volgan("train", "--data", str(data_dir), "--resume", str(one_then_two), "--steps", "3", procs=2)
    reference = _weights(straight, 3)
    for run in (two_then_one, one_then_two):
        for part, tensors in _weights(run, 3).items():
            for key, value in tensors.items():
                torch.testing.assert_close(
                    value, reference[part][key], rtol=1e-4, atol=1e-5, msg=f"{run.name} {part}.{key}"
                )


def test_a_time_budget_stops_both_ranks_at_one_step_and_a_spent_run_resumes_to_no_step(
    tmp_path: Path, data_dir: Path
) -> None:
    """train.budget_minutes under torchrun: the ranks share their elapsed time in each step's
    all-reduce, so they stop at the same step (a rank that went on would wait in its next
    collective until dist.timeout_s ends the job with an error) with the rates decayed to ~0."""
    run = tmp_path / "run"
    budget_s = 3.0
    args = ["train", "--data", str(data_dir), "--run-dir", str(run), "--steps", "100000", *TINY]
    limits = ["--set", f"train.budget_minutes={budget_s / 60}", "--set", "train.lr_decay=linear"]
    quiet = ["--set", "log.checkpoint_every=100000", "--set", "dist.timeout_s=30"]
    volgan(*args, *limits, *quiet)
    (last,) = sorted((run / "checkpoints").glob("step_*.pt"))
    state = torch.load(last, weights_only=True)
    steps = state["step"]
    assert 2 <= steps < 100000 and budget_s <= state["trained_seconds"] < budget_s + 10
    log = (run / "train.log").read_text()
    assert f"time budget reached at step {steps} " in log
    # the last step's rate was set before that step's share of the budget was spent, so it is
    # that share of the base rate 1e-4; a step of this 16³ model takes well under 0.1 s of the 3 s
    lr_g = state["opt_g"]["param_groups"][0]["lr"]
    assert 0 <= lr_g <= 1e-4 * 0.5, lr_g
    volgan("train", "--data", str(data_dir), "--resume", str(run), *quiet)
    assert sorted((run / "checkpoints").glob("step_*.pt")) == [last]  # trained nothing, wrote nothing
    assert "time budget already spent" in (run / "train.log").read_text()


def test_env_context_and_batch_split() -> None:
    ctx = distributed.DistContext(rank=1, world_size=4)
    assert ctx.rows(8) == slice(2, 4) and not ctx.is_main and ctx.enabled
    with pytest.raises(ConfigError, match=r"train\.batch_size \(6\) is the global batch .* number of processes \(4\)"):
        ctx.rows(6)
    assert distributed.SINGLE.rows(5) == slice(0, 5) and distributed.SINGLE.is_main


def test_sync_batchnorm_is_plain_batchnorm_in_a_single_process() -> None:
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm3d(3)
    sync = distributed.SyncBatchNorm3d(3)
    sync.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 5, 5, 5)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


def test_ranks_share_each_epoch_without_overlap() -> None:
    """Each volume once per epoch across the ranks, in the epoch-seeded order one process would use."""
    from volgan.data.stream import BatchStream

    n, batch, world = 12, 4, 2
    seen: list[list[int]] = [[] for _ in range(world)]
    for rank in range(world):
        stream = BatchStream(n, batch, seed=3)
        rows = distributed.DistContext(rank, world).rows(batch)
        for _ in range(n // batch):  # one epoch
            seen[rank] += np.sort(stream.next())[rows].tolist()
    assert sorted(seen[0] + seen[1]) == list(range(n))
    assert not set(seen[0]) & set(seen[1])


def test_slurm_example_is_valid_bash_that_launches_torchrun() -> None:
    script = REPO / "scripts" / "slurm_train.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "torchrun" in text and "--rdzv-endpoint" in text and "-m volgan -- train" in text
