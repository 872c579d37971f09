"""A built-in procedural dataset of simple furniture-like voxel objects in three classes.

Each object is a union of boxes, cylinders and cone frustums with random proportions, so the
classes differ in shape in a way a person sees at a glance and that :func:`predict_class`
checks with fixed rules:

* ``chair``: tall; a seat slab at 40-50 % of the height on four legs, and a backrest (solid
  panel or slats between two posts) that rises from the seat at the +y side (facing -y);
* ``table``: flat and wide; a rectangular or round top slab at the very top, on four legs,
  sometimes joined by low stretchers;
* ``lamp``: tall and thin; a heavy base, a thin central pole and a shade (cone, drum or dome)
  on top.

Axes follow ModelNet voxel grids: axis 2 is up (z) and objects stand on a floor at z = 0,
centred in axes 0 and 1 (x, y). Poses vary by a rotation of up to 30 degrees about the
vertical axis and small horizontal shifts; sizes by an overall scale (the largest extent
spans 74-92 % of the grid).

Shapes are drawn in continuous coordinates (fractions of the grid), so one generator state
gives the same object at every grid size; the only exception is that thin parts are widened
to at least 1.5 voxels (slabs to 1.2 voxels) so they stay connected on coarse grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from volgan.data.procedural import as_volume, make_labelled_set

CLASS_NAMES = ("chair", "table", "lamp")
UNRECOGNISED = -1
"""What :func:`predict_class` returns for a volume that does not look like any object."""

MIN_SIZE = 16
_MAX_YAW_DEG = 30.0
_MAX_SHIFT = 0.03  # horizontal, fraction of the grid
_MAX_FLOOR = 0.02  # height of the lowest point above z = 0, fraction of the grid
_MIN_THICK_VOXELS = 1.5  # horizontal thickness of posts, panels and poles
_MIN_SLAB_VOXELS = 1.2  # vertical thickness of seats, table tops and bases

# Rules of predict_class (fractions of the main component unless said otherwise).
_MIN_FILL, _MAX_FILL = 0.002, 0.4  # of the grid
_MIN_MAIN_COMPONENT = 0.8  # of all occupied voxels outside specks: scattered noise is not an object
_SPECK = 0.01  # components below this share of the occupied voxels are ignored
_MIN_NEIGHBOURS = 2.5  # mean occupied 6-neighbours: solid parts, not noise
_POLE_BAND = (0.15, 0.55)  # of the height: where a lamp has nothing but its pole
_MAX_POLE_RADIUS = 0.45  # of the largest horizontal radius
_SLAB_AREA = 0.6  # slices with at least this share of the largest slice belong to the slab
_MAX_LEG_AREA = 0.5  # mean slice area under the slab, relative to the slab
_MIN_LEG_HEIGHT = 0.2  # of the height
_TABLE_MAX_ABOVE = 0.05  # share of voxels above a table top
_CHAIR_SEAT_BAND = (0.25, 0.7)  # seat centre, fraction of the height
_CHAIR_MIN_BACK_HEIGHT = 0.25  # of the height
_CHAIR_MAX_BACK_AREA = 0.6  # mean slice area of the back, relative to the seat
_CHAIR_MIN_BACK_OFFSET = 0.25  # horizontal offset of the back from the seat centre, of the seat radius


@dataclass(frozen=True)
class _Part:
    """One solid in the object frame (x, y centred on the object, z up from the floor), in
    fractions of the grid. ``kind`` is ``box`` (x0, x1, y0, y1), ``cylinder`` (cx, cy, r) or
    ``frustum`` (cx, cy, r_bottom, r_top); every part spans z0..z1."""

    kind: str
    xy: tuple[float, ...]
    z0: float
    z1: float


def _legs(half_x: float, half_y: float, t: float, z1: float) -> list[_Part]:
    """Four square legs of side ``t`` with outer faces at +-half_x, +-half_y, from the floor to z1."""
    parts = []
    for sx in (-1.0, 1.0):
        for sy in (-1.0, 1.0):
            x0 = sx * half_x if sx < 0 else half_x - t
            y0 = sy * half_y if sy < 0 else half_y - t
            parts.append(_Part("box", (x0, x0 + t, y0, y0 + t), 0.0, z1))
    return parts


def _chair(rng: np.random.Generator, thick: float, slab: float) -> list[_Part]:
    """A chair of height 1 facing -y, its back at +y (as in ModelNet)."""
    w, d = rng.uniform(0.50, 0.65), rng.uniform(0.48, 0.62)
    seat_top = rng.uniform(0.42, 0.50)
    seat_t = max(rng.uniform(0.06, 0.09), slab)
    leg_t = max(rng.uniform(0.06, 0.09), thick)
    back_t = max(rng.uniform(0.05, 0.08), thick)
    slats = int(rng.integers(0, 4))  # 0: solid panel, else that many vertical slats
    rail = max(rng.uniform(0.08, 0.14), slab)
    hx, hy = w / 2, d / 2
    parts = [_Part("box", (-hx, hx, -hy, hy), seat_top - seat_t, seat_top)]
    parts += _legs(hx, hy, leg_t, seat_top - seat_t)
    # Rear posts carry the back up to the top.
    parts += [_Part("box", (x0, x0 + leg_t, hy - leg_t, hy), 0.0, 1.0) for x0 in (-hx, hx - leg_t)]
    if slats == 0:
        parts.append(_Part("box", (-hx, hx, hy - back_t, hy), seat_top, 1.0))
    else:
        parts.append(_Part("box", (-hx, hx, hy - back_t, hy), 1.0 - rail, 1.0))
        slat_w = max((w - 2 * leg_t) / (2 * slats + 1), thick)
        for i in range(slats):
            x0 = -hx + leg_t + (2 * i + 1) * (w - 2 * leg_t - slat_w) / (2 * slats)
            parts.append(_Part("box", (x0, x0 + slat_w, hy - back_t, hy), seat_top, 1.0))
    return parts


def _table(rng: np.random.Generator, thick: float, slab: float) -> list[_Part]:
    """A table with a top 1 wide (round with probability 0.3)."""
    round_top = rng.random() < 0.3
    d = 1.0 if round_top else rng.uniform(0.55, 0.85)
    height = rng.uniform(0.45, 0.65)
    top_t = max(rng.uniform(0.05, 0.09), slab)
    leg_t = max(rng.uniform(0.06, 0.10), thick)
    inset = rng.uniform(0.02, 0.08)
    stretchers = rng.random() < 0.4
    stretch_z = rng.uniform(0.10, 0.25) * height
    if round_top:
        parts = [_Part("cylinder", (0.0, 0.0, 0.5), height - top_t, height)]
        hx = hy = 0.5 / np.sqrt(2) - inset / 2  # legs inside the circle
    else:
        parts = [_Part("box", (-0.5, 0.5, -d / 2, d / 2), height - top_t, height)]
        hx, hy = 0.5 - inset, d / 2 - inset
    parts += _legs(hx, hy, leg_t, height - top_t)
    if stretchers:
        bar = max(leg_t * 0.6, thick)
        z0, z1 = stretch_z, stretch_z + max(bar, slab)
        for s in (-1.0, 1.0):
            y = s * (hy - leg_t / 2)
            parts.append(_Part("box", (-hx, hx, y - bar / 2, y + bar / 2), z0, z1))
    return parts


def _lamp(rng: np.random.Generator, thick: float, slab: float) -> list[_Part]:
    """A floor or desk lamp of height 1: base, pole and shade."""
    base_r = rng.uniform(0.15, 0.24)
    base_t = max(rng.uniform(0.04, 0.07), slab)
    square_base = rng.random() < 0.3
    pole_r = max(rng.uniform(0.02, 0.035), thick / 2)
    shade_z0 = rng.uniform(0.62, 0.72)
    shade_r = rng.uniform(0.20, 0.29)
    style = int(rng.integers(0, 3))  # 0: cone, 1: drum, 2: dome
    top_ratio = rng.uniform(0.35, 0.6)
    if square_base:
        parts = [_Part("box", (-base_r, base_r, -base_r, base_r), 0.0, base_t)]
    else:
        parts = [_Part("cylinder", (0.0, 0.0, base_r), 0.0, base_t)]
    parts.append(_Part("cylinder", (0.0, 0.0, pole_r), 0.0, shade_z0 + 0.05))
    if style == 0:
        parts.append(_Part("frustum", (0.0, 0.0, shade_r, shade_r * top_ratio), shade_z0, 1.0))
    elif style == 1:
        parts.append(_Part("frustum", (0.0, 0.0, shade_r, shade_r * 0.9), shade_z0, 1.0))
    else:
        # A dome as a stack of frustums following r = R * sqrt(1 - (z / h)^2).
        h = 1.0 - shade_z0
        steps = np.linspace(0.0, 1.0, 9)
        radii = shade_r * np.sqrt(np.clip(1.0 - steps**2, 0.0, 1.0)) + pole_r
        for a, b, ra, rb in zip(steps[:-1], steps[1:], radii[:-1], radii[1:], strict=True):
            parts.append(_Part("frustum", (0.0, 0.0, float(ra), float(rb)), shade_z0 + a * h, shade_z0 + b * h))
    return parts


_BUILDERS = (_chair, _table, _lamp)


def _footprint_radius(parts: list[_Part]) -> float:
    """Largest horizontal distance of any part from the object's vertical axis."""
    radius = 0.0
    for p in parts:
        if p.kind == "box":
            x0, x1, y0, y1 = p.xy
            radius = max(radius, max(np.hypot(x, y) for x in (x0, x1) for y in (y0, y1)))
        else:
            cx, cy, *r = p.xy
            radius = max(radius, float(np.hypot(cx, cy)) + max(r))
    return radius


