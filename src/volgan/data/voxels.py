"""Reading voxel occupancy grids: ``.binvox``, 3DShapeNets-style ``.mat``, and ``.npz`` / ``.npy`` arrays.

Every reader returns an ``(N, D, H, W)`` array in the file's numeric dtype, ``N = 1`` for a file
that holds one object. A file holds a *batch* when its array is 4-D, even with ``N = 1``
(:func:`peek_voxels` tells without decoding the voxels); the rank rules are those of
:func:`~volgan.data.io.read_volume` for ``.npy``: trailing singleton axes are dropped first, and
an ``(N, 1, D, H, W)`` channel axis is dropped too.

* ``.binvox``: the header ``#binvox 1``, ``dim D H W``, ``translate``, ``scale``, ``data``, then
  run-length (value, count) byte pairs. binvox stores the voxels in x-z-y order (y fastest);
  like the reference reader binvox_rw.py the array is reshaped to ``dim`` and its last two axes
  are swapped, so ``voxels[0, x, y, z]`` is the voxel at (x, y, z).
* ``.mat`` (MATLAB v5 and older, via :func:`scipy.io.loadmat`): the variable ``instance`` (as in
  3DShapeNets) or ``voxels``, else the file's only variable. MATLAB v7.3 (HDF5) is not read.
* ``.npz``: the array ``voxels``, else the archive's only array; ``.npy``: the array itself.

Each problem becomes one :class:`~volgan.errors.DataError` line naming the file (``file[i]`` for
one object of a batch) and what was expected. :func:`as_occupancy` checks and normalises
occupancy grids for ``data.binary``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, NamedTuple, TypeVar

import numpy as np

from volgan.data.io import DECODE_ERRORS, check_readable, decode_error, error_detail
from volgan.errors import DataError
from volgan.safety import check_decoded, check_float32_range, require_regular_file

VOXEL_SUFFIXES = (".binvox", ".mat", ".npz", ".npy")
_ARRAY_KEYS = ("voxels",)  # preferred array of an .npz
_MAT_KEYS = ("instance", "voxels")  # preferred variable of a .mat (3DShapeNets uses "instance")
_T = TypeVar("_T")
_NPZ_HINT = "; a MedMNIST-style archive ({split}_images, {split}_labels) is read when you pass an .npz file itself"


class VoxelInfo(NamedTuple):
    """What :func:`peek_voxels` learns from a file's header: the object count, and whether it is a batch."""

    n: int
    batched: bool


def voxel_suffix(path: Path) -> str | None:
    """The voxel-file suffix ``path`` ends with (case-insensitive), or None."""
    name = path.name.lower()
    return next((s for s in VOXEL_SUFFIXES if name.endswith(s)), None)


def batch_shape(shape: tuple[int, ...], where: str, hint: str = "") -> tuple[tuple[int, int, int, int], bool]:
    """``(N, D, H, W)`` of an array of ``shape`` and whether it is a batch (4-D), else DataError."""
    dims = tuple(int(n) for n in shape)
    while len(dims) > 3 and dims[-1] == 1:  # a (D, H, W, 1) volume, as read_volume squeezes it
        dims = dims[:-1]
    if len(dims) == 5 and dims[1] == 1:  # (N, 1, D, H, W): a channel axis
        dims = dims[:1] + dims[2:]
    if len(dims) not in (3, 4):
        raise DataError(f"{where}: expected voxels (N, D, H, W) or (D, H, W), got shape {tuple(shape)}{hint}")
    if min(dims) < 1:
        raise DataError(f"{where}: empty voxel array of shape {tuple(shape)}; expected non-empty objects")
    n, d, h, w = dims if len(dims) == 4 else (1, *dims)
    return (n, d, h, w), len(dims) == 4


