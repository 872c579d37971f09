"""Data loading from the preprocessed cache next to what training consumes, measured in one run.

    python benchmarks/data_loading.py --size 64 --volumes 64 --batch 4

Writes ``--volumes`` synthetic NIfTI files (two classes, 1.2 mm voxels, a non-cubic field of view, so
the reorientation + resampling path runs), then measures in order:

1. first load: read + reorient + resample + scale + write the cache (once per dataset and config);
2. cached load: open the cache (a memory map, timed on its own: once per run) with the page cache
   for it dropped, then every batch of one epoch through the trainer's own batch path
   (``RunServices.real_batch``: shuffled indices, copy out of the map, tensor in the models' memory
   format), so every volume is read from disk;
3. training: one round of ``n_critic`` critic steps + 1 generator step of the same trainer.

The ratio of (2) to (3) in volumes/s is what the issue's goal 5 asks for. There is no augmentation
in the data path: volgan's augmentation runs on the batch inside the training step and is part of (3).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _harness import machine_line


def write_nifti_set(root: Path, n: int, shape: tuple[int, int, int]) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    affine = np.diag([1.2, 1.2, 1.2, 1.0])
    for i in range(n):
        folder = root / str(i % 2)
        folder.mkdir(parents=True, exist_ok=True)
        vol = rng.normal(100.0 + 20 * (i % 2), 15.0, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, affine), folder / f"vol{i:04d}.nii.gz")


def drop_page_cache(folder: Path) -> None:
    """Evict the cache files' pages (no root needed: posix_fadvise DONTNEED on clean pages)."""
    for path in folder.rglob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--volumes", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--n-critic", type=int, default=5)
    a = ap.parse_args()

    from volgan import perf
    from volgan.config import build_config
    from volgan.data import load_volumes
    from volgan.training import Trainer

    with tempfile.TemporaryDirectory(prefix="volgan-data-bench-") as tmp:
        root, cache = Path(tmp) / "data", Path(tmp) / "cache"
        fov = (int(a.size * 1.25), int(a.size * 1.1), int(a.size * 0.9))
        write_nifti_set(root, a.volumes, fov)
        cfg = build_config(
            {
                "device": "cpu",
                "run_dir": str(Path(tmp) / "run"),
                "data": {"root": str(root), "size": a.size, "cache_dir": str(cache)},
                "train": {"batch_size": a.batch, "wgan_gp": {"n_critic": a.n_critic}},
                "log": {"progress_bar": False},
            },
            "<benchmark>",
        )
        start = time.perf_counter()
        load_volumes(cfg.data)
        first = time.perf_counter() - start

        drop_page_cache(cache)
        start = time.perf_counter()
        data = load_volumes(cfg.data)
        opened = time.perf_counter() - start
        trainer = Trainer(cfg, data)
        perf.configure_backend(cfg.perf, trainer.device)  # what fit() sets for its duration
        batches = -(-a.volumes // a.batch)
        start = time.perf_counter()
        for _ in range(batches):
            trainer.services.real_batch()
        cached_rate = batches * a.batch / (time.perf_counter() - start)

        trainer.train_step()  # warm-up
        start = time.perf_counter()
        trainer.train_step()
        train_rate = a.batch * a.n_critic / (time.perf_counter() - start)

    print(f"data loading, {a.volumes} NIfTI volumes {fov} -> {a.size}³, batch {a.batch}")
    print(f"{machine_line()}, {torch.get_num_threads()} threads")
    print(f"{'':<44}{'volumes/s':>12}")
    print(f"{'first load (read, resample, scale, cache)':<44}{a.volumes / first:>12.1f}")
    print(f"{'cached batches (cold page cache)':<44}{cached_rate:>12.1f}")
    print(f"{'training consumes':<44}{train_rate:>12.2f}")
    print(f"opening the cache (once per run): {opened * 1000:.0f} ms")
    print(f"ratio cached loading / training: {cached_rate / train_rate:.0f}x")


if __name__ == "__main__":
    main()
