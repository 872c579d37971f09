"""Surface meshes, lit renders, render grids and mesh export."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import trimesh

from volgan.data.objects import CLASS_NAMES, make_object, make_object_set
from volgan.render import export_mesh, render_surface, save_render_grid, surface_mesh

SHAPE = (19, 21, 17)  # odd and unequal sides catch swapped axes
CENTRE = np.array([9.0, 11.0, 7.0])
RADIUS = 5.5


@pytest.fixture
def sphere() -> np.ndarray:
    """A ball in {0, 1}, off-centre in a non-cubic grid, (19, 21, 17) float32."""
    g = np.indices(SHAPE).astype(np.float32) - CENTRE[:, None, None, None]
    return ((g**2).sum(0) <= RADIUS**2).astype(np.float32)


def _voxel_bounds(volume: np.ndarray) -> np.ndarray:
    """(2, 3): the faces of the occupied voxels' bounding box, in index coordinates."""
    idx = np.argwhere(volume > 0.5)
    return np.stack([idx.min(0) - 0.5, idx.max(0) + 0.5])


def test_surface_of_a_sphere_is_watertight_and_in_place(sphere: np.ndarray) -> None:
    verts, faces = surface_mesh(sphere)
    assert verts.dtype == np.float32 and verts.ndim == 2 and verts.shape[1] == 3
    assert faces.dtype == np.int64 and faces.shape[1] == 3 and len(faces) > 100
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward normals
    np.testing.assert_allclose(mesh.bounds, _voxel_bounds(sphere), atol=1.0)
    np.testing.assert_allclose(mesh.volume, 4 / 3 * np.pi * RADIUS**3, rtol=0.15)


def test_spacing_scales_the_vertices(sphere: np.ndarray) -> None:
    verts, _ = surface_mesh(sphere)
    scaled, _ = surface_mesh(sphere, spacing=(2.0, 1.0, 0.5))
    np.testing.assert_allclose(scaled, verts * np.array([2.0, 1.0, 0.5], np.float32), rtol=1e-6)


def test_surface_touching_the_border_is_closed() -> None:
    volume = np.zeros(SHAPE, np.float32)
    volume[:6, :, :4] = 1.0  # touches five faces of the grid
    verts, faces = surface_mesh(volume)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert mesh.is_watertight
    np.testing.assert_allclose(mesh.bounds, [[-0.5, -0.5, -0.5], [5.5, 20.5, 3.5]], atol=1e-5)


@pytest.mark.parametrize("volume", [np.zeros(SHAPE), np.ones(SHAPE), np.full(SHAPE, 0.5)])
def test_no_crossing_gives_an_empty_mesh(volume: np.ndarray) -> None:
    verts, faces = surface_mesh(volume)
    assert verts.shape == (0, 3) and faces.shape == (0, 3)
    assert verts.dtype == np.float32 and faces.dtype == np.int64


def test_intensity_volume_at_another_level(sphere: np.ndarray) -> None:
    signed = 2.0 * sphere - 1.0  # a generator's [-1, 1] output
    verts, _ = surface_mesh(signed, level=0.0)
    np.testing.assert_allclose(verts, surface_mesh(sphere)[0], atol=1e-5)
    assert len(surface_mesh(signed, level=0.5)[1]) > 0  # [-1, 1] still crosses 0.5


@pytest.mark.parametrize("suffix", [".obj", ".stl", ".ply"])
def test_export_round_trip(sphere: np.ndarray, tmp_path: Path, suffix: str) -> None:
    path = export_mesh(sphere, tmp_path / f"ball{suffix}")
    assert path == tmp_path / f"ball{suffix}"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    mesh = trimesh.load(path, force="mesh")
    assert len(mesh.vertices) > 0
    assert mesh.is_watertight
    np.testing.assert_allclose(mesh.bounds, _voxel_bounds(sphere), atol=1.0)


