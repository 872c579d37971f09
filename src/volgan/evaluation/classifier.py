"""A small 3D CNN classifier for evaluation: feature extractor, judge of conditional accuracy, TSTR model.

``volgan evaluate`` trains it on real volumes and uses it three ways: its pooled features feed
the Fréchet distance and precision/recall, its predictions on generated volumes measure whether
a conditional generator honours its labels, and training it on synthetic volumes and testing on
real ones (TSTR, against TRTR) measures how useful the synthetic set is.

Files: ``classifier.pt`` (one plain, versioned dict: constructor arguments, state dict, meta;
loaded with ``weights_only=True``) and ``classifier.json`` (the same meta and arguments for people).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from volgan.checkpoint import load_weights
from volgan.errors import CheckpointError
from volgan.files import atomic_write

log = logging.getLogger("volgan")

FORMAT = "volgan-classifier"
VERSION = 1
FILE_NAME = "classifier.pt"
JSON_NAME = "classifier.json"
REQUIRED_META = ("class_names", "size", "intensity")
"""Keys every saved classifier's meta must hold: class names (list[str]), grid size (int) and the
intensity convention of its inputs (e.g. ``"[-1, 1]"``)."""
MIN_SIZE = 8

Extractor = Callable[[torch.Tensor], torch.Tensor]


class VolumeClassifier(nn.Module):
    """Volume (B, 1, S, S, S) in [-1, 1] -> class logits (B, num_classes); any S >= 8.

    Stride-2 Conv3d stages (InstanceNorm3d + LeakyReLU; no BatchNorm, so a sample's features do
    not depend on the rest of its batch) halve the grid while it is >= 8 voxels, ending at 4³-7³;
    channels double from ``width`` up to ``8 * width``. Global average pooling makes odd sizes
    work; a linear layer + LeakyReLU gives the ``feature_dim`` features, then dropout and a
    linear layer give the logits.
    """

    def __init__(self, size: int, num_classes: int, width: int = 16, feature_dim: int = 128) -> None:
        super().__init__()
        if size < MIN_SIZE:
            raise ValueError(f"classifier size must be >= {MIN_SIZE}, got {size}")
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        if width < 1 or feature_dim < 1:
            raise ValueError(f"width and feature_dim must be >= 1, got {width} and {feature_dim}")
        self.size, self.num_classes, self.width, self.feature_dim = size, num_classes, width, feature_dim
        layers: list[nn.Module] = []
        c_in, s, stage = 1, size, 0
        while s >= 8:
            c_out = min(width * 2**stage, 8 * width)
            layers += [
                nn.Conv3d(c_in, c_out, 3, stride=2, padding=1, bias=False),  # S -> ceil(S / 2)
                nn.InstanceNorm3d(c_out, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c_in, s, stage = c_out, math.ceil(s / 2), stage + 1
        self.stages = nn.Sequential(*layers)
        self.to_features = nn.Linear(c_in, feature_dim)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))

    @property
    def config(self) -> dict[str, int]:
        """The constructor arguments, as saved in ``classifier.pt``."""
        return {
            "size": self.size,
            "num_classes": self.num_classes,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, S, S, S) in [-1, 1] -> (B, feature_dim) features (after LeakyReLU, before dropout)."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected volumes of shape (B, 1, S, S, S), got {tuple(x.shape)}")
        pooled = self.stages(x).mean(dim=(2, 3, 4))
        return F.leaky_relu(self.to_features(pooled), 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, S, S, S) in [-1, 1] -> logits (B, num_classes)."""
        return self.head(self.features(x))


@dataclass
class ClassifierReport:
    """How training went; accuracies are fractions in [0, 1], measured without augmentation."""

    train_accuracy: float
    val_accuracy: float | None
    per_class_val_accuracy: dict[int, float]  # only classes present in the held-out set
    epochs_run: int
    n_train: int
    n_val: int
    seconds: float
    val_balanced_accuracy: float | None = None  # mean of per_class_val_accuracy; what the kept epoch maximised


