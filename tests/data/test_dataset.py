"""Finding datasets on disk, the preprocessing cache, VolumeSet, and real sample data when present."""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from volgan.config import DataConfig
from volgan.data import dataset
from volgan.data.dataset import CACHE_VERSION, VolumeSet, default_cache_dir, load_volumes
from volgan.data.preprocess import grid_affine
from volgan.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LPS = np.array([[-2.0, 0, 0, 10], [0, -2.0, 0, 20], [0, 0, 3.0, -5], [0, 0, 0, 1]])


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in this file may write to the user's real cache."""
    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(tmp_path / "default-cache"))


def cfg(tmp_path: Path, **kw: Any) -> DataConfig:
    return DataConfig(**{"size": 8, "cache_dir": str(tmp_path / "cache"), **kw})


def rand(shape: tuple[int, ...] = (8, 8, 8), seed: int = 0, offset: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) + offset).astype(np.float32)


def class_folders(root: Path, names: tuple[str, ...] = ("b", "a"), per_class: int = 2) -> Path:
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            np.save(root / name / f"v{i}.npy", rand(seed=10 * k + i, offset=3 * k))
    return root


def count_reads(monkeypatch: pytest.MonkeyPatch, name: str = "read_volume") -> list[Path]:
    """Record every file the loader decodes (``read_volume`` or ``read_npz``)."""
    calls: list[Path] = []
    real = getattr(dataset, name)

    def spy(path: Path, *args: Any) -> Any:
        calls.append(path)
        return real(path, *args)

    monkeypatch.setattr(dataset, name, spy)
    return calls


# ---------------------------------------------------------------------------- layouts


def test_class_folders_sorted_with_labels(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "data")
    (root / ".hidden").mkdir()
    np.save(root / ".hidden" / "x.npy", rand())
    np.save(root / "a" / ".skipme.npy", rand())
    (root / "README.txt").write_text("top-level notes are ignored")
    data = load_volumes(cfg(tmp_path), root)
    assert data.class_names == ["a", "b"] and data.class_to_idx == {"a": 0, "b": 1}
    assert data.volumes.shape == (4, 8, 8, 8) and data.volumes.dtype == np.float32
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0, 0, 1, 1]
    assert data.class_counts() == {"a": 2, "b": 2} and data.num_classes == 2
    assert [Path(s).relative_to(root.resolve()).as_posix() for s in data.sources] == [
        "a/v0.npy",
        "a/v1.npy",
        "b/v0.npy",
        "b/v1.npy",
    ]
    assert data.volumes.min() == -1.0 and data.volumes.max() == 1.0
    assert data.spacing == 1.0


def test_numeric_class_names_sort_numerically(tmp_path: Path) -> None:
    data = load_volumes(cfg(tmp_path), class_folders(tmp_path / "data", names=("10", "2", "1"), per_class=1))
    assert data.class_names == ["1", "2", "10"]


def test_flat_folder_is_one_class(tmp_path: Path) -> None:
    root = tmp_path / "scans"
    root.mkdir()
    for i in range(3):
        np.save(root / f"s{i}.npy", rand(seed=i))
    data = load_volumes(cfg(tmp_path, root=str(root)))  # root from the config
    assert data.class_names == ["scans"] and data.labels.tolist() == [0, 0, 0]


def test_nifti_folder_is_reoriented_and_fitted(tmp_path: Path) -> None:
    root = tmp_path / "nii" / "0"
    root.mkdir(parents=True)
    for i, shape in enumerate([(12, 8, 4), (10, 10, 5)]):  # 24 and 20 mm longest extent
        volume = np.zeros(shape, np.float32)
        volume[0, 0, 0] = 100.0  # right, anterior, inferior corner in LPS
        volume[1:-1, 1:-1, 1:-1] += 10.0
        nib.save(nib.Nifti1Image(volume, LPS), root / f"v{i}.nii.gz")
    # percentiles (0, 100): min/max scaling, so the marker stays the single brightest voxel
    data = load_volumes(cfg(tmp_path, interpolation="nearest", intensity_percentiles=(0, 100)), root.parent)
    assert data.volumes.shape == (2, 8, 8, 8)
    assert data.spacing == pytest.approx(np.median([24 / 8, 20 / 8]))
    marker = np.unravel_index(np.argmax(data.volumes[0]), (8, 8, 8))
    assert marker == (7, 5, 2)  # RAS: right end of axis 0, anterior end of the content on axis 1
    assert data.intensity_range == (0.0, 100.0)
    np.testing.assert_allclose(data.affine, grid_affine(8, data.spacing))


