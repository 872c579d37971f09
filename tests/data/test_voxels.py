"""Voxel occupancy inputs: .binvox, .mat and .npz/.npy readers, batch and per-class-file layouts, data.binary."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import scipy.io

from volgan.config import DataConfig
from volgan.data.dataset import load_volumes
from volgan.data.voxels import as_occupancy, peek_voxels, read_binvox, read_voxels
from volgan.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MODELNET = SHARED_DATA / "modelnet10_32"


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in this file may write to the user's real cache."""
    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(tmp_path / "default-cache"))


def cfg(tmp_path: Path, **kw: Any) -> DataConfig:
    return DataConfig(**{"size": 8, "binary": True, "cache_dir": str(tmp_path / "cache"), **kw})


def shapes(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """``(n, size, size, size)`` uint8 occupancy: a random box per object, never empty."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, size), np.uint8)
    for i in range(n):
        lo = rng.integers(0, size // 2, 3)
        hi = lo + rng.integers(2, size // 2 + 1, 3)
        out[i, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return out


def binvox_bytes(dims: tuple[int, int, int], runs: bytes, header: bytes | None = None) -> bytes:
    head = b"dim %d %d %d\ntranslate 0 0 0\nscale 1\ndata\n" % dims if header is None else header
    return b"#binvox 1\n" + head + runs


def rle(flat: np.ndarray) -> bytes:
    """binvox run-length pairs (value, count <= 255) of a flat uint8 array."""
    out = bytearray()
    edges = [0, *(np.flatnonzero(np.diff(flat)) + 1), len(flat)]
    for a, b in itertools.pairwise(edges):
        n = b - a
        while n:
            out += bytes([int(flat[a]), min(n, 255)])
            n -= min(n, 255)
    return bytes(out)


def write_binvox(path: Path, occupancy: np.ndarray) -> Path:
    """The test's own writer: an (x, y, z) array stored in binvox's x-z-y order (y fastest)."""
    path.write_bytes(binvox_bytes(occupancy.shape, rle(np.transpose(occupancy, (0, 2, 1)).ravel())))
    return path


# ---------------------------------------------------------------------------- readers


def test_binvox_marked_voxel_lands_at_its_xyz(tmp_path: Path) -> None:
    # binvox spec: index = x * (D * D) + z * D + y, written out by hand (no writer involved)
    index = 1 * 64 + 3 * 8 + 2
    runs = bytes([0, index, 1, 1, 0, 255, 0, 512 - index - 1 - 255])
    (tmp_path / "one.binvox").write_bytes(binvox_bytes((8, 8, 8), runs))
    voxels = read_binvox(tmp_path / "one.binvox")
    assert voxels.shape == (1, 8, 8, 8) and voxels.dtype == np.uint8
    assert voxels[0, 1, 2, 3] == 1 and voxels.sum() == 1


def test_binvox_round_trip(tmp_path: Path) -> None:
    occupancy = (np.random.default_rng(0).random((16, 16, 16)) < 0.05).astype(np.uint8)
    occupancy[:, :, 8:] = 0  # long empty runs: counts split at 255
    path = write_binvox(tmp_path / "obj.binvox", occupancy)
    np.testing.assert_array_equal(read_voxels(path), occupancy[None])
    assert peek_voxels(path) == (1, False)


def test_mat_single_instance_and_batch(tmp_path: Path) -> None:
    batch = shapes(3)
    scipy.io.savemat(tmp_path / "one.mat", {"instance": batch[0].astype(bool), "label": np.array([[4]])})
    scipy.io.savemat(tmp_path / "many.mat", {"data": batch}, do_compression=True)
    np.testing.assert_array_equal(read_voxels(tmp_path / "one.mat"), batch[:1])
    np.testing.assert_array_equal(read_voxels(tmp_path / "many.mat"), batch)
    assert peek_voxels(tmp_path / "one.mat") == (1, False) and peek_voxels(tmp_path / "many.mat") == (3, True)


def test_npz_and_npy_arrays(tmp_path: Path) -> None:
    batch = shapes(4)
    np.savez_compressed(tmp_path / "keyed.npz", voxels=batch, labels=np.arange(4))
    np.savez(tmp_path / "only.npz", batch[0] * 255)
    np.save(tmp_path / "batch.npy", batch[:, None])  # (N, 1, D, H, W): the channel axis is dropped
    np.testing.assert_array_equal(read_voxels(tmp_path / "keyed.npz"), batch)
    np.testing.assert_array_equal(read_voxels(tmp_path / "only.npz", binary=True), batch[:1])
    np.testing.assert_array_equal(read_voxels(tmp_path / "batch.npy"), batch)
    assert peek_voxels(tmp_path / "keyed.npz") == (4, True) and peek_voxels(tmp_path / "only.npz") == (1, False)
    assert peek_voxels(tmp_path / "batch.npy") == (4, True)


@pytest.mark.parametrize(
    "array",
    [np.array([0, 1], bool), np.array([0, 255], np.uint8), np.array([0.0, 1.0]), np.array([0.0, 0.5]), np.zeros(2)],
    ids=["bool", "0-255", "float", "0-m", "empty"],
)
def test_two_valued_arrays_are_occupancy(array: np.ndarray) -> None:
    occupancy = as_occupancy(array, "x")
    assert occupancy.dtype == np.uint8
    np.testing.assert_array_equal(occupancy, (array != 0).astype(np.uint8))


# ---------------------------------------------------------------------------- layouts


def test_folder_of_per_class_files(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    root.mkdir()
    np.savez_compressed(root / "monitor.npz", voxels=shapes(2, seed=1))
    np.savez_compressed(root / "chair.npz", voxels=shapes(3, seed=2) * 255)  # {0, m} counts as binary
    scipy.io.savemat(root / "lamp.mat", {"instance": shapes(1, seed=3)})  # (1, D, H, W): a batch of one
    data = load_volumes(cfg(tmp_path), root)
    assert data.class_names == ["chair", "lamp", "monitor"]
    assert data.class_counts() == {"chair": 3, "lamp": 1, "monitor": 2}
    chair = (root / "chair.npz").resolve()  # sources name the resolved file (tmp_path may sit behind a symlink)
    assert data.sources[:2] == [f"{chair}[0]", f"{chair}[1]"]
    np.testing.assert_array_equal(data.volumes[:3], shapes(3, seed=2) * 2.0 - 1.0)
    assert data.intensity_range == (0.0, 1.0)


def test_flat_folder_of_single_objects_is_one_class(tmp_path: Path) -> None:
    root = tmp_path / "chairs"
    root.mkdir()
    write_binvox(root / "a.binvox", shapes(1)[0])
    scipy.io.savemat(root / "b.mat", {"instance": shapes(1, seed=1)[0]})
    data = load_volumes(cfg(tmp_path), root)
    assert data.class_names == ["chairs"] and data.sources == [str(root / "a.binvox"), str(root / "b.mat")]


def test_class_folders_with_batch_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    np.savez(root / "a" / "x.npz", voxels=shapes(2))
    write_binvox(root / "a" / "y.binvox", shapes(1, seed=1)[0])
    np.save(root / "a" / "z.npy", shapes(1, seed=2)[0].astype(np.float32))  # a single volume
    np.save(root / "b" / "w.npy", shapes(3, seed=3))
    data = load_volumes(cfg(tmp_path), root)
    assert data.class_counts() == {"a": 4, "b": 3}
    assert [Path(s).name for s in data.sources] == ["x.npz[0]", "x.npz[1]", "y.binvox", "z.npy"] + [
        f"w.npy[{i}]" for i in range(3)
    ]
    np.testing.assert_array_equal(data.volumes[4:], shapes(3, seed=3) * 2.0 - 1.0)
    # without data.binary the same files take the percentile path; the cache tells the two apart
    plain = load_volumes(cfg(tmp_path, binary=False), root)
    assert plain.class_counts() == {"a": 4, "b": 3} and plain.volumes.min() == -1.0
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_binary_medmnist_npz_and_nifti_masks(tmp_path: Path) -> None:
    np.savez(tmp_path / "masks.npz", train_images=shapes(4) * 255, train_labels=np.array([[0], [1], [1], [0]]))
    data = load_volumes(cfg(tmp_path, size=16), tmp_path / "masks.npz")
    assert data.intensity_range == (0.0, 1.0) and data.class_counts() == {"0": 2, "1": 2}
    np.testing.assert_array_equal(np.unique(data.volumes), [-1.0, 1.0])
    root = tmp_path / "nifti"
    root.mkdir()
    lps = np.diag([-2.0, -2.0, 3.0, 1.0])  # reoriented to RAS and resampled: still binary
    nib.save(nib.Nifti1Image(shapes(1)[0], lps), root / "mask.nii.gz")
    data = load_volumes(cfg(tmp_path), root)
    np.testing.assert_array_equal(np.unique(data.volumes), [-1.0, 1.0])


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_resized_occupancy_stays_binary(tmp_path: Path, interpolation: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    objects = shapes(3)
    objects[0, 2, :, :] = 1  # a one-voxel-thin plate survives linear upsampling and re-thresholding
    np.savez(root / "thing.npz", voxels=objects)
    data = load_volumes(cfg(tmp_path, size=16, interpolation=interpolation), root)
    assert data.volumes.shape == (3, 16, 16, 16) and data.spacing == 0.5
    np.testing.assert_array_equal(np.unique(data.volumes), [-1.0, 1.0])
    upsampled = np.repeat(np.repeat(np.repeat(objects, 2, 1), 2, 2), 2, 3) * 2.0 - 1.0
    agree = (data.volumes == upsampled).mean()  # nearest is exact; linear only smooths corners
    assert agree == 1.0 if interpolation == "nearest" else agree > 0.9
    assert (data.volumes[0, 4:6] == 1.0).all()


# ---------------------------------------------------------------------------- bad input


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name

    return write


def _npz(name: str, **arrays: Any) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        np.savez(d / name, **arrays)
        return d / name

    return write


def _mat(name: str, **variables: Any) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        scipy.io.savemat(d / name, variables)
        return d / name

    return write


def _npy(name: str, array: np.ndarray) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        np.save(d / name, array)
        return d / name

    return write


# MATLAB v7.3: an HDF5 file behind a 128-byte MAT header whose version bytes say 0x0200.
_V73 = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + bytes(8) + b"\x00\x02IM"
_RUNS_512 = bytes([0, 255, 1, 255, 0, 2])
_NAN = np.zeros((2, 4, 4, 4))
_NAN[1, 0, 0, 0] = np.nan

BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "no #binvox": (_write("a.binvox", b"#voxbin 1\ndim 8 8 8\ndata\n" + _RUNS_512), r"a\.binvox: not a binvox file"),
    "dim with two numbers": (
        _write("b.binvox", binvox_bytes((8, 8, 8), _RUNS_512, b"dim 8 8\ndata\n")),
        r"b\.binvox: bad binvox header line b'dim 8 8'",
    ),
    "dim not a number": (
        _write("c.binvox", binvox_bytes((8, 8, 8), _RUNS_512, b"dim 8 x 8\ndata\n")),
        r"c\.binvox: bad binvox header line",
    ),
    "dim zero": (_write("d.binvox", binvox_bytes((8, 0, 8), b"")), r"d\.binvox: bad binvox header line b'dim 8 0 8'"),
    "no dim line": (_write("e.binvox", binvox_bytes((8, 8, 8), _RUNS_512, b"data\n")), r"e\.binvox: .*no 'dim D H W'"),
    "header cut": (_write("f.binvox", b"#binvox 1\ndim 8 8 8\ntrans"), r"f\.binvox: binvox header has no 'data' line"),
    "data shorter": (_write("g.binvox", binvox_bytes((8, 8, 8), _RUNS_512[:4])), r"g\.binvox: .*shorter.*510 voxels"),
    "data longer": (_write("h.binvox", binvox_bytes((8, 8, 8), _RUNS_512 + b"\0\1")), r"h\.binvox: .*longer"),
    "odd bytes": (_write("i.binvox", binvox_bytes((8, 8, 8), _RUNS_512 + b"\0")), r"i\.binvox: .*odd number"),
    "2-D npz": (_npz("j.npz", voxels=np.zeros((8, 8))), r"j\.npz: expected voxels \(N, D, H, W\) or \(D, H, W\)"),
    "6-D npy": (_npy("k.npy", np.zeros((2, 2, 2, 4, 4, 4))), r"k\.npy: expected voxels .*shape \(2, 2, 2, 4, 4, 4\)"),
    "2-D mat": (_mat("l.mat", instance=np.zeros((8, 8))), r"l\.mat: expected voxels"),
    "no objects": (_npz("m.npz", voxels=np.zeros((0, 8, 8, 8))), r"m\.npz: empty voxel array of shape \(0, 8, 8, 8\)"),
    "zero-size dim": (_mat("n.mat", instance=np.zeros((3, 8, 0, 8))), r"n\.mat: empty voxel array"),
    "strings": (_npz("o.npz", voxels=np.full((2, 2, 2), "a")), r"o\.npz: expected numeric voxels, got dtype <U1"),
    "complex": (_npy("p.npy", np.zeros((2, 2, 2), complex)), r"p\.npy: expected numeric voxels, got dtype complex"),
    "cell array": (_mat("q.mat", instance=np.array([1, "a"], dtype=object)), r"q\.mat: .*cell array or struct"),
    "object npy": (_npy("r.npy", np.array([{}, None], dtype=object)), r"r\.npy: holds pickled Python objects"),
    "NaN in object 1": (_npz("s.npz", voxels=_NAN), r"s\.npz\[1\]: contains NaN or Inf"),
    "Inf in one object": (_mat("t.mat", instance=np.full((4, 4, 4), np.inf)), r"t\.mat: contains NaN or Inf"),
    "two arrays": (_npz("u.npz", a=np.zeros((4, 4, 4)), b=np.zeros((4, 4, 4))), r"u\.npz: expected array 'voxels'"),
    "two variables": (_mat("v.mat", a=np.zeros((4, 4, 4)), b=np.ones(3)), r"v\.mat: expected variable 'instance'"),
    "MATLAB v7.3": (_write("w.mat", _V73 + bytes(512)), r"w\.mat: MATLAB v7\.3 \(HDF5\) \.mat files are not supported"),
    "garbage mat": (_write("x.mat", b"garbage" * 30), r"x\.mat: cannot decode"),
    "damaged npz": (_write("y.npz", b"PK\x03\x04" + bytes(40)), r"y\.npz: cannot decode"),
    "npz named npy": (_write("z.npy", b"PK\x03\x04" + bytes(40)), r"z\.npy: is an \.npz archive"),
}


# Problems in the voxels themselves, which peek_voxels cannot see from the header alone.
IN_THE_VOXELS = {"data shorter", "data longer", "odd bytes", "cell array", "NaN in object 1", "Inf in one object"}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_voxel_file_is_one_line_data_error_naming_it(tmp_path: Path, case: str) -> None:
    write, problem = BAD_FILES[case]
    path = write(tmp_path)
    readers: list[Callable[[Path], object]] = [read_voxels] + ([] if case in IN_THE_VOXELS else [peek_voxels])
    for read in readers:
        with pytest.raises(DataError, match=problem) as info:
            read(path)
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("array", "found"),
    [
        (np.array([0.0, 0.5, 1.0]), "found 0, 0.5, 1$"),
        (np.array([-1, 1]), "found -1, 1$"),
        (np.arange(8.0), r"found 0, 1, 2, 3, 4 \(and 3 more\)"),
        (np.full(3, -2), "found -2$"),
    ],
)
def test_binary_rejects_other_values_naming_them(tmp_path: Path, array: np.ndarray, found: str) -> None:
    np.savez(tmp_path / "vals.npz", voxels=np.resize(array, (2, 4, 4, 4)))
    with pytest.raises(DataError, match=r"vals\.npz: data\.binary expects occupancy values \{0, 1\}.*" + found):
        read_voxels(tmp_path / "vals.npz", binary=True)
    read_voxels(tmp_path / "vals.npz")  # fine without binary


def test_binary_rejects_a_non_binary_volume_in_a_dataset(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "c").mkdir(parents=True)
    np.save(root / "c" / "soft.npy", np.linspace(0, 1, 512).reshape(8, 8, 8))
    with pytest.raises(DataError, match=r"soft\.npy: data\.binary expects occupancy"):
        load_volumes(cfg(tmp_path), root)


def _ambiguous(root: Path) -> None:
    np.savez(root / "chair.npz", voxels=shapes(2))
    write_binvox(root / "one.binvox", shapes(1)[0])


def _twice(root: Path) -> None:
    np.savez(root / "chair.npz", voxels=shapes(2))
    np.save(root / "chair.npy", shapes(2))


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_ambiguous, r"root: ambiguous folder: chair\.npz holds a batch .* but one\.binvox holds one volume"),
        (_twice, r"root: class 'chair' has more than one batch file"),
        (lambda root: _npz("x.npz", a=np.zeros(2))(root), r"x\.npz: expected voxels .*pass an \.npz file itself"),
    ],
    ids=["batch and single", "one class twice", "stray npz"],
)
def test_bad_voxel_folder(tmp_path: Path, make: Callable[[Path], None], problem: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    make(root)
    with pytest.raises(DataError, match=problem) as info:
        load_volumes(cfg(tmp_path), root)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- real sample data


@pytest.mark.skipif(not MODELNET.exists(), reason="shared sample data not present")
def test_modelnet10_per_class_files(tmp_path: Path) -> None:
    data = load_volumes(cfg(tmp_path, size=32), MODELNET)
    assert data.class_names == ["chair", "monitor"]
    assert data.class_counts() == {"chair": 755, "monitor": 395}
    assert data.volumes.shape == (1150, 32, 32, 32) and data.intensity_range == (0.0, 1.0)
    first = np.asarray(data.volumes[:8])
    np.testing.assert_array_equal(np.unique(first), [-1.0, 1.0])
    # sources name the resolved file; ../shared may be reached through a symlink
    assert data.sources[755] == f"{(MODELNET / 'monitor.npz').resolve()}[0]"
