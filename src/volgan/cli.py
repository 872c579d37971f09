"""Command-line interface: ``volgan train | plan | sample | export | demo | demo-data | train-classifier | evaluate``.

Heavy imports (torch, MONAI) happen inside the commands so ``--help`` is instant. Problems the
user can fix end as one ``volgan: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volgan import __version__
from volgan.errors import VolganError
from volgan.safety import OneLineParser, bounded, check_output_dir, int_arg, positive_float

if TYPE_CHECKING:
    from volgan.distributed import DistContext

log = logging.getLogger("volgan")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


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


def _resolve_train_config(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None, Any]:
    """The run's config, with --resume the loaded checkpoint (read once, used twice), and the plan
    (None when --config, --preset or --resume gives the settings)."""
    from volgan import checkpoint as ckpt
    from volgan.planning.setup import base_mapping, resolve_config

    overrides: list[str] = list(args.set)
    state = None
    base, name = base_mapping(args.config, args.preset)
    if args.resume is not None:
        path = ckpt.resolve_checkpoint(args.resume)
        state = ckpt.load_checkpoint(path)
        ckpt.require_keys(state, ckpt.TRAINING_KEYS, path)
        if base is None:  # the checkpoint's own config
            base, name = ckpt.saved_config(state), str(path)
        if args.resume.is_dir():
            overrides.append(f"run_dir={args.resume}")
        elif args.run_dir is None:  # RUN/checkpoints/step_*.pt continues RUN; any other file needs --run-dir
            overrides.append(f"run_dir={ckpt.run_dir_of(path)}")
    for flag, key in (
        ("data", "data.root"),
        ("run_dir", "run_dir"),
        ("steps", "train.steps"),
        ("device", "device"),
        ("seed", "seed"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg, plan = resolve_config(
        base, name=name, overrides=overrides, minutes=args.minutes, before_data=getattr(args, "before_data", None)
    )
    return cfg, state, plan


def cmd_train(args: argparse.Namespace) -> int:
    """Train in this process, or as one rank of a torchrun job (RANK/WORLD_SIZE in the environment)."""
    from volgan import distributed

    ctx = distributed.env_context()
    if not ctx.enabled:
        return _train(args, ctx)
    from volgan.device import resolve_device

    if args.config is None and args.preset is None and args.resume is None:
        raise VolganError(
            "torchrun: every process must train the same settings, and a plan is timed per process; plan once "
            "with `volgan plan --data DIR --minutes N --save-config plan.yaml`, then pass --config plan.yaml"
        )
    cfg, _, _ = _resolve_train_config(args)
    distributed.init(
        ctx, distributed.rank_device(ctx, resolve_device(cfg.device)), cfg.dist.backend, cfg.dist.timeout_s
    )
    try:
        with distributed.collective_errors(ctx):
            return _train(args, ctx)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace, ctx: DistContext) -> int:
    import yaml

    from volgan import distributed
    from volgan.data.dataset import load_volumes
    from volgan.errors import ConfigError
    from volgan.runlock import check_unlocked
    from volgan.safety import safe_names
    from volgan.training import Trainer

    def writable(cfg: Any) -> None:  # a run folder in use is refused before any data is read
        check_output_dir(Path(cfg.run_dir), "--run-dir (run_dir)")
        check_unlocked(Path(cfg.run_dir))

    if not args.dry_run and ctx.is_main:
        args.before_data = writable
    cfg, resume_state, plan = _resolve_train_config(args)
    if cfg.data.root is None:
        raise ConfigError(
            "no data: pass --data DIR (or set data.root in the config); try `volgan demo` for built-in data"
        )
    if not args.dry_run and ctx.is_main:
        writable(cfg)  # (again, with the run's own settings); Trainer.fit takes the lock
    if resume_state is not None:  # a mismatch must not wait for (possibly minutes of) preprocessing
        from volgan import checkpoint as ckpt

        ckpt.check_compatible(resume_state["config"], cfg, ckpt.resolve_checkpoint(args.resume))
    # One process per machine fills the preprocessing cache; the others then read it.
    if ctx.local_rank != 0:
        distributed.barrier(ctx)
    data = load_volumes(cfg.data, progress=ctx.is_main)
    if ctx.local_rank == 0:
        distributed.barrier(ctx)
    safe_names(data.class_names, str(cfg.data.root))  # names `volgan sample` could not keep apart: now, not later
    if args.dry_run:
        if plan is not None:
            print(f"{plan.fingerprint.summary()}\n\n{plan.summary()}\n")
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
        print()
        print(data.summary())
        return 0
    run_dir = Path(cfg.run_dir)
    trainer = Trainer(cfg, data, resume=args.resume, resume_state=resume_state, dist=ctx)
    if plan is not None and ctx.is_main:
        from volgan.planning.setup import write_plan

        log.info("planned for %g min (%s):\n%s", plan.minutes, plan.budget_from, plan.summary())
        write_plan(run_dir, plan)
    handler = _log_to_file(run_dir) if ctx.is_main else logging.NullHandler()
    try:
        result = trainer.fit()
    finally:  # a later command in the same process must not write into this run's log
        logging.getLogger("volgan").removeHandler(handler)
        handler.close()
    if ctx.is_main:
        print(
            f"run folder: {result.run_dir}\ncheckpoint: {result.checkpoint}\nfigures:    {result.run_dir / 'figures'}"
        )
    return EXIT_INTERRUPTED if result.interrupted else 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan (or plan.json's content with --json) for --data and --minutes; train nothing."""
    import json

    from volgan.planning.setup import planned_config
    from volgan.presets import preset_names

    if args.list_presets:
        print("\n".join(preset_names()))
        return 0
    if args.config is not None or args.preset is not None:
        raise VolganError(
            "--config/--preset: a config file or preset is a whole recipe, trained as it is (no plan); "
            "to plan around settings of your own, give them with --set KEY=VALUE"
        )
    overrides = list(args.set) + [f"{k}={v}" for k, v in (("data.root", args.data), ("device", args.device)) if v]
    cfg, plan = planned_config(overrides=overrides, minutes=args.minutes)
    if args.save_config is not None:
        import yaml

        from volgan.checkpoint import atomic_write

        text = f"# planned by `volgan plan` for {plan.minutes:g} min; plan.json holds the reasons\n"
        text += yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        atomic_write(args.save_config, lambda f: f.write(text.encode()))
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        import shlex

        again = ["--data", str(args.data or cfg.data.root)] + (
            ["--minutes", f"{args.minutes:g}"] if args.minutes else []
        )
        again += [w for text in args.set for w in ("--set", text)] + (["--device", args.device] if args.device else [])
        print(f"{plan.fingerprint.summary()}\n\n{plan.summary()}\n")
        print(f"train it: volgan train {shlex.join(again)}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from volgan import distributed, perf
    from volgan.config import PerfConfig
    from volgan.device import resolve_device
    from volgan.interpolate import check_flags
    from volgan.safety import check_bytes
    from volgan.sampling import class_index, default_batch_size, generate, load_generator, write_samples

    check_flags(args)
    args.n = 8 if args.n is None else args.n
    if not args.klass and args.n > args.max_volumes:  # the class count is known once the checkpoint is read
        raise VolganError(
            f"--n {args.n}: more than --max-volumes {args.max_volumes}; raise --max-volumes to write more"
        )
    check_output_dir(args.out, "--out")  # created by the first write, so a failed start leaves nothing
    ctx = distributed.env_context()  # under torchrun: each rank writes its share of the volumes
    device = distributed.rank_device(ctx, resolve_device(args.device))
    perf.configure_backend(PerfConfig(), device)
    loaded = load_generator(args.checkpoint, ema=args.ema, device=device)
    if args.threshold is not None:
        if not 0.0 <= args.threshold <= 1.0:
            raise VolganError(f"--threshold must be in [0, 1], got {args.threshold}")
        loaded.threshold = args.threshold
    if args.interpolate:
        from volgan.api import VolumeGenerator
        from volgan.interpolate import cmd_interpolate

        if ctx.enabled:
            raise VolganError("--interpolate runs in one process; start it without torchrun")
        return cmd_interpolate(args, VolumeGenerator(loaded))
    # Throughput grows with the batch up to ~2^22 voxels per pass on a CPU (benchmarks/sample.py).
    batch_size = args.batch_size or default_batch_size(loaded.size)
    all_classes = list(range(loaded.num_classes)) or [0]  # an unconditional model has one "class"
    classes = [class_index(loaded, k) for k in args.klass] if args.klass else all_classes
    if args.n * len(classes) > args.max_volumes:
        raise VolganError(
            f"--n {args.n} for {len(classes)} classes is {args.n * len(classes)} volumes, more than --max-volumes "
            f"{args.max_volumes}; raise --max-volumes to write more"
        )
    check_bytes(
        batch_size * loaded.size**3 * 4, 4e9, f"--batch-size {batch_size} at {loaded.size}³", "lower --batch-size"
    )
    # The requested indices are cut into batches exactly as one process cuts them, and rank r of N
    # takes batches r, r + N, ...: every batch is computed as it would be in one process, so the
    # files are bit for bit those one process writes (volume i depends only on seed, i and class).
    batches = [
        range(i, min(i + batch_size, args.start + args.n)) for i in range(args.start, args.start + args.n, batch_size)
    ]
    total, resume_at = 0, args.start
    try:  # index-major, so that after Ctrl-C every index before the current batch is complete in every class
        for idx in batches[ctx.rank :: ctx.world_size]:
            resume_at = idx.start
            for k in classes:
                labels = torch.full((len(idx),), k, dtype=torch.long)
                vols = generate(loaded.generator, labels, args.seed, idx.start, batch_size, device, loaded.autocast)
                written = write_samples(
                    loaded,
                    vols.numpy(),
                    [k] * len(idx),
                    list(idx),
                    args.seed,
                    args.out,
                    args.format,
                    args.mesh,
                    overwrite=args.overwrite,
                )
                total += len(written)
    except KeyboardInterrupt:
        end = args.start + args.n
        print(
            f"volgan: interrupted: {args.out}: every volume before index {resume_at} has its JSON sidecar, and no "
            f"volume is left without one; to finish, run the same command with --start {resume_at} "
            f"--n {end - resume_at}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if ctx.enabled:  # a count over all ranks, once every rank has finished writing
        distributed.init(ctx, torch.device("cpu"), "gloo")
        try:
            with distributed.collective_errors(ctx):
                total = round(distributed.mean(float(total), ctx, torch.device("cpu")) * ctx.world_size)
        finally:
            distributed.shutdown()
    if ctx.is_main:
        meshes = f" and {'/'.join(args.mesh)} meshes" if args.mesh else ""
        print(f"wrote {total} volumes ({args.format}){meshes} and JSON sidecars to {args.out} (step {loaded.step})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from volgan import checkpoint as ckpt

    fmt = args.format or ("onnx" if args.out.suffix == ".onnx" else "safetensors")
    if fmt == "onnx":
        from volgan.onnx_export import cmd_export_onnx

        return cmd_export_onnx(args)
    if args.out.suffix != ".safetensors":
        raise VolganError(f"{args.out}: --out must end in .safetensors")
    if args.out.is_dir():
        raise VolganError(f"{args.out}: --out is a folder; give a file name ending in .safetensors")
    check_output_dir(args.out.parent, "--out's folder")
    path = ckpt.resolve_checkpoint(args.checkpoint)
    state = ckpt.load_checkpoint(path)
    ckpt.require_keys(state, (*ckpt.GENERATOR_KEYS, *ckpt.EXPORT_PARTS[args.which]), path)
    ckpt.export_safetensors(state, args.out, args.which, source=path)
    print(f"wrote {args.out} ({args.which} weights, step {state['step']}) from {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from volgan.demo import run_demo

    if args.run_dir is not None:
        check_output_dir(args.run_dir, "--run-dir")
    result = run_demo(
        run_dir=args.run_dir,
        minutes=args.minutes,
        steps=args.steps,
        size=args.size,
        n_per_class=args.n_per_class,
        n_samples=args.samples,
        device=args.device,
        seed=args.seed,
        family=args.family,
    )
    return EXIT_INTERRUPTED if result.interrupted else 0


def _log_to_file(run_dir: Path) -> logging.Handler:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("volgan").addHandler(handler)
    return handler


def cmd_demo_data(args: argparse.Namespace) -> int:
    from volgan.demo import write_demo_data

    if args.n_per_class < 1 or args.size < 8:
        raise VolganError(f"--n-per-class must be >= 1 and --size >= 8, got {args.n_per_class} and {args.size}")
    check_output_dir(args.out, "--out")
    n = write_demo_data(args.out, args.family, args.n_per_class, args.size, args.seed, args.format)
    print(f"wrote {n} volumes ({args.format}) to {args.out}")
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from volgan.evaluation.commands import cmd_train_classifier as run

    return run(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from volgan.evaluation.commands import cmd_evaluate as run

    return run(args)


COMMANDS = {
    "train": cmd_train,
    "plan": cmd_plan,
    "sample": cmd_sample,
    "export": cmd_export,
    "demo": cmd_demo,
    "demo-data": cmd_demo_data,
    "train-classifier": cmd_train_classifier,
    "evaluate": cmd_evaluate,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun every rank shares the terminal: rank 0 speaks, the others only warn, tagged.
    rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
    tag = f"[rank {rank}] " if rank is not None else ""
    quiet = args.quiet or rank not in (None, "0")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format=f"%(asctime)s {tag}%(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("volgan").setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except VolganError as e:
        print(f"volgan: error: {tag}{bounded(str(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("volgan: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
