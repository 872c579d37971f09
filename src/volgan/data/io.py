"""Reading single volume files (NIfTI, ``.npy``) and MedMNIST-style ``.npz`` archives.

Voxel occupancy files (``.binvox``, ``.mat``, ``.npz``/``.npy`` batches) are read by
:mod:`volgan.data.voxels`.

Every problem with a file becomes one :class:`~volgan.errors.DataError` line that names the file
and says what was expected; the underlying exception is never shown as a traceback.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError, SpatialImage

from volgan.errors import DataError
from volgan.safety import check_decoded, check_float32_range, check_npz_members, require_regular_file

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".npy")

# What a damaged file can raise while it is decoded: gzip/zip/zlib errors, truncated data
# (EOFError, nibabel's "Expected N bytes" OSError, numpy's "Failed to read all data" ValueError),
# sizes that overflow, and numpy's tokenizer on a mangled old-style .npy header (TokenError).
DECODE_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    OverflowError,
    tokenize.TokenError,
    zlib.error,
    zipfile.BadZipFile,
    ImageFileError,
    HeaderDataError,
)


def volume_suffix(path: Path) -> str | None:
    """The supported suffix ``path`` ends with (case-insensitive), or None."""
    name = path.name.lower()
    return next((s for s in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def check_readable(path: Path) -> os.stat_result:
    """``os.stat`` that turns a missing file, a symlink loop or a permission problem into DataError."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        what = "broken symlink" if os.path.islink(path) else "file not found"
        raise DataError(f"{path}: {what}") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{path}: symlink loop (the link points back at itself)") from None
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def decode_error(path: Path, e: Exception) -> DataError:
    """The one-line DataError for a file that failed to decode with ``e``."""
    if isinstance(e, PermissionError) or _permission_denied(path):
        return DataError(f"{path}: permission denied")
    return DataError(f"{path}: cannot decode, the file is damaged or not a volume ({error_detail(e)})")


def error_detail(e: Exception) -> str:
    """The first line of ``e``'s message (its class name if it has none), for the end of a DataError."""
    if isinstance(e, tokenize.TokenError):  # numpy's tokenizer on a mangled .npy header: "('EOF in ...', (2, 0))"
        return "the header cannot be parsed"
    text = str(e).strip()
    return text.splitlines()[0] if text else e.__class__.__name__


def _permission_denied(path: Path) -> bool:
    # nibabel reports an unreadable file as "Could not read file", so ask the OS directly
    try:
        with open(path, "rb"):
            return False
    except PermissionError:
        return True
    except OSError:
        return False


# deflate cannot expand its input by more than about 1032:1, so a .gz file of n bytes holds at most this
_MAX_GZIP_RATIO = 1032


def _check_size(path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int, compressed: bool) -> None:
    """Refuse a header whose voxels cannot be in the file, before memory for them is allocated.

    A damaged header can claim terabytes; reading would then fail with a MemoryError, or after
    minutes of allocating, instead of naming the file.
    """
    if any(n < 0 for n in shape):
        raise DataError(f"{path}: the header gives the negative shape {tuple(shape)}; the file is damaged")
    needed = math.prod(int(n) for n in shape) * dtype.itemsize
    size = os.stat(path).st_size
    room = size * _MAX_GZIP_RATIO if compressed else size - offset
    if needed > room:
        raise DataError(
            f"{path}: the header's shape {tuple(shape)} ({dtype}) needs {needed} bytes of voxels, more than the "
            f"{size}-byte file can hold; it is truncated or its header is damaged"
        )
    check_decoded(path, shape, dtype.itemsize)  # a real (or sparse) file that large: data.max_decoded_gb


