"""Critic-step throughput of volgan's WGAN-GP next to the seed-design yardstick, measured in one run.

    python benchmarks/train_step.py --size 64 --batch 4 --rounds 3

Both run the same schedule (a generator step after every ``n_critic`` critic steps, counted as
part of the critic step that triggers it), same widths, size, batch and number of classes.
Rounds alternate A B A B …; the table shows medians and the ratio volgan / yardstick.
The yardstick is ``../shared/bench/naive_cwgan.py`` (``--yardstick PATH`` to point elsewhere).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from volgan.config import build_config
from volgan.data.volume_set import VolumeSet
from volgan.training import Trainer

DEFAULT_YARDSTICK = Path(__file__).resolve().parents[2] / "shared" / "bench" / "naive_cwgan.py"


def load_yardstick(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("naive_cwgan", path)
    if spec is None or spec.loader is None or not path.exists():
        sys.exit(f"yardstick not found: {path} (pass --yardstick)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def volgan_trainer(size: int, batch: int, classes: int, n_critic: int, run_dir: Path) -> Trainer:
    import numpy as np

    n = max(batch * 2, classes)
    vols = np.random.default_rng(0).uniform(-1, 1, (n, size, size, size)).astype(np.float32)
    data = VolumeSet.from_arrays(vols, np.arange(n) % classes, [str(i) for i in range(classes)])
    cfg = build_config(
        {
            "device": "cpu",
            "run_dir": str(run_dir),
            "data": {"size": size},
            "train": {"batch_size": batch, "n_critic": n_critic},
            "log": {"progress_bar": False},
        },
        "<benchmark>",
    )
    return Trainer(cfg, data)


def time_rounds(fn: Any, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--n-critic", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternating A/B rounds")
    ap.add_argument("--yardstick", type=Path, default=DEFAULT_YARDSTICK)
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/volgan-bench"))
    a = ap.parse_args()

    naive = load_yardstick(a.yardstick)
    g, d, og, od, real, y = naive.make(a.size, a.batch, a.classes)
    counter = {"i": 0}

    def yardstick_critic_step() -> None:
        naive.critic_step(counter["i"], g, d, og, od, real, y, a.n_critic)
        counter["i"] += 1

    trainer = volgan_trainer(a.size, a.batch, a.classes, a.n_critic, a.run_dir)

    def volgan_generator_step() -> None:  # n_critic critic steps + 1 generator step
        trainer.train_step()

    yardstick_critic_step()  # warm-up both
    volgan_generator_step()
    ours, theirs = [], []
    for _ in range(a.rounds):
        theirs.append(time_rounds(yardstick_critic_step, a.n_critic))
        ours.append(time_rounds(volgan_generator_step, 1) / a.n_critic)
    t_ours, t_theirs = statistics.median(ours), statistics.median(theirs)
    print(
        f"critic step, {a.size}³, batch {a.batch}, {a.classes} classes, n_critic {a.n_critic}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'':<10}{'s/critic step':>15}{'volumes/s':>12}")
    print(f"{'yardstick':<10}{t_theirs:>15.3f}{a.batch / t_theirs:>12.2f}")
    print(f"{'volgan':<10}{t_ours:>15.3f}{a.batch / t_ours:>12.2f}")
    print(f"ratio volgan/yardstick throughput: {t_theirs / t_ours:.2f}x (median of {a.rounds} alternating rounds)")


if __name__ == "__main__":
    main()