def peek_voxels(path: Path) -> VoxelInfo:
    """Object count of a voxel file from its header alone (the voxels are not decoded)."""
    path = Path(path)
    suffix = voxel_suffix(path)
    require_regular_file(path, check_readable(path))  # a FIFO would block the read forever
    if suffix == ".binvox":
        with _open(path) as stream:
            _binvox_header(stream, path)
        return VoxelInfo(1, False)
    if suffix == ".mat":
        from scipy.io import whosmat

        variables = {name: shape for name, shape, _ in _mat_call(whosmat, path)}
        key = _pick(list(variables), _MAT_KEYS, path, "variable")
        shape = variables[key]
        check_decoded(path, shape, 4)  # counted as float32, what every volume becomes
    elif suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as archive:
                keys = [n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy")]
                key = _pick(keys, _ARRAY_KEYS, path, "array", hint=_NPZ_HINT)
                with archive.open(f"{key}.npy") as stream:
                    shape, dtype = _npy_header(stream, path)
        except DECODE_ERRORS as e:
            raise decode_error(path, e) from None
        _check_dtype(dtype, path, hint=_NPZ_HINT)
        check_decoded(path, shape, dtype.itemsize)  # a member that inflates to many GB: refused before
    elif suffix == ".npy":
        with _open(path) as stream:
            if stream.read(4) == b"PK\x03\x04":
                raise DataError(f"{path}: is an .npz archive, expected a single array")
            stream.seek(0)
            shape, dtype = _npy_header(stream, path)
        _check_dtype(dtype, path)
        check_decoded(path, shape, dtype.itemsize)
    else:
        raise DataError(f"{path}: unsupported file type, expected one of {', '.join(VOXEL_SUFFIXES)}")
    (n, *_), batched = batch_shape(shape, str(path), _NPZ_HINT if suffix == ".npz" else "")
    return VoxelInfo(n, batched)


def read_voxels(path: Path, *, binary: bool = False) -> np.ndarray:
    """Read a ``.binvox``, ``.mat``, ``.npz`` or ``.npy`` voxel file as ``(N, D, H, W)``.

    The array keeps the file's numeric dtype (a ``.npy`` batch is memory-mapped). With ``binary``
    it must be an occupancy grid and comes back as uint8 {0, 1} (see :func:`as_occupancy`).
    """
    path = Path(path)
    suffix = voxel_suffix(path)
    require_regular_file(path, check_readable(path))
    if suffix == ".npz":
        peek_voxels(path)  # the member's size from its header, checked before it is inflated
    hint = ""
    if suffix == ".binvox":
        array = read_binvox(path)
    elif suffix == ".mat":
        array = _read_mat(path)
    elif suffix == ".npz":
        array, hint = _read_npz_voxels(path), _NPZ_HINT
    elif suffix == ".npy":
        peek_voxels(path)  # the header's problems as the same messages, before mapping the data
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except DECODE_ERRORS as e:
            raise decode_error(path, e) from None
    else:
        raise DataError(f"{path}: unsupported file type, expected one of {', '.join(VOXEL_SUFFIXES)}")
    _check_dtype(array.dtype, path, hint=hint)
    shape, batched = batch_shape(array.shape, str(path), hint)
    array = array.reshape(shape)
    _check_finite(array, path, batched)
    return as_occupancy(array, str(path)) if binary else array


def read_binvox(path: Path) -> np.ndarray:
    """Read one ``.binvox`` file as ``(1, X, Y, Z)`` uint8 {0, 1}, indexed ``[0, x, y, z]``."""
    path = Path(path)
    check_readable(path)
    with _open(path) as stream:
        dims = _binvox_header(stream, path)
        try:
            raw = np.frombuffer(stream.read(), dtype=np.uint8)
        except OSError as e:
            raise decode_error(path, e) from None
    if raw.size % 2:
        raise DataError(f"{path}: binvox run-length data has an odd number of bytes; expected (value, count) pairs")
    values, counts = raw[0::2], raw[1::2]
    total, expected = int(counts.sum(dtype=np.int64)), int(np.prod(dims))
    if total != expected:
        what = "shorter" if total < expected else "longer"
        raise DataError(
            f"{path}: binvox data is {what} than its dim {dims[0]}x{dims[1]}x{dims[2]} "
            f"({total} voxels, expected {expected}); the file is truncated or damaged"
        )
    # Any non-zero value is occupied, as binvox_rw reads it; stored x-z-y, so swap the last two axes.
    occupied = np.repeat((values != 0).astype(np.uint8), counts).reshape(dims)
    return np.ascontiguousarray(occupied.transpose(0, 2, 1))[None]


def as_occupancy(array: np.ndarray, where: str) -> np.ndarray:
    """Check that ``array`` holds occupancy and return it as uint8 {0, 1}, same shape.

    Any array whose values are ``{0, m}`` for one ``m > 0`` counts (bool, uint8 {0, 255}, float
    {0, 1}), all-empty and all-full ones too; anything else is a DataError naming ``where`` and
    the values found.
    """
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    lo, hi = array.min(), array.max()
    if lo == hi >= 0 or (lo == 0 and np.count_nonzero(array) == np.count_nonzero(array == hi)):
        return (array != 0).astype(np.uint8)
    values = np.unique(array)  # only on the way to an error: sorting a large array is slow
    shown = ", ".join(f"{v:g}" for v in values[:5]) + (f" (and {len(values) - 5} more)" if len(values) > 5 else "")
    raise DataError(f"{where}: data.binary expects occupancy values {{0, 1}} (or {{0, m}}), found {shown}")


# ---------------------------------------------------------------------------- helpers


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")  # the callers close it in a with block
    except OSError as e:
        raise decode_error(path, e) from None


def _binvox_header(stream: IO[bytes], path: Path) -> tuple[int, int, int]:
    """Read the header up to and including the ``data`` line; return ``dim``."""
    first = stream.readline(64)
    if not first.startswith(b"#binvox"):
        raise DataError(f"{path}: not a binvox file (the first line must be '#binvox 1', got {first[:16]!r})")
    dims: tuple[int, int, int] | None = None
    for _ in range(32):  # a handful of lines (dim, translate, scale); a runaway header is damage
        line = stream.readline(256).strip()
        if line == b"data":
            break
        key, *values = line.split() or [b""]
        if key == b"dim":
            try:
                d, h, w = (int(v) for v in values)
            except ValueError:
                d = h = w = 0
            if min(d, h, w) < 1:
                raise DataError(f"{path}: bad binvox header line {line[:40]!r}; expected 'dim D H W', positive ints")
            dims = (d, h, w)
            check_decoded(path, dims, 1)  # run-length data expands ~127x: bounded before np.repeat
        elif not line:
            break
    else:
        line = b""
    if line != b"data":
        raise DataError(f"{path}: binvox header has no 'data' line; the file is truncated or damaged")
    if dims is None:
        raise DataError(f"{path}: binvox header has no 'dim D H W' line")
    return dims


def _npy_header(stream: IO[bytes], path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(stream)
    except DECODE_ERRORS as e:
        raise DataError(
            f"{path}: not an .npy array (pickled Python objects, or a damaged file: {error_detail(e)})"
        ) from None
    return tuple(shape), np.dtype(dtype)


def _check_dtype(dtype: np.dtype, path: Path, hint: str = "") -> None:
    if dtype.hasobject and voxel_suffix(path) == ".mat":
        raise DataError(f"{path}: the variable is a cell array or struct, expected a numeric array")
    if dtype.hasobject:
        raise DataError(f"{path}: holds pickled Python objects, expected a numeric array{hint}")
    if dtype.kind not in "biuf":
        raise DataError(f"{path}: expected numeric voxels, got dtype {dtype}{hint}")


def _check_finite(array: np.ndarray, path: Path, batched: bool) -> None:
    if array.dtype.kind != "f":
        return
    for start in range(0, len(array), 64):  # in slices: a memory-mapped batch is never copied whole
        finite = np.isfinite(array[start : start + 64]).reshape(-1, array[0].size).all(axis=1)
        if not finite.all():
            where = f"{path}[{start + int(np.argmin(finite))}]" if batched else str(path)
            raise DataError(f"{where}: contains NaN or Inf voxels")
        check_float32_range(array[start : start + 64], str(path))


def _pick(keys: list[str], preferred: tuple[str, ...], path: Path, what: str, hint: str = "") -> str:
    key = next((k for k in preferred if k in keys), None)
    if key is not None:
        return key
    if len(keys) == 1:
        return keys[0]
    names = " or ".join(repr(k) for k in preferred)
    found = f"found {', '.join(keys[:6])}" if keys else "found none"
    raise DataError(f"{path}: expected {what} {names} or a single {what}; {found}{hint}")


def _mat_call(function: Callable[[Path], _T], path: Path) -> _T:
    """Call a scipy.io reader on ``path``, its failures as DataError."""
    from scipy.io.matlab import MatReadError

    try:
        return function(path)
    except NotImplementedError:  # scipy's answer to an HDF5-based v7.3 file
        raise DataError(
            f"{path}: MATLAB v7.3 (HDF5) .mat files are not supported; save with -v7 or convert to .npz"
        ) from None
    except (*DECODE_ERRORS, MatReadError, LookupError, TypeError) as e:
        raise decode_error(path, e) from None


def _read_mat(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    content = _mat_call(loadmat, path)
    key = _pick([k for k in content if not k.startswith("__")], _MAT_KEYS, path, "variable")
    array = content[key]
    if not isinstance(array, np.ndarray):  # a sparse matrix
        raise DataError(f"{path}: variable {key} is {type(array).__name__}, expected a dense numeric array")
    return array


def _read_npz_voxels(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: expected an .npz archive, got a single array")
            return archive[_pick(list(archive.files), _ARRAY_KEYS, path, "array", hint=_NPZ_HINT)]
    except DECODE_ERRORS as e:
        if isinstance(e, ValueError) and "pickle" in str(e).lower():
            raise DataError(f"{path}: holds pickled Python objects, expected a numeric array") from None
        raise decode_error(path, e) from None
