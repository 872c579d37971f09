"""Critic-step throughput of volgan's WGAN-GP next to the seed-design yardstick, measured in one run.

    python benchmarks/train_step.py --size 64 --batch 4 --rounds 5
    python benchmarks/train_step.py --size 64 --batch 4 --ablation      # each perf.* switch off in turn
    python benchmarks/train_step.py --device cuda --batch 16           # on a GPU (adds MFU)

Every contender runs in its own process and the same schedule: one round is ``n_critic`` critic
steps and the generator step that follows them, same widths (ngf = ndf = 32), size, batch and number
of classes. Rounds alternate A B A B …; the table shows medians, FLOPs counted with
``torch.utils.flop_counter``'s formulas, peak memory (CUDA allocator, else peak RSS of the process)
and the throughput ratio to the yardstick (``../shared/bench/naive_cwgan.py``; ``--yardstick PATH``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from _harness import Contender, add_contender_args, load_yardstick, machine_line, race, start_contenders, table


def yardstick(size: int, batch: int, classes: int, n_critic: int, device: str, path: str) -> Contender:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.set_default_device(dev)  # the yardstick makes its tensors (and the penalty's alpha) there
    naive = load_yardstick(Path(path))
    g, d, og, od, real, y = naive.make(size, batch, classes)
    step = {"i": 0}

    def round_() -> None:
        for _ in range(n_critic):
            naive.critic_step(step["i"], g, d, og, od, real, y, n_critic)
            step["i"] += 1

    return Contender(round_, batch * n_critic, dev)


def volgan(size: int, batch: int, classes: int, n_critic: int, device: str, perf: dict[str, Any]) -> Contender:
    import numpy as np

    from volgan.config import build_config
    from volgan.data.volume_set import VolumeSet
    from volgan.training import Trainer

    dev = torch.device(device)
    n = max(batch * 2, classes)
    vols = np.random.default_rng(0).uniform(-1, 1, (n, size, size, size)).astype(np.float32)
    data = VolumeSet.from_arrays(vols, np.arange(n) % classes, [str(i) for i in range(classes)])
    run_dir = Path(tempfile.mkdtemp(prefix="volgan-bench-"))
    cfg = build_config(
        {
            "device": dev.type,
            "run_dir": str(run_dir),
            "data": {"size": size},
            "train": {"batch_size": batch, "n_critic": n_critic},
            "log": {"progress_bar": False},
            "perf": perf,
        },
        "<benchmark>",
    )
    trainer = Trainer(cfg, data)
    shutil.rmtree(run_dir)  # nothing is written: train_step() neither logs nor saves
    return Contender(trainer.train_step, batch * n_critic, dev)


def bf16_matmul_rate(device: torch.device, n: int = 8192) -> float:
    """Measured dense bf16 matrix-product FLOP/s of ``device`` (the MFU denominator)."""
    import time

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--n-critic", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per contender")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra round each)")
    add_contender_args(ap)
    a = ap.parse_args()
    shape = {"size": a.size, "batch": a.batch, "classes": a.classes, "n_critic": a.n_critic, "device": a.device}
    workers = start_contenders("train_step", a, **shape)
    race(workers, a.rounds, count_flops=not a.no_flops)

    print(f"critic step (+ 1 generator step per {a.n_critic}), {a.size}³, batch {a.batch}, {a.classes} classes")
    print(f"{machine_line()}, {torch.get_num_threads()} threads; medians of {a.rounds} alternating rounds")
    print(table(workers, "critic step", workers[0], per=a.n_critic))
    if a.device.startswith("cuda") and not a.no_flops:
        peak = bf16_matmul_rate(torch.device(a.device))
        print(f"measured bf16 matmul rate {peak / 1e12:.1f} TFLOP/s")
        for w in workers:
            print(f"MFU {w.name}: {w.flops / w.seconds / peak:.1%}")


if __name__ == "__main__":
    main()
