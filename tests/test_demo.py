from pathlib import Path

import nibabel as nib
import pytest

from volgan.cli import main


def test_demo_writes_everything_it_promises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "demo"
    args = ["demo", "--run-dir", str(run), "--steps", "3", "--size", "16", "--n-per-class", "4", "--samples", "2"]
    assert main([*args, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "class consistency:" in out and "real data: 100%" in out
    assert (run / "checkpoints" / "step_00000003.pt").exists()
    assert any((run / "tensorboard").iterdir())
    samples = sorted((run / "samples").glob("*/*.nii.gz"))  # one folder per class
    assert [p.name.split("_")[0] for p in samples] == ["atrophy"] * 2 + ["healthy"] * 2 + ["lesion"] * 2
    assert nib.load(samples[0]).shape == (16, 16, 16)
    for png in ("samples.png", "losses.png"):
        assert (run / "figures" / png).stat().st_size > 5000


def test_dcgan_demo_writes_renders_and_meshes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import trimesh

    run = tmp_path / "demo"
    args = ["demo", "--family", "dcgan", "--run-dir", str(run), "--steps", "3", "--size", "16"]
    assert main([*args, "--n-per-class", "4", "--samples", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "class consistency:" in out and "real data: 100%" in out
    assert (run / "figures" / "renders.png").stat().st_size > 5000
    meshes = sorted((run / "meshes").glob("*.obj"))
    assert len(meshes) + out.count("no surface at the threshold") == 3
    for mesh in meshes:
        assert len(trimesh.load(mesh).vertices) > 0