@pytest.mark.parametrize("image_shape", [(6, 8, 8, 8), (6, 1, 8, 8, 8)], ids=["NDHW", "N1DHW"])
@pytest.mark.parametrize("label_shape", [(6,), (6, 1)], ids=["N", "N1"])
def test_npz_labels_become_classes(tmp_path: Path, image_shape: tuple[int, ...], label_shape: tuple[int, ...]) -> None:
    images = np.random.default_rng(0).integers(0, 200, size=image_shape, dtype=np.uint8)
    labels = np.array([7, 3, 3, 7, 7, 3]).reshape(label_shape)
    np.savez_compressed(tmp_path / "set.npz", train_images=images, train_labels=labels)
    data = load_volumes(cfg(tmp_path), tmp_path / "set.npz")
    assert data.class_names == ["3", "7"] and data.labels.tolist() == [1, 0, 0, 1, 1, 0]
    assert data.sources[1] == f"{(tmp_path / 'set.npz').resolve()}[1]"
    assert data.volumes.shape == (6, 8, 8, 8) and data.spacing == 1.0


def test_npz_split_and_resampling(tmp_path: Path) -> None:
    masks = np.zeros((3, 4, 4, 4), np.uint8)
    masks[:, 1:3, 1:3, 1:3] = 255
    np.savez(tmp_path / "m.npz", val_images=masks, val_labels=np.array([0, 1, 0]))
    data = load_volumes(cfg(tmp_path, npz_split="val", interpolation="nearest"), tmp_path / "m.npz")
    assert data.volumes.shape == (3, 8, 8, 8) and data.spacing == 0.5  # 4 voxels fitted into 8
    np.testing.assert_array_equal(np.unique(data.volumes), [-1.0, 1.0])
    assert int((data.volumes[0] == 1.0).sum()) == 8 * 8  # the 2³ core doubled to 4³


def test_binary_mask_with_tiny_foreground_is_exactly_minus_one_and_one(tmp_path: Path) -> None:
    masks = np.zeros((2, 8, 8, 8), np.uint8)
    masks[0, 4, 4, 4] = 255  # 1 of 512 voxels: below the 99.5th percentile
    masks[1, :4] = 255
    np.savez(tmp_path / "m.npz", train_images=masks, train_labels=np.array([0, 0]))
    data = load_volumes(cfg(tmp_path), tmp_path / "m.npz")
    np.testing.assert_array_equal(np.unique(data.volumes[0]), [-1.0, 1.0])
    np.testing.assert_array_equal(data.volumes, np.where(masks > 0, 1.0, -1.0))
    assert data.intensity_range == (0.0, 255.0)


# ---------------------------------------------------------------------------- cache


def test_second_load_comes_from_the_cache_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = class_folders(tmp_path / "data")
    first = load_volumes(cfg(tmp_path), root)

    def no_decoding(path: Path) -> None:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(dataset, "read_volume", no_decoding)
    second = load_volumes(cfg(tmp_path), root)
    assert isinstance(second.volumes, np.memmap) and not second.volumes.flags.writeable
    np.testing.assert_array_equal(second.volumes, first.volumes)
    assert second.class_names == first.class_names and second.sources == first.sources
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert meta["cache_version"] == CACHE_VERSION and len(meta["bounds"]) == 4


