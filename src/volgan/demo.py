"""``volgan demo``: train on a built-in procedural dataset, write samples and figures, measure conditioning.

``--family wgan_gp`` (default) trains the conditional WGAN-GP on the MRI-like head phantom;
``--family dcgan`` trains the 3D-GAN on procedural voxel objects and also writes surface renders
and meshes. Both end by printing the share of generated volumes that show their class's property.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volgan.config import build_config, surface_level
from volgan.data.volume_set import VolumeSet
from volgan.figures import save_sample_grid
from volgan.sampling import generate, load_generator, write_samples
from volgan.training import Trainer, TrainResult

log = logging.getLogger("volgan")


@dataclass(frozen=True)
class DemoSet:
    """A built-in dataset: how to make it, how to check a class, and settings that learn it in minutes."""

    what: str
    class_names: tuple[str, ...]
    make: Callable[
        [int, int, int], tuple[np.ndarray, np.ndarray]
    ]  # (n_per_class, size, seed) -> [-1, 1] volumes, labels
    consistency: Callable[
        [np.ndarray, np.ndarray], float
    ]  # [-1, 1] volumes, labels -> share with their class's property
    intensity_range: tuple[float, float]
    settings: dict[str, dict[str, Any]]
    size: int  # default grid of the demo


def _phantom() -> DemoSet:
    from volgan.data import phantom

    return DemoSet(
        "MRI-like head phantoms",
        phantom.CLASS_NAMES,
        phantom.make_phantom_set,
        phantom.class_consistency,
        (0.0, 1000.0),
        {
            "model": {
                "family": "wgan_gp",
                "latent_dim": 64,
                "embed_dim": 32,
                "ngf": 16,
                "ndf": 16,
                "output_head": "resize",  # fewer stray pieces (docs/guide/models.md)
            },
            "train": {"batch_size": 8, "wgan_gp": {"n_critic": 2}, "lr_g": 2e-4, "lr_d": 2e-4, "ema_decay": 0.99},
        },
        32,
    )


def _objects() -> DemoSet:
    from volgan.data import objects

    def make(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        occupancy, labels = objects.make_object_set(n, size, seed)
        return occupancy * 2 - 1, labels

    return DemoSet(
        "procedural voxel objects",
        objects.CLASS_NAMES,
        make,
        lambda v, labels: objects.class_consistency((v + 1) / 2, labels),
        (0.0, 1.0),
        # The dcgan family defaults (README, "3D-GAN"): no accuracy gate, one-sided label smoothing,
        # an AC-GAN head, minibatch-stddev and a weak mode-seeking term. With the paper's gate these
        # objects collapse to one shape for every class and latent.
        {"data": {"binary": True}, "model": {"family": "dcgan", "output_head": "resize"}},
        16,
    )


DEMO_SETS: dict[str, Callable[[], DemoSet]] = {"wgan_gp": _phantom, "dcgan": _objects}


def write_demo_data(
    out_dir: Path, family: str = "wgan_gp", n_per_class: int = 32, size: int = 32, seed: int = 1, fmt: str = "nii.gz"
) -> int:
    """Write a built-in dataset as class folders (``out_dir/<class>/<class>_NNNN.<fmt>``), e.g. as
    real test data for ``volgan evaluate``; pick a seed other than the training run's for unseen
    volumes. Intensities are the dataset's own range. Returns the number of files written."""
    from volgan.data.preprocess import grid_affine, unscale
    from volgan.sampling import write_volume

    demo = DEMO_SETS[family]()
    volumes, labels = demo.make(n_per_class, size, seed)
    affine = grid_affine(size, 256.0 / size)
    counts = dict.fromkeys(range(len(demo.class_names)), 0)
    for volume, label in zip(volumes, labels, strict=True):
        name = demo.class_names[label]
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        write_volume(
            unscale(volume, *demo.intensity_range), out_dir / name / f"{name}_{counts[label]:04d}.{fmt}", affine
        )
        counts[label] += 1
    return len(labels)


def demo_config(demo: DemoSet, run_dir: Path, size: int, minutes: float, steps: int, device: str, seed: int) -> dict:
    cfg: dict[str, dict[str, Any] | Any] = {
        "seed": seed,
        "device": device,
        "run_dir": str(run_dir),
        "data": {"size": size},
        "train": {"steps": steps, "max_minutes": minutes},
        "log": {"every": 10, "image_every": 100, "checkpoint_every": 100, "keep_checkpoints": 2},
        "sample": {"clean": True},  # as the planner chooses (docs/planner.md)
    }
    for section, values in demo.settings.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


