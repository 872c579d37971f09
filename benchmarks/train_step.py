"""Critic-step throughput of volgan's WGAN-GP next to the seed-design yardstick, measured in one run.

    python benchmarks/train_step.py --size 64 --batch 4 --rounds 5
    python benchmarks/train_step.py --size 64 --batch 4 --ablation      # each perf.* switch off in turn
    python benchmarks/train_step.py --device cuda --batch 16           # on a GPU (adds MFU)
    python benchmarks/train_step.py --end-to-end 12                    # + a real `volgan train` loop
    python benchmarks/train_step.py --variant lazy5:wgan_gp.gp_every=5 --yardstick none   # train.* variants
    python benchmarks/train_step.py --variant resize:model.output_head=resize --yardstick none
    python benchmarks/train_step.py --family dcgan --size 32 --batch 16 --variant "seen:model.top_hats=both"

``--family dcgan`` races the 3D-GAN instead (one discriminator and one generator step a round; no
yardstick, which is a WGAN-GP: ratios are to volgan's plain 3D-GAN row).

``--end-to-end N`` also runs ``volgan train`` for N generator steps on cached phantom class folders
(same size, batch, classes, n_critic and widths; default logging, log line every step) and compares
its steady-state seconds per critic step (the median of ``stats.jsonl``'s ``sec_per_step`` after
the first two steps) with the step the race timed: the gap is what the loop adds (data, logging,
EMA, bookkeeping).

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
from _harness import Contender, Worker, add_contender_args, load_yardstick, machine_line, race, start_contenders, table

from volgan.config import merge_dicts, unflatten


def yardstick(size: int, batch: int, classes: int, n_critic: int, device: str, path: str, family: str) -> Contender:
    assert family == "wgan_gp", "the yardstick is a WGAN-GP"
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


SECTIONS = {"train", "model", "experimental", "augment"}


def volgan(
    size: int,
    batch: int,
    classes: int,
    n_critic: int,
    device: str,
    perf: dict[str, Any],
    train: dict[str, Any] | None = None,
    sections: dict[str, Any] | None = None,
    family: str = "wgan_gp",
) -> Contender:
    import numpy as np

    from volgan import perf as volgan_perf
    from volgan.config import build_config
    from volgan.data.volume_set import VolumeSet
    from volgan.training import Trainer

    dev = torch.device(device)
    n = max(batch * 2, classes)
    vols = np.random.default_rng(0).uniform(-1, 1, (n, size, size, size)).astype(np.float32)
    data = VolumeSet.from_arrays(vols, np.arange(n) % classes, [str(i) for i in range(classes)])
    run_dir = Path(tempfile.mkdtemp(prefix="volgan-bench-"))
    critic = {"wgan_gp": {"n_critic": n_critic}} if family == "wgan_gp" else {}  # the 3D-GAN: one D step a round
    cfg = build_config(
        {
            "device": dev.type,
            "run_dir": str(run_dir),
            "data": {"size": size},
            "train": {"batch_size": batch, **critic, **(train or {})},
            "log": {"progress_bar": False},
            "perf": perf,
            **merge_dicts({"model": {"family": family}}, sections or {}),
        },
        "<benchmark>",
    )
    trainer = Trainer(cfg, data)
    # what fit() sets for its duration (allocator, TF32, cuDNN); this process only measures steps
    volgan_perf.configure_backend(cfg.perf, trainer.device)
    shutil.rmtree(run_dir)  # nothing is written: train_step() neither logs nor saves
    return Contender(trainer.train_step, batch * n_critic, dev)  # the 3D-GAN: n_critic is 1


def end_to_end(size: int, batch: int, classes: int, n_critic: int, steps: int, device: str) -> float:
    """Median seconds per critic step of a real ``volgan train`` run (after its first two steps), with the
    seed design's widths as the race's (``--preset seed-design``: no plan)."""
    import json
    import os
    import statistics
    import subprocess
    import sys

    import numpy as np

    from volgan.data.phantom import make_phantom

    root = Path(tempfile.mkdtemp(prefix="volgan-e2e-"))
    try:
        rng = np.random.default_rng(0)
        for k in range(classes):
            (root / "data" / str(k)).mkdir(parents=True)
            for i in range(2 * batch):
                np.save(root / "data" / str(k) / f"v{i}.npy", make_phantom(k % 3, size, rng))
        args = [
            "train", "--data", str(root / "data"), "--preset", "seed-design", "--run-dir", str(root / "run"),
            "--steps", str(steps),
            "--device", device, "--set", f"data.size={size}", "--set", f"train.batch_size={batch}",
            "--set", f"train.wgan_gp.n_critic={n_critic}", "--set", "log.every=1", "--set", "log.progress_bar=false",
        ]  # fmt: skip
        env = {**os.environ, "VOLGAN_CACHE_DIR": str(root / "cache")}
        subprocess.run([sys.executable, "-m", "volgan", *args], check=True, env=env, capture_output=True)
        stats = [json.loads(line) for line in (root / "run" / "stats.jsonl").read_text().splitlines()]
        per_step = [s["sec_per_step"] for s in stats if s["step"] > 2]
        return statistics.median(per_step) / n_critic
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
    ap.add_argument("--family", choices=["wgan_gp", "dcgan"], default="wgan_gp", help="the family volgan's rows train")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per contender")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra round each)")
    ap.add_argument("--end-to-end", type=int, default=0, metavar="N", help="also time N steps of `volgan train`")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:key=value,...",
        help="another volgan contender with these values (train.* unless the key names model., experimental. "
        "or augment., e.g. lazy5:wgan_gp.gp_every=5 or resize:model.output_head=resize); repeatable",
    )
    add_contender_args(ap)
    a = ap.parse_args()
    if a.family == "dcgan":
        a.yardstick, a.n_critic = "none", 1  # the yardstick is a WGAN-GP; the 3D-GAN takes one D step a round
    shape = {"size": a.size, "batch": a.batch, "classes": a.classes, "n_critic": a.n_critic, "device": a.device}
    workers = start_contenders("train_step", a, **shape, family=a.family)
    for spec in a.variant:
        name, _, pairs = spec.partition(":")
        values: dict[str, Any] = {}
        for key, value in (pair.split("=", 1) for pair in pairs.split(",") if pair):
            key = key if key.split(".")[0] in SECTIONS else f"train.{key}"  # a bare key is a train.* key
            values = merge_dicts(values, unflatten(key, value))
        train = values.pop("train", {})
        workers.append(
            Worker(
                f"volgan, {name}", "train_step:volgan", **shape, family=a.family, perf={}, train=train, sections=values
            )
        )
    race(workers, a.rounds, count_flops=not a.no_flops)

    what = (
        "3D-GAN step (1 D + 1 G step)" if a.family == "dcgan" else f"critic step (+ 1 generator step per {a.n_critic})"
    )
    print(f"{what}, {a.size}³, batch {a.batch}, {a.classes} classes")
    print(f"{machine_line()}, {torch.get_num_threads()} threads; medians of {a.rounds} alternating rounds")
    print(table(workers, "step" if a.family == "dcgan" else "critic step", workers[0], per=a.n_critic))
    if a.end_to_end:
        loop = end_to_end(a.size, a.batch, a.classes, a.n_critic, a.end_to_end, a.device)
        step = next(w for w in workers if w.name == "volgan").seconds / a.n_critic
        print(
            f"end to end: volgan train {loop:.4f} s/critic step (median of steps 3-{a.end_to_end}) vs "
            f"{step:.4f} in the race: the loop adds {loop / step - 1:+.1%}"
        )
    if a.device.startswith("cuda") and not a.no_flops:
        peak = bf16_matmul_rate(torch.device(a.device))
        print(f"measured bf16 matmul rate {peak / 1e12:.1f} TFLOP/s")
        for w in workers:
            print(f"MFU {w.name}: {w.flops / w.seconds / peak:.1%}")


if __name__ == "__main__":
    main()
