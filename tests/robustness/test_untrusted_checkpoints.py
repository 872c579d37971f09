"""Checkpoints from elsewhere: files that would run code, damaged files and incomplete ones are
refused with one line naming the file, by the loader and by every command that reads them."""

import os
import pathlib
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from volgan import checkpoint as ckpt
from volgan.cli import main
from volgan.errors import CheckpointError


class RunsCode:
    """Unpickles into a call of ``func(*args)``: what a malicious checkpoint carries."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def checkpoint_like(payload: object) -> dict[str, Any]:
    return {"format": ckpt.FORMAT, "version": ckpt.VERSION, "step": 1, "config": payload}


def torch_save(path: Path, payload: object) -> None:
    torch.save(checkpoint_like(payload), path)


def pickle_dump(protocol: int) -> Callable[[Path, object], None]:
    def write(path: Path, payload: object) -> None:
        with path.open("wb") as f:
            pickle.dump(checkpoint_like(payload), f, protocol=protocol)

    return write


def refused_everywhere(path: Path, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """load_checkpoint, `volgan sample` and `volgan train --resume` all refuse ``path`` with ``message``."""
    expected = re.escape(str(path)) + ": " + message
    with pytest.raises(CheckpointError, match=expected):
        ckpt.load_checkpoint(path)
    for argv in (
        ["sample", "--checkpoint", str(path), "--out", str(tmp_path / "out")],
        ["train", "--resume", str(path), "--data", str(tmp_path / "data")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.match("volgan: error: " + expected, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("write", "imports"),
    [
        (torch_save, r"it asks to import (posix|nt)\.system, which could run code"),
        (pickle_dump(2), r"it asks to import (posix|nt)\.system, which could run code"),
        (pickle_dump(pickle.DEFAULT_PROTOCOL), r"pickle opcode \d+ is not allowed"),
    ],
    ids=["torch.save", "pickle-protocol-2", "pickle-default-protocol"],
)
def test_a_checkpoint_that_would_run_a_command_is_refused_and_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write: Callable[[Path, object], None], imports: str
) -> None:
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    write(evil, RunsCode(os.system, f"touch {marker}"))
    refused_everywhere(evil, rf"refused to load: not a plain weights file \({imports}", tmp_path, capsys)
    assert not marker.exists()


def test_a_checkpoint_that_would_create_a_file_is_refused_and_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    torch_save(evil, RunsCode(pathlib.Path.touch, marker))
    refused_everywhere(evil, r"refused to load: not a plain weights file \(it asks to import getattr", tmp_path, capsys)
    assert not marker.exists()


def truncated(path: Path) -> None:
    good = ckpt.save_checkpoint({"step": 1, "w": torch.randn(1000)}, path.with_suffix(".good"))
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def zip_of(members: dict[str, bytes]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)

    return write


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (truncated, r"damaged or truncated checkpoint \(RuntimeError: PytorchStreamReader failed reading zip archive"),
        (
            zip_of({"archive/data.pkl": b"garbage " * 40, "archive/version": b"3\n"}),
            r"refused to load: not a plain weights file \(pickle opcode 103 is not allowed; damaged, or not written",
        ),
        (
            zip_of({"junk.bin": b"garbage " * 40}),
            r"damaged or truncated checkpoint \(RuntimeError: file in archive is not in a subdirectory: junk\.bin\)",
        ),
        (lambda path: path.write_bytes(b""), r"damaged or truncated checkpoint \(EOFError: file ends early\)"),
    ],
    ids=["truncated", "zip-of-garbage", "zip-without-torch-layout", "empty"],
)
def test_damaged_checkpoints_are_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write: Callable[[Path], None], message: str
) -> None:
    bad = tmp_path / "bad.pt"
    write(bad)
    refused_everywhere(bad, message, tmp_path, capsys)


def test_an_incomplete_checkpoint_names_the_missing_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    thin = ckpt.save_checkpoint({"step": 1}, tmp_path / "thin.pt")
    for argv in (
        ["sample", "--checkpoint", str(thin), "--out", str(tmp_path / "out")],
        ["train", "--resume", str(thin), "--data", str(tmp_path / "data")],
        ["export", "--checkpoint", str(thin), "--out", str(tmp_path / "thin.safetensors")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"volgan: error: {thin}: incomplete checkpoint: no 'config' entry", err


def test_the_payload_is_live_when_unpickled_without_weights_only(tmp_path: Path) -> None:
    """Control: the refusals above are not vacuous; plain unpickling runs the payload."""
    marker = tmp_path / "MARKER"
    torch_save(tmp_path / "evil.pt", RunsCode(pathlib.Path.touch, marker))
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()
