"""Peak memory of WGAN-GP training at several grid sizes and batch sizes (one process per setting).

    python benchmarks/memory.py                       # 64³ at batch 1, 4, 16 and 128³ at batch 1
    python benchmarks/memory.py --configs 64:8,96:2   # SIZE:BATCH pairs
    python benchmarks/memory.py --device cuda         # peak of the CUDA allocator instead of RSS

Each setting runs in a fresh process: the default widths (ngf = ndf = 32), n_critic 5, all perf
switches at their defaults; a warm-up round and one timed round, each ``n_critic`` critic steps and
one generator step. On the CPU the figure is the process's peak resident set (everything: Python,
torch, models, optimiser state, data, activations of the double backward); on CUDA it is
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse

import torch
from _harness import Worker, machine_line, race


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="64:1,64:4,64:16,128:1", help="comma-separated SIZE:BATCH")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--n-critic", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    settings = [tuple(int(v) for v in item.split(":")) for item in a.configs.split(",")]

    print(f"training peak memory, n_critic {a.n_critic}, {a.classes} classes, ngf = ndf = 32")
    print(f"{machine_line()}, {torch.get_num_threads()} threads")
    print(f"{'size':>6}{'batch':>7}{'s/critic step':>15}{'peak MiB':>10}")
    for size, batch in settings:
        w = Worker(
            f"{size}:{batch}",
            "train_step:volgan",
            size=size,
            batch=batch,
            classes=a.classes,
            n_critic=a.n_critic,
            device=a.device,
            perf={},
        )
        race([w], rounds=1, count_flops=False)
        print(f"{size:>6}{batch:>7}{w.seconds / a.n_critic:>15.3f}{w.peak / 2**20:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