def _check_set(volumes: np.ndarray, labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    """Validate a labelled set; returns the labels as int64."""
    if volumes.ndim != 4 or len(volumes) == 0 or not volumes.shape[1] == volumes.shape[2] == volumes.shape[3]:
        raise ValueError(f"{what} volumes must be a non-empty (N, S, S, S) array, got shape {volumes.shape}")
    lbl = np.asarray(labels)
    if lbl.shape != (len(volumes),) or lbl.dtype.kind not in "iu":
        raise ValueError(f"{what} labels must be ({len(volumes)},) integers, got shape {lbl.shape} {lbl.dtype}")
    if lbl.min() < 0 or lbl.max() >= num_classes:
        raise ValueError(f"{what} labels must lie in 0..{num_classes - 1}, got {lbl.min()}..{lbl.max()}")
    lo, hi = float(np.min(volumes)), float(np.max(volumes))
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:
        raise ValueError(f"{what} volumes must be finite and scaled to [-1, 1], got [{lo:.4g}, {hi:.4g}]")
    return lbl.astype(np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices with ``round(val_fraction * n_c)`` of each class held out (never all)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(round(val_fraction * len(idx)), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def augment_batch(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random flips along each spatial axis and integer shifts of up to ``max_shift`` voxels per sample.

    x: (B, 1, S, S, S) on the CPU -> (B, 1, S, S, S). Shifts pad by replicating the border, so no tissue
    wraps around to the other side of the grid.
    """
    b = x.shape[0]
    for dim in (2, 3, 4):
        flip = (torch.rand(b, generator=generator) < 0.5).view(b, 1, 1, 1, 1)
        x = torch.where(flip, x.flip(dim), x)
    if max_shift <= 0:
        return x
    s = x.shape[2:]
    padded = F.pad(x, (max_shift,) * 6, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 3), generator=generator).tolist()
    return torch.stack(
        [p[:, i : i + s[0], j : j + s[1], k : k + s[2]] for p, (i, j, k) in zip(padded, offsets, strict=True)]
    )


# long: the judge's whole recipe and its contract in one signature and docstring (36 lines); the steps are helpers
def train_classifier(
    volumes: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    augment: bool = True,
    max_minutes: float | None = None,
    val_set: tuple[np.ndarray, np.ndarray] | None = None,
    width: int = 16,
    feature_dim: int = 128,
    log_every_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[VolumeClassifier, ClassifierReport]:
    """Train a :class:`VolumeClassifier` on ``volumes`` (N, S, S, S) in [-1, 1] with ``labels`` (N,).

    The held-out set is ``val_set`` if given, else a seeded stratified ``val_fraction`` of the
    data (none if 0). Cross-entropy weighted by inverse class frequency keeps an imbalanced set
    from collapsing to its majority class. The weights of the epoch with the best balanced held-out
    accuracy (the mean of the per-class accuracies) are kept (ties: lower held-out loss), or the
    last epoch's without a held-out set: on a 78 % / 22 % set an epoch that calls everything the
    majority class scores 0.78 plain but 0.5 balanced, so plain accuracy could keep it.
    A kept judge no better than chance on the held-out set is logged as a warning.
    ``max_minutes`` stops after the epoch that exceeds it. ``log_every_epoch`` receives a dict
    (epoch, train_loss, val_accuracy, val_balanced_accuracy, val_loss, seconds) after every epoch.

    Calls ``torch.manual_seed(seed)``; on one CPU two runs with the same arguments give identical
    weights. On another CPU (other kernels) the weights differ by rounding that training amplifies.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    lbl, train_idx, val_x, val_y = _split_sets(volumes, labels, num_classes, val_fraction, val_set, seed)
    train_y = lbl[train_idx]
    size = volumes.shape[1]

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    model = VolumeClassifier(size, num_classes, width, feature_dim).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = _balanced_loss(train_y, num_classes, device)
    max_shift = max(1, size // 16)

    start = time.monotonic()
    best: tuple[float, float] = (-1.0, -math.inf)  # (balanced accuracy, -loss) of the kept epoch
    best_state: dict[str, torch.Tensor] | None = None
    epoch = 0
    for epoch in range(1, epochs + 1):
        # 1. One pass over the training set in a seeded order, augmented on the fly.
        order = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
        batches = (order[i : i + batch_size] for i in range(0, len(order), batch_size))
        model.train()
        total_loss = 0.0
        for idx in batches:
            x = torch.from_numpy(np.asarray(volumes[idx], dtype=np.float32)).unsqueeze(1)
            x = augment_batch(x, generator, max_shift) if augment else x
            total_loss += _update(model, opt, loss_fn, x.to(device), torch.from_numpy(lbl[idx]).to(device))
        # 2. Score on the held-out set and keep the best weights.
        stats: dict[str, Any] = {"epoch": epoch, "train_loss": total_loss / len(order)}
        if len(val_y):
            stats |= _held_out_scores(model, val_x, val_y, device)
            if (stats["val_balanced_accuracy"], -stats["val_loss"]) > best:
                best, best_state = (
                    (stats["val_balanced_accuracy"], -stats["val_loss"]),
                    copy.deepcopy(model.state_dict()),
                )
        stats["seconds"] = time.monotonic() - start
        log.debug("classifier epoch %d: %s", epoch, stats)
        if log_every_epoch is not None:
            log_every_epoch(stats)
        if max_minutes is not None and stats["seconds"] > 60.0 * max_minutes:
            log.info("classifier training stopped after %d epochs (max_minutes=%g)", epoch, max_minutes)
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    report = _final_report(model, volumes, train_idx, train_y, val_x, val_y, device)
    return model, dataclasses.replace(report, epochs_run=epoch, seconds=time.monotonic() - start)


def _update(
    model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> float:
    """One optimiser step on the batch (x, y); returns the batch's summed loss."""
    loss = loss_fn(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item() * len(y)


def _held_out_scores(
    model: VolumeClassifier, val_x: np.ndarray, val_y: np.ndarray, device: torch.device
) -> dict[str, float]:
    """Plain and balanced accuracy and mean loss on the held-out set."""
    logits = _run(model, model, val_x, 32, device)
    pred = logits.argmax(1).numpy()
    return {
        "val_accuracy": float((pred == val_y).mean()),
        "val_balanced_accuracy": balanced_accuracy(pred, val_y),
        "val_loss": float(F.cross_entropy(logits, torch.from_numpy(val_y))),
    }


def _balanced_loss(train_y: np.ndarray, num_classes: int, device: torch.device) -> nn.CrossEntropyLoss:
    """Cross-entropy with inverse-frequency class weights (1 for a balanced set; 0 for an absent class)."""
    counts = np.bincount(train_y, minlength=num_classes)
    class_weights = np.where(counts > 0, len(train_y) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0)
    return nn.CrossEntropyLoss(weight=torch.tensor(class_weights, dtype=torch.float32, device=device))


def _split_sets(
    volumes: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    val_fraction: float,
    val_set: tuple[np.ndarray, np.ndarray] | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked labels, the training indices, and the held-out volumes and labels: ``val_set`` if
    given, else a seeded stratified ``val_fraction`` of the data."""
    lbl = _check_set(volumes, labels, num_classes, "training")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    if val_set is None:
        train_idx, val_idx = stratified_split(lbl, val_fraction, seed)
        return lbl, train_idx, volumes[val_idx], lbl[val_idx]
    val_x = val_set[0]
    val_y = _check_set(val_x, val_set[1], num_classes, "held-out")
    if val_x.shape[1:] != volumes.shape[1:]:
        raise ValueError(f"held-out volumes must be {volumes.shape[1:]}, got {val_x.shape[1:]}")
    return lbl, np.arange(len(lbl)), val_x, val_y


def _final_report(
    model: VolumeClassifier,
    volumes: np.ndarray,
    train_idx: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    device: torch.device,
) -> ClassifierReport:
    """The kept weights' accuracies (epochs and seconds filled in by the caller); a warning if the
    held-out balanced accuracy is no better than chance."""
    # One pass over the held-out set gives its plain, per-class and balanced accuracy.
    val_pred = predict(model, val_x, device=device) if len(val_y) else None
    per_class = _per_class(val_pred, val_y) if val_pred is not None else {}
    balanced = balanced_accuracy(val_pred, val_y) if val_pred is not None else None
    present = len(per_class)
    if balanced is not None and present > 1 and balanced <= 1.0 / present + 0.02:
        log.warning(
            "the classifier is no better than chance on its held-out set (balanced accuracy %.3f, "
            "chance %.3f): class-conditional scores from it say nothing; train longer or on more data",
            balanced,
            1.0 / present,
        )
    # Predicting on all volumes and picking the training ones avoids copying a memory-mapped set.
    return ClassifierReport(
        train_accuracy=float((predict(model, volumes, device=device)[train_idx] == train_y).mean()),
        val_accuracy=float((val_pred == val_y).mean()) if val_pred is not None else None,
        per_class_val_accuracy=per_class,
        epochs_run=0,
        n_train=len(train_y),
        n_val=len(val_y),
        seconds=0.0,
        val_balanced_accuracy=balanced,
    )


def _batches(volumes: np.ndarray, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """(N, S, S, S) or (N, 1, S, S, S) array -> (B, 1, S, S, S) float32 tensors on ``device``."""
    if volumes.ndim not in (4, 5) or (volumes.ndim == 5 and volumes.shape[1] != 1):
        raise ValueError(f"expected volumes of shape (N, S, S, S) or (N, 1, S, S, S), got {volumes.shape}")
    for i in range(0, len(volumes), batch_size):
        x = torch.from_numpy(np.array(volumes[i : i + batch_size], dtype=np.float32))  # a writable copy
        yield (x.unsqueeze(1) if x.ndim == 4 else x).to(device)


def _run(fn: Extractor, module: Any, volumes: np.ndarray, batch_size: int, device: str | torch.device) -> torch.Tensor:
    """Apply ``fn`` batch-wise under inference mode, with ``module`` (if an nn.Module) moved to
    ``device`` and in eval mode; its previous mode is restored. Results are concatenated on the CPU."""
    device = torch.device(device)
    was_training = module.training if isinstance(module, nn.Module) else False
    if isinstance(module, nn.Module):
        module.to(device).eval()
    try:
        with torch.inference_mode():
            outs = [fn(x).float().cpu() for x in _batches(volumes, batch_size, device)]
    finally:
        if isinstance(module, nn.Module):
            module.train(was_training)
    return torch.cat(outs)


def predict(
    model: VolumeClassifier, volumes: np.ndarray, batch_size: int = 32, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Predicted class indices (N,) int64 for volumes (N, S, S, S) or (N, 1, S, S, S) in [-1, 1]."""
    return _run(model, model, volumes, batch_size, device).argmax(1).numpy()


def accuracy(
    model: VolumeClassifier, volumes: np.ndarray, labels: np.ndarray, device: str | torch.device = "cpu"
) -> float:
    """Fraction of ``volumes`` whose predicted class equals ``labels`` (N,)."""
    return float((predict(model, volumes, device=device) == np.asarray(labels)).mean())


def per_class_accuracy(
    model: VolumeClassifier, volumes: np.ndarray, labels: np.ndarray, device: str | torch.device = "cpu"
) -> dict[int, float]:
    """Accuracy within each class present in ``labels`` (N,), as ``{class index: fraction}``."""
    return _per_class(predict(model, volumes, device=device), np.asarray(labels))


def _per_class(predicted: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    hits = predicted == labels
    return {int(c): float(hits[labels == c].mean()) for c in np.unique(labels)}


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of the fraction predicted right: 1 / (classes
    present) for a constant guess, however imbalanced the set (plain accuracy would give that
    guess the majority's share)."""
    per_class = _per_class(np.asarray(predicted), np.asarray(labels))
    if not per_class:
        raise ValueError("balanced accuracy needs at least one label")
    return float(np.mean(list(per_class.values())))


def extract_features(
    extractor: nn.Module | Extractor, volumes: np.ndarray, batch_size: int = 32, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Features (N, F) float32 of volumes (N, S, S, S) or (N, 1, S, S, S).

    ``extractor`` is a :class:`VolumeClassifier` (its :meth:`~VolumeClassifier.features`) or any
    module/callable mapping (B, 1, S, S, S) -> (B, F) or (B, F, ...); spatial dims are averaged away.
    """
    fn: Extractor = extractor.features if isinstance(extractor, VolumeClassifier) else extractor

    def pooled(x: torch.Tensor) -> torch.Tensor:
        out = fn(x)
        if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"a feature network must map (B, 1, S, S, S) to (B, F) or (B, F, ...), got {got}")
        return out.flatten(2).mean(2) if out.ndim > 2 else out

    return _run(pooled, extractor, volumes, batch_size, device).numpy()


def save_classifier(out_dir: Path, model: VolumeClassifier, meta: dict[str, Any]) -> Path:
    """Write ``out_dir/classifier.pt`` and ``out_dir/classifier.json`` atomically; returns the ``.pt`` path.

    ``meta`` must hold :data:`REQUIRED_META` and be JSON-serialisable (plain containers only).
    """
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"classifier meta must hold {list(REQUIRED_META)}; missing {missing}")
    if len(meta["class_names"]) != model.num_classes:
        raise ValueError(f"meta names {len(meta['class_names'])} classes, the model has {model.num_classes}")
    if meta["size"] != model.size:
        raise ValueError(f"meta size {meta['size']} does not match the model's size {model.size}")
    try:
        text = json.dumps({"format": FORMAT, "version": VERSION, "config": model.config, "meta": meta}, indent=2)
    except TypeError as e:
        raise ValueError(f"classifier meta must be JSON-serialisable: {e}") from None
    state = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": json.loads(text)["meta"],  # plain lists/dicts only, so weights_only loading accepts it
    }
    path = Path(out_dir) / FILE_NAME
    try:
        atomic_write(path, lambda f: torch.save(state, f))
        atomic_write(path.with_name(JSON_NAME), lambda f: f.write((text + "\n").encode()))
    except OSError as e:
        raise CheckpointError(f"{path}: could not write classifier ({e.strerror or e})") from None
    return path


def _fit_problem(model: nn.Module, state: Any) -> str | None:
    """Why ``state`` cannot be loaded into ``model`` (one line), or None if it fits."""
    if not isinstance(state, dict):
        return f"state_dict is a {type(state).__name__}, not a dict"
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = sorted(want.keys() - have.keys())
    unexpected = sorted(state.keys() - want.keys())
    shapes = [f"{k} {have[k]} vs {want[k]}" for k in sorted(want.keys() & have.keys()) if have[k] != want[k]]
    parts = [
        f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
        f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
        f"{len(shapes)} of another shape (e.g. {shapes[0]})" if shapes else "",
    ]
    return "; ".join(p for p in parts if p) or None


def load_classifier(path: Path) -> tuple[VolumeClassifier, dict[str, Any]]:
    """Load a classifier saved by :func:`save_classifier` from its folder or ``classifier.pt``.

    Returns the model in eval mode on the CPU and its meta. A missing, damaged or foreign file
    raises :class:`~volgan.errors.CheckpointError` with one line that names it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if path.is_file() and not zipfile.is_zipfile(path):  # save_classifier always writes a torch.save zip
        raise CheckpointError(f"{path}: damaged or truncated classifier file (not a complete torch.save archive)")
    state = load_weights(path, "classifier file")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a volgan classifier file")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: classifier format version {state.get('version')} is not supported")
    config, meta = state.get("config"), state.get("meta")
    if not isinstance(meta, dict) or any(k not in meta for k in REQUIRED_META):
        raise CheckpointError(f"{path}: classifier meta must hold {list(REQUIRED_META)}")
    try:
        model = VolumeClassifier(**config) if isinstance(config, dict) else None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad classifier config {config!r} ({e})") from None
    if model is None:
        raise CheckpointError(f"{path}: classifier config must be a dict, got {type(config).__name__}")
    problem = _fit_problem(model, state.get("state_dict"))
    if problem:
        raise CheckpointError(f"{path}: weights do not fit VolumeClassifier({config}): {problem}")
    model.load_state_dict(state["state_dict"])
    return model.eval(), meta


def load_feature_network(path: Path) -> nn.Module:
    """Load a user's pretrained 3D feature network exported as TorchScript, on the CPU in eval mode.

    Export it with ``torch.jit.script(net).save(path)`` or ``torch.jit.trace(net, example).save(path)``.
    TorchScript archives hold TorchScript code and tensors, not pickled Python objects; still,
    load only networks you trust. Nothing is ever downloaded.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: feature network file not found")
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as e:
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any(n.endswith("data.pkl") for n in names) and not any("/code/" in n for n in names):
            what = "a torch.save file (state dict or pickled model), not TorchScript"
        else:
            what = f"not a TorchScript archive or damaged ({e.__class__.__name__})"
        raise CheckpointError(
            f"{path}: {what}; export the network with torch.jit.script(net).save(path) "
            "or torch.jit.trace(net, example).save(path)"
        ) from None
    return net.eval()
