"""Time to quality: train for a wall-clock budget and score the generator on held-out data at K points.

    python benchmarks/time_to_quality.py --data phantom64 --minutes 60 --points 6
    python benchmarks/time_to_quality.py --data adrenal64 --size 32 --minutes 20 --points 4
    python benchmarks/time_to_quality.py --data modelnet32 --minutes 20 --points 4
    python benchmarks/time_to_quality.py --data DIR --held-out DIR2 --config my.yaml --minutes 30 --points 3
    python benchmarks/time_to_quality.py --data phantom64 --contenders volgan \\
        --variant narrow:model.ngf=16,model.ndf=16 --variant wide:model.ngf=48    # ablations in one run
    python benchmarks/time_to_quality.py --data phantom64 --rescore OUT/time_to_quality.json --splits 5 --out OUT

Each contender trains for ``--minutes`` split into ``--points`` equal chunks, one contender after
another. After every chunk the generator (volgan: the EMA weights of the checkpoint, exactly as
``volgan sample`` loads them; the yardstick: its G) makes ``--n`` volumes per class, which get
``volgan evaluate``'s metrics against the held-out split: FD next to its real-vs-real reference,
precision/recall/density/coverage, the voxel-intensity Wasserstein-1 next to its reference (no
judge involved: it sees blur and grey values the judge's features can miss), within-class MS-SSIM
and 1 − voxel correlation (synthetic next to real) and the judge's conditional accuracy (synthetic
next to real). The judge is trained once per dataset on the training split and cached in
``--out``. Evaluation time is not training time.

The real-vs-real reference comes from one random half split of the held-out set; with a few dozen
held-out volumes per half it varies by an order of magnitude from split to split (the run prints
its spread over 20 splits first). ``--splits R`` averages every metric of a point over R splits
(R times the evaluation time), so FD / reference stops depending on the one split a seed draws.

The yardstick (``../shared/bench/naive_cwgan.py``, ``--yardstick PATH``) trains on the same
batches (volgan's batch size and data order) with its own schedule (``critic_step``'s n_critic).
Writes ``OUT/time_to_quality.json`` (everything), ``OUT/time_to_quality.png`` (the curves) and
``OUT/time_to_quality_samples.png`` (a few volumes of each class at every point, the held-out ones
on top).
Every point's weights stay in ``OUT/runs/`` (volgan: the checkpoint its chunk ended with; the
yardstick: ``runs/yardstick/point_K.pt``), so a finished run can be scored again on more splits
without training: the same command with ``--rescore OUT/time_to_quality.json --splits 5`` (same
``--out``, so the cached judge is reused) writes ``OUT/time_to_quality_rescored.{json,png}`` and
``OUT/time_to_quality_rescored_samples.png``. Volumes are scored as ``volgan sample`` gives them
(cleaned where the run set ``sample.clean``); ``--clean train`` cleans every contender's volumes as
the training split implies (runs from before ``sample.clean``, the yardstick's), ``--clean off``
none (the files get a ``_clean-train`` / ``_clean-off`` suffix).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _harness import DEFAULT_YARDSTICK, load_yardstick, machine_line

from volgan.config import DataConfig, build_config, merge_dicts, parse_override, read_yaml
from volgan.data.volume_set import VolumeSet
from volgan.evaluation.curve import reference_spread
from volgan.evaluation.evaluate import Labelled

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BUILT_IN = {
    "phantom64": "built-in head phantom: train = make_phantom_set(seed 0), held out = seed 1",
    "adrenal64": "AdrenalMNIST3D: train split -> train, val split -> held out",
    "modelnet32": "ModelNet10 chair + monitor: the last 15 % of each class file held out",
}
ADRENAL = SHARED / "adrenalmnist3d" / "adrenalmnist3d_64_trainval.npz"
MODELNET = SHARED / "modelnet10_32"
MODELNET_CONFIG = REPO / "config" / "examples" / "voxel32.yaml"  # the voxel32 preset
# table columns: (heading, point key, format)
COLUMNS = (
    ("min", "minutes", "{:.2f}"),
    ("steps", "steps", "{:d}"),
    ("FD", "fd", "{:.4g}"),
    ("FD ref", "fd_ref", "{:.4g}"),
    ("FD/ref", "fd_ratio", "{:.2f}"),
    ("PCA-FD/ref", "pca_fd_ratio", "{:.2f}"),
    ("prec", "precision", "{:.2f}"),
    ("recall", "recall", "{:.2f}"),
    ("dens", "density", "{:.2f}"),
    ("cover", "coverage", "{:.2f}"),
    ("W1", "w1_intensity", "{:.4f}"),
    ("W1 ref", "w1_intensity_ref", "{:.4f}"),
    ("MS-SSIM", "ms_ssim", "{:.3f}"),
    ("real", "ms_ssim_real", "{:.3f}"),
    ("1-corr", "diversity", "{:.3f}"),
    ("real", "diversity_real", "{:.3f}"),
    ("speckle", "speckle_share", "{:.3f}"),
    ("real", "speckle_share_real", "{:.3f}"),
    ("comps", "components", "{:.1f}"),
    ("real", "components_real", "{:.1f}"),
    ("holes", "holes", "{:.1f}"),
    ("real", "holes_real", "{:.1f}"),
    ("cond acc", "cond_acc", "{:.3f}"),
    ("real", "cond_acc_real", "{:.3f}"),
    ("eval s", "eval_seconds", "{:.0f}"),
)


@dataclass
class Dataset:
    name: str
    train: VolumeSet
    held_out: Labelled
    data_cfg: DataConfig
    description: str


def overrides_of(texts: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for text in texts:
        out = merge_dicts(out, parse_override(text))
    return out


def common_config(a: argparse.Namespace) -> dict[str, Any]:
    """--config (modelnet32: the 3D-GAN example config), then --size and --set; no variant yet."""
    if a.config:
        base = read_yaml(Path(a.config))
    elif a.data == "modelnet32":
        base = read_yaml(MODELNET_CONFIG)
    else:
        base = {}
    sets = list(a.set) + ([f"data.size={a.size}"] if a.size else [])
    if a.data == "modelnet32":
        sets.insert(0, "data.binary=true")
    return merge_dicts(base, overrides_of(sets))


def as_labelled(vs: VolumeSet, source: str) -> Labelled:
    return Labelled(np.asarray(vs.volumes), np.asarray(vs.labels), list(vs.class_names), source)


def load_dataset(a: argparse.Namespace, data_cfg: DataConfig) -> Dataset:
    from volgan.data.dataset import load_volumes

    if a.data == "phantom64":
        from volgan.data import phantom

        names = list(phantom.CLASS_NAMES)
        train = VolumeSet.from_arrays(*phantom.make_phantom_set(a.phantom_train, data_cfg.size, 0), names)
        vols, labels = phantom.make_phantom_set(a.phantom_held_out, data_cfg.size, 1)
        held = Labelled(vols, labels, names, f"phantoms, seed 1, {a.phantom_held_out} per class")
        return Dataset(a.data, train, held, data_cfg, BUILT_IN[a.data])
    if a.data == "adrenal64":
        train = load_volumes(data_cfg.model_copy(update={"npz_split": "train"}), ADRENAL)
        val = load_volumes(data_cfg.model_copy(update={"npz_split": "val"}), ADRENAL)
        return Dataset(a.data, train, as_labelled(val, f"{ADRENAL} [val]"), data_cfg, BUILT_IN[a.data])
    if a.data == "modelnet32":
        full = load_volumes(data_cfg, MODELNET)
        keep, hold = [], []
        for k in range(full.num_classes):
            idx = np.flatnonzero(full.labels == k)  # file order: the last 15 % of each class file is held out
            cut = len(idx) - max(1, round(0.15 * len(idx)))
            keep.append(idx[:cut])
            hold.append(idx[cut:])
        tr, ho = np.concatenate(keep), np.concatenate(hold)
        vols = np.asarray(full.volumes)
        train = VolumeSet.from_arrays(
            vols[tr],
            full.labels[tr],
            full.class_names,
            full.spacing,
            full.intensity_range,
            [full.sources[i] for i in tr],
        )
        held = Labelled(vols[ho], full.labels[ho], list(full.class_names), f"{MODELNET} (last 15 % per class)")
        return Dataset(a.data, train, held, data_cfg, BUILT_IN[a.data])
    root = Path(a.data)
    if a.held_out is None and root.suffix.lower() != ".npz":
        raise SystemExit(f"--data {root}: pass --held-out DIR (the data to score against), or use a built-in set")
    train = load_volumes(
        data_cfg.model_copy(update={"npz_split": "train"}) if root.suffix == ".npz" else data_cfg, root
    )
    held_root = Path(a.held_out) if a.held_out else root
    held_cfg = data_cfg.model_copy(update={"npz_split": "val"}) if held_root.suffix.lower() == ".npz" else data_cfg
    held = as_labelled(load_volumes(held_cfg, held_root), str(held_root))
    return Dataset(str(root), train, held, data_cfg, f"{root} -> train, {held_root} -> held out")


def judge_for(ds: Dataset, a: argparse.Namespace, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The judge classifier trained on the training split, cached in OUT/judge-<dataset>-<size>/."""
    from volgan.evaluation.classifier import load_classifier, save_classifier, train_classifier

    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(ds.name).name)
    folder = Path(a.out) / f"judge-{tag}-{ds.data_cfg.size}"
    key = {
        "dataset": ds.name,
        "n_train": len(ds.train.labels),
        "classes": ds.train.class_names,
        "epochs": a.judge_epochs,
        "kept_epoch": "best balanced held-out accuracy",  # a judge kept by plain accuracy is retrained
    }
    if (folder / "classifier.pt").exists():
        judge, meta = load_classifier(folder)
        if meta.get("time_to_quality") == key and meta["size"] == ds.data_cfg.size:
            print(
                f"judge: reusing {folder} (held-out accuracy {meta.get('held_out_accuracy')}, "
                f"balanced {meta.get('held_out_balanced_accuracy')})",
                file=sys.stderr,
            )
            return judge, meta
    t0 = time.perf_counter()
    vols = np.asarray(ds.train.volumes)
    judge, report = train_classifier(
        vols, ds.train.labels, ds.train.num_classes, epochs=a.judge_epochs, seed=a.seed, device=device
    )
    meta = {
        "class_names": list(ds.train.class_names),
        "size": ds.data_cfg.size,
        "intensity": "[-1, 1]",
        "data": ds.data_cfg.model_dump(mode="json"),
        "epochs": a.judge_epochs,
        "batch_size": 16,
        "lr": 1e-3,
        "held_out_accuracy": report.val_accuracy,
        "held_out_balanced_accuracy": report.val_balanced_accuracy,
        "n_train": report.n_train,
        "seconds": round(time.perf_counter() - t0, 1),
        "time_to_quality": key,
    }
    save_classifier(folder, judge, meta)
    print(
        f"judge: trained in {meta['seconds']} s, held-out accuracy {report.val_accuracy} "
        f"(balanced {report.val_balanced_accuracy})",
        file=sys.stderr,
    )
    return judge.eval(), meta


