"""End-to-end runs through the CLI, in-process (and one subprocess for the original script)."""

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import write_class_folders
from volgan.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--set",
    "data.size=16",
    "--set",
    "model.ngf=4",
    "--set",
    "model.ndf=4",
    "--set",
    "model.latent_dim=8",
    "--set",
    "model.embed_dim=4",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.wgan_gp.n_critic=2",
    "--set",
    "log.checkpoint_every=2",
    "--set",
    "log.every=1",
    "--set",
    "log.progress_bar=false",
    "--device",
    "cpu",
]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(tmp_path / "cache"))
    return write_class_folders(tmp_path / "data", n_per_class=3, size=16, classes=3)


def test_train_resume_sample(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--run-dir", str(run), "--steps", "2", *TINY]) == 0
    assert (run / "checkpoints" / "step_00000002.pt").exists()
    assert json.loads((run / "class_to_idx.json").read_text()) == {"0": 0, "1": 1, "2": 2}
    # continue the same run to 3 steps: config comes from the checkpoint
    assert main(["train", "--resume", str(run), "--steps", "3", "--data", str(data_dir)]) == 0
    assert (run / "checkpoints" / "step_00000003.pt").exists()
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(run), "--class", "2", "--n", "3", "--seed", "4", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "2").glob("*.nii.gz")) == [
        "2_seed4_00000.nii.gz",
        "2_seed4_00001.nii.gz",
        "2_seed4_00002.nii.gz",
    ]
    assert "wrote 3 volumes" in capsys.readouterr().out


def test_dry_run_prints_config_and_data_summary(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--data", str(data_dir), "--run-dir", str(tmp_path / "run"), "--dry-run", *TINY]) == 0
    out = capsys.readouterr().out
    assert "n_critic: 2" in out and "size: 16" in out
    # the dataset summary, not the YAML dump: counts per class, grid, intensity mapping, value range
    assert re.search(r"^volumes: +9 x 16x16x16, ", out, re.M), out
    assert re.search(r"^classes: +3 \(0: 3, 1: 3, 2: 3\)$", out, re.M), out
    intensity = re.search(r"^intensity: \[(\S+), (\S+)\] in the data maps to \[-1, 1\]$", out, re.M)
    assert intensity and float(intensity[1]) < float(intensity[2]), out
    values = re.search(r"^values: .* min (\S+), max (\S+) \(over 9 volumes\)$", out, re.M)
    assert values and float(values[1]) == -1.0 and float(values[2]) == 1.0, out  # clipped and scaled per volume
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["train", "--data", "/no/such/folder"], "/no/such/folder"),
        (["train", "--set", "train.wgan_gp.n_critic=0", "--data", "x"], r"train\.wgan_gp\.n_critic"),
        (["train", "--set", "train.bogus=1", "--data", "x"], r"unknown key 'train\.bogus'"),
        (["train"], "no data: pass --data"),
        (["sample", "--checkpoint", "/no/run", "--out", "x"], "no such checkpoint"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("volgan: error: ") and len(err.splitlines()) == 1
    assert re.search(match, err), err


def test_original_train_cli_script(tmp_path: Path, data_dir: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text((REPO / "config" / "default.yaml").read_text())
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "train_cli.py"),
        "--root-dir",
        str(data_dir),
        "--config-path",
        str(cfg),
        "--run-dir",
        str(tmp_path / "run"),
        "--steps",
        "1",
        *TINY,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "checkpoints" / "step_00000001.pt").exists()


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from volgan.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip().endswith("False")


def _empty_class(root: Path) -> str:
    (root / "3").mkdir()
    return r"3.*(empty|no volume)"