def _rasterise(parts: list[_Part], size: int, scale: float, yaw: float, shift: np.ndarray, floor: float) -> np.ndarray:
    """Occupancy of the scaled, rotated and shifted parts at the voxel centres, (S, S, S) bool.

    The yaw is about the vertical axis, so every part is a horizontal footprint (a 2-D test on
    rotated x, y) times a height interval (or height-dependent radius for frustums).
    """
    c = (np.arange(size) + 0.5) / size
    x = (c - 0.5 - shift[0])[:, None]
    y = (c - 0.5 - shift[1])[None, :]
    u = (np.cos(yaw) * x + np.sin(yaw) * y) / scale  # object frame, unscaled
    v = (-np.sin(yaw) * x + np.cos(yaw) * y) / scale
    z = (c - floor) / scale
    occupied = np.zeros((size, size, size), bool)
    for p in parts:
        in_z = (z >= p.z0) & (z <= p.z1)
        if not in_z.any():
            continue
        if p.kind == "box":
            x0, x1, y0, y1 = p.xy
            footprint = (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)
            occupied |= footprint[:, :, None] & in_z[None, None, :]
            continue
        cx, cy, *radii = p.xy
        dist = np.hypot(u - cx, v - cy)[:, :, None]
        if p.kind == "cylinder":
            occupied |= (dist <= radii[0]) & in_z[None, None, :]
        else:
            r_bottom, r_top = radii
            t = np.clip((z - p.z0) / (p.z1 - p.z0), 0.0, 1.0)
            occupied |= (dist <= r_bottom + (r_top - r_bottom) * t) & in_z[None, None, :]
    return occupied


