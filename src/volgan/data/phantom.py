"""A built-in procedural dataset: T1-like head phantoms in three classes.

Every phantom is an ellipsoidal head (bright scalp, dark skull, dark CSF rim, grey-matter
cortex, bright white-matter core) whose ellipsoids are deformed by smooth random fields, so
every subject differs in size, elongation, pose, folding and intensity bias. The classes differ
in one property that a person sees in the axial mid-slice:

* ``healthy``: small dark lateral ventricles near the centre;
* ``lesion``:  as healthy, plus one bright focal lesion (brighter than white matter, radius
  12-15 % of the grid) in the white matter, centred near the axial mid-plane;
* ``atrophy``: strongly enlarged ventricles and a shrunken brain with a wider CSF rim.

All classes share one fixed intensity scale (tissue values below, mapped with
``2 * signal - 1``), so no class is recognisable from its normalisation alone.

Axes follow the RAS convention of the data loader: axis 0 runs left -> right, axis 1
posterior -> anterior, axis 2 inferior -> superior. Anatomy is drawn in continuous
coordinates, so one random generator state gives the same subject at every grid size; only the
noise differs.

:func:`predict_class` checks the class property with fixed rules and works on real and
generated volumes alike, which makes :func:`class_consistency` a cheap test of whether a
conditional generator honours its labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from volgan.data.procedural import as_volume, make_labelled_set

CLASS_NAMES = ("healthy", "lesion", "atrophy")
UNRECOGNISED = -1
"""What :func:`predict_class` returns for a volume that does not look like a head phantom."""

MIN_SIZE = 8

# T1-like tissue signal on a 0..1 scale (white matter brighter than grey matter, CSF dark, fat
# in the scalp bright). The lesion is brighter than anything else inside the skull.
_SIGNAL = {
    "background": 0.0,  # before noise; Rician noise lifts it to about -0.94
    "scalp": 0.85,
    "skull": 0.08,
    "csf": 0.12,
    "grey": 0.42,
    "white": 0.62,
    "lesion": 0.97,
}
_NOISE_SIGMA = 0.025  # Rician noise, on the 0..1 signal scale
_BIAS_AMPLITUDE = 0.07  # multiplicative, smooth: 1 +/- 7 %

# Rules of predict_class, on the [-1, 1] scale. White matter stays below ~0.35 even under the
# strongest bias field, a lesion sits above ~0.8; CSF sits near -0.75 and grey matter near -0.15.
_BRIGHT_THRESHOLD = 0.58
_DARK_THRESHOLD = -0.45
# A lesion of the smallest radius (12 % of the grid) covers ~0.72 % of the grid. Evidence of a lesion is
# a quarter of the volume of an 8 % lesion in bright voxels: far below any lesion, while noise alone
# stays 5 sigma below the threshold.
_LESION_MIN_FRACTION = 0.25 * (4 / 3) * np.pi * 0.08**3
# Dark (CSF-like) share of the central box: at most ~2 % for healthy ventricles (~4 % at 16³,
# where partial volume blurs them), at least ~10 % with ventriculomegaly.
_ATROPHY_MIN_DARK_FRACTION = 0.065
# Region in which the rules look, as semi-axes in normalised image coordinates ([-1, 1] per
# axis): the inner ellipsoid stays clear of the bright scalp, the box holds the ventricles.
_INNER_SEMI_AXES = (0.46, 0.58, 0.52)
_CENTRAL_BOX = (0.34, 0.42, 0.30)


def _coords(size: int) -> np.ndarray:
    """Voxel centres of a grid axis in normalised coordinates, (size,) float32 in (-1, 1)."""
    return ((2.0 * np.arange(size) + 1.0) / size - 1.0).astype(np.float32)


def _smooth_field(rng: np.random.Generator, size: int, n_freq: int, min_freq: float = 1.0) -> np.ndarray:
    """Random smooth field with max |value| == 1, (size, size, size) float32.

    A 3-D cosine series over frequencies ``min_freq <= |k| < n_freq`` (per axis ``k < n_freq``)
    with amplitudes falling with frequency; evaluated separably, so it costs a few matrix
    products at any grid size.
    """
    k = np.arange(n_freq)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    coeffs = rng.standard_normal((n_freq, n_freq, n_freq)) / (1.0 + k2 / n_freq)
    coeffs[k2 < min_freq**2] = 0.0
    basis = np.cos(np.pi * np.outer((_coords(size) + 1.0) / 2.0, k)).astype(np.float32)
    coeffs = coeffs.astype(np.float32)
    field = np.einsum("ia,abc->ibc", basis, coeffs)
    field = np.einsum("jb,ibc->ijc", basis, field)
    field = np.einsum("kc,ijc->ijk", basis, field)
    return field / max(float(np.abs(field).max()), 1e-6)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from three small angles (radians) about the three axes, (3, 3)."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _inside(level: np.ndarray, threshold: float, width: float) -> np.ndarray:
    """Soft indicator of ``level < threshold`` with an edge ``width`` wide (partial volume)."""
    return 0.5 * (1.0 + np.tanh((threshold - level) / width))


def _ventricle_level(q: np.ndarray, centre: np.ndarray, semi: np.ndarray, bend: float) -> np.ndarray:
    """Ellipsoidal radius (< 1 inside) of the two lateral ventricles, mirrored about x == 0.

    ``q`` holds head-frame points along its first axis, (3, ...). The ventricles curve upwards
    towards their anterior and posterior ends (``bend``), like the real ones.
    """
    dz = q[2] - centre[2] - bend * (q[1] - centre[1]) ** 2
    dy = (q[1] - centre[1]) / semi[1]
    common = dy**2 + (dz / semi[2]) ** 2
    left = np.sqrt(((q[0] + centre[0]) / semi[0]) ** 2 + common)
    right = np.sqrt(((q[0] - centre[0]) / semi[0]) ** 2 + common)
    return np.minimum(left, right)


def _subject(label: int, rng: np.random.Generator) -> dict[str, Any]:
    """Draw the anatomy of one subject: every random choice except fields and noise."""
    scale = rng.uniform(0.93, 1.03)
    semi_head = np.array([0.70, 0.86, 0.78]) * scale * rng.uniform(0.96, 1.04, 3)
    atrophy = label == 2
    if atrophy:
        vent_centre = np.array([rng.uniform(0.20, 0.24), rng.uniform(-0.03, 0.03), 0.06])
        vent_semi = np.array([rng.uniform(0.19, 0.23), rng.uniform(0.40, 0.46), rng.uniform(0.24, 0.29)])
    else:
        vent_centre = np.array([rng.uniform(0.12, 0.14), rng.uniform(-0.03, 0.03), 0.06])
        vent_semi = np.array([rng.uniform(0.08, 0.10), rng.uniform(0.28, 0.33), rng.uniform(0.13, 0.16)])
    return {
        "semi_head": semi_head,
        "rotation": _rotation(np.deg2rad(rng.uniform(-6.0, 6.0, 3))),
        "shift": rng.uniform(-0.03, 0.03, 3),
        # Level-set thresholds of the layers, outermost first (1.0 is the scalp surface).
        "skull": 0.91,
        "csf": 0.86,
        "pial": rng.uniform(0.73, 0.76) if atrophy else rng.uniform(0.80, 0.83),
        "white": rng.uniform(0.57, 0.60) if atrophy else rng.uniform(0.64, 0.67),
        "vent_centre": vent_centre,
        "vent_semi": vent_semi,
        "vent_bend": rng.uniform(0.3, 0.6),
        "lesion_signal": rng.uniform(0.93, 1.0),
    }


def _place_lesion(s: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A lesion centre (image frame) and radius inside the white matter, clear of the ventricles.

    The centre lies within 0.3 radii of the axial mid-plane, so the lesion shows in the axial
    mid-slice. Candidates are drawn until one fits; the best of 200 is kept otherwise.
    """
    radius = 2.0 * rng.uniform(0.12, 0.15)  # 12-15 % of the grid, in normalised units
    # Probe the centre and 26 points on the lesion's surface (unit directions in the image frame).
    dirs = np.stack(np.meshgrid(*[np.array([-1.0, 0.0, 1.0])] * 3, indexing="ij"), -1).reshape(-1, 3)
    dirs = dirs[np.abs(dirs).sum(1) > 0]
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    best, best_score = np.zeros(3), -np.inf
    for _ in range(200):
        centre = np.array([rng.uniform(-0.45, 0.45), rng.uniform(-0.55, 0.55), rng.uniform(-0.3, 0.3) * radius])
        probes = np.vstack([centre, centre + radius * dirs])
        q = (s["rotation"].T @ (probes - s["shift"]).T) / s["semi_head"][:, None]
        head_level = np.sqrt((q**2).sum(0))
        vent_level = _ventricle_level(q, s["vent_centre"], s["vent_semi"], s["vent_bend"])
        # Margins: centre well inside the white matter, surface at most slightly into the cortex
        # and outside the ventricles.
        score = min(s["white"] - 0.1 - head_level[0], s["pial"] - 0.06 - head_level[1:].max(), vent_level.min() - 1.2)
        if score > 0:
            return centre, radius
        if score > best_score:
            best, best_score = centre, score
    return best, radius