class Scorer:
    """Scores (N, S, S, S) volumes in [-1, 1] generated for ``labels`` against the held-out set, and
    keeps a few slices of each scored set for the samples figure (``shown``: (source, slices))."""

    def __init__(self, ds: Dataset, judge: Any, meta: dict[str, Any], a: argparse.Namespace, device: Any) -> None:
        from volgan.evaluation.structure import PCASpace, mean_structure, otsu_level, per_volume, structure_spread

        self.ds, self.judge, self.meta, self.a, self.device = ds, judge, meta, a, device
        self.shown: list[tuple[str, np.ndarray]] = []
        # the second feature space (no network trained for it) and the speckle level, from real data only
        self.pca = PCASpace.fit(np.asarray(ds.train.volumes), seed=a.seed)
        self.real_pca = self.pca.features(ds.held_out.volumes)  # once: the held-out set never changes
        self.level = otsu_level(ds.held_out.volumes)
        real = per_volume(ds.held_out.volumes, self.level)  # labelled once for the means and the spread
        self.real_structure = {f"{k}_real": v for k, v in mean_structure(real).items()}
        # how far two halves of the held-out set are apart in each: real data's own spread
        spread = structure_spread(real, ds.held_out.labels, seed=a.seed)
        self.real_structure |= {f"{k}_real_spread": v for k, v in spread.items()}
        told = (f"{k} {self.real_structure[k + '_real']:.3g} (halves within {v:.2f}x)" for k, v in spread.items())
        print("structure of the held-out set: " + ", ".join(told), file=sys.stderr)
        # --clean train: every contender's volumes cleaned as sample.clean would clean them for this data
        self.cleanup = None
        if a.clean == "train":
            from volgan.cleanup import measure
            from volgan.planning.fingerprint import fingerprint_volumes

            binary = ds.data_cfg.binary or fingerprint_volumes(ds.train).occupancy_like
            self.cleanup = measure(np.asarray(ds.train.volumes), binary, ds.data_cfg.threshold)
            print(f"--clean train: {self.cleanup.describe()}", file=sys.stderr)

    def finish(self, volumes: np.ndarray) -> np.ndarray:
        return volumes if self.cleanup is None else self.cleanup(volumes)

    def labels(self) -> torch.Tensor:
        return torch.arange(self.ds.train.num_classes).repeat_interleave(self.a.n)

    def __call__(self, volumes: np.ndarray, source: str) -> dict[str, Any]:
        from volgan.evaluation.curve import curve_metrics
        from volgan.evaluation.labelled import as_loaded
        from volgan.evaluation.structure import pca_fd, structure

        t0 = time.perf_counter()
        synthetic = Labelled(
            as_loaded(volumes, self.ds.data_cfg), self.labels().numpy(), list(self.ds.train.class_names), source
        )
        point: dict[str, Any] = dict(
            curve_metrics(
                self.judge,
                self.meta,
                self.ds.held_out,
                synthetic,
                seed=self.a.seed,
                n_draws=self.a.draws,
                n_splits=self.a.splits,
                device=self.device,
            )
        )
        point |= pca_fd(
            self.real_pca,
            self.ds.held_out.labels,
            self.pca.features(synthetic.volumes),
            seed=self.a.seed,
            n_splits=self.a.splits,
            n_draws=self.a.draws,
        )
        point |= structure(synthetic.volumes, self.level) | self.real_structure
        point["eval_seconds"] = time.perf_counter() - t0
        self.shown.append((source, fullest_slices(synthetic.volumes, synthetic.labels, SHOWN_PER_CLASS)))
        return point