def _check_npy_size(path: Path) -> None:
    """:func:`_check_size` for an ``.npy`` file; anything that is not one is left to ``np.load``."""
    with open(path, "rb") as stream:
        if stream.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
            return  # a pickle or an .npz: np.load says what it is
        stream.seek(0)
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(stream)
        if not dtype.hasobject:  # object arrays are refused by np.load (allow_pickle=False)
            _check_size(path, shape, dtype, stream.tell(), compressed=False)


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Keep nibabel's header-repair notes ("sizeof_hdr should be 348; ...") off stderr.

    nibabel prints them itself; a header it cannot repair still ends as one DataError line.
    """
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_voxels(array: np.ndarray, where: str) -> None:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: expected numeric voxels, got dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"{where}: contains NaN or Inf voxels")


def _as_3d(array: np.ndarray, where: str) -> np.ndarray:
    """Squeeze trailing singleton dimensions (a (D,H,W,1) NIfTI), then insist on 3-D."""
    shape = array.shape
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 1:
        hint = "; channels or time points are not read, save one 3-D volume per file" if array.ndim == 4 else ""
        raise DataError(f"{where}: expected a 3-D volume (D, H, W), got shape {shape}{hint}")
    return array


def check_affine(affine: np.ndarray, where: str) -> np.ndarray:
    """A finite, invertible 4x4 float64 affine, or DataError naming ``where``."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise DataError(f"{where}: the affine (voxel-to-world matrix) is missing or has NaN/Inf entries")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{where}: the affine (voxel-to-world matrix) is singular (zero voxel size?)")
    return affine


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one ``.nii``, ``.nii.gz`` or ``.npy`` file.

    Returns the voxels as a float32 ``(D, H, W)`` array and the 4x4 float64 voxel-to-world
    affine (identity for ``.npy``, which carries no geometry). Intensities are not rescaled.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise DataError(f"{path}: unsupported file type, expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    require_regular_file(path, check_readable(path))  # a FIFO named x.npy would block forever
    if suffix == ".npy":
        try:
            _check_npy_size(path)
            loaded = np.load(path, allow_pickle=False)
        except DECODE_ERRORS as e:
            if isinstance(e, ValueError) and "pickle" in str(e).lower():
                raise DataError(f"{path}: holds pickled Python objects, expected a numeric array") from None
            raise decode_error(path, e) from None
        if not isinstance(loaded, np.ndarray):  # an .npz archive saved under a .npy name
            loaded.close()
            raise DataError(f"{path}: is an .npz archive, expected a single array (pass .npz files as data.root)")
        array, affine = loaded, np.eye(4)
    else:
        try:
            with _quiet_nibabel(), np.errstate(all="ignore"):  # NaN/Inf from a bad scale factor: checked below
                image = nib.load(path)  # reads the header only
                if not isinstance(image, SpatialImage):
                    raise DataError(f"{path}: not a NIfTI image (got {type(image).__name__})")
                offset = int(getattr(image.dataobj, "offset", 0))
                _check_size(path, image.shape, image.get_data_dtype(), offset, compressed=suffix == ".nii.gz")
                array = image.get_fdata(dtype=np.float32)  # applies the scale factor (scl_slope/inter)
                if not np.isfinite(array).all():  # finite data beyond float32 says so, not "contains Inf"
                    check_float32_range(np.asarray(image.dataobj, dtype=np.float64), str(path))
                affine = image.affine
        except (*DECODE_ERRORS, TypeError) as e:  # TypeError: e.g. complex voxels
            raise decode_error(path, e) from None
        if affine is None:  # nibabel gives one even without sform/qform; this guards odd headers
            raise DataError(f"{path}: the image has no affine (voxel-to-world matrix)")
    _check_voxels(array, str(path))
    check_float32_range(array, str(path))
    volume = _as_3d(array, str(path))
    return np.ascontiguousarray(volume, dtype=np.float32), check_affine(affine, str(path))


def read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a MedMNIST-style archive with keys ``{split}_images`` and ``{split}_labels``.

    Images may be ``(N, D, H, W)`` or ``(N, 1, D, H, W)``; labels ``(N,)`` or ``(N, 1)``.
    Returns ``(images (N, D, H, W), labels int64 (N,))``; the images keep their stored numeric
    dtype (uint8 masks stay uint8, a quarter of the memory of float32).
    """
    path = Path(path)
    require_regular_file(path, check_readable(path))
    check_npz_members(path)  # a member that inflates past data.max_decoded_gb is refused before inflating
    img_key, lbl_key = f"{split}_images", f"{split}_labels"
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: expected an .npz archive, got a single array")
            missing = [k for k in (img_key, lbl_key) if k not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: missing key(s) {', '.join(missing)} for split {split!r}; "
                    f"the archive has {', '.join(archive.files) or 'no arrays'}"
                )
            images, labels = archive[img_key], archive[lbl_key]
    except DECODE_ERRORS as e:
        if isinstance(e, ValueError) and "pickle" in str(e).lower():
            raise DataError(f"{path}: holds pickled Python objects, expected numeric arrays") from None
        raise decode_error(path, e) from None
    if images.ndim == 5 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 4 or min(images.shape) < 1:
        raise DataError(f"{path}: {img_key} must be (N, D, H, W) or (N, 1, D, H, W), got shape {images.shape}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: {lbl_key} must be (N,) or (N, 1), got shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels; expected one label per image")
    if images.dtype.kind not in "biuf":
        raise DataError(f"{path}: {img_key} must be numeric, got dtype {images.dtype}")
    if images.dtype.kind == "f":
        bad = ~np.isfinite(images.reshape(len(images), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"{path}[{int(np.argmax(bad))}]: contains NaN or Inf voxels")
        check_float32_range(images, f"{path}: {img_key}")
    if labels.dtype.kind not in "biuf" or (labels.dtype.kind == "f" and not np.all(labels == np.round(labels))):
        raise DataError(f"{path}: {lbl_key} must be integer class labels, got dtype {labels.dtype}")
    return images, labels.astype(np.int64)