def _corrupt_nifti(root: Path) -> str:
    (root / "0" / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip")
    return r"broken\.nii\.gz"


def _nan_voxels(root: Path) -> str:
    vol = np.zeros((16, 16, 16), np.float32)
    vol[3, 3, 3] = np.nan
    np.save(root / "1" / "nan.npy", vol)
    return r"nan\.npy.*(NaN|finite)"


def _five_d(root: Path) -> str:  # (a 4-D .npy is a batch of volumes, so 5-D is the wrong rank)
    np.save(root / "1" / "time.npy", np.ones((2, 16, 16, 16, 3), np.float32))
    return r"time\.npy: expected .*\(D, H, W\), got shape \(2, 16, 16, 16, 3\)"


def _two_d(root: Path) -> str:
    np.save(root / "1" / "slice.npy", np.ones((16, 16), np.float32))
    return r"slice\.npy: expected .*got shape \(16, 16\)"


def _strings(root: Path) -> str:
    np.save(root / "0" / "words.npy", np.array(["a", "b"]))
    return r"words\.npy.*numeric"


@pytest.mark.parametrize("make_bad", [_empty_class, _corrupt_nifti, _nan_voxels, _five_d, _two_d, _strings])
def test_bad_data_is_one_line_and_leaves_no_run_folder(
    make_bad: Callable[[Path], str], tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    match = make_bad(data_dir)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--run-dir", str(run), "--steps", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err, re.IGNORECASE), err
    assert not run.exists()


def test_dcgan_family_through_the_cli_with_meshes(tmp_path: Path, data_dir: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "samples"
    dcgan = ["--set", "model.family=dcgan", "--set", "train.batch_size=3", "--steps", "2"]
    tiny = [arg for pair in zip(TINY[::2], TINY[1::2], strict=True) if "wgan_gp" not in pair[1] for arg in pair]
    assert main(["train", "--data", str(data_dir), "--run-dir", str(run), *tiny, *dcgan]) == 0
    args = ["sample", "--checkpoint", str(run), "--class", "1", "--n", "1"]
    assert main([*args, "--out", str(tmp_path / "probe"), "--format", "npy"]) == 0
    # two steps in, the generator's occupancy hovers near 0.5: put the surface at this sample's median
    lo, hi = json.loads((tmp_path / "probe" / "1" / "1_seed0_00000.json").read_text())["intensity_range"]
    level = float(np.median((np.load(tmp_path / "probe" / "1" / "1_seed0_00000.npy") - lo) / (hi - lo)))
    assert main([*args, "--out", str(out), "--mesh", "obj", "--mesh", "stl", "--threshold", str(level)]) == 0
    stem = "1_seed0_00000"
    assert {p.name for p in (out / "1").iterdir()} == {f"{stem}.nii.gz", f"{stem}.json", f"{stem}.obj", f"{stem}.stl"}
    meta = json.loads((out / "1" / f"{stem}.json").read_text())
    assert meta["meshes"] == [f"{stem}.obj", f"{stem}.stl"] and meta["mesh_level"] == level


def test_far_too_high_learning_rate_is_caught_within_one_step(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    lr = ["--set", "train.lr_d=1e30", "--set", "train.lr_g=1e30"]
    assert main(["train", "--data", str(data_dir), "--run-dir", str(run), "--steps", "8", *lr, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert re.search(r"step [12]: (critic|generator) loss is (nan|inf).*lower learning rate.*last good checkpoint", err)
    assert not list((run / "checkpoints").glob("*.pt"))  # nothing non-finite was saved


def test_resume_of_a_checkpoint_from_before_mode_seeking_keeps_it_off(tmp_path: Path, data_dir: Path) -> None:
    """`volgan train --resume` takes the checkpoint's config as it trained, not today's family default."""
    import torch
    import yaml

    run = tmp_path / "run"
    seed_design = ["--preset", "seed-design"]  # a run as it was before the mode-seeking term existed
    assert main(["train", "--data", str(data_dir), "--run-dir", str(run), "--steps", "2", *seed_design, *TINY]) == 0
    path = run / "checkpoints" / "step_00000002.pt"
    state = torch.load(path, weights_only=True)
    assert state["config"]["train"]["mode_seeking"] == 1.0  # the wgan_gp default
    del state["config"]["train"]["mode_seeking"]
    torch.save(state, path)
    assert main(["train", "--resume", str(run), "--steps", "3", "--data", str(data_dir)]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["mode_seeking"] == 0.0
