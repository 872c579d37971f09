"""Figures for people: sample grids, slice montages for TensorBoard, and training curves.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas, never through
``pyplot``: nothing is registered globally, so callers' backends and open figures are left
alone and many calls do not accumulate memory.

Volumes are (D, H, W) arrays in the RAS convention of the data loader (axis 0 left -> right,
axis 1 posterior -> anterior, axis 2 inferior -> superior); slices are shown with superior
(or anterior, for axial slices) at the top.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
VIEW_NAMES = ("axial", "coronal", "sagittal")
_GAP = 2  # pixels between panels of a montage
_GAP_VALUE = 0.5  # mid-grey, visible against both black background and bright tissue

_CURVE_LABELS = {
    "loss_d": "critic / discriminator loss",
    "loss_g": "generator loss",
    "gp": "gradient penalty",
    "w_dist": "Wasserstein distance estimate",
    "sec_per_step": "seconds per step",
}


def mid_slices(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three orthogonal central slices of a (D, H, W) volume, oriented for display.

    Returns (axial (H, D), coronal (W, D), sagittal (W, H)): axial has anterior at the top,
    coronal and sagittal have superior at the top; left-right runs left to right on screen and
    anterior to the right in the sagittal view.
    """
    v = np.asarray(volume)
    if v.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {v.shape}")
    d, h, w = v.shape
    axial = v[:, :, w // 2].T[::-1]
    coronal = v[:, h // 2, :].T[::-1]
    sagittal = v[d // 2, :, :].T[::-1]
    return axial, coronal, sagittal


def as_volume_batch(volumes: Any, what: str) -> np.ndarray:
    """(n, D, H, W) or (n, 1, D, H, W) array-like -> (n, D, H, W) float32."""
    v = np.asarray(volumes, dtype=np.float32)
    if v.ndim == 5 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 4 or v.shape[0] == 0:
        raise ValueError(f"{what} must be (n, D, H, W) or (n, 1, D, H, W) with n >= 1, got shape {v.shape}")
    return v


def _scaled(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def _slice_row(volume: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """The three mid-slices of one volume side by side, scaled to [0, 1] and bottom-aligned to a
    common height, separated by mid-grey gaps: (max(H, W), D + D + H + 2 * _GAP) float32."""
    panels = [_scaled(s, value_range) for s in mid_slices(volume)]
    height = max(p.shape[0] for p in panels)
    row: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if i:
            row.append(np.full((height, _GAP), _GAP_VALUE, np.float32))
        padded = np.zeros((height, p.shape[1]), np.float32)
        padded[height - p.shape[0] :] = p
        row.append(padded)
    return np.concatenate(row, axis=1)


def slice_montage(volumes: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(n, D, H, W) or (n, 1, D, H, W) -> one float32 image in [0, 1] for TensorBoard (``dataformats='HW'``).

    One row per volume holding its axial, coronal and sagittal mid-slices; values outside
    ``value_range`` are clipped. Output shape: (n * max(H, W) + (n - 1) * 2, 2 * D + H + 4).
    """
    v = as_volume_batch(volumes, "volumes")
    rows: list[np.ndarray] = []
    for i, volume in enumerate(v):
        row = _slice_row(volume, value_range)
        if i:
            rows.append(np.full((_GAP, row.shape[1]), _GAP_VALUE, np.float32))
        rows.append(row)
    return np.concatenate(rows, axis=0)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with warnings.catch_warnings():  # a class or file name the font lacks a glyph for is drawn as a box
        warnings.filterwarnings("ignore", r"Glyph \d+ .*missing from font", UserWarning)
        fig.savefig(path, format="png", dpi=DPI)
    fig.clear()
    return path


def save_image_grid(
    cells: Mapping[str, Sequence[np.ndarray]],
    path: Path,
    *,
    cell_size_in: tuple[float, float],
    title: str = "",
    caption: str = "",
    grey: bool = True,
    column_titles: Sequence[str] | None = None,
) -> Path:
    """PNG of images in rows: one row per key (the bold row label), one column per image ("sample i",
    or ``column_titles``).

    Images are (H, W) in [0, 1] shown in grey (``grey``) or (H, W, 3) RGB; short rows stay blank;
    ``caption`` goes under the last row.
    """
    if not cells or not any(len(v) for v in cells.values()):
        raise ValueError("nothing to draw: need at least one row with images")
    n_rows, n_cols = len(cells), max(len(v) for v in cells.values())
    cell_w, cell_h = cell_size_in
    fig = Figure(
        figsize=(0.5 + n_cols * cell_w, 0.6 + (0.35 if title else 0.0) + n_rows * (cell_h + 0.2)),
        dpi=DPI,
        layout="constrained",
    )
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (name, images) in enumerate(cells.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images):
                ax.set_axis_off()
            elif grey:
                ax.imshow(images[c], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(images[c], interpolation="antialiased")
                for spine in ax.spines.values():
                    spine.set_visible(False)
            if r == 0:
                ax.set_title(column_titles[c] if column_titles else f"sample {c}", fontsize=10)
            if c == 0:
                ax.set_ylabel(name, fontsize=12, fontweight="bold")
            if caption and r == n_rows - 1:
                ax.set_xlabel(caption, fontsize=8, color="0.35")
    if title:
        fig.suptitle(title, fontsize=13)
    return _save(fig, path)


def save_sample_grid(
    volumes_by_class: Mapping[str, np.ndarray],
    path: Path,
    title: str = "",
    value_range: tuple[float, float] = (-1.0, 1.0),
    column_titles: Sequence[str] | None = None,
) -> Path:
    """PNG grid of samples: one row per class, one column per sample (titled "sample i" or ``column_titles``).

    ``volumes_by_class`` maps a class name to its (n, D, H, W) or (n, 1, D, H, W) volumes;
    classes may have different n (short rows stay blank). Each cell shows the sample's axial,
    coronal and sagittal mid-slices side by side in grey, clipped to ``value_range``.
    """
    if not volumes_by_class:
        raise ValueError("volumes_by_class is empty: need at least one class with samples")
    rows = {name: as_volume_batch(v, f"volumes of class {name!r}") for name, v in volumes_by_class.items()}
    cells = {name: [_slice_row(vol, value_range) for vol in v] for name, v in rows.items()}
    cell_h, cell_w = next(iter(cells.values()))[0].shape
    size = (2.7, 2.7 * cell_h / cell_w)
    caption = " | ".join(VIEW_NAMES)
    return save_image_grid(cells, path, cell_size_in=size, title=title, caption=caption, column_titles=column_titles)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` points (fewer at the start), same length as ``values``."""
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[start]) / (idx - start)


def save_loss_curves(
    records: Sequence[Mapping[str, Any]],
    path: Path,
    keys: tuple[str, ...] = ("loss_d", "loss_g", "gp", "w_dist"),
    title: str = "Training curves",
) -> Path:
    """PNG of training curves from stats records (dicts with ``step`` and some of ``keys``).

    One subplot per key that has at least one finite value; missing or non-finite values are
    skipped. Each shows the raw values as a thin light line and a trailing moving average
    (window ~5 % of the points) in bold.
    """
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key in keys:
        points = [
            (float(r["step"]), float(r[key]))
            for r in records
            if "step" in r and isinstance(r.get(key), numbers.Real) and math.isfinite(r[key])
        ]
        if points:
            steps, values = np.array(points).T
            series[key] = (steps, values)
    if not series:
        raise ValueError(f"no record holds 'step' and a finite value for any of {list(keys)}")

    n_cols = 1 if len(series) == 1 else 2
    n_rows = math.ceil(len(series) / n_cols)
    fig = Figure(figsize=(5.5 * n_cols, 0.6 + 3.0 * n_rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, (key, (steps, values)) in zip(axes, series.items(), strict=False):
        window = max(1, len(values) // 20)
        marker = "o" if len(values) < 3 else None  # a lone point would not show as a line
        ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=0.8, label="raw")
        smooth = _moving_average(values, window)
        ax.plot(
            steps,
            smooth,
            color="tab:blue",
            linewidth=2.0,
            marker=marker,
            label=f"moving average ({window} points)",
        )
        ax.set_title(f"{key} ({_CURVE_LABELS[key]})" if key in _CURVE_LABELS else key, fontsize=11)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if window > 1:
            ax.legend(loc="best", fontsize=8, frameon=False)
    for ax in axes[len(series) :]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=13)
    return _save(fig, path)