@pytest.mark.parametrize("suffix", [".obj", ".stl", ".ply"])
def test_export_applies_the_affine(sphere: np.ndarray, tmp_path: Path, suffix: str) -> None:
    # Voxel index -> mm, with anisotropic spacing, a shift and a mirrored first axis.
    affine = np.diag([-2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = [100.0, -20.0, 5.0]
    plain = trimesh.Trimesh(*surface_mesh(sphere), process=False)
    mesh = trimesh.load(export_mesh(sphere, tmp_path / f"ball{suffix}", affine=affine), force="mesh")
    expected = trimesh.transform_points(plain.bounds, affine)
    np.testing.assert_allclose(mesh.bounds, np.sort(expected, axis=0), atol=1e-3)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(plain.volume * 9.0, rel=1e-3)  # |det| = 9; still outward


def test_export_rejects_a_bad_suffix(sphere: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must end in one of \.obj, \.ply, \.stl, got 'ball\.vtk'"):
        export_mesh(sphere, tmp_path / "ball.vtk")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("volume", "kwargs", "match"),
    [
        (np.zeros(SHAPE), {}, r"no surface at level 0\.5: .*\[0, 0\]"),
        (None, {"level": 2.0}, "no surface at level 2.0"),
        (None, {"affine": np.eye(3)}, r"affine must be a finite 4x4 matrix, got shape \(3, 3\)"),
        (None, {"affine": np.zeros((4, 4))}, "affine is singular"),
    ],
)
def test_export_errors(sphere: np.ndarray, tmp_path: Path, volume, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        export_mesh(sphere if volume is None else volume, tmp_path / "ball.obj", **kwargs)
    assert not list(tmp_path.iterdir())


def test_render_is_an_rgb_image_of_the_object(sphere: np.ndarray) -> None:
    image = render_surface(sphere, size_px=96)
    assert image.shape == (96, 96, 3) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    # A shaded object: many distinct colours, some of them clearly blue-grey and dark.
    assert image.std() > 0.05
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50


def test_render_shows_axis_2_up() -> None:
    low, high = np.zeros((2, 24, 24, 24), np.float32)
    low[8:16, 8:16, 0:6] = 1.0
    high[8:16, 8:16, 18:24] = 1.0

    def object_rows(image: np.ndarray) -> np.ndarray:
        saturated = image.max(-1) - image.min(-1) > 0.12  # the blue object, not the grey floor
        return np.nonzero(saturated.any(1))[0]

    assert object_rows(render_surface(high, size_px=64)).mean() < object_rows(render_surface(low, size_px=64)).mean()


def test_empty_volume_renders_a_blank_image() -> None:
    image = render_surface(np.zeros((16, 16, 16)), size_px=64)
    assert image.shape == (64, 64, 3)
    assert (image.max(-1) - image.min(-1)).max() < 0.1  # greys only: floor and the note


def test_render_of_a_large_surface_draws_a_bounded_number_of_faces() -> None:
    """The renderer's cost is per face drawn: a 64³ grid's surface is stepped down to the face budget."""
    from matplotlib.figure import Figure

    from volgan.render import _RENDER_FACES, _draw_surface

    rng = np.random.default_rng(0)
    volume = (rng.random((64, 64, 64)) > 0.5).astype(np.float32)  # a surface at nearly every voxel
    assert len(surface_mesh(volume, 0.5)[1]) > _RENDER_FACES  # the full surface is over the budget
    drawn = _draw_surface(Figure().add_subplot(projection="3d"), volume, 0.5, 25, -60)
    assert 0 < drawn <= _RENDER_FACES
    obj = make_object(0, 64, np.random.default_rng(0))
    assert _draw_surface(Figure().add_subplot(projection="3d"), obj, 0.5, 25, -60) == len(surface_mesh(obj, 0.5)[1])


def test_save_render_grid_writes_a_png(tmp_path: Path) -> None:
    volumes, labels = make_object_set(2, 16, seed=0)
    by_class = {name: volumes[labels == k] for k, name in enumerate(CLASS_NAMES)}
    by_class["lamp"] = by_class["lamp"][:1, None]  # a short row, with a channel axis
    path = save_render_grid(by_class, tmp_path / "grids" / "objects.png", title="objects", cell_px=64)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["objects.png"]
    image = mpimg.imread(path)
    assert image.shape[0] > 3 * 64 and image.shape[1] > 2 * 64


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: save_render_grid({}, p), "volumes_by_class is empty"),
        (lambda p: save_render_grid({"a": np.zeros((16, 16, 16))}, p), r"volumes of class 'a' must be \(n, D, H, W\)"),
        (lambda p: surface_mesh(np.zeros((4, 4))), r"expected a \(D, H, W\) volume .*got shape \(4, 4\)"),
        (lambda p: surface_mesh(np.full((4, 4, 4), np.nan)), "NaN or infinite"),
        (lambda p: render_surface(np.zeros((8, 8, 8)), size_px=4), "size_px must be >= 16, got 4"),
    ],
)
def test_errors_name_the_bad_value(tmp_path: Path, call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "x.png")
