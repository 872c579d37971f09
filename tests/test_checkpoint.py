import os
from pathlib import Path

import pytest
import torch

from volgan import checkpoint as ckpt
from volgan.errors import CheckpointError


def test_round_trip_and_latest(tmp_path: Path) -> None:
    for step in (2, 10, 4):
        ckpt.save_checkpoint({"step": step, "w": torch.arange(3.0)}, ckpt.checkpoint_path(tmp_path, step))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "step_00000002.pt",
        "step_00000004.pt",
        "step_00000010.pt",
    ]
    latest = ckpt.resolve_checkpoint(tmp_path)
    state = ckpt.load_checkpoint(latest)
    assert state["step"] == 10 and torch.equal(state["w"], torch.arange(3.0))
    ckpt.prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000010.pt"]


def test_failed_write_leaves_previous_checkpoint_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ckpt.checkpoint_path(tmp_path, 1)
    ckpt.save_checkpoint({"step": 1}, path)
    before = path.read_bytes()

    def disk_full(obj: object, f: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"No space left on device.*previous one is intact"):
        ckpt.save_checkpoint({"step": 1, "more": 1}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "version": ckpt.VERSION, "x": Payload()}, bad)
    with pytest.raises(CheckpointError, match="refused to load"):
        ckpt.load_checkpoint(bad)
    assert not marker.exists()


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    good = ckpt.save_checkpoint({"step": 1, "w": torch.randn(100)}, tmp_path / "a.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cut\.pt: damaged or truncated"):
        ckpt.load_checkpoint(cut)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(1)}, other)
    with pytest.raises(CheckpointError, match="not a volgan checkpoint"):
        ckpt.load_checkpoint(other)
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints"):
        ckpt.resolve_checkpoint(empty_run)