SHOWN_PER_CLASS = 4  # volumes per class in the samples figure (the first ones: the same latents every point)


def fullest_slices(volumes: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """The axial slice with the most foreground of the first ``per_class`` volumes of each class
    (a small object off the grid's centre would miss the middle slice), classes in order."""
    picked = [i for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:per_class]]
    out = []
    for i in picked:
        v = np.asarray(volumes[i], dtype=np.float32)
        mass = (v - v.min()).sum(axis=(0, 1))  # per slice along the last (axial) grid axis
        out.append(v[:, :, int(np.argmax(mass))])
    return np.stack(out)


def plot_samples(shown: list[tuple[str, np.ndarray]], real: np.ndarray, path: Path, title: str) -> None:
    """One row per scored point (its first volumes of each class), the held-out volumes on top:
    ``volgan.figures.save_image_grid``, slices oriented as volgan's other figures show them."""
    from volgan.figures import save_image_grid

    def images(slices: np.ndarray) -> list[np.ndarray]:  # [-1, 1] -> [0, 1], anterior at the top
        return [np.clip((s.T[::-1] + 1) / 2, 0.0, 1.0) for s in slices]

    # "volgan (EMA, step 390, re-scored)" -> one short line each, so the row label fits its row
    cells = {"held-out\nreal": images(real)}
    cells |= {label.rstrip(")").replace(" (", "\n").replace(", ", "\n"): images(s) for label, s in shown}
    how = f"axial slice with the most foreground; the first {SHOWN_PER_CLASS} of each class, classes left to right"
    cols = max(len(v) for v in cells.values())
    save_image_grid(cells, path, cell_size_in=(1.5, 1.5), title=f"{title}\n{how}", column_titles=[""] * cols)


