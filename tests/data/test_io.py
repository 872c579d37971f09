"""Reading single files: NIfTI and .npy volumes, MedMNIST-style .npz archives, and every way they break."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volgan.data import io
from volgan.data.io import read_npz, read_volume
from volgan.errors import DataError

LPS_2MM = np.array([[-2.0, 0, 0, 10], [0, -2.0, 0, 20], [0, 0, 3.0, -5], [0, 0, 0, 1]])


def save_nifti(path: Path, volume: np.ndarray, affine: np.ndarray = LPS_2MM) -> Path:
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path


def save_nifti_header_affine(path: Path, srow: np.ndarray) -> Path:
    """A NIfTI with these sform rows written verbatim (nibabel refuses such an affine as an argument)."""
    header = nib.Nifti1Header()
    header.set_data_shape((6, 6, 6))
    header.set_data_dtype(np.float32)
    header["sform_code"], header["qform_code"] = 1, 0
    header["srow_x"], header["srow_y"], header["srow_z"] = srow
    nib.save(nib.Nifti1Image(np.random.rand(6, 6, 6).astype(np.float32), None, header=header), path)
    return path


def test_reads_nifti_with_its_affine(tmp_path: Path) -> None:
    volume = np.arange(8 * 10 * 6, dtype=np.int16).reshape(8, 10, 6)
    for name in ("v.nii", "v.nii.gz"):
        array, affine = read_volume(save_nifti(tmp_path / name, volume))
        assert array.dtype == np.float32 and array.shape == (8, 10, 6)
        np.testing.assert_array_equal(array, volume)
        np.testing.assert_array_equal(affine, LPS_2MM)
        assert affine.dtype == np.float64


def test_nifti_scale_factor_is_applied(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.full((4, 4, 4), 10, dtype=np.uint8), LPS_2MM)
    image.header.set_slope_inter(2.5, 1.0)
    nib.save(image, tmp_path / "scaled.nii.gz")
    array, _ = read_volume(tmp_path / "scaled.nii.gz")
    np.testing.assert_array_equal(array, np.full((4, 4, 4), 26.0, dtype=np.float32))


def test_trailing_singleton_dimension_is_squeezed(tmp_path: Path) -> None:
    array, _ = read_volume(save_nifti(tmp_path / "v.nii.gz", np.ones((5, 6, 7, 1), np.float32)))
    assert array.shape == (5, 6, 7)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float64, bool])
def test_reads_numeric_npy_with_identity_affine(tmp_path: Path, dtype: type) -> None:
    volume: np.ndarray = (np.arange(9 * 8 * 7) % 2).reshape(9, 8, 7).astype(dtype)
    np.save(tmp_path / "v.npy", volume)
    array, affine = read_volume(tmp_path / "v.npy")
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, volume.astype(np.float32))
    np.testing.assert_array_equal(affine, np.eye(4))


def _truncate(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


# Each writer creates one broken file in a folder and returns it; the error must name that file.
BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated .nii.gz": (
        lambda d: _truncate(save_nifti(d / "trunc.nii.gz", np.random.rand(9, 9, 9))),
        "damaged",
    ),
    "truncated .nii": (lambda d: _truncate(save_nifti(d / "trunc.nii", np.random.rand(9, 9, 9))), "damaged"),
    "not gzip": (lambda d: _write(d / "garbage.nii.gz", b"hello world" * 20), "damaged"),
    "empty file": (lambda d: _write(d / "empty.nii.gz", b""), "damaged"),
    "2-D nifti": (
        lambda d: save_nifti(d / "flat.nii.gz", np.ones((6, 6), np.float32)),
        r"3-D volume.*\(6, 6\)",
    ),
    "4-D nifti": (lambda d: save_nifti(d / "time.nii.gz", np.ones((6, 6, 6, 2), np.float32)), "3-D volume"),
    "2-D npy": (lambda d: _save_npy(d / "flat.npy", np.ones((6, 6))), "3-D volume"),
    "NaN voxels": (lambda d: _save_npy(d / "nan.npy", np.array([np.nan] * 8).reshape(2, 2, 2)), "NaN or Inf"),
    "Inf voxels": (
        lambda d: save_nifti(d / "inf.nii.gz", np.full((3, 3, 3), np.inf, np.float32)),
        "NaN or Inf",
    ),
    "string npy": (lambda d: _save_npy(d / "text.npy", np.array([["a", "b"]] * 3)), "numeric voxels"),
    "complex npy": (lambda d: _save_npy(d / "cplx.npy", np.zeros((3, 3, 3), complex)), "numeric voxels"),
    "object npy": (lambda d: _save_npy(d / "obj.npy", np.array([{}, None], dtype=object)), "pickled"),
    "pickle as npy": (lambda d: _write(d / "pick.npy", pickle.dumps({"a": 1})), "pickled"),
    "truncated npy": (lambda d: _truncate(_save_npy(d / "trunc.npy", np.random.rand(8, 8, 8))), "damaged"),
    "npz named npy": (lambda d: _save_npz_as_npy(d / "archive.npy"), "npz archive"),
    "zero affine": (lambda d: save_nifti_header_affine(d / "zero.nii.gz", np.zeros((3, 4))), "singular"),
    "NaN affine": (lambda d: save_nifti_header_affine(d / "nanaff.nii.gz", _eye_rows(nan=True)), "NaN/Inf"),
    "singular affine": (
        lambda d: save_nifti_header_affine(d / "sing.nii.gz", _eye_rows(repeat=True)),
        "singular",
    ),
    "unsupported suffix": (lambda d: _write(d / "notes.txt", b"hi"), "unsupported file type"),
    "missing file": (lambda d: d / "absent.nii.gz", "file not found"),
    "symlink loop": (lambda d: _symlink_loop(d / "loop.nii.gz"), "symlink loop"),
    "broken symlink": (lambda d: _symlink(d / "dangling.npy", d / "nowhere.npy"), "broken symlink"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save_npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array, allow_pickle=True)
    return path


def _save_npz_as_npy(path: Path) -> Path:
    np.savez(path.with_suffix(".npz"), a=np.zeros(3))
    os.replace(path.with_suffix(".npz"), path)
    return path


def _eye_rows(nan: bool = False, repeat: bool = False) -> np.ndarray:
    rows = np.eye(4)[:3].copy()
    if nan:
        rows[0, 0] = np.nan
    if repeat:
        rows[2] = rows[1]
    return rows


def _symlink(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _symlink_loop(path: Path) -> Path:
    other = path.with_name("loop2.nii.gz")
    path.symlink_to(other)
    other.symlink_to(path)
    return path


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_file_is_one_line_data_error_naming_it(tmp_path: Path, case: str) -> None:
    write, problem = BAD_FILES[case]
    path = write(tmp_path)
    with pytest.raises(DataError, match=problem) as info:
        read_volume(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    error = info.value  # no chained traceback: raised outside an except block, or `from None`
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_permission_error_while_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_nifti(tmp_path / "locked.nii.gz", np.ones((4, 4, 4), np.float32))

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(io.nib, "load", deny)
    with pytest.raises(DataError, match=r"locked\.nii\.gz: permission denied"):
        read_volume(path)


# ---------------------------------------------------------------------------- npz


@pytest.mark.parametrize("image_shape", [(5, 6, 6, 6), (5, 1, 6, 6, 6)], ids=["NDHW", "N1DHW"])
@pytest.mark.parametrize("label_shape", [(5,), (5, 1)], ids=["N", "N1"])
def test_read_npz_shapes(tmp_path: Path, image_shape: tuple[int, ...], label_shape: tuple[int, ...]) -> None:
    images = np.random.default_rng(0).integers(0, 255, size=image_shape, dtype=np.uint8)
    labels = np.array([0, 1, 1, 0, 2], dtype=np.uint8).reshape(label_shape)
    np.savez_compressed(tmp_path / "d.npz", val_images=images, val_labels=labels)
    got_images, got_labels = read_npz(tmp_path / "d.npz", "val")
    assert got_images.shape == (5, 6, 6, 6) and got_images.dtype == np.uint8
    np.testing.assert_array_equal(got_images, images.reshape(5, 6, 6, 6))
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_labels, [0, 1, 1, 0, 2])


BAD_NPZ: dict[str, tuple[dict[str, np.ndarray], str]] = {
    "missing keys": ({"x": np.zeros((2, 4, 4, 4))}, r"missing key\(s\) train_images, train_labels .* has x"),
    "length mismatch": (
        {"train_images": np.zeros((3, 4, 4, 4)), "train_labels": np.zeros(2, int)},
        "3 images but 2 labels",
    ),
    "3-D images": (
        {"train_images": np.zeros((3, 4, 4)), "train_labels": np.zeros(3, int)},
        r"\(N, D, H, W\)",
    ),
    "2-D labels": (
        {"train_images": np.zeros((3, 4, 4, 4)), "train_labels": np.zeros((3, 2), int)},
        r"\(N,\)",
    ),
    "float labels": (
        {"train_images": np.zeros((2, 4, 4, 4)), "train_labels": np.array([0.5, 1.0])},
        "integer class labels",
    ),
    "string images": (
        {"train_images": np.full((2, 2, 2, 2), "a"), "train_labels": np.zeros(2, int)},
        "must be numeric",
    ),
    "NaN image": (
        {
            "train_images": np.stack([np.zeros((2, 2, 2)), np.full((2, 2, 2), np.nan)]),
            "train_labels": np.zeros(2, int),
        },
        r"d\.npz\[1\]: contains NaN",
    ),
}


@pytest.mark.parametrize("case", list(BAD_NPZ), ids=list(BAD_NPZ))
def test_bad_npz(tmp_path: Path, case: str) -> None:
    arrays, problem = BAD_NPZ[case]
    np.savez(tmp_path / "d.npz", **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=problem) as info:
        read_npz(tmp_path / "d.npz", "train")
    assert str(tmp_path / "d.npz") in str(info.value)


def test_corrupt_npz(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "d.npz", train_images=np.random.rand(4, 8, 8, 8), train_labels=np.zeros(4, int))
    _truncate(tmp_path / "d.npz")
    with pytest.raises(DataError, match=r"d\.npz: cannot decode"):
        read_npz(tmp_path / "d.npz", "train")