def make_object(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One object of class ``label``, (size, size, size) float32 occupancy in {0, 1}.

    Axis 2 is up and the object stands on the floor at z = 0. Random draws happen in a fixed
    order, so the same generator state gives the same object at any ``size``.
    """
    if label not in range(len(CLASS_NAMES)):
        raise ValueError(f"label must be one of 0..{len(CLASS_NAMES) - 1} {CLASS_NAMES}, got {label!r}")
    if size < MIN_SIZE:
        raise ValueError(f"object size must be >= {MIN_SIZE}, got {size}")
    extent = rng.uniform(0.74, 0.92)
    yaw = np.deg2rad(rng.uniform(-_MAX_YAW_DEG, _MAX_YAW_DEG))
    shift = rng.uniform(-_MAX_SHIFT, _MAX_SHIFT, 2)
    floor = rng.uniform(0.0, _MAX_FLOOR)
    # Minimum thicknesses in unscaled object units: a first guess at the scale is close enough.
    thick, slab = _MIN_THICK_VOXELS / (size * extent), _MIN_SLAB_VOXELS / (size * extent)
    parts = _BUILDERS[label](rng, thick, slab)
    height = max(p.z1 for p in parts)
    # The largest extent (height or footprint diameter at any yaw) spans `extent` of the grid.
    scale = extent / max(height, 2.0 * _footprint_radius(parts))
    return _rasterise(parts, size, scale, yaw, shift, floor).astype(np.float32)


def make_object_set(n_per_class: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` objects of each class, sorted by class.

    Returns volumes (N, size, size, size) float32 in {0, 1} and labels (N,) int64, with
    ``N = 3 * n_per_class``. Object ``k`` of class ``c`` depends only on ``(seed, c, k)``, so a
    larger set starts with the same objects as a smaller one.
    """
    return make_labelled_set(make_object, len(CLASS_NAMES), n_per_class, size, seed)


def _main_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest 26-connected component if it looks like a solid object, else None."""
    n = int(mask.sum())
    if not _MIN_FILL * mask.size <= n <= _MAX_FILL * mask.size:
        return None
    components, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(components.ravel())[1:]
    main = components == int(sizes.argmax()) + 1
    # Specks (a generator's stray voxels) neither count against the object nor make one.
    not_specks = sizes[sizes >= _SPECK * n].sum()
    if sizes.max() < max(_MIN_MAIN_COMPONENT * not_specks, _MIN_FILL * mask.size):
        return None
    padded = np.pad(main, 1)
    neighbours = np.zeros(padded.shape, np.int8)
    for axis in range(3):
        for step in (-1, 1):
            neighbours += np.roll(padded, step, axis=axis)
    neighbours = neighbours[1:-1, 1:-1, 1:-1]
    if neighbours[main].mean() < _MIN_NEIGHBOURS:
        return None
    return main


def predict_class(volume: np.ndarray, level: float = 0.5) -> int:
    """Class of a real or generated object by fixed rules; (D, H, W) or (1, D, H, W), axis 2 up.

    1. Occupancy is ``volume > level``. Not an object -> :data:`UNRECOGNISED` (-1): 0.2-40 %
       of the grid occupied, and one 26-connected component of at least 0.2 % of the grid
       holds 80 % of the occupied voxels outside specks (components under 1 % of them), with
       on average at least 2.5 occupied face neighbours per voxel. Empty, full and noise
       volumes fail this check. Only this main component is used below.
    2. Per horizontal slice: its area and its radius (largest distance of a voxel from the
       component's vertical centre line).
    3. Lamp (2): a thin pole. Over 15-55 % of the height the median slice radius is at most
       45 % of the largest radius (legs of chairs and tables stand at the rim).
    4. The slab is the run of slices around the largest one with at least 60 % of its area;
       below it there must be legs: at least 20 % of the height with a mean slice area under
       half the slab's.
    5. Table (1): at most 5 % of the voxels above the slab (a top with nothing on it).
    6. Chair (0): the slab centred at 25-70 % of the height, and above it a back at least
       25 % of the height tall, with a mean slice area under 60 % of the seat's, whose centre
       lies off the seat's centre by at least 25 % of the seat's radius.
    7. Otherwise :data:`UNRECOGNISED`.
    """
    v = as_volume(volume, 8)
    main = _main_component(v > level)
    if main is None:
        return UNRECOGNISED
    xs, ys, zs = np.nonzero(main)
    z0, z1 = int(zs.min()), int(zs.max())
    height = z1 - z0 + 1
    cx, cy = xs.mean(), ys.mean()
    radius_of = np.hypot(xs - cx, ys - cy)
    area = np.bincount(zs - z0, minlength=height).astype(np.float64)
    radius = np.zeros(height)
    np.maximum.at(radius, zs - z0, radius_of)
    largest_radius = max(float(radius.max()), 0.5)

    band_start = int(_POLE_BAND[0] * height)
    band_radius = radius[band_start : max(int(_POLE_BAND[1] * height), band_start + 1)]
    if np.median(band_radius) <= _MAX_POLE_RADIUS * largest_radius:
        return 2

    top = int(area.argmax())
    lo, hi = top, top  # the slab: slices lo..hi, relative to z0
    while lo > 0 and area[lo - 1] >= _SLAB_AREA * area[top]:
        lo -= 1
    while hi < height - 1 and area[hi + 1] >= _SLAB_AREA * area[top]:
        hi += 1
    if lo < _MIN_LEG_HEIGHT * height or area[:lo].mean() >= _MAX_LEG_AREA * area[top]:
        return UNRECOGNISED
    above = zs - z0 > hi
    if above.mean() <= _TABLE_MAX_ABOVE:
        return 1
    back_height = height - 1 - hi
    seat_centre = (lo + hi + 1) / 2 / height
    if not _CHAIR_SEAT_BAND[0] <= seat_centre <= _CHAIR_SEAT_BAND[1] or back_height < _CHAIR_MIN_BACK_HEIGHT * height:
        return UNRECOGNISED
    in_slab = (zs - z0 >= lo) & ~above
    sx, sy = xs[in_slab].mean(), ys[in_slab].mean()
    seat_radius = max(float(np.hypot(xs[in_slab] - sx, ys[in_slab] - sy).max()), 0.5)
    back_offset = float(np.hypot(xs[above].mean() - sx, ys[above].mean() - sy))
    if area[hi + 1 :].mean() < _CHAIR_MAX_BACK_AREA * area[top] and back_offset >= _CHAIR_MIN_BACK_OFFSET * seat_radius:
        return 0
    return UNRECOGNISED


def class_consistency(volumes: np.ndarray, labels: np.ndarray, level: float = 0.5) -> float:
    """Fraction of volumes whose :func:`predict_class` equals their label.

    ``volumes``: (N, D, H, W) or (N, 1, D, H, W); ``labels``: (N,) integers.
    """
    labels = np.asarray(labels).reshape(-1)
    if len(volumes) != labels.size or labels.size == 0:
        raise ValueError(f"need one label per volume and at least one volume, got {len(volumes)} and {labels.size}")
    hits = sum(predict_class(v, level) == int(y) for v, y in zip(volumes, labels, strict=True))
    return hits / labels.size
