"""Checkpoints: one plain, versioned dict written atomically and loaded without executing code.

Layout of a checkpoint dict (format version 1)::

    format, version, step, config (resolved, plain), class_names, intensity_range, spacing,
    generator, critic, ema (generator-shaped state dicts), opt_g, opt_d,
    rng {torch, cuda}, data_state {epoch, position}, ema_updates

Files live in ``RUN/checkpoints/step_XXXXXXXX.pt``; the newest one that loads is "latest".
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from volgan.errors import CheckpointError

FORMAT = "volgan-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint files of a run, oldest first (temp files never match the pattern)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temp file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a partial file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` (plain containers and tensors only) atomically to ``path``."""
    state = {"format": FORMAT, "version": VERSION, **state}
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as e:
        raise CheckpointError(
            f"{path}: could not write checkpoint ({e.strerror or e}); the previous one is intact"
        ) from None
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True``: a file that would run code is refused."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise CheckpointError(f"{path}: refused to load: not a plain weights file ({first[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({e.__class__.__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a volgan checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {state.get('version')} is not supported (expected {VERSION})"
        )
    return state


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
