"""Bringing a volume onto the cubic training grid, and mapping its intensities to [-1, 1].

Geometry (:func:`to_grid`) and intensity (:func:`intensity_bounds`, :func:`scale_to_unit`,
:func:`unscale`) are separate steps: the grid keeps the original intensity units, so the bounds
are taken from the scan itself and padding never shifts them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nibabel.orientations import aff2axcodes

from volgan.config import DataConfig
from volgan.data.io import check_affine
from volgan.errors import DataError
from volgan.safety import check_resampled

# Axis labels for MONAI's Orientation, given explicitly (its default is being deprecated).
_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def is_identity(affine: np.ndarray) -> bool:
    """True for the placeholder affine of arrays without geometry (``.npy``, ``.npz``)."""
    return bool(np.allclose(affine, np.eye(4)))


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (length of each column of the 3x3 part)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def grid_spacing(shape: Sequence[int], affine: np.ndarray, cfg: DataConfig) -> float:
    """Isotropic voxel size (mm) that :func:`to_grid` gives this volume on the training grid.

    ``fit``: the largest field-of-view extent divided by ``cfg.size``; ``spacing``:
    ``cfg.spacing``; ``none``: the mean voxel size of the file (the grid is the file's own).
    """
    voxel = voxel_sizes(affine)
    if cfg.resample == "spacing" and cfg.spacing is not None:  # DataConfig requires it there
        return float(cfg.spacing)
    if cfg.resample == "fit":
        return float(np.max(np.asarray(shape) * voxel) / cfg.size)
    return float(np.mean(voxel))


def to_grid(volume: np.ndarray, affine: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Reorient, resample and pad/crop one volume onto the ``(S, S, S)`` grid, ``S = cfg.size``.

    ``volume`` is ``(D, H, W)`` with a 4x4 voxel-to-world ``affine``. A real affine (not the
    identity of ``.npy`` data) is first reoriented to ``cfg.orientation``. Then, by
    ``cfg.resample``: ``fit`` resizes to the isotropic spacing that fits the whole field of view
    (aspect ratio kept, anti-aliased when shrinking with linear interpolation); ``spacing``
    resamples to ``cfg.spacing`` mm; ``none`` requires the shape to be the grid already. Finally
    the volume is centre-cropped, or padded with its minimum (the background), to a cube.

    Returns float32 ``(S, S, S)`` in the original intensity units. Raises DataError (without a
    path: the caller adds it) for a volume that cannot be put on the grid.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise DataError(f"expected a 3-D volume (D, H, W), got shape {volume.shape}")
    return to_grid_batch(volume[None], affine, cfg)[0]


def to_grid_batch(volumes: np.ndarray, affine: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """:func:`to_grid` for ``(N, D, H, W)`` volumes sharing one affine, resampled in one call.

    Returns float32 ``(N, S, S, S)``; each volume is padded with its own minimum.
    """
    volumes = np.asarray(volumes, dtype=np.float32)
    spatial, size = volumes.shape[1:], cfg.size
    if cfg.resample == "none" and spatial != (size,) * 3:
        raise DataError(
            f"shape {spatial} is not the training grid {(size,) * 3} and data.resample is 'none'; "
            "use resample: fit or spacing, or change data.size"
        )
    try:
        affine = check_affine(affine, "volume")
    except DataError as e:
        raise DataError(str(e).removeprefix("volume: ")) from None
    fill = volumes.reshape(len(volumes), -1).min(axis=1)
    reorient = not is_identity(affine) and aff2axcodes(affine) != tuple(cfg.orientation)
    target = grid_spacing(spatial, affine, cfg)
    shape, voxel = np.asarray(spatial), voxel_sizes(affine)
    if reorient:  # a permutation of axes: shape and voxel sizes follow their axes
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

        new_axis = ornt_transform(io_orientation(affine), axcodes2ornt(cfg.orientation))[:, 0].astype(int)
        shape, voxel = shape[np.argsort(new_axis)], voxel[np.argsort(new_axis)]
    fitted: tuple[int, ...] | None = None
    if cfg.resample == "fit":
        fitted = tuple(int(max(1, round(n))) for n in shape * voxel / target)
        resample = fitted != tuple(shape)
    else:
        resample = cfg.resample == "spacing" and not np.allclose(voxel, target, rtol=1e-4)
        if resample:  # a tiny data.spacing would ask for terabytes: refused before MONAI allocates
            check_resampled(shape * voxel / target, len(volumes))
    if reorient or resample:
        volumes = _monai_resample(volumes, affine, cfg, reorient, fitted if resample else None, target, resample)
    return _pad_or_crop(volumes, size, fill)


def _monai_resample(
    volumes: np.ndarray,
    affine: np.ndarray,
    cfg: DataConfig,
    reorient: bool,
    fitted: tuple[int, ...] | None,
    target: float,
    resample: bool,
) -> np.ndarray:
    """Reorient and/or resample ``(N, D, H, W)`` with MONAI, the N volumes as channels of one MetaTensor.

    MONAI is imported here because it is slow to import.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Resize, Spacing

    image: torch.Tensor = MetaTensor(torch.from_numpy(volumes), affine=torch.from_numpy(affine))
    if reorient:
        image = Orientation(axcodes=cfg.orientation, labels=_AXIS_LABELS)(image)
    linear = cfg.interpolation == "linear"
    if fitted is not None:
        # Resize maps the whole field of view onto the new shape, so nothing is cut off or shifted.
        image = Resize(fitted, mode="trilinear" if linear else "nearest-exact", anti_aliasing=linear)(image)
    elif resample:
        mode = "bilinear" if linear else "nearest"  # "bilinear" is trilinear on 3-D grids
        image = Spacing(pixdim=(target,) * 3, mode=mode, padding_mode="border")(image)
    return np.ascontiguousarray(image.numpy(), dtype=np.float32)


def _pad_or_crop(volumes: np.ndarray, size: int, fill: np.ndarray) -> np.ndarray:
    """Centre-crop or pad each spatial axis of ``(N, D, H, W)`` to ``size``, volume i with ``fill[i]``."""
    if volumes.shape[1:] == (size,) * 3:
        return np.ascontiguousarray(volumes, dtype=np.float32)
    out = np.empty((len(volumes),) + (size,) * 3, dtype=np.float32)
    out[:] = fill[:, None, None, None]
    src, dst = [slice(None)], [slice(None)]
    for n in volumes.shape[1:]:
        start = abs(n - size) // 2
        src.append(slice(start, start + size) if n >= size else slice(0, n))
        dst.append(slice(0, size) if n >= size else slice(start, start + n))
    out[tuple(dst)] = volumes[tuple(src)]
    return out


def intensity_bounds_batch(volumes: np.ndarray, percentiles: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-volume ``(lo, hi)`` for a batch ``(N, ...)``: float64 arrays of shape ``(N,)``.

    The percentiles are linear-interpolated; where ``hi <= lo`` (e.g. a mask whose foreground is
    under the upper percentile) the volume's min and max are used instead. A constant volume
    still has ``hi == lo``: callers reject it, naming the file.
    """
    flat = np.asarray(volumes).reshape(len(volumes), -1)
    lo, hi = np.percentile(flat, percentiles, axis=1).astype(np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # float32 interpolation overflowed near ±3.4e38
        lo, hi = np.percentile(flat.astype(np.float64), percentiles, axis=1)
    flat_range = hi <= lo
    if flat_range.any():
        lo[flat_range] = flat[flat_range].min(axis=1)
        hi[flat_range] = flat[flat_range].max(axis=1)
    return lo, hi


def intensity_bounds(volume: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """``(lo, hi)`` of one volume from ``percentiles`` (falling back to (min, max) where they meet).

    For a constant volume ``lo == hi``; it has nothing to scale and the caller raises DataError.
    """
    lo, hi = intensity_bounds_batch(np.asarray(volume)[None], percentiles)
    return float(lo[0]), float(hi[0])


def scale_to_unit(volume: np.ndarray, lo: float | np.ndarray, hi: float | np.ndarray) -> np.ndarray:
    """Clip to ``[lo, hi]`` and map linearly onto ``[-1, 1]``; returns float32.

    ``lo``/``hi`` may be arrays that broadcast against ``volume`` (one pair per volume of a
    batch). ``lo`` and ``hi`` land exactly on -1 and 1, so a {0, 255} mask becomes exactly {-1, 1}.
    """
    lo64, hi64 = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if not np.all(hi64 > lo64):
        raise ValueError(f"scale_to_unit needs hi > lo, got lo={lo}, hi={hi}")
    # float32 throughout (this runs over whole datasets); the bounds are rounded to float32 first,
    # so a voxel at hi computes (hi - lo) / (hi - lo) with identical operands: exactly 1.
    lo_: np.ndarray = lo64.astype(np.float32)
    hi_: np.ndarray = hi64.astype(np.float32)
    with np.errstate(over="ignore"):
        overflows = not np.all(np.isfinite(hi_ - lo_))  # a range past float32's: ±3e38 data
    if overflows or not np.all(hi_ > lo_):  # bounds too close to tell apart, or too far, in float32
        lo_, hi_ = lo64, hi64
    unit = np.array(volume, dtype=lo_.dtype)  # a copy, then updated in place
    np.clip(unit, lo_, hi_, out=unit)
    unit -= lo_
    unit /= hi_ - lo_
    unit *= 2.0
    unit -= 1.0
    return unit.astype(np.float32, copy=False)


def unscale(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Inverse of :func:`scale_to_unit`: map ``[-1, 1]`` back to ``[lo, hi]``; returns float32."""
    unit = (np.asarray(volume, dtype=np.float64) + 1.0) / 2.0
    return (unit * (float(hi) - float(lo)) + float(lo)).astype(np.float32)


def grid_affine(size: int, spacing: float, orientation: str = "RAS") -> np.ndarray:
    """4x4 voxel-to-world affine of the training grid: isotropic ``spacing`` mm, centre at the origin.

    ``orientation`` names the world direction each array axis runs towards (default RAS, the
    loader's default ``data.orientation``).
    """
    world_axis = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for k, code in enumerate(orientation.upper()):
        affine[world_axis[code], k] = spacing if code in "RAS" else -spacing
    affine[:3, 3] = -affine[:3, :3] @ np.full(3, (size - 1) / 2.0)
    return affine
