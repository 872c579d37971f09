"""Surfaces of volumes: meshes by marching cubes, lit 3-D renders for people, and mesh export.

Volumes are (D, H, W) arrays with axis 2 pointing up, as in ModelNet voxel grids and the RAS
convention of the data loader (axis 2 inferior -> superior); renders show axis 2 vertically.
Renders use :class:`matplotlib.figure.Figure`, ``mplot3d`` and the Agg canvas, never
``pyplot``, so callers' backends and open figures are left alone.

Shading is computed here rather than by mplot3d: every triangle gets a Blinn-Phong colour from
its outward normal and a key light fixed relative to the camera (above and to the left of it),
plus a weak fill light from the camera, so objects look the same from every view angle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
from skimage import measure

from volgan.data.procedural import as_volume
from volgan.figures import as_volume_batch, save_image_grid

DPI = 100
MESH_SUFFIXES = (".obj", ".ply", ".stl")
_BASE_COLOUR = np.array([0.56, 0.66, 0.82])  # light steel blue: reads well against white
_FLOOR_COLOUR = np.array([0.90, 0.90, 0.90])
_RENDER_FACES = 40_000  # above this many faces (at step 1) the render steps marching cubes by 2, 3, ...


def _as_volume(volume: Any) -> np.ndarray:
    v = as_volume(volume, 2)
    if not np.isfinite(v).all():
        raise ValueError("volume holds NaN or infinite values")
    return v


def surface_mesh(
    volume: np.ndarray,
    level: float = 0.5,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    *,
    step_size: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The isosurface of a (D, H, W) occupancy or intensity volume at ``level``, by marching cubes.

    The volume is padded by one voxel of its minimum, so surfaces touching the border are
    closed and the mesh is watertight. Returns vertices (V, 3) float32 in index coordinates of
    the unpadded grid times ``spacing``, and faces (F, 3) int64 wound so that normals point
    out of the region above ``level``. A volume that never crosses ``level`` gives V = F = 0.
    ``step_size`` > 1 samples every n-th voxel (coarser, faster; thin parts may vanish).
    """
    v = _as_volume(volume)
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    if not float(v.min()) < level < float(v.max()):
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    padded = np.pad(v, 1, mode="constant", constant_values=float(v.min()))
    # 'ascent' winds faces so that right-handed normals point towards lower values: outwards.
    verts, faces, _, _ = measure.marching_cubes(
        padded, level=level, step_size=step_size, gradient_direction="ascent", allow_degenerate=False
    )
    verts = (verts - 1.0) * np.asarray(spacing, dtype=np.float32)
    return verts.astype(np.float32), faces.astype(np.int64)