def volgan_volumes(checkpoint: Path | str, score: Scorer, a: argparse.Namespace, device: Any) -> np.ndarray:
    """--n volumes per class from a checkpoint's EMA generator, exactly as ``volgan sample`` loads it."""
    from volgan.sampling import generate, load_generator

    loaded = load_generator(checkpoint, ema=True, device=device, clean=a.clean == "checkpoint")
    volumes = generate(loaded.generator, score.labels(), a.seed, 0, 8, device, loaded.autocast).numpy()
    return score.finish(loaded.finish(volumes))


def yardstick_volumes(naive: Any, g: torch.nn.Module, score: Scorer, a: argparse.Namespace, device: Any) -> np.ndarray:
    """--n volumes per class from the yardstick's G, latents of --seed."""
    y = score.labels().to(device)
    z = torch.randn(len(y), naive.Z, generator=torch.Generator().manual_seed(a.seed)).to(device)
    with torch.no_grad():
        volumes = torch.cat([g(z[j : j + 8], y[j : j + 8])[:, 0].cpu() for j in range(0, len(y), 8)]).numpy()
    return score.finish(volumes)


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """The module's state dict, written atomically (torch.load(weights_only=True) reads it back)."""
    from volgan.checkpoint import atomic_write

    atomic_write(path, lambda f: torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, f))


def run_volgan(
    name: str, cfg_dict: dict[str, Any], ds: Dataset, score: Scorer, a: argparse.Namespace
) -> dict[str, Any]:
    """Train in RUN = OUT/runs/NAME, one Trainer.fit() of train.max_minutes = M/K per point.

    A ``train.steps`` or ``train.budget_minutes`` the config or variant sets is kept (they shape
    schedules such as ``train.lr_decay``): the run then ends there or at the benchmark's budget,
    whichever comes first."""
    from volgan.device import resolve_device
    from volgan.training import Trainer

    run_dir = Path(a.out) / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # this benchmark's own scratch folder from an earlier run
    forced = {
        "run_dir": str(run_dir),
        "seed": a.seed,
        # the clock ends every chunk, unless the config's own train.steps comes first
        "train": {"max_minutes": a.minutes / a.points, "steps": cfg_dict.get("train", {}).get("steps", 10**9)},
        # a record every step (a chunk shorter than log.every steps would otherwise end with no
        # stats record, and the end-of-fit loss figure refuses an empty log); one checkpoint per
        # point, the one each chunk ends with, all kept for --rescore
        "log": {"progress_bar": False, "every": 1, "checkpoint_every": 10**9, "keep_checkpoints": a.points},
    }
    cfg = build_config(merge_dicts(cfg_dict, forced), f"<time_to_quality: {name}>")
    trainer = Trainer(cfg, ds.train)
    device = resolve_device(cfg.device)
    points, minutes = [], 0.0
    for k in range(a.points):
        t0 = time.perf_counter()
        result = trainer.fit()
        minutes += (time.perf_counter() - t0) / 60
        saved = result.checkpoint or run_dir  # fit() always ends with a checkpoint
        point = {"point": k + 1, "minutes": minutes, "steps": result.step, "checkpoint": str(saved.resolve())}
        point |= score(volgan_volumes(saved, score, a, device), f"{name} (EMA, step {result.step})")
        points.append(point)
        progress(name, point)
        if result.interrupted or result.step >= cfg.train.steps or trainer.budget_spent() >= 1.0:
            break
    return {"kind": "volgan", "run_dir": str(run_dir), "config": cfg.to_dict(), "points": points}


