"""``volgan train`` and ``volgan plan``."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volgan.commands import EXIT_INTERRUPTED
from volgan.errors import VolganError
from volgan.safety import safe_names

if TYPE_CHECKING:
    from volgan.distributed import DistContext

log = logging.getLogger("volgan")


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
    from volgan.run_setup import check_run_dir, start_trainer

    started = getattr(args, "started", time.perf_counter())  # the budget counts imports, planning, reading the data

    def writable(cfg: Any) -> None:  # a run folder in use is refused before any data is read
        check_run_dir(cfg, "--run-dir (run_dir)")

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
    if args.dry_run:
        safe_names(data.class_names, str(cfg.data.root))  # names `volgan sample` could not keep apart
        if plan is not None:
            print(f"{plan.fingerprint.summary()}\n\n{plan.summary()}\n")
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
        print()
        print(data.summary())
        return 0
    trainer = start_trainer(
        cfg,
        data,
        plan=plan,
        resume=args.resume,
        resume_state=resume_state,
        dist=ctx,
        source=str(cfg.data.root),
        started=started,
    )
    handler = _log_to_file(trainer.run_dir) if ctx.is_main else logging.NullHandler()
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


def _log_to_file(run_dir: Path) -> logging.Handler:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("volgan").addHandler(handler)
    return handler


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

        from volgan.files import atomic_write

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