def test_touching_a_file_or_changing_a_setting_rebuilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = class_folders(tmp_path / "data")
    load_volumes(cfg(tmp_path), root)
    reads = count_reads(monkeypatch)
    load_volumes(cfg(tmp_path), root)
    assert reads == []
    stat = (root / "a" / "v0.npy").stat()
    os.utime(root / "a" / "v0.npy", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    load_volumes(cfg(tmp_path), root)
    assert len(reads) == 4
    load_volumes(cfg(tmp_path, intensity_percentiles=(1.0, 99.0)), root)
    assert len(reads) == 8
    load_volumes(cfg(tmp_path, intensity_percentiles=(1.0, 99.0)), root)
    assert len(reads) == 8
    np.save(root / "b" / "v9.npy", rand(seed=9))
    assert len(load_volumes(cfg(tmp_path, intensity_percentiles=(1.0, 99.0)), root).volumes) == 5


def test_leftover_temp_dir_and_damaged_entries_are_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = class_folders(tmp_path / "data")
    expected = np.array(load_volumes(cfg(tmp_path), root).volumes)  # a copy: the memmap's file is damaged below
    cache = tmp_path / "cache"
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    leftover = cache / f".{entry.name}.tmp-crashed"
    leftover.mkdir()
    (leftover / "volumes.npy").write_bytes(b"half written")
    reads = count_reads(monkeypatch)

    volumes = entry / "volumes.npy"
    volumes.write_bytes(volumes.read_bytes()[:200])  # truncated array
    with caplog.at_level(logging.WARNING, logger="volgan.data.cache"):
        rebuilt = load_volumes(cfg(tmp_path), root)
    assert len(reads) == 4 and "damaged data cache entry" in caplog.text
    np.testing.assert_array_equal(rebuilt.volumes, expected)

    (entry / "meta.json").write_text("{not json")
    load_volumes(cfg(tmp_path), root)
    assert len(reads) == 8

    np.save(entry / "labels.npy", np.zeros(3, np.int64))  # wrong length
    load_volumes(cfg(tmp_path), root)
    assert len(reads) == 12
    load_volumes(cfg(tmp_path), root)
    assert len(reads) == 12  # the rebuilt entry is good again
    assert leftover.exists()  # a fresh temp folder may belong to a run still writing it


def test_stale_temp_dirs_are_removed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    stale = cache / ".data-0123.tmp-old"
    stale.mkdir(parents=True)
    old = time.time() - 3 * 24 * 3600
    os.utime(stale, (old, old))
    load_volumes(cfg(tmp_path), class_folders(tmp_path / "data"))
    assert not stale.exists()


def test_failure_while_building_leaves_no_entry(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "data")
    np.save(root / "b" / "zz_constant.npy", np.full((8, 8, 8), 3.0))
    with pytest.raises(DataError, match=r"zz_constant\.npy: constant volume"):
        load_volumes(cfg(tmp_path), root)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unwritable_cache_falls_back_to_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="volgan.data.dataset"):
        data = load_volumes(cfg(tmp_path, cache_dir=str(blocker)), class_folders(tmp_path / "data"))
    assert data.volumes.shape == (4, 8, 8, 8) and not isinstance(data.volumes, np.memmap)
    assert "in memory" in caplog.text


