"""A torch ``Dataset`` of volumes -> a :class:`VolumeSet`, so MONAI/TorchIO pipelines can feed training.

Items are ``(volume, label)`` tuples, MONAI-style dicts ``{"image": volume, "label": int}``, or a bare
volume (one class). A volume is ``(D, H, W)`` or ``(1, D, H, W)``: a tensor, MONAI ``MetaTensor`` or
numpy array. Each one goes through the folder loader's steps: onto the ``data.size`` grid (as an
``.npz`` volume, identity affine) unless it is there already, then scaled to [-1, 1] by its own
percentile bounds (:func:`~volgan.data.preprocess.scale_to_unit`), or, with ``data.binary``, read
as occupancy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from volgan.config import DataConfig
from volgan.data.preprocess import grid_spacing, intensity_bounds_batch, scale_to_unit, to_grid_batch
from volgan.data.volume_set import VolumeSet
from volgan.data.voxels import as_occupancy
from volgan.errors import DataError
from volgan.safety import check_bytes, shown

_GB = 1e9


def _split(item: Any, k: int) -> tuple[Any, Any]:
    """One item -> (volume, label or None)."""
    if isinstance(item, Mapping):
        if "image" not in item:
            raise DataError(f"dataset item {k}: a dict needs an 'image' key (MONAI style), got keys {list(item)}")
        return item["image"], item.get("label")
    if isinstance(item, tuple | list):
        if len(item) != 2:
            raise DataError(f"dataset item {k}: expected (volume, label), got a sequence of {len(item)}")
        return item[0], item[1]
    return item, None


def _array(volume: Any, k: int) -> np.ndarray:
    if hasattr(volume, "detach"):  # torch.Tensor, MetaTensor
        volume = volume.detach().cpu().numpy()
    array = np.asarray(volume)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.dtype.kind not in "biuf" or min(array.shape) < 1:
        raise DataError(
            f"dataset item {k}: the volume must be a (D, H, W) or (1, D, H, W) array of numbers, "
            f"got {array.dtype} {tuple(array.shape)}"
        )
    return array


def _label(label: Any, k: int) -> int:
    if hasattr(label, "detach"):
        label = label.detach().cpu().numpy()
    value = np.asarray(label)
    if value.size != 1 or value.dtype.kind not in "iu":
        raise DataError(f"dataset item {k}: label must be one integer class index, got {shown(label)}")
    return int(value.reshape(()))


# long: one pass over a user's Dataset that checks each item as it reads it; its docstring is the contract
def volume_set_from_dataset(
    dataset: Any,
    cfg: DataConfig,
    *,
    class_names: Sequence[str] | None = None,
    spacing: float = 1.0,
) -> VolumeSet:
    """Read every item of ``dataset`` (``len`` and ``[i]``) into a :class:`VolumeSet` on the ``cfg.size`` grid.

    Labels: with ``class_names``, item labels are indices into it; without, the class names are
    ``str(label)`` of the labels found, in sorted order, and the model's class ``k`` is the ``k``-th.
    Items without a label are one class, ``"0"``. ``spacing``: the items' voxel size in mm.
    Values: volumes that all lie in [-1, 1] are taken as they are (``intensity_range`` (-1, 1));
    otherwise each is scaled by its ``cfg.intensity_percentiles`` bounds as the folder loader does.
    The whole set (N x S³ float32) must fit ``cfg.max_decoded_gb``, checked before it is allocated.
    """
    try:
        n = len(dataset)
    except TypeError:
        raise DataError(
            f"data: expected a folder, an .npz file, a VolumeSet or a torch Dataset, got {shown(dataset)}"
        ) from None
    if n == 0:
        raise DataError("data: the dataset is empty")
    size = cfg.size
    check_bytes(
        n * size**3 * 4,
        cfg.max_decoded_gb * _GB,
        f"data: {n} volumes of {size}³ float32",
        "raise data.max_decoded_gb, or pass fewer or smaller volumes",
    )
    out = np.empty((n, size, size, size), np.float32)
    bounds, spacings, labels = np.empty((n, 2)), np.empty(n), []
    inside = True  # every volume already in [-1, 1]
    affine = np.diag([spacing, spacing, spacing, 1.0])
    for k in range(n):
        volume, label = _split(dataset[k], k)
        array = _array(volume, k)
        labels.append(0 if label is None else _label(label, k))
        if cfg.binary:
            array = as_occupancy(array, f"dataset item {k}")
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise DataError(f"dataset item {k}: the volume holds NaN or Inf")
        on_grid = array.shape == (size,) * 3
        grid = array if on_grid else _on_grid(array, affine, cfg, k)
        spacings[k] = spacing if on_grid else grid_spacing(array.shape, affine, cfg)
        if cfg.binary:
            out[k] = np.where(grid >= 0.5, np.float32(1.0), np.float32(-1.0))
            bounds[k] = (0.0, 1.0)
            continue
        inside = inside and float(array.min()) >= -1.0 and float(array.max()) <= 1.0
        lo, hi = intensity_bounds_batch(array[None], cfg.intensity_percentiles)
        bounds[k] = (lo[0], hi[0])
        out[k] = grid
    if cfg.binary:
        intensity_range = (0.0, 1.0)
    elif inside:
        intensity_range = (-1.0, 1.0)
    else:
        flat = np.flatnonzero(bounds[:, 1] <= bounds[:, 0])
        if len(flat):
            raise DataError(f"dataset item {flat[0]}: the volume is constant; there is nothing to scale")
        for k in range(n):  # in place, one volume at a time: no second copy of the set
            out[k] = scale_to_unit(out[k], bounds[k, 0], bounds[k, 1])
        median_lo, median_hi = (float(v) for v in np.median(bounds, axis=0))
        if not median_hi > median_lo:  # only when the volumes' ranges do not overlap
            median_lo, median_hi = float(bounds[:, 0].min()), float(bounds[:, 1].max())
        intensity_range = (median_lo, median_hi)
    raw = np.asarray(labels, dtype=np.int64)
    if class_names is not None:
        names = [str(c) for c in class_names]
        if raw.min() < 0 or raw.max() >= len(names):
            raise DataError(
                f"dataset labels run {raw.min()}..{raw.max()}, but class_names has {len(names)} names: {names}"
            )
        index = raw
    else:
        values, index = np.unique(raw, return_inverse=True)
        names = [str(v) for v in values]
    sources = [f"dataset[{k}]" for k in range(n)]
    return VolumeSet.from_arrays(
        out, index, names, spacing=float(np.median(spacings)), intensity_range=intensity_range, sources=sources,
        orientation=cfg.orientation,
    )  # fmt: skip


def _on_grid(array: np.ndarray, affine: np.ndarray, cfg: DataConfig, k: int) -> np.ndarray:
    try:
        return to_grid_batch(array[None], affine, cfg)[0]
    except DataError as e:
        raise DataError(f"dataset item {k}: {e}") from None
