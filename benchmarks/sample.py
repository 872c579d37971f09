"""Sampling throughput (volumes/s) of volgan's generator next to the yardstick's, measured in one run.

    python benchmarks/sample.py --size 64 --batch 16 --rounds 5
    python benchmarks/sample.py --ablation          # also each perf.* switch off, and all off

The yardstick is ``../shared/bench/naive_cwgan.py``'s generator in eager mode under ``no_grad``
(its own ``sample`` mode). volgan runs its real sampling path: ``volgan.sampling.generate``
(per-volume seeded latents, inference mode) on a generator set up as ``volgan sample`` sets it up.
Same size, widths (ngf = 32), classes and batch; each contender in its own process, rounds alternated.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from _harness import Contender, add_contender_args, load_yardstick, machine_line, race, start_contenders, table


def yardstick(size: int, batch: int, classes: int, device: str, path: str) -> Contender:
    dev = torch.device(device)
    naive = load_yardstick(Path(path))
    torch.manual_seed(0)
    g = naive.G(size, classes).to(dev)
    z, y = torch.randn(batch, naive.Z, device=dev), torch.randint(0, classes, (batch,), device=dev)

    def round_() -> None:
        with torch.no_grad():
            g(z, y)

    return Contender(round_, batch, dev)


def volgan(size: int, batch: int, classes: int, device: str, perf: dict[str, Any]) -> Contender:
    from volgan import perf as perf_module
    from volgan.config import PerfConfig, build_config
    from volgan.models import build_models
    from volgan.sampling import generate

    dev = torch.device(device)
    cfg = build_config({"data": {"size": size}, "perf": perf}, "<benchmark>")
    torch.manual_seed(0)
    generator, _ = build_models(cfg, classes)
    generator.to(dev).eval()
    perf_module.configure_models(cfg.perf, generator)
    perf_module.configure_backend(cfg.perf, dev)
    autocast = perf_module.autocast_dtype(PerfConfig(**perf), dev)
    labels = torch.arange(batch) % classes
    counter = {"start": 0}

    def round_() -> None:
        generate(generator, labels, seed=0, start=counter["start"], batch_size=batch, device=dev, autocast=autocast)
        counter["start"] += batch

    return Contender(round_, batch, dev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    add_contender_args(ap)
    a = ap.parse_args()
    shape = {"size": a.size, "batch": a.batch, "classes": a.classes, "device": a.device}
    workers = start_contenders("sample", a, **shape)
    race(workers, a.rounds)
    print(f"sampling, {a.size}³, batch {a.batch}, {a.classes} classes, ngf 32")
    print(f"{machine_line()}, {torch.get_num_threads()} threads; medians of {a.rounds} alternating rounds")
    print(table(workers, "batch", workers[0]))


if __name__ == "__main__":
    main()