def test_cache_inside_the_root_is_not_a_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = class_folders(tmp_path / "data")
    settings = cfg(tmp_path, cache_dir=str(root / "cache"))
    load_volumes(settings, root)
    reads = count_reads(monkeypatch)
    data = load_volumes(settings, root)
    assert data.class_names == ["a", "b"] and reads == []


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(tmp_path / "v"))
    assert default_cache_dir() == tmp_path / "v"
    monkeypatch.delenv("VOLGAN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "volgan"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "volgan"


# ---------------------------------------------------------------------------- bad input


def _mixed(d: Path) -> Path:
    class_folders(d)
    np.save(d / "stray.npy", rand())
    return d


def _with_class(d: Path, name: str, files: dict[str, bytes]) -> Path:
    class_folders(d, names=("ok",))
    (d / name).mkdir()
    for file, data in files.items():
        (d / name / file).write_bytes(data)
    return d


def _corrupt_nifti(d: Path) -> Path:
    (d / "c").mkdir(parents=True)
    nib.save(nib.Nifti1Image(rand((9, 9, 9)), LPS), d / "c" / "broken.nii.gz")
    raw = (d / "c" / "broken.nii.gz").read_bytes()
    (d / "c" / "broken.nii.gz").write_bytes(raw[: len(raw) // 2])
    return d


def _loop_in_class(d: Path) -> Path:
    class_folders(d)
    (d / "a" / "loop.npy").symlink_to(d / "a" / "loop.npy")
    return d


def _wrong_shape_for_none(d: Path) -> Path:
    (d / "c").mkdir(parents=True)
    np.save(d / "c" / "small.npy", rand((8, 8, 6)))
    return d


def _text_root(d: Path) -> Path:
    d.mkdir()
    (d / "list.txt").write_text("x")
    return d / "list.txt"


def _nested(d: Path) -> Path:
    class_folders(d, names=("ok",))
    (d / "cls" / "subject1").mkdir(parents=True)
    np.save(d / "cls" / "subject1" / "t1.npy", rand())
    return d


def _empty(d: Path) -> Path:
    d.mkdir()
    return d


def _npz_in_folder(d: Path) -> Path:
    d.mkdir()
    np.savez(d / "x.npz", a=np.zeros(2))
    return d


def _constant(d: Path) -> Path:
    _with_class(d, "c", {})
    np.save(d / "c" / "flat.npy", np.zeros((8, 8, 8)))
    return d


BAD_ROOTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing root": (lambda d: d / "nowhere", r"nowhere: data root not found"),
    "empty root": (_empty, r"root: no volume files \(\.nii, \.nii\.gz, \.npy\)"),
    "npz in a folder": (_npz_in_folder, "pass an .npz file itself"),
    "empty class folder": (lambda d: _with_class(d, "empty", {}), r"class folder 'empty' is empty"),
    "unsupported files only": (
        lambda d: _with_class(d, "pics", {"a.png": b"x", "b.txt": b"y"}),
        r"class folder 'pics' has no volume files .*found only a\.png, b\.txt",
    ),
    "nested folders": (_nested, r"class folder 'cls' has no volume files .*found only subject1/"),
    "files and folders": (_mixed, r"holds both volume files and sub-folders \(a, b\)"),
    "corrupt nifti": (_corrupt_nifti, r"broken\.nii\.gz: cannot decode"),
    "symlink loop": (_loop_in_class, r"loop\.npy: symlink loop"),
    "constant volume": (_constant, r"flat\.npy: constant volume \(every voxel is 0\)"),
    "not a folder or npz": (
        _text_root,
        r"list\.txt: expected a folder of volumes or class sub-folders, or an \.npz",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROOTS), ids=list(BAD_ROOTS))
def test_bad_dataset_is_one_line_data_error(tmp_path: Path, case: str) -> None:
    make, problem = BAD_ROOTS[case]
    root = make(tmp_path / "root")
    with pytest.raises(DataError, match=problem) as info:
        load_volumes(cfg(tmp_path), root)
    assert "\n" not in str(info.value)


def test_none_mode_names_file_and_both_shapes(tmp_path: Path) -> None:
    root = _wrong_shape_for_none(tmp_path / "root")
    with pytest.raises(DataError, match=r"small\.npy: shape \(8, 8, 6\) is not the training grid \(8, 8, 8\)"):
        load_volumes(cfg(tmp_path, resample="none"), root)


def test_npz_errors_name_the_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", train_images=np.zeros((2, 8, 8, 8)), train_labels=np.zeros(2, int))
    with pytest.raises(DataError, match=r"d\.npz: missing key\(s\) test_images, test_labels"):
        load_volumes(cfg(tmp_path, npz_split="test"), tmp_path / "d.npz")
    with pytest.raises(DataError, match=r"d\.npz\[0\]: constant volume"):
        load_volumes(cfg(tmp_path), tmp_path / "d.npz")


def test_no_root_configured(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data root"):
        load_volumes(cfg(tmp_path))


# ---------------------------------------------------------------------------- VolumeSet


def test_from_arrays_and_summary() -> None:
    volumes = np.tanh(rand((5, 8, 8, 8)))
    data = VolumeSet.from_arrays(volumes, [0, 1, 1, 0, 1], ["neg", "pos"], spacing=2.0, intensity_range=(0, 100))
    assert data.labels.dtype == np.int64 and data.sources[3] == "array[3]"
    assert data.class_counts() == {"neg": 2, "pos": 3}
    np.testing.assert_allclose(data.affine, grid_affine(8, 2.0))
    summary = data.summary()
    for text in ("5 x 8x8x8", "2 mm", "neg: 2, pos: 3", "[0, 100]", "mean"):
        assert text in summary


@pytest.mark.parametrize(
    ("volumes", "labels", "problem"),
    [
        (np.zeros((2, 8, 8, 4)), [0, 1], r"\(N, S, S, S\) cubes"),
        (np.zeros((2, 8, 8)), [0, 1], r"non-empty \(N, S, S, S\)"),
        (np.full((2, 4, 4, 4), 1.5), [0, 1], r"scaled to \[-1, 1\]"),
        (np.full((2, 4, 4, 4), np.nan), [0, 1], "NaN"),
        (np.zeros((2, 4, 4, 4)), [0, 2], r"labels must lie in 0\.\.1"),
        (np.zeros((2, 4, 4, 4)), [0.0, 1.0], "integer class indices"),
        (np.zeros((2, 4, 4, 4)), [0, 1, 1], r"labels must be \(2,\)"),
    ],
)
def test_from_arrays_rejects(volumes: np.ndarray, labels: list[Any], problem: str) -> None:
    with pytest.raises(DataError, match=problem):
        VolumeSet.from_arrays(volumes, np.asarray(labels), ["a", "b"])


# ---------------------------------------------------------------------------- real sample data


def _npz_head(path: Path, key: str, count: int) -> np.ndarray:
    """The first ``count`` items of one array in an .npz, read without decompressing the rest."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as stream:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
        assert not fortran
        item = int(np.prod(shape[1:]))
        return np.frombuffer(stream.read(count * item * dtype.itemsize), dtype).reshape(count, *shape[1:])


ADRENAL = SHARED_DATA / "adrenalmnist3d" / "adrenalmnist3d_64_trainval.npz"
IXI = SHARED_DATA / "ixi_t1_10"


@pytest.mark.skipif(not ADRENAL.exists(), reason="shared sample data not present")
def test_adrenalmnist3d_slice(tmp_path: Path) -> None:
    images = _npz_head(ADRENAL, "train_images", 12)
    labels = _npz_head(ADRENAL, "train_labels", 12)
    assert images.shape == (12, 64, 64, 64) and labels.shape == (12, 1)
    np.savez(tmp_path / "adrenal.npz", train_images=images, train_labels=labels)
    data = load_volumes(cfg(tmp_path, size=32, interpolation="nearest"), tmp_path / "adrenal.npz")
    assert data.volumes.shape == (12, 32, 32, 32) and data.spacing == 2.0
    np.testing.assert_array_equal(np.unique(data.volumes), [-1.0, 1.0])
    assert data.intensity_range == (0.0, 255.0)
    assert sum(data.class_counts().values()) == 12


@pytest.mark.skipif(not IXI.exists(), reason="shared sample data not present")
def test_ixi_t1_nifti(tmp_path: Path) -> None:
    root = tmp_path / "ixi"
    root.mkdir()
    for scan in sorted(IXI.glob("*.nii.gz"))[:2]:
        (root / scan.name).symlink_to(scan)
    data = load_volumes(cfg(tmp_path, size=32), root)
    assert data.volumes.shape == (2, 32, 32, 32) and data.class_names == ["ixi"]
    assert data.spacing == pytest.approx(240 / 32)  # 120 voxels of 2 mm fill the grid
    assert data.volumes.min() == -1.0 and data.volumes.max() == 1.0
    assert data.intensity_range[1] > data.intensity_range[0] >= 0
