"""Checkpoints: one plain, versioned dict written atomically and loaded without executing code.

Layout of a checkpoint dict (format version 1)::

    format, version, step, config (resolved, plain), num_classes, class_names, intensity_range,
    spacing, affine, generator, discriminator, ema (state dicts), opt_g, opt_d,
    rng {torch, cuda}, data_state {epoch, position}, ema_updates

Files live in ``RUN/checkpoints/step_XXXXXXXX.pt``; the newest one is "latest". ``volgan export``
writes the generator weights as ``.safetensors`` (tensors + JSON metadata, no pickle at all).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from volgan.config import Config, build_config, renamed_keys
from volgan.errors import CheckpointError
from volgan.files import atomic_write

log = logging.getLogger("volgan")

FORMAT = "volgan-checkpoint"
VERSION = 1
# What sampling needs besides the weights, and what resuming needs on top.
GENERATOR_KEYS = ("step", "config", "num_classes", "class_names", "intensity_range", "spacing", "affine")
TRAINING_KEYS = (
    *GENERATOR_KEYS,
    *("generator", "discriminator", "ema", "ema_updates", "opt_g", "opt_d", "rng", "data_state"),
)
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def run_dir_of(path: Path) -> Path:
    """The run folder of a checkpoint file ``RUN/checkpoints/step_XXXXXXXX.pt`` (RUN holds config.yaml).

    Any other file belongs to no run: continuing from it must not write a run two levels up, among
    files that are not a run's, so the caller is told to name the folder.
    """
    folder = path.parent
    if folder.name == "checkpoints" and _NAME.match(path.name) and (folder.parent / "config.yaml").is_file():
        return folder.parent
    raise CheckpointError(
        f"{path}: this checkpoint is not inside a run folder (RUN/checkpoints/step_XXXXXXXX.pt with RUN/config.yaml); "
        "pass --run-dir to say where the continued run is written"
    )


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint files of a run, oldest first (temp files never match the pattern)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest finished checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` (plain containers and tensors only) atomically to ``path``."""
    state = {"format": FORMAT, "version": VERSION, **state}
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:
        # torch.save reports a failed file write as RuntimeError("... unexpected pos ..."), the OSError
        # (e.g. ENOSPC) being its context
        cause = e if isinstance(e, OSError) else e.__context__
        if not isinstance(cause, OSError):
            raise
        raise CheckpointError(
            f"{path}: could not write checkpoint ({cause.strerror or cause}); the previous one is intact"
        ) from None
    return path


def load_weights(path: Path, what: str = "checkpoint", map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and one-line errors: a file that would run code is
    refused, a damaged one named as such. ``what`` names the file in messages ("checkpoint")."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load: not a plain weights file ({_unpickling_reason(e)})") from None
    except Exception as e:  # anything else torch's zip/pickle readers raise means a damaged file
        raise CheckpointError(f"{path}: damaged or truncated {what} ({_damage_reason(e)})") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True``: a file that would run code is refused."""
    if path.suffix == ".safetensors" and path.is_file():
        raise CheckpointError(
            f"{path}: a safetensors export holds weights only, not a training state; "
            "sample from it, or resume from a .pt checkpoint or the run folder"
        )
    state = load_weights(path, "checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a volgan checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {state.get('version')} is not supported (expected {VERSION})"
        )
    return state


def _unpickling_reason(e: pickle.UnpicklingError) -> str:
    """The useful part of torch's long weights_only refusal: the global it would import, if any."""
    text = str(e)
    if found := re.search(r"GLOBAL ([\w.]+)", text):
        return f"it asks to import {found.group(1)}, which could run code"
    if found := re.search(r"Unsupported operand (\d+)", text):
        return f"pickle opcode {found.group(1)} is not allowed; damaged, or not written by torch.save"
    return "content outside plain tensors and containers"


def _damage_reason(e: Exception) -> str:
    """A short cause: the first sentence of the error, without torch's C++ source location."""
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(e).strip())
    first = text.split(". ")[0].splitlines()[0] if text else "file ends early"
    return f"{e.__class__.__name__}: {first[:120]}"


def require_keys(state: dict[str, Any], keys: tuple[str, ...], path: Path) -> None:
    """Refuse a checkpoint that lacks an entry the caller needs, naming the first missing one."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint: no {missing[0]!r} entry")


def describe_load_error(e: Exception) -> str:
    """The first concrete problem in a ``load_state_dict`` error (e.g. "size mismatch for fc.weight: ...")."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    return (lines[0] if lines else e.__class__.__name__)[:200]


def resolve_checkpoint(where: str | Path) -> Path:
    """A checkpoint file, or a run folder (-> its newest checkpoint)."""
    where = Path(where)
    if where.is_dir():
        found = list_checkpoints(where)
        if not found:
            raise CheckpointError(f"{where}: no checkpoints in {checkpoint_dir(where)}")
        return found[-1]
    if not where.exists():
        raise CheckpointError(f"{where}: no such checkpoint file or run folder")
    return where


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


# -- safetensors export: weights and JSON metadata, no pickle ------------------------------------
SAFETENSORS_FORMAT = "volgan-safetensors"
SAFETENSORS_VERSION = 1
# Which weights `volgan export --which` writes; each tensor is named "<part>.<state-dict key>".
EXPORT_PARTS = {"ema": ("ema",), "generator": ("generator",), "all": ("ema", "generator", "discriminator")}


