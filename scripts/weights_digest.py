#!/usr/bin/env python
"""Digests of the weights that fixed seeds give, to show a refactor changed no arithmetic.

    PYTHONPATH=OLD_TREE/src OMP_NUM_THREADS=1 python scripts/weights_digest.py   # before
    PYTHONPATH=src          OMP_NUM_THREADS=1 python scripts/weights_digest.py   # after: the same lines

Trains a tiny WGAN-GP (linear lr decay, a falling mode-seeking term, two critic steps) and a tiny
3D-GAN (annealed instance noise), each straight for 6 steps and again stopped after 3 and resumed,
and prints a SHA-256 prefix of the generator's and the EMA generator's weights. Equal lines on one
machine mean bit-identical training; another CPU or thread count may give other digests. The config
uses the older key names (``train.n_critic``, ``train.instance_noise``), which every version reads.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volgan.config import build_config
from volgan.data.volume_set import VolumeSet
from volgan.training import Trainer


def data(binary: bool) -> VolumeSet:
    v = np.random.default_rng(0).uniform(-1, 1, (12, 16, 16, 16)).astype(np.float32)
    if binary:
        v = np.where(v > 0.3, 1.0, -1.0).astype(np.float32)
    return VolumeSet.from_arrays(v, np.arange(12) % 3, ["a", "b", "c"])


def config(run_dir: Path, family: str) -> Any:
    train: dict[str, Any] = {"steps": 6, "batch_size": 2, "lr_decay": "linear", "mode_seeking": 1.0}
    train |= {"mode_seeking_end": 0.0}
    train |= {"instance_noise": 0.1, "instance_noise_steps": 4} if family == "dcgan" else {"n_critic": 2}
    return build_config(
        {
            "seed": 3,
            "device": "cpu",
            "run_dir": str(run_dir),
            "data": {"size": 16},
            "model": {"family": family, "ngf": 4, "ndf": 4, "latent_dim": 8, "embed_dim": 4},
            "train": train,
            "log": {"progress_bar": False, "image_every": 1000, "checkpoint_every": 3},
        },
        "<digest>",
    )


def digest(tr: Trainer) -> str:
    h = hashlib.sha256()
    for state in (tr.generator.state_dict(), tr.ema.module.state_dict()):
        for key in sorted(state):
            h.update(key.encode())
            h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="volgan-digest-"))
    for family in ("wgan_gp", "dcgan"):
        straight = Trainer(config(root / family, family), data(family == "dcgan"))
        straight.fit()
        Trainer(config(root / f"{family}-r", family), data(family == "dcgan")).fit(stop_after=3)
        resumed = Trainer(config(root / f"{family}-r", family), data(family == "dcgan"), resume=root / f"{family}-r")
        resumed.fit()
        print(f"{family} straight {digest(straight)} resumed {digest(resumed)}")


if __name__ == "__main__":
    main()
