"""Shared fixtures: tiny configs and data so every test runs in well under a second or two."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from volgan.cli import main
from volgan.config import Config, build_config
from volgan.data.dataset import VolumeSet

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _fixed_threads() -> None:
    torch.set_num_threads(2)


# Volumes generated in batches of different sizes (or in other processes, or with other CPU kernels)
# are the same computation in another summation order: oneDNN blocks a convolution by the batch size
# and the instruction set, so they agree to float32 rounding, not bit for bit. Seen: up to 1.1e-5
# absolute on volumes of magnitude ~30-100 (relative 4e-7) on an AVX2 CPU. A wrong volume (another
# latent or class) differs by O(1) of the value range, far outside this.
ACROSS_BATCHES = {"rtol": 1e-5, "atol": 1e-5}


def assert_same_volume(actual: Any, expected: Any, value_range: float = 1.0) -> None:
    """Same volume up to float32 summation order (batch size, process count, CPU kernels)."""
    a, e = torch.as_tensor(np.asarray(actual)), torch.as_tensor(np.asarray(expected))
    tol = {"rtol": ACROSS_BATCHES["rtol"], "atol": ACROSS_BATCHES["atol"] * value_range}
    torch.testing.assert_close(a, e, **tol)


def tiny_config(run_dir: Path, **sections: Any) -> Config:
    """A 16³ model with a handful of channels; sections override the defaults key by key."""
    base: dict[str, Any] = {
        "seed": 0,
        "device": "cpu",
        "run_dir": str(run_dir),
        "data": {"size": 16},
        "model": {"latent_dim": 8, "embed_dim": 4, "ngf": 4, "ndf": 4},
        "train": {"steps": 4, "batch_size": 3},
        "log": {"every": 1, "image_every": 2, "checkpoint_every": 2, "progress_bar": False},
    }
    if (sections.get("model") or {}).get("family") != "dcgan":  # two critic steps: the WGAN-GP's alone
        base["train"]["wgan_gp"] = {"n_critic": 2}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return build_config(base, "<test>")


def tiny_data(n: int = 10, size: int = 16, classes: int = 2, seed: int = 0) -> VolumeSet:
    rng = np.random.default_rng(seed)
    vols = np.tanh(rng.normal(size=(n, size, size, size))).astype(np.float32)
    labels = np.arange(n) % classes
    return VolumeSet.from_arrays(
        vols, labels, [f"c{i}" for i in range(classes)], spacing=2.0, intensity_range=(0.0, 100.0)
    )


def write_class_folders(root: Path, n_per_class: int = 3, size: int = 16, classes: int = 2) -> Path:
    """DIR/<k>/vol_i.npy with a class-dependent mean, so classes differ."""
    rng = np.random.default_rng(1)
    for k in range(classes):
        (root / str(k)).mkdir(parents=True)
        for i in range(n_per_class):
            np.save(root / str(k) / f"vol_{i}.npy", (rng.normal(size=(size,) * 3) + 3 * k).astype(np.float32))
    return root


def weights(trainer: Any) -> dict[str, torch.Tensor]:
    """A Trainer's generator, discriminator and EMA weights, by prefixed name."""
    out = {f"g.{k}": v for k, v in trainer.generator.state_dict().items()}
    out |= {f"d.{k}": v for k, v in trainer.discriminator.state_dict().items()}
    out |= {f"ema.{k}": v for k, v in trainer.ema.module.state_dict().items()}
    return out


def assert_same_weights(a: Any, b: Any) -> None:
    """Two Trainers hold bit-identical weights (the same computation run twice)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def tiny_cli(size: int, width: int = 2, latent: int = 4, embed: int = 2) -> list[str]:
    """``volgan train`` flags for a seconds-long run at ``size``³ with ``width`` channels."""
    return [
        *("--set", f"data.size={size}", "--set", f"model.ngf={width}", "--set", f"model.ndf={width}"),
        *("--set", f"model.latent_dim={latent}", "--set", f"model.embed_dim={embed}"),
        *("--set", "train.batch_size=2", "--set", "train.wgan_gp.n_critic=1"),
        *("--set", "log.every=1", "--set", "log.image_every=1000", "--set", "log.progress_bar=false"),
        *("--device", "cpu"),
    ]


def write_npy_classes(root: Path, names: list[str], per_class: int = 2, size: int = 8) -> Path:
    """One folder of ``per_class`` random ``size``³ .npy volumes per name (class k shifted by 3k)."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            np.save(root / name / f"v{i}.npy", (rng.normal(size=(size,) * 3) + 3 * k).astype(np.float32))
    return root


def detach_run_logs() -> None:
    """Close the run logs a training in this process attached (a later run must not write there)."""
    log = logging.getLogger("volgan")
    for handler in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step 8³ run with classes c0, c1: RUN/checkpoints/step_00000001.pt."""
    base = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOLGAN_CACHE_DIR", str(base / "cache"))
        data = write_npy_classes(base / "data", ["c0", "c1"])
        assert main(["train", "--data", str(data), "--run-dir", str(base / "run"), "--steps", "1", *tiny_cli(8)]) == 0
    detach_run_logs()
    return base / "run"
