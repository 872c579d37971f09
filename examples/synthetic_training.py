"""Train a small 3D classifier on real volumes, with and without synthetic ones from a volgan generator.

Real and synthetic volumes share one ``DataLoader`` and one chain of MONAI dictionary transforms:
``volgan.SyntheticDataset`` yields the same ``{"image", "label"}`` dicts as the real set. The real
data are the built-in head phantoms (``volgan.data.phantom``): a few per class for training (seed 0,
the phantoms ``volgan demo`` trains on) and an unseen held-out set (seed 1) for the accuracy. Both
arms take the same number of optimiser steps, so the synthetic arm sees other volumes, not more
updates.

    volgan demo --size 16 --run-dir runs/demo16                # a generator (≈ 3 min on 2 CPU cores)
    python examples/synthetic_training.py --checkpoint runs/demo16

Prints a Markdown table: held-out accuracy per training seed, mean and spread, for real only and
real + synthetic.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, RandFlipd, RandGaussianNoised, ScaleIntensityd
from monai.utils import set_determinism
from torch import nn
from torch.utils.data import ConcatDataset, RandomSampler

import volgan
from volgan.data.phantom import CLASS_NAMES, make_phantom_set

REFERENCE = "reference: the generator's real training set"


class SmallCNN(nn.Module):
    """(B, 1, S, S, S) -> class logits (B, K): three strided conv blocks and a linear head."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in (width, 2 * width, 4 * width):
            layers += [nn.Conv3d(c_in, c_out, 3, stride=2, padding=1), nn.InstanceNorm3d(c_out), nn.LeakyReLU(0.1)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


def real_set(n_per_class: int, size: int, seed: int, transform: Any) -> Dataset:
    volumes, labels = make_phantom_set(n_per_class, size, seed)
    items = [
        {"image": torch.from_numpy(v[None]), "label": int(k), "class_name": CLASS_NAMES[k]}
        for v, k in zip(volumes, labels, strict=True)
    ]
    return Dataset(items, transform=transform)


def plain(x: torch.Tensor) -> torch.Tensor:
    """A MONAI MetaTensor batch as a plain tensor: the network needs no metadata tracking."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def train_and_test(train: Any, test: Any, steps: int, seed: int, batch_size: int = 16) -> float:
    set_determinism(seed)  # weights, shuffling and the random transforms of this arm
    model = SmallCNN(len(CLASS_NAMES))
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    # draws with replacement: exactly `steps` batches, however few real volumes there are; MONAI's
    # DataLoader seeds each worker's random transforms from the (seeded) loader, torch's would not
    sampler = RandomSampler(train, replacement=True, num_samples=steps * batch_size)
    for batch in DataLoader(train, batch_size=batch_size, sampler=sampler, num_workers=2):
        loss = nn.functional.cross_entropy(model(plain(batch["image"])), batch["label"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for batch in DataLoader(test, batch_size=64):
            correct += int((model(plain(batch["image"])).argmax(1) == batch["label"]).sum())
    return correct / len(test)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder, .pt or .safetensors of a phantom model")
    p.add_argument("--real-per-class", type=int, default=4, help="real training volumes per class (default 4)")
    p.add_argument("--synthetic", type=int, default=300, help="synthetic volumes in the mixed arm (default 300)")
    p.add_argument("--test-per-class", type=int, default=50, help="held-out real volumes per class (default 50)")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per arm (default 300)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm (default 3)")
    p.add_argument(
        "--reference-per-class",
        type=int,
        default=96,
        help="a third arm: this many real volumes per class, the demo generator's training set (default 96; 0: off)",
    )
    args = p.parse_args()

    g = volgan.load(args.checkpoint)
    if g.class_names != list(CLASS_NAMES):
        raise SystemExit(f"{args.checkpoint}: expected a phantom model {list(CLASS_NAMES)}, got {g.class_names}")
    # one chain for real and synthetic volumes: each volume to [0, 1], then left-right flips and noise
    augment = Compose(
        [
            ScaleIntensityd(keys="image"),
            RandFlipd(keys="image", prob=0.5, spatial_axis=0),
            RandGaussianNoised(keys="image", prob=0.5, std=0.02),
        ]
    )
    real = real_set(args.real_per_class, g.size, seed=0, transform=augment)
    test = real_set(args.test_per_class, g.size, seed=1, transform=ScaleIntensityd(keys="image"))
    n_ref = args.reference_per_class
    reference = real_set(n_ref, g.size, seed=0, transform=augment) if n_ref else []
    arms: dict[str, list[float]] = {"real only": [], "real + synthetic": []}
    sizes = {"real only": f"{len(real)}", "real + synthetic": f"{len(real)} + {args.synthetic}"}
    if args.reference_per_class:
        arms[REFERENCE] = []
        sizes[REFERENCE] = f"{len(reference)}"
    for seed in range(args.seeds):
        synthetic = volgan.SyntheticDataset(g, length=args.synthetic, seed=100 + seed, transform=augment)
        arms["real only"].append(train_and_test(real, test, args.steps, seed))
        arms["real + synthetic"].append(train_and_test(ConcatDataset([real, synthetic]), test, args.steps, seed))
        if args.reference_per_class:
            arms[REFERENCE].append(train_and_test(reference, test, args.steps, seed))
    print(f"\nheld-out accuracy on {len(test)} unseen phantoms ({args.steps} steps per run, batch 16)\n")
    print("| training data | volumes | accuracy per seed | mean | min-max |")
    print("|---|---|---|---|---|")
    for name, accs in arms.items():
        count = sizes[name]
        per_seed = ", ".join(f"{a:.3f}" for a in accs)
        spread = f"{min(accs):.3f}-{max(accs):.3f}"
        print(f"| {name} | {count} | {per_seed} | {statistics.mean(accs):.3f} | {spread} |")


if __name__ == "__main__":
    main()
