"""``volgan sample``: a sample set into class folders, or (``--interpolate``) a walk."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from volgan.commands import EXIT_INTERRUPTED
from volgan.errors import VolganError
from volgan.safety import check_output_dir

if TYPE_CHECKING:
    import torch

    from volgan.api import VolumeGenerator


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from volgan import distributed, perf
    from volgan.config import PerfConfig
    from volgan.device import resolve_device
    from volgan.safety import check_bytes
    from volgan.sampling import SamplingInterrupted, class_index, default_batch_size, load_generator, sample_to_folder

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
    loaded = load_generator(args.checkpoint, ema=args.ema, device=device, clean=not args.raw)
    if args.threshold is not None:
        if not 0.0 <= args.threshold <= 1.0:
            raise VolganError(f"--threshold must be in [0, 1], got {args.threshold}")
        loaded.threshold = args.threshold
    if args.interpolate:
        from volgan.api import VolumeGenerator

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
    try:
        total = sample_to_folder(
            loaded,
            classes,
            range(args.start, args.start + args.n),
            args.seed,
            args.out,
            args.format,
            args.mesh,
            batch_size=batch_size,
            rank=ctx.rank,
            world_size=ctx.world_size,
            overwrite=args.overwrite,
        )
    except SamplingInterrupted as stop:
        end = args.start + args.n
        print(
            f"volgan: interrupted: {args.out}: every volume before index {stop.resume_at} has its JSON sidecar, and "
            f"no volume is left without one; to finish, run the same command with --start {stop.resume_at} "
            f"--n {end - stop.resume_at}",
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


def check_flags(args: Any) -> None:
    """Refuse flag combinations `volgan sample` cannot honour, before anything is loaded."""
    walk_flags = {"--from-index": args.from_index, "--to-index": args.to_index, "--to-class": args.to_class}
    walk_flags["--steps"] = args.steps
    if args.interpolate is None:
        given = [flag for flag, value in walk_flags.items() if value is not None]
        if given:
            raise VolganError(f"{', '.join(given)}: only with --interpolate latent|class")
        return
    clash = [flag for flag, bad in (("--n", args.n is not None), ("--start", args.start), ("--mesh", args.mesh)) if bad]
    if clash:
        raise VolganError(f"--interpolate: leave out {', '.join(clash)} (the walk sets which volumes are made)")
    if args.interpolate == "latent":
        if args.to_class is not None:
            raise VolganError("--to-class is for --interpolate class; a latent walk keeps its class (--class)")
        if (args.from_index or 0) == (1 if args.to_index is None else args.to_index):
            raise VolganError("--interpolate latent: --from-index and --to-index must differ")
    else:
        if args.to_index is not None:
            raise VolganError("--to-index is for --interpolate latent; a class walk stays at --from-index's latent")
        if args.to_class is None or not args.klass or len(args.klass) != 1:
            raise VolganError("--interpolate class needs one --class A and --to-class B")


def cmd_interpolate(args: Any, g: VolumeGenerator) -> int:
    """`volgan sample --interpolate latent|class`: write the walk's volumes, montage and GIF to --out."""
    from volgan.interpolate import interpolate_classes, interpolate_latents, write_interpolation

    steps = 8 if args.steps is None else args.steps
    start = args.from_index or 0
    bs = args.batch_size
    walks: dict[str, torch.Tensor] = {}
    meta: dict[str, dict[str, Any]] = {}
    common = {"mode": args.interpolate, "seed": args.seed, "steps": steps}
    if args.interpolate == "latent":
        end = 1 if args.to_index is None else args.to_index
        labels = [g.class_index(k) for k in args.klass] if args.klass else list(range(g.num_classes)) or [0]
        if steps * len(labels) > args.max_volumes:
            raise VolganError(f"{steps} steps for {len(labels)} classes is more than --max-volumes {args.max_volumes}")
        for k in labels:
            name = g.class_names[k] if g.conditional else "all"
            cls = k if g.conditional else None
            walks[name] = interpolate_latents(g, start, end, steps, cls, args.seed, bs, intensities=False)
            meta[name] = {**common, "from_index": start, "to_index": end, "class_name": name}
            meta[name]["class_index"] = k if g.conditional else None
        stem = f"latent_seed{args.seed}_{start:05d}-{end:05d}"
    else:
        a, b = g.class_index(args.klass[0]), g.class_index(args.to_class)
        if a == b:
            raise VolganError("--interpolate class: --class and --to-class must name different classes")
        if steps > args.max_volumes:
            raise VolganError(f"--steps {steps} is more than --max-volumes {args.max_volumes}")
        name = f"{g.class_names[a]}-to-{g.class_names[b]}"
        walks[name] = interpolate_classes(g, a, b, steps, start, args.seed, bs, intensities=False)
        meta[name] = {**common, "index": start, "from_class": g.class_names[a], "to_class": g.class_names[b]}
        meta[name] |= {"from_class_index": a, "to_class_index": b}
        stem = f"class_{name}_seed{args.seed}_{start:05d}"
    written = write_interpolation(g, walks, args.out, stem, meta, args.format)
    print(
        f"wrote {len(written['volumes'])} volumes ({args.format}) and JSON sidecars, {written['montage']} and "
        f"{written['gif']} (step {g.step})"
    )
    return 0