def make_phantom(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One T1-like head phantom of class ``label``, (size, size, size) float32 in [-1, 1].

    Random draws happen in a fixed order, anatomy first and noise last, so the same generator
    state yields the same subject at any ``size``.
    """
    if label not in range(len(CLASS_NAMES)):
        raise ValueError(f"label must be one of 0..{len(CLASS_NAMES) - 1} {CLASS_NAMES}, got {label!r}")
    if size < MIN_SIZE:
        raise ValueError(f"phantom size must be >= {MIN_SIZE}, got {size}")
    s = _subject(label, rng)
    lesion = _place_lesion(s, rng) if label == 1 else None
    shape_field = _smooth_field(rng, size, 3)
    # Gyri and sulci: a band-pass field pushed towards +-1 so folds have clear walls.
    fold_field = _smooth_field(rng, size, 12, min_freq=5.0)
    fold_field = np.tanh(1.5 * fold_field / fold_field.std())
    bias_field = _smooth_field(rng, size, 3)

    c = _coords(size)
    grid = np.stack(np.meshgrid(c, c, c, indexing="ij"))  # (3, S, S, S) image frame
    rel = grid - s["shift"].astype(np.float32)[:, None, None, None]
    q = np.einsum("ji,j...->i...", s["rotation"].astype(np.float32), rel)  # head frame
    q /= s["semi_head"].astype(np.float32)[:, None, None, None]
    head = np.sqrt((q**2).sum(0)) + 0.025 * shape_field
    vent = _ventricle_level(q, s["vent_centre"], s["vent_semi"], s["vent_bend"])
    # Edges about one voxel wide in level units: anti-aliased at every grid size.
    width = 1.2 / size

    signal = np.full((size, size, size), _SIGNAL["background"], np.float32)
    layers = [
        (head, 1.0, "scalp"),
        (head, s["skull"], "skull"),
        (head, s["csf"], "csf"),
        (head + 0.04 * fold_field, s["pial"], "grey"),
        (head + 0.07 * fold_field, s["white"], "white"),
    ]
    for level, threshold, tissue in layers:
        signal += _inside(level, threshold, width) * (_SIGNAL[tissue] - signal)
    signal += _inside(vent, 1.0, width / 0.15) * (_SIGNAL["csf"] - signal)
    if lesion is not None:
        centre, radius = lesion
        dist = np.sqrt(((grid - centre.astype(np.float32)[:, None, None, None]) ** 2).sum(0))
        signal += _inside(dist / radius, 1.0, width * 0.8 / radius) * (s["lesion_signal"] - signal)
    signal *= 1.0 + _BIAS_AMPLITUDE * bias_field

    noise = rng.standard_normal((2, size, size, size), dtype=np.float32) * _NOISE_SIGMA
    magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
    return np.clip(2.0 * magnitude - 1.0, -1.0, 1.0).astype(np.float32)


def make_phantom_set(n_per_class: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` phantoms of each class, sorted by class.

    Returns volumes (N, size, size, size) float32 in [-1, 1] and labels (N,) int64, with
    ``N = 3 * n_per_class``. Phantom ``k`` of class ``c`` depends only on ``(seed, c, k)``, so a
    larger set starts with the same volumes as a smaller one.
    """
    return make_labelled_set(make_phantom, len(CLASS_NAMES), n_per_class, size, seed)


def _gaussian_smooth(volume: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian smoothing with edge renormalisation, (D, H, W) -> (D, H, W)."""

    def kernel(n: int) -> np.ndarray:
        x = np.arange(n, dtype=np.float32)
        k = np.exp(-0.5 * ((x[:, None] - x[None, :]) / sigma) ** 2)
        return k / k.sum(1, keepdims=True)

    d, h, w = volume.shape
    out = (kernel(d) @ volume.reshape(d, h * w)).reshape(d, h, w)
    out = kernel(h) @ out
    return out @ kernel(w).T


def _region(shape: tuple[int, ...], semi: tuple[float, float, float], box: bool) -> np.ndarray:
    """Boolean mask of a centred ellipsoid (or box) given in normalised coordinates."""
    axes = np.meshgrid(*[_coords(n) / a for n, a in zip(shape, semi, strict=True)], indexing="ij", sparse=True)
    if box:
        return (np.abs(axes[0]) <= 1.0) & (np.abs(axes[1]) <= 1.0) & (np.abs(axes[2]) <= 1.0)
    return axes[0] ** 2 + axes[1] ** 2 + axes[2] ** 2 <= 1.0


def predict_class(volume: np.ndarray) -> int:
    """Class of a real or generated phantom by fixed rules; (D, H, W) or (1, D, H, W) in [-1, 1].

    1. Light Gaussian smoothing (sigma = 2 % of the grid, at least 0.3 voxels) so noise and
       isolated GAN speckles do not count.
    2. Not a head -> :data:`UNRECOGNISED` (-1): the border of the grid must be dark background
       (mean < -0.6) and 5-60 % of the grid must be tissue (> -0.6). Constant and pure-noise
       volumes fail this check, so they are never counted as any class.
    3. Lesion (1): at least ``_LESION_MIN_FRACTION`` of the grid is brighter than 0.58 (clearly
       above white matter) inside an inner ellipsoid that excludes the bright scalp.
    4. Atrophy (2): more than 6.5 % of a central box is dark (< -0.45, CSF-like): enlarged
       ventricles.
    5. Otherwise healthy (0).
    """
    v = as_volume(volume, MIN_SIZE)
    smooth = _gaussian_smooth(v, max(0.02 * max(v.shape), 0.3))
    border = np.ones(v.shape, bool)
    border[1:-1, 1:-1, 1:-1] = False
    tissue_fraction = float((smooth > -0.6).mean())
    if smooth[border].mean() >= -0.6 or not 0.05 <= tissue_fraction <= 0.6:
        return UNRECOGNISED
    bright = (smooth > _BRIGHT_THRESHOLD) & _region(v.shape, _INNER_SEMI_AXES, box=False)
    if bright.mean() >= _LESION_MIN_FRACTION:
        return 1
    dark_fraction = float((smooth[_region(v.shape, _CENTRAL_BOX, box=True)] < _DARK_THRESHOLD).mean())
    if dark_fraction > _ATROPHY_MIN_DARK_FRACTION:
        return 2
    return 0


def class_consistency(volumes: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of volumes whose :func:`predict_class` equals their label.

    ``volumes``: (N, D, H, W) or (N, 1, D, H, W); ``labels``: (N,) integers.
    """
    labels = np.asarray(labels).reshape(-1)
    if len(volumes) != labels.size or labels.size == 0:
        raise ValueError(f"need one label per volume and at least one volume, got {len(volumes)} and {labels.size}")
    hits = sum(predict_class(v) == int(y) for v, y in zip(volumes, labels, strict=True))
    return hits / labels.size