def planned_contender(a: argparse.Namespace, ds: Dataset) -> tuple[dict[str, Any], Dataset, dict[str, Any]]:
    """``volgan train --data D --minutes M`` (plus any ``--set``, as a user's own settings): the
    planner's config for the raw source's fingerprint on this machine, and its own copy of the
    training set when the plan reads the data differently (e.g. ``data.binary``); the held-out set
    stays the benchmark's. The benchmark's grid is passed as ``data.size``: every contender is
    scored at the held-out set's grid."""
    from volgan.data.dataset import load_volumes
    from volgan.device import resolve_device
    from volgan.planning import fingerprint_path, fingerprint_volumes, make_plan

    start = time.perf_counter()
    if a.data == "phantom64":
        fp = fingerprint_volumes(ds.train)
    elif a.data == "adrenal64":
        fp = fingerprint_path(DataConfig(npz_split="train"), ADRENAL)
    elif a.data == "modelnet32":
        fp = fingerprint_path(DataConfig(), MODELNET)  # the class folders a user would pass (15 % held out here)
    else:
        root = Path(a.data)
        fp = fingerprint_path(DataConfig(npz_split="train") if root.suffix.lower() == ".npz" else DataConfig(), root)
    fingerprint_s = time.perf_counter() - start
    user = merge_dicts(overrides_of(a.set), {"data": {"size": ds.data_cfg.size}})  # --set: the user's own settings
    plan = make_plan(fp, a.minutes, user, device=str(resolve_device("auto").type), threads=torch.get_num_threads())
    cfg_dict = merge_dicts(plan.overrides(), user)
    data_cfg = build_config(cfg_dict, "<planned>").data
    if data_cfg.model_dump(exclude={"root"}) != ds.data_cfg.model_dump(exclude={"root"}) and a.data != "phantom64":
        source = {"adrenal64": ADRENAL, "modelnet32": MODELNET}.get(a.data, Path(a.data))
        split = {"npz_split": "train"} if Path(source).suffix.lower() == ".npz" else {}
        train = load_volumes(data_cfg.model_copy(update=split), source)
        if a.data == "modelnet32":  # the same held-out files as the other contenders
            raise SystemExit("planned: modelnet32 read otherwise than the benchmark reads it is not handled")
        ds = Dataset(ds.name, train, ds.held_out, data_cfg, ds.description)
    meta = {"plan": plan.to_dict(), "fingerprint_seconds": fingerprint_s, "planning_seconds": plan.planning_seconds}
    print(
        f"planned ({fingerprint_s + plan.planning_seconds:.1f} s to fingerprint and plan):\n{plan.summary()}",
        flush=True,
    )
    return cfg_dict, ds, meta


