"""sample.clean: the cut is read from the training data, applied to every way samples leave volgan."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config, tiny_data
from volgan.checkpoint import CheckpointError, load_checkpoint
from volgan.cleanup import Cleanup, measure
from volgan.cli import main
from volgan.sampling import generate, load_generator
from volgan.training import Trainer


def blob_volumes(n: int, size: int = 16, specks: int = 0, seed: int = 0) -> np.ndarray:
    """Binary volumes in {-1, 1}: one cube of 4³-6³ voxels each, plus ``specks`` single voxels."""
    rng = np.random.default_rng(seed)
    out = -np.ones((n, size, size, size), np.float32)
    for v in out:
        e, (x, y, z) = int(rng.integers(4, 7)), rng.integers(1, size - 7, 3)
        v[x : x + e, y : y + e, z : z + e] = 1
        for _ in range(specks):
            v[tuple(rng.integers(0, size, 3))] = 1
    return out


def pieces(v: np.ndarray, level: float) -> int:
    from skimage.measure import label

    return int(label(v > level, connectivity=3).max())


def largest(mask: np.ndarray) -> int:
    from skimage.measure import label

    return int(np.bincount(label(mask, connectivity=3).reshape(-1))[1:].max())


def test_the_cut_comes_from_where_the_training_foreground_lies() -> None:
    clean_set = blob_volumes(20)
    cut = measure(clean_set, binary=True, threshold=0.5)
    assert cut.level == 0.0 and cut.binary
    assert 64 <= cut.min_piece <= 216  # the smallest cubes: pieces below them hold no training foreground

    # data whose single voxels are most of the foreground: nothing is small enough to go
    dots = -np.ones((4, 16, 16, 16), np.float32)
    dots[:, ::3, ::3, ::3] = 1
    assert measure(dots, binary=True, threshold=0.5).min_piece == 1
    assert measure(-np.ones((3, 8, 8, 8), np.float32), binary=True, threshold=0.5).min_piece == 1  # empty


def test_specks_go_the_largest_piece_stays_and_training_data_barely_change() -> None:
    train = blob_volumes(30, specks=1, seed=1)  # a speck in each: ~0.5 % of the foreground, under the 1 %
    cut = measure(train, binary=True, threshold=0.5)
    assert cut.close  # cubes: a closing leaves them (tested below); here only the pieces
    cut = dataclasses.replace(cut, close=False)
    fake = blob_volumes(6, specks=12, seed=2) * 0.7  # grey values, many specks
    cleaned = cut(fake)
    assert set(np.unique(cleaned)) == {-1.0, 1.0}  # occupancy data come out as the two values
    assert [pieces(v, 0.0) for v in cleaned] == [1] * 6
    assert [int((c > 0).sum()) for c in cleaned] == [largest(v > 0) for v in fake]  # the cube, nothing else
    assert np.all((cleaned > 0) <= (fake > 0))  # voxels only removed
    assert np.mean(cut(train) != np.where(train > 0, 1, -1)) < 1e-3
    tiny = -np.ones((1, 16, 16, 16), np.float32)
    tiny[0, 2:4, 2:4, 2:4] = 1  # one piece smaller than the cut: a volume's largest piece never goes
    assert cut(tiny)[0].max() == 1.0


def test_pin_holes_close_only_where_the_training_volumes_have_none() -> None:
    solid = blob_volumes(20)
    assert measure(solid, binary=True, threshold=0.5).close  # closing leaves the cubes as they are
    slotted = solid.copy()
    for v in slotted:  # a one-voxel slot through every cube: real structure a closing would fill
        x, y, z = np.argwhere(v > 0).min(axis=0)
        v[x + 2, y:, z + 2] = -1
    cut = measure(slotted, binary=True, threshold=0.5)
    assert not cut.close
    holed = solid[:3].copy()
    for v in holed:
        x, y, z = np.argwhere(v > 0).min(axis=0) + 1
        v[x, y, z] = -1  # a pin-hole just inside the surface
        v[x + 1, :, z + 1] = -1  # and a one-voxel tunnel through
    repaired = measure(solid, binary=True, threshold=0.5)(holed)
    assert np.array_equal(repaired, solid[:3])
    assert np.array_equal(cut(holed), np.where(holed > 0, 1.0, -1.0))  # the slotted data's cut leaves them


def test_intensity_volumes_lose_only_their_specks() -> None:
    rng = np.random.default_rng(0)
    train = blob_volumes(20) * 0.8 + rng.uniform(-0.01, 0.01, (20, 16, 16, 16)).astype(np.float32) - 0.1
    cut = measure(train, binary=False, threshold=0.5)
    assert not cut.binary and -0.9 < cut.level < 0.7  # Otsu's threshold between background and cube
    fake = train[:2].copy()
    fake[:, 0, 0, 0] = 0.9  # a bright speck in a corner, and a faint rim around it
    fake[:, 1, 1, 1] = cut.level - 0.01
    cleaned = cut(fake)
    background = float(np.median(fake[0][fake[0] <= cut.level]))
    assert cleaned[0, 0, 0, 0] == pytest.approx(background) and cleaned[0, 1, 1, 1] == pytest.approx(background)
    near = np.zeros(fake.shape, bool)
    near[:, :2, :2, :2] = True
    assert np.array_equal(cleaned[~near], fake[~near])  # every voxel away from the speck as it was


def test_a_run_with_sample_clean_samples_cleaned_everywhere_and_raw_on_request(tmp_path: Path) -> None:
    data = tiny_data()
    data = type(data).from_arrays(
        blob_volumes(10), data.labels, list(data.class_names), spacing=2.0, intensity_range=(0.0, 1.0)
    )
    cfg = tiny_config(tmp_path / "run", data={"size": 16, "binary": True}, sample={"clean": True})
    Trainer(cfg, data).fit()
    record = load_checkpoint(next((tmp_path / "run" / "checkpoints").glob("*.pt")))["cleanup"]
    assert record == measure(data.volumes, True, 0.5).to_dict()
    loaded = load_generator(tmp_path / "run")
    raw = generate(loaded.generator, torch.tensor([0, 1]), seed=3).numpy()
    cleaned = loaded.finish(raw)
    assert np.array_equal(cleaned, Cleanup.from_dict(record, "x")(raw))
    assert load_generator(tmp_path / "run", clean=False).finish(raw) is raw

    argv = ["sample", "--checkpoint", str(tmp_path / "run"), "--n", "1", "--seed", "3", "--format", "npy"]
    assert main([*argv, "--class", "0", "--out", str(tmp_path / "s"), "--device", "cpu"]) == 0
    assert main([*argv, "--class", "0", "--out", str(tmp_path / "r"), "--device", "cpu", "--raw"]) == 0
    written = np.load(next((tmp_path / "s").glob("*/*.npy")))
    assert set(np.unique(written)) <= {0.0, 1.0}  # occupancy, in the data's range
    np.testing.assert_allclose(written, (cleaned[0] + 1) / 2, atol=1e-6)
    assert json.loads(next((tmp_path / "s").glob("*/*.json")).read_text())["cleanup"] == record
    assert json.loads(next((tmp_path / "r").glob("*/*.json")).read_text())["cleanup"] is None

    exported = tmp_path / "g.safetensors"
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(exported)]) == 0
    assert load_generator(exported).cleanup == loaded.cleanup  # the export carries the cut


def test_a_malformed_cleanup_record_is_one_line(tmp_path: Path) -> None:
    Trainer(tiny_config(tmp_path / "run", sample={"clean": True}), tiny_data()).fit()
    path = next((tmp_path / "run" / "checkpoints").glob("*.pt"))
    state = load_checkpoint(path)
    state["cleanup"] = {"level": "high"}
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: the cleanup record is malformed"):
        load_generator(tmp_path / "bad.pt")