def export_mesh(volume: np.ndarray, path: Path, level: float = 0.5, affine: np.ndarray | None = None) -> Path:
    """Write the isosurface of a (D, H, W) volume at ``level`` as .obj, .ply or .stl (by suffix).

    Vertices are mapped through the 4x4 ``affine`` (voxel index -> world, e.g. mm) when given;
    a mirroring affine keeps the normals pointing outwards. The file is written to a temporary
    name and renamed, so a reader never sees half a mesh.
    """
    import trimesh  # heavy import, needed only here

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"mesh file must end in one of {', '.join(MESH_SUFFIXES)}, got {path.name!r}")
    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all():
            raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("affine is singular: it would flatten the mesh")
    verts, faces = surface_mesh(volume, level)
    if len(faces) == 0:
        v = np.asarray(volume)
        raise ValueError(
            f"no surface at level {level}: the volume's values span [{v.min():.4g}, {v.max():.4g}]; "
            "choose a level between them"
        )
    mesh = trimesh.Trimesh(vertices=verts.astype(np.float64), faces=faces, process=False)
    if affine is not None:
        mesh.apply_transform(affine)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        mesh.export(tmp, file_type=suffix[1:])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _view_frame(elev: float, azim: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors towards the camera, to the right of the screen and up the screen (data frame)."""
    e, a = np.deg2rad(elev), np.deg2rad(azim)
    eye = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    right = np.array([-np.sin(a), np.cos(a), 0.0])
    up = np.cross(eye, right)
    return eye, right, up


def _shade(normals: np.ndarray, elev: float, azim: float, colour: np.ndarray) -> np.ndarray:
    """Blinn-Phong RGB of faces with unit outward normals (F, 3) -> (F, 3) in [0, 1]."""
    eye, right, up = _view_frame(elev, azim)
    key = eye + 0.9 * up - 0.6 * right
    key /= np.linalg.norm(key)
    half = key + eye
    half /= np.linalg.norm(half)
    diffuse = np.clip(normals @ key, 0.0, None)
    fill = np.clip(normals @ eye, 0.0, None)
    specular = np.clip(normals @ half, 0.0, None) ** 24
    intensity = 0.22 + 0.62 * diffuse + 0.22 * fill
    return np.clip(colour * intensity[:, None] + 0.25 * specular[:, None], 0.0, 1.0)


def _smooth_normals(triangles: np.ndarray, faces: np.ndarray, n_verts: int, rounds: int = 2) -> np.ndarray:
    """Unit normals (F, 3) for shading faces, averaged over nearby faces.

    Flat normals of a voxel surface alternate between stair-step facets and show as a
    patchwork of light and dark; averaging them over a few rings of neighbours shades the
    surface the voxels approximate, while the geometry stays exact.
    """
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])  # area-weighted
    for _ in range(rounds):
        at_vertex = np.zeros((n_verts, 3))
        for k in range(3):
            np.add.at(at_vertex, faces[:, k], normals)
        normals = at_vertex[faces].sum(axis=1)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def _floor(shape: np.ndarray, tiles: int = 6) -> np.ndarray:
    """A tiled floor under the grid at z = -0.5, (tiles², 4, 3) quads; tiles let the
    painter's algorithm order it against the object."""
    xs = np.linspace(-0.5, shape[0] - 0.5, tiles + 1)
    ys = np.linspace(-0.5, shape[1] - 0.5, tiles + 1)
    quads = [
        [(xs[i], ys[j], -0.5), (xs[i + 1], ys[j], -0.5), (xs[i + 1], ys[j + 1], -0.5), (xs[i], ys[j + 1], -0.5)]
        for i in range(tiles)
        for j in range(tiles)
    ]
    return np.asarray(quads, dtype=np.float64)


def _draw_surface(ax: Any, volume: np.ndarray, level: float, elev: float, azim: float) -> int:
    """Draw the lit isosurface of ``volume`` into a 3-D axes; returns the number of faces drawn."""
    v = _as_volume(volume)
    shape = np.asarray(v.shape, dtype=np.float64)
    # Step marching cubes on large grids: a face costs the Agg renderer about the same at any
    # size, and past a few tens of thousands they are smaller than a pixel anyway.
    step = 1
    verts, faces = surface_mesh(v, level)
    while len(faces) > _RENDER_FACES and step < max(v.shape) // 8:
        step += 1
        verts, faces = surface_mesh(v, level, step_size=step)

    ax.set_axis_off()
    ax.set_proj_type("persp", focal_length=2.0)
    ax.view_init(elev=elev, azim=azim)
    ax.set_xlim(-0.5, shape[0] - 0.5)
    ax.set_ylim(-0.5, shape[1] - 0.5)
    ax.set_zlim(-0.5, shape[2] - 0.5)
    ax.set_box_aspect(tuple(shape), zoom=1.1)
    floor = Poly3DCollection(_floor(shape), facecolors=_FLOOR_COLOUR, edgecolors=_FLOOR_COLOUR, linewidths=0.3)
    ax.add_collection3d(floor)
    if len(faces) == 0:
        ax.text2D(0.5, 0.5, "empty", transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.5")
        return 0
    triangles = verts[faces].astype(np.float64)
    colours = _shade(_smooth_normals(triangles, faces, len(verts)), elev, azim, _BASE_COLOUR)
    # Edges in the face colour hide the hairline seams that anti-aliasing leaves between triangles.
    surface = Poly3DCollection(triangles, facecolors=colours, edgecolors=colours, linewidths=0.25)
    ax.add_collection3d(surface)
    # The floor lies under everything: draw it first instead of sorting it with the object.
    ax.computed_zorder = False
    floor.set_zorder(0)
    surface.set_zorder(1)
    return len(faces)


def render_surface(
    volume: np.ndarray, level: float = 0.5, size_px: int = 256, elev: float = 25, azim: float = -60
) -> np.ndarray:
    """A lit, shaded render of the isosurface of a (D, H, W) volume, axis 2 up.

    Returns a (size_px, size_px, 3) float32 image in [0, 1] on a white background, the grid
    drawn to scale with equal aspect over a light floor. An empty surface renders as a blank
    floor with the note 'empty'.
    """
    if size_px < 16:
        raise ValueError(f"size_px must be >= 16, got {size_px}")
    fig = Figure(figsize=(size_px / DPI, size_px / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0), projection="3d")
    _draw_surface(ax, volume, level, elev, azim)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    fig.clear()
    return image


def save_render_grid(
    volumes_by_class: Mapping[str, np.ndarray],
    path: Path,
    level: float = 0.5,
    title: str = "",
    cell_px: int = 256,
) -> Path:
    """PNG grid of lit surface renders: one row per class (labelled with its name), one column per sample.

    ``volumes_by_class`` maps a class name to its (n, D, H, W) or (n, 1, D, H, W) volumes;
    classes may have different n (short rows stay blank).
    """
    if not volumes_by_class:
        raise ValueError("volumes_by_class is empty: need at least one class with samples")
    rows = {name: as_volume_batch(v, f"volumes of class {name!r}") for name, v in volumes_by_class.items()}
    cells = {name: [render_surface(v, level, size_px=cell_px) for v in vols] for name, vols in rows.items()}
    return save_image_grid(cells, path, cell_size_in=(cell_px / DPI, cell_px / DPI), title=title, grey=False)
