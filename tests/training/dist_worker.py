"""One training run for tests/training/test_distributed.py: under torchrun (N ranks) or alone (world size 1).

    python -m torch.distributed.run --nproc-per-node 2 tests/training/dist_worker.py --family wgan_gp --out F
    python tests/training/dist_worker.py --family wgan_gp --out F

Rank 0 saves every parameter and gradient of both networks after ``--steps`` training steps, so
the test can compare N processes with one. ``--fault exit`` makes rank 1 leave silently after
set-up (exit code 0, so torchrun does not stop the job for it) and ``--fault hang`` makes it stop
answering: either way rank 0 must notice on its own (``--timeout``) and end the job with a message.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from volgan import distributed
from volgan.config import build_config
from volgan.data.volume_set import VolumeSet
from volgan.errors import VolganError
from volgan.training import Trainer

FAMILIES = {
    "wgan_gp": {"model": {"ngf": 4, "ndf": 4, "latent_dim": 8, "embed_dim": 4}, "train": {"wgan_gp": {"n_critic": 2}}},
    "dcgan": {
        # minibatch_std off: its groups are formed within each process's share (README, torchrun)
        "model": {
            "family": "dcgan",
            "ngf": 4,
            "ndf": 4,
            "latent_dim": 8,
            "embed_dim": 4,
            "ac_weight": 1.0,
            "minibatch_std": False,
        },
        "train": {"dcgan": {"d_acc_threshold": 1.0, "instance_noise": 0.1, "label_noise": 0.05}},
    },
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--run-dir", default="/tmp/volgan-dist-worker")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--fault", choices=["none", "exit", "hang"], default="none")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--no-sync-bn", action="store_true", help="dcgan: per-process BatchNorm statistics")
    ap.add_argument("--augment", action="store_true", help="differentiable augmentation, adaptive, p 0.5")
    ap.add_argument("--grow", action="store_true", help="wgan_gp: progressive growing 8³ -> 16³ (1 step, fade 2)")
    a = ap.parse_args()

    ctx = distributed.env_context()
    spec = FAMILIES[a.family]
    if a.grow:
        spec = {**spec, "experimental": {"grow_from": 8, "grow_steps": 1, "grow_fade": 2}}
    cfg = build_config(
        {
            "device": "cpu",
            "run_dir": a.run_dir,
            "data": {"size": 16},
            "model": spec["model"],
            "train": {"batch_size": a.batch, **spec["train"]},
            "experimental": spec.get("experimental", {}),
            "log": {"progress_bar": False},
            "dist": {"timeout_s": a.timeout, "sync_batchnorm": not a.no_sync_bn},
            "augment": {"enabled": a.augment, "p": 0.5, "interval": 1},
        }
    )
    rng = np.random.default_rng(0)
    data = VolumeSet.from_arrays(rng.uniform(-1, 1, (8, 16, 16, 16)).astype(np.float32), np.arange(8) % 2, ["a", "b"])
    distributed.init(ctx, torch.device("cpu"), "gloo", a.timeout)
    try:
        trainer = Trainer(cfg, data, dist=ctx)
        if a.fault == "exit" and ctx.rank == 1:
            os._exit(0)
        if a.fault == "hang" and ctx.rank == 1:
            time.sleep(600)
        with distributed.collective_errors(ctx):
            for _ in range(a.steps):
                trainer.train_step()
        if ctx.is_main:
            nets = {"generator": trainer.generator, "discriminator": trainer.discriminator}
            torch.save(
                {
                    name: {
                        "params": {k: v.detach().clone() for k, v in net.state_dict().items()},
                        "grads": {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None},
                    }
                    for name, net in nets.items()
                },
                a.out,
            )
        distributed.barrier(ctx)
    except VolganError as e:
        print(f"volgan: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