# long: the demo's script, top to bottom: data, train, sample, figures, speckle
def run_demo(
    run_dir: Path | None = None,
    minutes: float = 4.0,
    steps: int = 100000,
    size: int | None = None,
    n_per_class: int = 96,
    n_samples: int = 16,
    device: str = "auto",
    seed: int = 0,
    family: str = "wgan_gp",
) -> TrainResult:
    demo = DEMO_SETS[family]()
    size = size or demo.size
    run_dir = run_dir or Path("runs") / time.strftime(f"demo-{family}-%Y%m%d-%H%M%S")
    cfg = build_config(demo_config(demo, run_dir, size, minutes, steps, device, seed), "<demo settings>")
    volumes, labels = demo.make(n_per_class, size, seed)
    data = VolumeSet.from_arrays(
        volumes, labels, list(demo.class_names), spacing=256.0 / size, intensity_range=demo.intensity_range
    )
    log.info(
        "demo: %d %s at %d³ (%s), up to %.1f min", len(labels), demo.what, size, ", ".join(demo.class_names), minutes
    )

    trainer = Trainer(cfg, data)
    result = trainer.fit()

    loaded = load_generator(result.run_dir, ema=True, device=trainer.device)
    samples = {}
    for k, name in enumerate(demo.class_names):
        labels_k = torch.full((n_samples,), k)
        samples[name] = loaded.finish(generate(loaded.generator, labels_k, seed=seed, device=trainer.device).numpy())
        write_samples(loaded, samples[name], [k] * n_samples, list(range(n_samples)), seed, run_dir / "samples")
    figures = run_dir / "figures"
    title = f"volgan demo ({family}): EMA generator after {result.step} steps (rows = classes)"
    shown = {n: v[:4] for n, v in samples.items()}
    grid = save_sample_grid(shown, figures / "samples.png", title=title)
    extra = []
    if family == "dcgan":
        from volgan.render import export_mesh, save_render_grid

        level = surface_level(cfg.data.threshold)
        extra.append(f"  renders       {save_render_grid(shown, figures / 'renders.png', level=level, title=title)}")
        written = 0
        for name, vols in samples.items():
            try:
                export_mesh(vols[0], run_dir / "meshes" / f"{name}_seed{seed}_00000.obj", level)
                written += 1
            except ValueError:  # an untrained generator may not cross the occupancy threshold yet
                extra.append(f"  (no surface at the threshold for {name}: no mesh written)")
        extra.append(f"  meshes        {run_dir / 'meshes'} ({written} .obj files)")
    fake = np.concatenate(list(samples.values()))
    fake_labels = np.repeat(np.arange(len(demo.class_names)), n_samples)
    synthetic = demo.consistency(fake, fake_labels)
    ref_vols, ref_labels = demo.make(n_samples, size, seed + 1)
    reference = demo.consistency(ref_vols, ref_labels)
    per_class = [demo.consistency(samples[n], np.full(n_samples, k)) for k, n in enumerate(demo.class_names)]
    from volgan.evaluation.curve import correlation_diversity
    from volgan.evaluation.structure import SMALL_COMPONENT, otsu_level, structure

    # within-class diversity, 1 - mean voxel correlation of same-class pairs: ~0 means one volume per class
    diversity = correlation_diversity(fake, fake_labels)
    diversity_real = correlation_diversity(ref_vols, ref_labels)
    level = otsu_level(ref_vols)  # both sets binarized at the real set's Otsu level
    spots, spots_real = structure(fake, level), structure(ref_vols, level)

    print(f"\nvolgan demo ({family}, {demo.what}) finished after {result.step} generator steps")
    print(f"  run folder    {run_dir}")
    print(f"  checkpoint    {result.checkpoint}")
    print(f"  tensorboard   tensorboard --logdir {run_dir / 'tensorboard'}")
    print(f"  samples       {run_dir / 'samples'} ({len(fake)} NIfTI volumes + JSON sidecars)")
    print(f"  slices        {grid}")
    for line in extra:
        print(line)
    print(f"  loss curves   {figures / 'losses.png'}")
    print(
        f"  class consistency: {synthetic:.0%} of generated volumes show their class's property "
        f"({', '.join(f'{n} {c:.0%}' for n, c in zip(demo.class_names, per_class, strict=True))}); "
        f"real data: {reference:.0%}; chance: {1 / len(demo.class_names):.0%}"
    )
    if diversity is not None and diversity_real is not None:
        print(
            f"  within-class diversity: {diversity:.2f} (1 - mean voxel correlation of same-class pairs; "
            f"real data: {diversity_real:.2f}; one volume per class: 0)"
        )
    print(
        f"  speckle: {spots['components']:.1f} connected pieces per volume, "
        f"{spots['speckle_share']:.1%} of the foreground in pieces under {SMALL_COMPONENT} voxels, "
        f"{spots['holes']:.1f} holes (real data: {spots_real['components']:.1f}, {spots_real['speckle_share']:.1%}, "
        f"{spots_real['holes']:.1f})"
    )
    return result
