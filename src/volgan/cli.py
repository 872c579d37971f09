"""Command-line interface: ``volgan train | plan | sample | export | demo | demo-data | train-classifier | evaluate``.

The parsers are here; the handlers are in :mod:`volgan.commands`, imported when their command runs,
so ``--help`` is instant. Problems the
user can fix end as one ``volgan: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volgan import __version__
from volgan.commands import EXIT_INTERRUPTED
from volgan.errors import VolganError
from volgan.safety import OneLineParser, bounded, int_arg, positive_float

if TYPE_CHECKING:
    pass

log = logging.getLogger("volgan")

EXIT_USER_ERROR = 2


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a data folder or .npz file",
        description="Train a 3D GAN (model.family: wgan_gp | dcgan). Data: DIR/<class>/*.nii|*.nii.gz|*.npy, "
        "voxel files, or a MedMNIST-style .npz.",
    )
    _add_base_args(p)
    p.add_argument("--run-dir", help="run folder for checkpoints, logs and figures (overrides run_dir)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue a run from its newest checkpoint (or a checkpoint file)",
    )
    p.add_argument("--steps", type=int, help="total generator steps (overrides train.steps)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides device")
    p.add_argument("--seed", type=int, help="overrides seed")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. train.batch_size=8",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (without --config/--preset), the resolved config and a dataset summary, then stop",
    )


def _add_base_args(p: argparse.ArgumentParser) -> None:
    """What `train` and `plan` share: the data, the budget and where the settings come from."""
    p.add_argument("--data", help="data folder or .npz file (overrides data.root)")
    p.add_argument(
        "--minutes",
        type=positive_float,
        help="training budget in minutes: the run stops there with a checkpoint, samples and figures, and the "
        "learning-rate and mode-seeking schedules are fitted to it (without --config/--preset: also what the plan "
        "is made for; default 30)",
    )
    base = p.add_mutually_exclusive_group()
    base.add_argument(
        "--config", type=Path, help="YAML config (default: planned from the data, this machine and --minutes)"
    )
    base.add_argument("--preset", help="a named recipe shipped with volgan (`volgan plan --list-presets`)")


def _add_plan(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="print the recipe `volgan train --data DIR --minutes N` would train, and why, without training",
        description="Fingerprint the data (classes, grid, voxel size, intensities, occupancy), time a few training "
        "steps on this machine, and print the planned configuration with the reason for every setting. "
        "`volgan train` with the same arguments trains exactly this plan (it probes again, so step counts may "
        "differ a little on a busy machine).",
    )
    _add_base_args(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="your own setting (wins)")
    p.add_argument("--json", action="store_true", help="print plan.json's content instead of the table")
    p.add_argument("--list-presets", action="store_true", help="list the named presets and stop")
    p.add_argument(
        "--save-config",
        type=Path,
        metavar="FILE",
        help="also write the planned config as YAML (to edit, or to train under torchrun with --config FILE)",
    )


RAW_HELP = "the generator's volumes as they are, not cleaned where the run set sample.clean"


def _add_sample(sub: Any) -> None:
    p = sub.add_parser("sample", help="generate volumes from a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run folder (newest checkpoint)")
    p.add_argument(
        "--class",
        dest="klass",
        action="append",
        metavar="K",
        help="class name or index (repeatable; default: every class)",
    )
    p.add_argument("--n", type=int_arg(1), help="volumes per class (default 8)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace volumes in --out that another checkpoint wrote (default: stop, naming both)",
    )
    p.add_argument(
        "--max-volumes",
        type=int_arg(1),
        default=100_000,
        help="refuse to write more volumes than this in one command (default 100000; --n times the classes)",
    )
    p.add_argument(
        "--seed", type=int_arg(0), default=0, help="sampling seed >= 0; volume i depends only on (seed, i, class)"
    )
    p.add_argument(
        "--start", type=int_arg(0), default=0, help="index of the first volume (to extend an earlier set, or resume)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--format", choices=["nii.gz", "nii", "npy"], default="nii.gz")
    p.add_argument(
        "--mesh",
        action="append",
        choices=["obj", "stl", "ply"],
        default=[],
        help="also write a marching-cubes surface at data.threshold (repeatable; for occupancy models)",
    )
    p.add_argument(
        "--threshold", type=float, help="surface level for --mesh in [0, 1] (default: the model's data.threshold)"
    )
    p.add_argument(
        "--batch-size",
        type=int_arg(1),
        help="volumes per forward pass (default: 2^22 voxels' worth, e.g. 16 at 64³, 2 at 128³; at most 4 GB of "
        "output per pass); the volumes do not depend on it",
    )
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the EMA generator (default) or the raw one",
    )
    p.add_argument("--raw", action="store_true", help=RAW_HELP)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    walk = p.add_argument_group("interpolation (writes the frames, a montage PNG and a mid-slice GIF)")
    walk.add_argument(
        "--interpolate",
        choices=["latent", "class"],
        help="latent: slerp from latent --from-index to --to-index in each --class; class: mix the class "
        "embeddings from --class to --to-class at the latent of --from-index",
    )
    walk.add_argument("--from-index", type=int_arg(0), help="latent index the walk starts from (default 0)")
    walk.add_argument("--to-index", type=int_arg(0), help="latent walks: latent index it ends at (default 1)")
    walk.add_argument("--to-class", metavar="B", help="class walks: the class it ends at (name or index)")
    walk.add_argument("--steps", type=int_arg(2, 1000), help="frames including both ends (default 8)")


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint's generator as .safetensors (no pickle; `volgan sample` reads it) or ONNX",
        description="Write generator weights and their metadata (config, classes, intensity range, spacing, "
        "affine, step) to a .safetensors file, which loads without unpickling anything; or, with --format onnx, "
        "the generator as an ONNX graph (inputs z (B, latent_dim) float32 and labels (B,) int64, output "
        "(B, 1, S, S, S) in data intensities, dynamic batch), checked against PyTorch with onnxruntime.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run folder (newest checkpoint)")
    p.add_argument("--out", type=Path, required=True, help="output file, ending in .safetensors or .onnx")
    p.add_argument("--format", choices=["safetensors", "onnx"], help="what to write (default: from --out's ending)")
    p.add_argument(
        "--which",
        choices=["ema", "generator", "all"],
        default="ema",
        help="ema: the EMA generator (default); generator: the raw one; all: both and the critic/discriminator",
    )


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="train on a built-in procedural dataset and write samples and figures (no data, no network)",
    )
    p.add_argument(
        "--family",
        choices=["wgan_gp", "dcgan"],
        default="wgan_gp",
        help="wgan_gp: conditional WGAN-GP on MRI-like head phantoms (default); dcgan: 3D-GAN on voxel objects",
    )
    p.add_argument("--run-dir", type=Path, help="run folder (default: runs/demo-<time>)")
    p.add_argument("--minutes", type=positive_float, default=4.0, help="training time budget (default 4)")
    p.add_argument(
        "--steps", type=int_arg(1), default=100000, help="generator steps at most (default: until --minutes)"
    )
    p.add_argument("--size", type=int_arg(8, 512), help="cubic grid size (default 32 for wgan_gp, 16 for dcgan)")
    p.add_argument("--n-per-class", type=int_arg(1, 100_000), default=96, help="phantom volumes per class (default 96)")
    p.add_argument(
        "--samples", type=int_arg(1, 10_000), default=16, help="volumes generated per class at the end (default 16)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int_arg(0), default=0)


def _add_demo_data(sub: Any) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write a built-in dataset to disk as class folders (e.g. real test data for evaluate)",
    )
    p.add_argument("--family", choices=["wgan_gp", "dcgan"], default="wgan_gp", help="phantoms or voxel objects")
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per class)")
    p.add_argument("--n-per-class", type=int_arg(1, 100_000), default=32)
    p.add_argument("--size", type=int_arg(8, 512), default=32)
    p.add_argument("--seed", type=int_arg(0), default=1, help="default 1: unseen by a demo run (seed 0)")
    p.add_argument("--format", choices=["nii.gz", "nii", "npy"], default="nii.gz")


def _add_train_classifier(sub: Any) -> None:
    p = sub.add_parser(
        "train-classifier",
        help="train the 3D CNN classifier that judges synthetic volumes (features, accuracy, TSTR)",
        description="Train a small 3D CNN on real, labelled volumes. It is the feature extractor and the judge of "
        "`volgan evaluate`; its held-out accuracy is reported and saved with it.",
    )
    p.add_argument("--data", required=True, help="real training data: class folders or a labelled .npz")
    p.add_argument("--out", type=Path, required=True, help="output folder (classifier.pt + classifier.json)")
    p.add_argument("--config", type=Path, help="YAML config whose data section sets the preprocessing")
    p.add_argument("--size", type=int, help="grid size (overrides data.size; must match the generator's)")
    p.add_argument("--split", help="split of an .npz file (default: data.npz_split, i.e. train)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a data.* key")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out share for the reported accuracy")
    p.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a generator or a folder of synthetic volumes against real test data",
        description="Fréchet distance, precision/recall/density/coverage, MMD, MS-SSIM diversity, intensity "
        "distances, conditional accuracy and TSTR/TRTR, each next to its real-vs-real reference. Writes "
        "metrics.json, report.md and PNG figures.",
    )
    p.add_argument("--checkpoint", help="checkpoint file or run folder: generate --n-per-class volumes per class")
    p.add_argument("--samples", help="or: a folder of synthetic volumes, one sub-folder per class (any tool)")
    p.add_argument("--real", required=True, help="real test data (class folders or .npz)")
    p.add_argument("--real-split", help="split of a real .npz file, e.g. val or test")
    p.add_argument("--classifier", type=Path, required=True, help="folder written by volgan train-classifier")
    p.add_argument(
        "--features",
        help="feature space instead of the classifier's: medicalnet:resnetN:PATH (MedicalNet 3D ResNet weights), "
        "radimagenet2.5d:PATH (2D ResNet-50 weights, 2.5D) or a local TorchScript file; never downloaded",
    )
    p.add_argument("--features-size", type=int, help="resize volumes to this cube for medicalnet/radimagenet")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--n-per-class", type=int, default=64, help="volumes generated per class (default 64)")
    p.add_argument("--raw", action="store_true", help=RAW_HELP)
    p.add_argument(
        "--real-train",
        help="real training data for TRTR/augmentation and the memorisation audit: the generator's training set "
        "(default: the classifier's training data)",
    )
    p.add_argument("--real-train-split", help="split of a --real-train .npz file")
    p.add_argument("--tstr", action=argparse.BooleanOptionalAction, default=True, help="train TSTR/TRTR classifiers")
    p.add_argument("--tstr-epochs", type=int, help="epochs for TSTR/TRTR (default: the classifier's)")
    p.add_argument(
        "--audit", action=argparse.BooleanOptionalAction, default=True, help="memorisation audit against --real-train"
    )
    p.add_argument("--tstr-max-minutes", type=float, help="time budget per TSTR/TRTR classifier")
    p.add_argument("--k", type=int, default=5, help="neighbours for precision/recall/density/coverage")
    p.add_argument("--draws", type=int, default=10, help="synthetic subsamples matched to the reference size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="volgan", description="Train, sample and evaluate 3D GANs on volumetric data.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_plan(sub)
    _add_sample(sub)
    _add_export(sub)
    _add_demo(sub)
    _add_demo_data(sub)
    _add_train_classifier(sub)
    _add_evaluate(sub)
    return parser


# subcommand -> "module:handler" in volgan.commands, imported when run (keeps --help instant)
COMMANDS = {
    "train": "train:cmd_train",
    "plan": "train:cmd_plan",
    "sample": "sample:cmd_sample",
    "export": "export:cmd_export",
    "demo": "demo:cmd_demo",
    "demo-data": "demo:cmd_demo_data",
    "train-classifier": "evaluate:cmd_train_classifier",
    "evaluate": "evaluate:cmd_evaluate",
}


def _handler(command: str) -> Any:
    import importlib

    module, name = COMMANDS[command].split(":")
    return getattr(importlib.import_module(f"volgan.commands.{module}"), name)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()  # a budget (volgan train --minutes) counts from here, imports included
    args = build_parser().parse_args(argv)
    args.started = started
    # Under torchrun every rank shares the terminal: rank 0 speaks, the others only warn, tagged.
    rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
    tag = f"[rank {rank}] " if rank is not None else ""
    quiet = args.quiet or rank not in (None, "0")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format=f"%(asctime)s {tag}%(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("volgan").setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        return _handler(args.command)(args)
    except VolganError as e:
        print(f"volgan: error: {tag}{bounded(str(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("volgan: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