def export_safetensors(state: dict[str, Any], path: Path, which: str = "ema", source: Path | None = None) -> Path:
    """Write a checkpoint's generator weights (``which``: ema | generator | all) and metadata as safetensors."""
    from safetensors.torch import save

    tensors = {
        f"{part}.{key}": value.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
        for part in EXPORT_PARTS[which]
        for key, value in state[part].items()
    }
    # safetensors metadata is str -> str: every value is JSON text
    metadata = {key: json.dumps(state[key]) for key in GENERATOR_KEYS}
    metadata |= {
        "format": json.dumps(SAFETENSORS_FORMAT),
        "version": json.dumps(SAFETENSORS_VERSION),
        "family": json.dumps(state["config"]["model"]["family"]),
        "weights": json.dumps(list(EXPORT_PARTS[which])),
        "source": json.dumps(source.name if source else None),
        "cleanup": json.dumps(state.get("cleanup")),  # sample.clean's sizes (None: not cleaned)
    }
    payload = save(tensors, metadata)
    try:
        atomic_write(path, lambda f: f.write(payload))
    except OSError as e:
        raise CheckpointError(f"{path}: could not write ({e.strerror or e})") from None
    return path


def load_safetensors(path: Path) -> dict[str, Any]:
    """Read a ``volgan export`` file into a checkpoint-shaped dict.

    The dict holds the metadata entries (GENERATOR_KEYS) and one state dict per exported part
    ("ema", "generator", "discriminator").
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # SafetensorError, OSError: header or data unreadable
        raise CheckpointError(f"{path}: damaged or truncated safetensors file ({str(e)[:160]})") from None
    meta = _parse_metadata(raw, path)
    state: dict[str, Any] = {key: meta[key] for key in GENERATOR_KEYS}
    state["cleanup"] = meta.get("cleanup")
    for name, tensor in tensors.items():
        part, _, key = name.partition(".")
        if part not in meta["weights"] or not key:
            raise CheckpointError(f"{path}: unexpected tensor {name!r} (parts listed: {meta['weights']})")
        state.setdefault(part, {})[key] = tensor
    return state


def _parse_metadata(raw: dict[str, str], path: Path) -> dict[str, Any]:
    if "format" not in raw:
        raise CheckpointError(f"{path}: no volgan metadata in this safetensors file (write it with `volgan export`)")
    meta: dict[str, Any] = {}
    for key in ("format", "version", "weights", *GENERATOR_KEYS, "cleanup"):
        if key == "cleanup" and key not in raw:  # an export from before sample.clean
            continue
        if key not in raw:
            raise CheckpointError(f"{path}: safetensors metadata lacks {key!r} (write it with `volgan export`)")
        try:
            meta[key] = json.loads(raw[key])
        except ValueError:
            raise CheckpointError(f"{path}: safetensors metadata {key!r} is not valid JSON") from None
    if meta["format"] != SAFETENSORS_FORMAT or meta["version"] != SAFETENSORS_VERSION:
        raise CheckpointError(
            f"{path}: metadata says {meta['format']!r} version {meta['version']!r}; "
            f"expected {SAFETENSORS_FORMAT!r} version {SAFETENSORS_VERSION}"
        )
    if not isinstance(meta["weights"], list):
        raise CheckpointError(f"{path}: safetensors metadata 'weights' must be a list of parts")
    return meta


# Settings that must match between a checkpoint and the run that resumes or samples from it.
ARCHITECTURE_KEYS = {
    "data": ("size",),
    "model": (
        "family",
        "latent_dim",
        "embed_dim",
        "ngf",
        "ndf",
        "max_channels",
        "ac_weight",
        "mapping_layers",
        "minibatch_std",
    ),
    "experimental": ("grow_from",),
}


def check_compatible(saved: dict[str, Any], cfg: Config, where: Path) -> None:
    """Refuse a checkpoint whose architecture differs from ``cfg``, naming the first differing key."""
    saved = renamed_keys(saved, str(where))  # a checkpoint from before keys moved holds them where they were
    for section, keys in ARCHITECTURE_KEYS.items():
        for key in keys:
            here = getattr(cfg, section)
            # a key added after the checkpoint was written holds its default there
            a, b = (saved.get(section) or {}).get(key, type(here).model_fields[key].default), getattr(here, key)
            if a != b:
                raise CheckpointError(
                    f"{where}: checkpoint of another config: {section}.{key} is {a!r} there, {b!r} here"
                )


# train keys newer than some checkpoints, with the value every run before them trained with
_TRAIN_KEYS_ADDED_LATER = {"mode_seeking": 0.0, "mode_seeking_end": None, "lr_decay_to": 0.0}
_WGAN_GP_KEYS_ADDED_LATER = {"gp_every": 1}


def saved_config(state: dict[str, Any]) -> dict[str, Any]:
    """The config mapping a checkpoint was written with, as it trained.

    Keys added after a checkpoint was written take the value that reproduces how it was trained,
    not today's default: a run from before ``train.mode_seeking`` existed resumes without it, one from
    before ``train.wgan_gp.gp_every`` with the penalty on every critic step."""
    saved = dict(state["config"])
    train = saved.get("train")
    if isinstance(train, dict):
        saved["train"] = {**_TRAIN_KEYS_ADDED_LATER, **train}
        if isinstance(train.get("wgan_gp"), dict):  # written with the family sections
            saved["train"]["wgan_gp"] = {**_WGAN_GP_KEYS_ADDED_LATER, **train["wgan_gp"]}
        else:  # flat, as before them (config.renamed_keys moves these)
            saved["train"] = {**_WGAN_GP_KEYS_ADDED_LATER, **saved["train"]}
    return saved


def config_from_checkpoint(state: dict[str, Any], source: Path) -> Config:
    """The run config a checkpoint was written with (:func:`saved_config`), validated as any config is."""
    return build_config(saved_config(state), f"{source} (config)")
