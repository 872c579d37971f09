import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volgan.cli import main


def assert_speckle_line(out: str) -> None:
    """The demo prints its samples' speckle and holes beside real data's: real volumes hold at least one piece."""
    pattern = r"speckle: (\S+) connected pieces per volume, (\S+)% .*, (\S+) holes \(real data: (\S+), (\S+)%, (\S+)\)"
    line = re.search(pattern, out)
    assert line, out
    pieces, share, n_holes, pieces_real, share_real, holes_real = (float(x) for x in line.groups())
    assert pieces >= 0 and 0 <= share <= 100 and pieces_real >= 1 and 0 <= share_real <= 100
    assert n_holes >= 0 and holes_real >= 0


def test_demo_writes_everything_it_promises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "demo"
    args = ["demo", "--run-dir", str(run), "--steps", "3", "--size", "16", "--n-per-class", "4", "--samples", "2"]
    assert main([*args, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "class consistency:" in out and "real data: 100%" in out
    diversity = re.search(r"within-class diversity: (\S+) \(.*real data: (\S+); one volume per class: 0\)", out)
    assert diversity and 0.0 <= float(diversity[1]) <= 2.0 and 0.0 < float(diversity[2]) <= 2.0, out
    assert_speckle_line(out)
    assert (run / "checkpoints" / "step_00000003.pt").exists()
    assert any((run / "tensorboard").iterdir())
    samples = sorted((run / "samples").glob("*/*.nii.gz"))  # one folder per class
    assert [p.name.split("_")[0] for p in samples] == ["atrophy"] * 2 + ["healthy"] * 2 + ["lesion"] * 2
    assert nib.load(samples[0]).shape == (16, 16, 16)
    for png in ("samples.png", "losses.png"):
        assert (run / "figures" / png).stat().st_size > 5000


def test_dcgan_demo_writes_renders_and_meshes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import trimesh

    from volgan import render

    # A 3-step generator may or may not cross the occupancy level, so record what each class's volume
    # spans: a mesh must exist exactly for the classes whose volume crosses the level.
    crosses: dict[str, bool] = {}
    real_export = render.export_mesh

    def export_mesh(volume: np.ndarray, path: Path, level: float = 0.5, affine: np.ndarray | None = None) -> Path:
        crosses[Path(path).name.split("_")[0]] = bool(volume.min() < level < volume.max())
        return real_export(volume, path, level, affine)

    monkeypatch.setattr(render, "export_mesh", export_mesh)
    run = tmp_path / "demo"
    args = ["demo", "--family", "dcgan", "--run-dir", str(run), "--steps", "3", "--size", "16"]
    assert main([*args, "--n-per-class", "4", "--samples", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "class consistency:" in out and "real data: 100%" in out
    assert (run / "figures" / "renders.png").stat().st_size > 5000
    assert_speckle_line(out)
    assert set(crosses) == {"chair", "table", "lamp"}
    meshes = {p.name.split("_")[0]: p for p in (run / "meshes").glob("*.obj")}
    assert set(meshes) == {name for name, c in crosses.items() if c}
    assert f"({len(meshes)} .obj files)" in out
    for name, c in crosses.items():
        assert (f"no surface at the threshold for {name}" in out) is not c
    for mesh in meshes.values():
        assert len(trimesh.load(mesh).vertices) > 0


@pytest.mark.parametrize(
    ("family", "classes"), [("wgan_gp", {"healthy", "lesion", "atrophy"}), ("dcgan", {"chair", "table", "lamp"})]
)
def test_demo_data_writes_class_folders_that_load_back(tmp_path: Path, family: str, classes: set[str]) -> None:
    from volgan.config import DataConfig
    from volgan.data.dataset import load_volumes

    out = tmp_path / "data"
    assert main(["demo-data", "--family", family, "--out", str(out), "--n-per-class", "2", "--size", "16"]) == 0
    folders = {p.name for p in out.iterdir()}
    assert folders == classes
    assert all(len(list((out / f).glob("*.nii.gz"))) == 2 for f in folders)
    data = load_volumes(DataConfig(size=16, cache_dir=str(tmp_path / "cache")), out)
    assert len(data.labels) == 2 * len(folders) and sorted(data.class_names) == sorted(folders)
