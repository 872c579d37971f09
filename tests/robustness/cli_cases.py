"""What the robustness tests share: one-error-line checks, file listings, checkpoints with other class names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from volgan.cli import main


def one_error_line(capsys: pytest.CaptureFixture[str], code: int, match: str, exit_code: int = 2) -> str:
    """The command exited ``exit_code`` with exactly one ``volgan:`` line matching ``match`` on stderr."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == exit_code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("volgan: error: " if exit_code == 2 else "volgan: interrupted: "), lines[0]
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def files_under(folder: Path) -> list[Path]:
    """Every file (not folder) below ``folder``, sorted."""
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


def checkpoint_with_names(trained: Path, names: list[str], dest: Path) -> Path:
    state = torch.load(trained / "checkpoints" / "step_00000001.pt", weights_only=True)
    state["class_names"] = names
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)
    return dest


def safetensors_with_names(trained: Path, names: list[str], dest: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    export = dest.with_name("plain.safetensors")
    assert main(["export", "--checkpoint", str(trained), "--out", str(export)]) == 0
    with safe_open(str(export), framework="pt") as f:
        meta = dict(f.metadata())
    meta["class_names"] = json.dumps(names)
    save_file(load_file(str(export)), str(dest), metadata=meta)
    return dest