def run_yardstick(
    path: Path, ds: Dataset, batch: int, score: Scorer, a: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """naive_cwgan's G/D/Adam from its make(); volgan's batches; its critic_step() schedule."""
    from volgan.data.stream import BatchStream

    if device.type == "cuda":
        torch.set_default_device(device)  # the yardstick makes its tensors (and the penalty's alpha) there
    naive = load_yardstick(path)
    shutil.rmtree(Path(a.out) / "runs" / "yardstick", ignore_errors=True)  # its points from an earlier run
    size, n_classes = ds.data_cfg.size, ds.train.num_classes
    g, d, og, od, _, _ = naive.make(size, batch, n_classes)
    n_critic = int(inspect.signature(naive.critic_step).parameters["n_critic"].default)
    stream = BatchStream(len(ds.train.labels), batch, a.seed)
    labels = ds.train.labels.astype(np.int64)
    torch.manual_seed(a.seed)
    points, minutes, i = [], 0.0, 0
    for k in range(a.points):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 60 * a.minutes / a.points:
            idx = np.sort(stream.next())
            real = torch.from_numpy(np.ascontiguousarray(ds.train.volumes[idx], dtype=np.float32)).unsqueeze(1)
            y = torch.from_numpy(labels[idx]).to(device)
            naive.critic_step(i, g, d, og, od, real.to(device), y)
            i += 1
        minutes += (time.perf_counter() - t0) / 60
        steps = math.ceil(i / n_critic)  # critic_step updates G when i % n_critic == 0
        weights = Path(a.out) / "runs" / "yardstick" / f"point_{k + 1}.pt"  # for --rescore
        save_weights(g, weights)
        point = {
            "point": k + 1,
            "minutes": minutes,
            "steps": steps,
            "critic_steps": i,
            "weights": str(weights.resolve()),
        }
        point |= score(yardstick_volumes(naive, g, score, a, device), f"yardstick (step {steps})")
        points.append(point)
        progress("yardstick", point)
    torch.set_default_device(None)
    return {"kind": "yardstick", "path": str(path), "batch_size": batch, "n_critic": n_critic, "points": points}


def rescore(path: Path, ds: Dataset, score: Scorer, a: argparse.Namespace, device: Any) -> dict[str, dict[str, Any]]:
    """Score every saved point of an earlier run (its time_to_quality.json) again with this
    command's --draws and --splits: the same volumes (same --seed and --n), a steadier score."""
    try:
        old = json.loads(path.read_text())
        contenders, settings, dataset = old["contenders"], old["settings"], old["dataset"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--rescore {path}: not a time_to_quality.json this benchmark wrote ({e})") from None
    if (dataset.get("name"), dataset.get("size")) != (ds.name, ds.data_cfg.size):
        raise SystemExit(
            f"--rescore {path}: written for {dataset.get('name')} at {dataset.get('size')}³, "
            f"this command scores {ds.name} at {ds.data_cfg.size}³"
        )
    if (settings.get("seed"), settings.get("n_per_class")) != (a.seed, a.n):
        raise SystemExit(
            f"--rescore {path}: pass its --seed {settings.get('seed')} and --n {settings.get('n_per_class')} "
            "so that the same volumes are drawn"
        )
    a.minutes, a.points = settings["minutes"], settings["points"]
    results: dict[str, dict[str, Any]] = {}
    for name, c in contenders.items():
        points = []
        if c["kind"] != "volgan":  # the yardstick's G, built once; each point loads its weights
            naive = load_yardstick(Path(c["path"]) if Path(c["path"]).exists() else Path(a.yardstick))
            g = naive.make(ds.data_cfg.size, c["batch_size"], ds.train.num_classes)[0].to(device)
        for p in c["points"]:
            saved = Path(p.get("checkpoint") or p.get("weights") or "")
            if not saved.name or not saved.is_file():
                raise SystemExit(
                    f"--rescore {path}: {name}'s point {p['point']} has no saved weights "
                    f"({saved if saved.name else 'an earlier version kept none'}); train it again"
                )
            if c["kind"] == "volgan":
                vols = volgan_volumes(saved, score, a, device)
            else:
                g.load_state_dict(torch.load(saved, map_location=device, weights_only=True))
                vols = yardstick_volumes(naive, g, score, a, device)  # in the mode it was scored in
            keep = {k: p[k] for k in ("point", "minutes", "steps", "critic_steps", "checkpoint", "weights") if k in p}
            point = keep | score(vols, f"{name} (step {p['steps']}, re-scored)")
            points.append(point)
            progress(name, point)
        results[name] = {**c, "points": points, "rescored_from": str(path)}
        print(table(name, points), flush=True)
    return results


def fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return spec.format(value)


def progress(name: str, p: dict[str, Any]) -> None:
    two = "{:.2f}"
    print(
        f"{name}: point {p['point']}, {p['minutes']:.2f} min, {p['steps']} steps: FD/ref {fmt(p['fd_ratio'], two)}, "
        f"PCA-FD/ref {fmt(p.get('pca_fd_ratio'), two)}, recall {fmt(p['recall'], two)}, "
        f"coverage {fmt(p['coverage'], two)}, speckle {fmt(p.get('speckle_share'), '{:.3f}')} "
        f"(real {fmt(p.get('speckle_share_real'), '{:.3f}')}) ({p['eval_seconds']:.0f} s eval)",
        file=sys.stderr,
        flush=True,
    )


def table(name: str, points: list[dict[str, Any]]) -> str:
    widths = [max(len(h), 7) for h, _, _ in COLUMNS]
    lines = [name, "  ".join(f"{h:>{w}}" for (h, _, _), w in zip(COLUMNS, widths, strict=True))]
    for p in points:
        lines.append("  ".join(f"{fmt(p.get(k), f):>{w}}" for (_, k, f), w in zip(COLUMNS, widths, strict=True)))
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("FD / real-vs-real FD", "fd_ratio", None),
        ("recall", "recall", "recall_ref"),
        ("coverage", "coverage", "coverage_ref"),
        ("voxel-intensity W1", "w1_intensity", "w1_intensity_ref"),
        ("within-class MS-SSIM", "ms_ssim", "ms_ssim_real"),
        ("conditional accuracy", "cond_acc", "cond_acc_real"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), layout="constrained")
    for ax, (label, key, ref) in zip(axes, panels, strict=True):
        for name, r in results.items():
            pts = [p for p in r["points"] if p.get(key) is not None]
            ax.plot([p["minutes"] for p in pts], [p[key] for p in pts], "o-", label=name)
            refs = [p[ref] for p in r["points"] if ref and p.get(ref) is not None]
            if refs:  # the same held-out set for everyone: one dashed line per metric would do
                ax.axhline(float(np.mean(refs)), color="grey", ls="--", lw=1)
        if key == "fd_ratio":
            ax.axhline(1.0, color="grey", ls="--", lw=1)
            ax.set_yscale("log")
        ax.set_title(label + ("" if key == "fd_ratio" else " (dashed: real)"), fontsize=9)
        ax.set_xlabel("training minutes")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, sets = text.partition(":")
    if not sep or not name or not sets:
        raise SystemExit(f"--variant {text!r}: expected NAME:key=value[,key=value...], e.g. style:model.style=true")
    keys = [s.strip() for s in re.split(r",(?=[\w.]+=)", sets) if s.strip()]
    if any(k.startswith("data.") for k in keys):
        raise SystemExit(f"--variant {text!r}: data.* keys would change the data set; pass them with --set")
    return name, keys


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help=f"{', '.join(BUILT_IN)}, or a data folder/.npz (with --held-out)")
    ap.add_argument("--held-out", help="held-out data for --data PATH (an .npz PATH defaults to its val split)")
    ap.add_argument("--size", type=int, help="training grid (e.g. 32 for a quick phantom64/adrenal64 run)")
    ap.add_argument("--minutes", type=float, help="training budget per contender (required unless --rescore)")
    ap.add_argument("--points", type=int, default=4, help="evaluations, one after each M/K minutes")
    ap.add_argument(
        "--contenders",
        default="volgan,yardstick",
        help="comma list of volgan, planned (the planner's recipe), yardstick",
    )
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,... another volgan contender")
    ap.add_argument("--config", help="volgan's config (default: volgan's defaults; modelnet32: its example config)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        help="key=value for every volgan contender (the planned one: as your own setting)",
    )
    ap.add_argument(
        "--out", default="runs/time_to_quality", help="output folder (judge cache, runs, JSON, PNG); --replot: the PNG"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--n", type=int, default=64, help="synthetic volumes per class at each point")
    ap.add_argument("--draws", type=int, default=3, help="synthetic subsamples per distribution metric")
    ap.add_argument("--splits", type=int, default=1, help="real-vs-real half splits each point is averaged over")
    ap.add_argument("--judge-epochs", type=int, default=20)
    ap.add_argument("--phantom-train", type=int, default=96, help="phantom64: training phantoms per class")
    ap.add_argument("--phantom-held-out", type=int, default=32, help="phantom64: held-out phantoms per class")
    ap.add_argument("--yardstick", default=str(DEFAULT_YARDSTICK), help="path of naive_cwgan.py")
    ap.add_argument(
        "--rescore", metavar="JSON", help="train nothing: score the saved points of an earlier run's JSON again"
    )
    ap.add_argument(
        "--clean",
        choices=["checkpoint", "train", "off"],
        default="checkpoint",
        help="checkpoint: volgan's volumes as `volgan sample` gives them (cleaned where the run set sample.clean); "
        "train: every contender's volumes (the yardstick's too) cleaned as sample.clean would clean them for "
        "the training split, e.g. to re-score runs from before it; off: every contender's volumes raw",
    )
    ap.add_argument("--replot", metavar="JSON", help="train and score nothing: draw an earlier run's curves again")
    a = ap.parse_args()
    if a.replot:
        old = json.loads(Path(a.replot).read_text())
        out = Path(a.replot).with_suffix(".png") if a.out == ap.get_default("out") else Path(a.out)
        ds = old["dataset"]
        plot(
            old["contenders"],
            out,
            f"{Path(ds['name']).name} {ds['size']}³, {old['settings']['minutes']:g} min; {old['machine']}",
        )
        print(f"wrote {out}")
        return
    if a.data is None:
        raise SystemExit("--data is required (or --replot an earlier run's JSON)")
    if a.rescore is None and a.minutes is None:
        raise SystemExit("--minutes is required (or --rescore an earlier run's JSON)")
    if (a.minutes is not None and a.minutes <= 0) or a.points < 1 or a.n < 2 or a.splits < 1:
        raise SystemExit("--minutes must be > 0, --points >= 1, --n >= 2 and --splits >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    from volgan.device import resolve_device

    contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    unknown = set(contenders) - {"volgan", "planned", "yardstick"}
    if unknown:
        raise SystemExit(f"--contenders: unknown {sorted(unknown)}; use volgan, planned, yardstick (and --variant)")
    variants = [parse_variant(v) for v in a.variant]
    common = common_config(a)
    cfg = build_config(common, "<time_to_quality>")
    device = resolve_device(cfg.device)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    ds = load_dataset(a, cfg.data)
    if list(ds.held_out.class_names) != list(ds.train.class_names) or ds.train.num_classes < 2:
        raise SystemExit(
            f"train classes {ds.train.class_names} and held-out {ds.held_out.class_names} must match (>= 2)"
        )
    judge, meta = judge_for(ds, a, device)
    score = Scorer(ds, judge, meta, a, device)
    spread = reference_spread(judge, ds.held_out, n_splits=20, seed=a.seed, device=device)
    used = f"split {a.seed}" if a.splits == 1 else f"the mean of splits {a.seed}-{a.seed + a.splits - 1}"
    print(
        f"real-vs-real FD of the held-out set over 20 half splits: median {spread['median']:.4g}, "
        f"10-90 % {spread['q10']:.4g}-{spread['q90']:.4g}, range {spread['min']:.4g}-{spread['max']:.4g}; "
        f"each point uses {used}",
        flush=True,
    )

    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    if a.rescore:
        results = rescore(Path(a.rescore), ds, score, a, device)
        notes.append(f"re-scored the saved points of {a.rescore}; no training")
        contenders, variants = [], []
    for name in contenders:
        if name == "volgan":
            results["volgan"] = run_volgan("volgan", common, ds, score, a)
        elif name == "planned":
            planned_cfg, planned_ds, planned_meta = planned_contender(a, ds)
            results["planned"] = run_volgan("planned", planned_cfg, planned_ds, score, a) | planned_meta
        elif a.yardstick == "none" or not Path(a.yardstick).exists():
            notes.append(f"yardstick skipped: {a.yardstick} not found (pass --yardstick PATH)")
        elif ds.data_cfg.size & (ds.data_cfg.size - 1):
            notes.append(f"yardstick skipped: it builds power-of-two grids only, not {ds.data_cfg.size}³")
        else:
            results["yardstick"] = run_yardstick(Path(a.yardstick), ds, cfg.train.batch_size, score, a, device)
        if name in results:
            print(table(name, results[name]["points"]), flush=True)
    for name, sets in variants:
        results[name] = run_volgan(name, merge_dicts(common, overrides_of(sets)), ds, score, a)
        results[name]["variant"] = sets
        print(table(name, results[name]["points"]), flush=True)
    for note in notes:
        print(note)

    summary = {
        "machine": machine_line(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "dataset": {
            "name": ds.name,
            "description": ds.description,
            "size": ds.data_cfg.size,
            "classes": list(ds.train.class_names),
            "n_train": ds.train.class_counts(),
            "n_held_out": {c: int((ds.held_out.labels == k).sum()) for k, c in enumerate(ds.held_out.class_names)},
        },
        "judge": {
            k: meta.get(k) for k in ("held_out_accuracy", "held_out_balanced_accuracy", "epochs", "n_train", "seconds")
        },
        "settings": {
            "minutes": a.minutes,
            "points": a.points,
            "n_per_class": a.n,
            "draws": a.draws,
            "splits": a.splits,
            "seed": a.seed,
            "clean": a.clean,
        },
        "reference_spread": spread,
        "notes": notes,
        "contenders": results,
    }
    stem = Path(a.out) / ("time_to_quality_rescored" if a.rescore else "time_to_quality")
    stem = stem.with_name(stem.name + ("" if a.clean == "checkpoint" else f"_clean-{a.clean}"))
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    title = f"{ds.name} {ds.data_cfg.size}³, {a.minutes:g} min; {machine_line()}, {torch.get_num_threads()} threads"
    plot(results, stem.with_suffix(".png"), title)
    samples = stem.with_name(stem.name + "_samples.png")
    real = fullest_slices(ds.held_out.volumes, ds.held_out.labels, SHOWN_PER_CLASS)
    plot_samples(score.shown, real, samples, title)
    print(f"{title}\nwrote {stem.with_suffix('.json')}, {stem.with_suffix('.png')} and {samples}")


if __name__ == "__main__":
    main()
