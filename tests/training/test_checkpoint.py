import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import tiny_config, tiny_data
from volgan import checkpoint as ckpt
from volgan.cli import main
from volgan.errors import CheckpointError
from volgan.files import atomic_write
from volgan.sampling import generate, load_generator
from volgan.training import Trainer


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


# -- safetensors export -------------------------------------------------------------------------
def tiny_run(factory: pytest.TempPathFactory, family: str) -> Path:
    run_dir = factory.mktemp(family) / "run"
    model = {"family": family, "latent_dim": 8, "embed_dim": 4, "ngf": 4, "ndf": 4}
    train: dict[str, Any] = {"steps": 2, "batch_size": 3}
    if family == "wgan_gp":
        train["wgan_gp"] = {"n_critic": 1}
    Trainer(tiny_config(run_dir, model=model, train=train), tiny_data()).fit()
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory, "wgan_gp")


@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DCGAN generator also has BatchNorm buffers (running stats, an int64 counter)."""
    return tiny_run(tmp_path_factory, "dcgan")


def export(run: Path, out: Path, *which: str) -> Path:
    assert main(["export", "--checkpoint", str(run), "--out", str(out), *which]) == 0
    return out


def sample_npy(checkpoint: Path, out: Path, *extra: str) -> list[np.ndarray]:
    argv = ["sample", "--checkpoint", str(checkpoint), "--n", "3", "--seed", "5", "--format", "npy", "--out", str(out)]
    assert main([*argv, "--device", "cpu", *extra]) == 0
    return [np.load(p) for p in sorted(out.glob("*/*.npy"))]


@pytest.mark.numerics
@pytest.mark.parametrize("family_run", ["run", "dcgan_run"])
def test_sampling_from_the_export_is_bit_identical(
    tmp_path: Path, family_run: str, request: pytest.FixtureRequest
) -> None:
    run: Path = request.getfixturevalue(family_run)
    exported = export(run, tmp_path / "g.safetensors")
    original, again = sample_npy(run, tmp_path / "a"), sample_npy(exported, tmp_path / "b")
    assert len(original) == 6 and all(np.array_equal(x, y) for x, y in zip(original, again, strict=True))
    sidecar = json.loads(next((tmp_path / "b").glob("*/*.json")).read_text())
    assert sidecar["checkpoint"] == str(exported) and sidecar["checkpoint_step"] == 2
    # --which all also carries the raw generator, which --no-ema picks
    both = load_generator(export(run, tmp_path / "all.safetensors", "--which", "all"), ema=False)
    raw = load_generator(run, ema=False)
    labels = torch.tensor([0, 1])
    assert torch.equal(generate(both.generator, labels, seed=3), generate(raw.generator, labels, seed=3))
    assert (both.class_names, both.intensity_range, both.spacing) == (raw.class_names, raw.intensity_range, raw.spacing)
    np.testing.assert_array_equal(both.affine, raw.affine)


def test_the_export_is_a_json_header_and_raw_tensors_only(tmp_path: Path, run: Path) -> None:
    blob = export(run, tmp_path / "g.safetensors").read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])  # no pickle anywhere: the rest is exactly the tensor data
    meta = {key: json.loads(value) for key, value in header.pop("__metadata__").items()}
    assert max(entry["data_offsets"][1] for entry in header.values()) == len(blob) - 8 - n
    assert all(name.startswith("ema.") for name in header)
    assert meta["format"] == "volgan-safetensors" and meta["version"] == 1 and meta["weights"] == ["ema"]
    assert meta["step"] == 2 and meta["class_names"] == ["c0", "c1"] and meta["intensity_range"] == [0.0, 100.0]
    assert meta["family"] == meta["config"]["model"]["family"] and meta["source"] == "step_00000002.pt"
    assert meta["spacing"] == 2.0 and len(meta["affine"]) == 4


def rewrite(
    good: Path, bad: Path, edit: Callable[[dict[str, str]], dict[str, str] | None] = lambda m: m, reshape: bool = False
) -> None:
    """Copy a safetensors file, editing its metadata or giving its first tensor another shape."""
    with safe_open(str(good), "pt") as f:
        metadata = dict(f.metadata())
    tensors = load_file(str(good))
    if reshape:
        name = next(iter(tensors))
        tensors[name] = torch.zeros(*tensors[name].shape, 2)
    save_file(tensors, str(bad), metadata=edit(metadata))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda good, bad: rewrite(good, bad, lambda m: None),
            r"no volgan metadata in this safetensors file \(write it with `volgan export`\)",
        ),
        (
            lambda good, bad: rewrite(good, bad, lambda m: {k: v for k, v in m.items() if k != "config"}),
            r"safetensors metadata lacks 'config' \(write it with `volgan export`\)",
        ),
        (
            lambda good, bad: rewrite(good, bad, reshape=True),
            r"generator weights do not fit its config \(size mismatch for .*: copying a param with shape",
        ),
        (
            lambda good, bad: bad.write_bytes(good.read_bytes()[:-16]),
            r"damaged or truncated safetensors file \(Error while deserializing header",
        ),
    ],
    ids=["no-metadata", "no-config", "wrong-shape", "truncated"],
)
def test_a_bad_safetensors_file_is_one_clear_line(
    tmp_path: Path,
    run: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path, Path], object],
    message: str,
) -> None:
    bad = tmp_path / "bad.safetensors"
    damage(export(run, tmp_path / "good.safetensors"), bad)
    expected = re.escape(str(bad)) + ": " + message
    with pytest.raises(CheckpointError, match=expected):
        load_generator(bad)
    assert main(["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.match("volgan: error: " + expected, err), err


def test_export_refusals(tmp_path: Path, run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exported = export(run, tmp_path / "g.safetensors")
    for argv, message in (
        (
            ["sample", "--checkpoint", str(exported), "--no-ema", "--out", str(tmp_path / "out")],
            "holds no raw generator weights (leave out --no-ema, or export with --which all)",
        ),
        (["export", "--checkpoint", str(run), "--out", str(tmp_path / "g.pt")], "--out must end in .safetensors"),
        (["train", "--resume", str(exported), "--data", "x"], "a safetensors export holds weights only"),
        (["export", "--checkpoint", str(exported), "--out", str(tmp_path / "h.safetensors")], "holds weights only"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_atomic_write_gives_ordinary_file_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
