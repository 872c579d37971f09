"""``volgan train-classifier`` and ``volgan evaluate``: loading the sets, then the work in
:mod:`~volgan.evaluation.classifier`, :mod:`~volgan.evaluation.evaluate` and :mod:`~volgan.evaluation.report`."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from volgan.config import DataConfig, load_config
from volgan.errors import VolganError
from volgan.evaluation.labelled import Labelled, as_loaded, load_labelled

log = logging.getLogger("volgan")


def _data_config(args: argparse.Namespace) -> DataConfig:
    """The preprocessing for the classifier's data: --config's data section, then --size/--set."""
    overrides = list(args.set)
    if args.size is not None:
        overrides.append(f"data.size={args.size}")
    return load_config(args.config, overrides, what="command-line overrides").data


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from volgan.evaluation.classifier import save_classifier, train_classifier

    cfg = _data_config(args)
    data = load_labelled(cfg, args.data, args.split, what="training")
    if len(data.class_names) < 2:
        raise VolganError(f"{args.data}: a classifier needs at least 2 classes, found {data.class_names}")
    t0 = time.perf_counter()
    model, report = train_classifier(
        data.volumes,
        data.labels,
        len(data.class_names),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=_device(args.device),
        max_minutes=args.max_minutes,
        log_every_epoch=lambda r: log.info(
            "epoch %d: train loss %.4f, held-out accuracy %s (balanced %s)",
            r["epoch"],
            r["train_loss"],
            "–" if r.get("val_accuracy") is None else f"{r['val_accuracy']:.3f}",
            "–" if r.get("val_balanced_accuracy") is None else f"{r['val_balanced_accuracy']:.3f}",
        ),
    )
    meta: dict[str, Any] = {
        "class_names": data.class_names,
        "size": cfg.size,
        "intensity": "[-1, 1]",
        "data": {**cfg.model_dump(mode="json"), "root": str(Path(args.data).resolve())},
        "data_split": args.split,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "train_accuracy": report.train_accuracy,
        "held_out_accuracy": report.val_accuracy,
        "held_out_balanced_accuracy": report.val_balanced_accuracy,
        "held_out_per_class": {data.class_names[k]: v for k, v in report.per_class_val_accuracy.items()},
        "n_train": report.n_train,
        "n_held_out": report.n_val,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = save_classifier(args.out, model, meta)
    held_out = "–" if report.val_accuracy is None else f"{report.val_accuracy:.3f}"
    if report.val_balanced_accuracy is not None:
        held_out += f" (balanced {report.val_balanced_accuracy:.3f}, the kept epoch's criterion)"
    print(
        f"classifier: {path}\n  classes {data.class_names}, {report.n_train} training / {report.n_val} held-out "
        f"volumes, {report.epochs_run} epochs\n  accuracy: train {report.train_accuracy:.3f}, held-out {held_out}"
    )
    return 0


def _device(name: str) -> Any:
    from volgan.device import resolve_device

    return resolve_device(name)


def _synthetic_from_checkpoint(args: argparse.Namespace, cfg: DataConfig, device: Any) -> Labelled:
    import torch

    from volgan.sampling import generate, load_generator

    loaded = load_generator(args.checkpoint, ema=True, device=device, clean=not args.raw)
    if loaded.size != cfg.size:
        raise VolganError(
            f"{loaded.checkpoint}: the generator makes {loaded.size}³ volumes, the classifier takes {cfg.size}³"
        )
    if loaded.num_classes < 2:
        raise VolganError(f"{loaded.checkpoint}: an unconditional generator cannot be evaluated per class")
    vols, labels = [], []
    for k in range(loaded.num_classes):
        y = torch.full((args.n_per_class,), k, dtype=torch.long)
        raw = generate(loaded.generator, y, args.seed, 0, 8, device, loaded.autocast).numpy()
        vols.append(as_loaded(loaded.finish(raw), cfg))
        labels.append(np.full(args.n_per_class, k))
    source = f"{loaded.checkpoint} (EMA, step {loaded.step}, {args.n_per_class} per class, seed {args.seed})"
    return Labelled(np.concatenate(vols), np.concatenate(labels), list(loaded.class_names), source)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from volgan.evaluation.classifier import load_classifier
    from volgan.evaluation.evaluate import EvalSettings, check_judge, evaluate
    from volgan.evaluation.report import write_report

    if (args.checkpoint is None) == (args.samples is None):
        raise VolganError("pass exactly one of --checkpoint RUN (generate) or --samples DIR (already generated)")
    if args.n_per_class < 2:
        raise VolganError(f"--n-per-class must be >= 2, got {args.n_per_class}")
    device = _device(args.device)
    judge, meta = load_classifier(args.classifier)
    try:  # the preprocessing the judge was trained with; a file without it is one line, not a KeyError
        cfg = DataConfig(**meta["data"])
    except (KeyError, TypeError, ValueError):
        raise VolganError(f"{args.classifier}: classifier meta lacks valid 'data' settings (the data.* keys)") from None
    real = load_labelled(cfg, args.real, args.real_split, what="real test")
    check_judge(judge, meta, real, str(args.classifier))
    if args.checkpoint is not None:
        synthetic = _synthetic_from_checkpoint(args, cfg, device)
    else:
        synthetic = load_labelled(cfg, args.samples, what="synthetic")
    real_train = None
    if args.tstr or args.audit:
        train_root = args.real_train or meta["data"].get("root")
        if train_root is not None and Path(train_root).exists():
            split = args.real_train_split or (meta.get("data_split") if args.real_train is None else None)
            real_train = load_labelled(cfg, train_root, split, what="real training")
    features, features_name, features_info = _features(args)
    if features is None:
        features_name = f"judge classifier ({args.classifier})"
    settings = EvalSettings(
        seed=args.seed,
        k=args.k,
        n_draws=args.draws,
        tstr=args.tstr,
        tstr_epochs=args.tstr_epochs or int(meta.get("epochs", 20)),
        tstr_max_minutes=args.tstr_max_minutes,
        batch_size=int(meta.get("batch_size", 16)),
        lr=float(meta.get("lr", 1e-3)),
        device=device,
        audit=args.audit,
    )
    outcome = evaluate(
        real,
        synthetic,
        judge,
        meta,
        settings,
        features=features,
        features_name=features_name,
        features_info=features_info,
        real_train=real_train,
    )
    command = "volgan " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    paths = write_report(outcome, args.out, command)
    _print_headline(outcome.metrics, paths)
    return 0


def _features(args: argparse.Namespace) -> tuple[Any, str, dict[str, Any] | None]:
    """--features: a standard extractor (medicalnet:…, radimagenet2.5d:…), a TorchScript file, or none."""
    from volgan.evaluation.classifier import load_feature_network
    from volgan.evaluation.extractors import load_standard_extractor

    if args.features is None:
        if args.features_size is not None:
            raise VolganError("--features-size applies to --features medicalnet:… or radimagenet2.5d:… only")
        return None, "", None
    standard = load_standard_extractor(str(args.features), args.features_size)
    if standard is not None:
        return standard.module, f"{standard.info['name']} ({Path(standard.info['weights']).name})", standard.info
    if args.features_size is not None:
        raise VolganError("--features-size applies to --features medicalnet:… or radimagenet2.5d:… only")
    return load_feature_network(Path(args.features)), f"TorchScript network {args.features}", None


def _print_headline(m: dict[str, Any], paths: dict[str, Path]) -> None:
    overall = m["distribution"].get("overall", {})
    syn, ref = overall.get("synthetic", {}), overall.get("reference", {})

    def pair(key: str) -> str:
        a, b = syn.get(key), ref.get(key)
        return f"{'–' if a is None else f'{a:.3g}'} (real-vs-real {'–' if b is None else f'{b:.3g}'})"

    acc = m["conditional_accuracy"]["overall"]
    lines = [
        f"report:  {paths['report']}",
        f"metrics: {paths['metrics']}",
        f"  FD {pair('fd')}; precision {pair('precision')}; recall {pair('recall')}; coverage {pair('coverage')}",
        f"  conditional accuracy {acc['synthetic']:.3f} (real test {acc['real']:.3f})",
    ]
    use = m.get("usefulness", {})
    if "tstr" in use:
        trtr = use.get("trtr", {}).get("accuracy")
        lines.append(f"  TSTR accuracy {use['tstr']['accuracy']:.3f} (TRTR {'–' if trtr is None else f'{trtr:.3f}'})")
    if "memorisation" in m:
        voxel = m["memorisation"]["spaces"]["voxel"]["overall"]
        lines.append(
            f"  memorisation: {voxel['p1']['share']:.3f} / {voxel['p5']['share']:.3f} of synthetic volumes closer to a "
            f"training volume than the held-out 1st / 5th percentile (voxels); {m['memorisation']['verdict']}"
        )
    print("\n".join(lines))
