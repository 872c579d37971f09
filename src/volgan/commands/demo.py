"""``volgan demo`` and ``volgan demo-data``."""

from __future__ import annotations

import argparse

from volgan.commands import EXIT_INTERRUPTED
from volgan.errors import VolganError
from volgan.safety import check_output_dir


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


def cmd_demo_data(args: argparse.Namespace) -> int:
    from volgan.demo import write_demo_data

    if args.n_per_class < 1 or args.size < 8:
        raise VolganError(f"--n-per-class must be >= 1 and --size >= 8, got {args.n_per_class} and {args.size}")
    check_output_dir(args.out, "--out")
    n = write_demo_data(args.out, args.family, args.n_per_class, args.size, args.seed, args.format)
    print(f"wrote {n} volumes ({args.format}) to {args.out}")
    return 0
