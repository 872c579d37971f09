"""What `pip install volgan` gives a user, checked on the built wheel rather than the source tree.

The wheel is built from the repository's files and installed (not editable) into an empty venv; the
test then proves that volgan is imported from that venv, that the presets ship inside the wheel, and
that the installed `volgan` command trains with a preset and with a planned budget. Nothing is
downloaded: the dependencies come from this interpreter's site-packages through one .pth line.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def run(cmd: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def build_wheel(out: Path, scratch: Path) -> Path:
    """The wheel of the repository's pyproject.toml, README.md and src/, built in a fresh copy: an
    in-tree build reuses build/lib, so a file the package no longer declares (a preset left out of
    package-data) would still ship from an earlier build and hide the mistake."""
    tree = scratch / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    cmd: list[str | Path] = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        out,
        tree,
    ]
    run(cmd, scratch, dict(os.environ))
    (wheel,) = out.glob("volgan-*.whl")
    return wheel


def write_blob_classes(root: Path, n_per_class: int = 4, size: int = 16) -> Path:
    """DIR/<k>/vol_i.npy: a Gaussian blob whose radius depends on the class, plus a little noise."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij")).astype(np.float32)
    for k in range(2):
        (root / str(k)).mkdir(parents=True)
        for i in range(n_per_class):
            centre = size / 2 + rng.uniform(-2, 2, size=(3, 1, 1, 1))
            blob = np.exp(-((grid - centre) ** 2).sum(0) / (2 * (2.0 + 2.0 * k) ** 2))
            noise = 0.05 * rng.normal(size=blob.shape)
            np.save(root / str(k) / f"vol_{i}.npy", (blob + noise).astype(np.float32))
    return root


@pytest.mark.slow
def test_installed_wheel_ships_the_presets_and_trains(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist", tmp_path)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TIMEOUT)
    python, volgan = venv / "bin" / "python", venv / "bin" / "volgan"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"PYTHONNOUSERSITE": "1", "VOLGAN_CACHE_DIR": str(tmp_path / "cache")}
    # this interpreter's pip installs into the new venv; the venv itself starts empty
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        tmp_path,
        env,
    )

    # the dependencies (torch, numpy, ...) from this interpreter; a directory named in a .pth line is
    # not scanned for .pth files itself, so the dev venv's editable volgan stays out
    site = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).stdout.strip()
    )
    ours = sysconfig.get_paths()
    (site / "deps.pth").write_text("".join(f"{p}\n" for p in dict.fromkeys([ours["purelib"], ours["platlib"]])))

    probe = (
        "import json, volgan, volgan.presets as p; "
        "print(json.dumps([volgan.__file__, p.preset_names(), p.load_preset('cpu-fast32')]))"
    )
    where, names, fast32 = json.loads(run([python, "-c", probe], tmp_path, env).stdout)
    assert Path(where).resolve().is_relative_to(venv.resolve()), where  # the wheel's volgan, not REPO/src
    assert names == ["3dgan-published", "cpu-fast32", "cpu-fast64", "seed-design", "voxel32"]
    assert fast32["data"]["size"] == 32 and fast32["train"]["budget_minutes"] == 20

    data = write_blob_classes(tmp_path / "data")
    quiet = ["--set", "log.progress_bar=false"]

    run1 = tmp_path / "run1"
    cmd1: list[str | Path] = [
        volgan,
        "train",
        "--data",
        data,
        "--preset",
        "cpu-fast32",
        "--run-dir",
        run1,
        "--steps",
        "2",
    ]
    run([*cmd1, "--set", "data.size=16", *quiet], tmp_path, env)
    assert list((run1 / "checkpoints").glob("*.pt"))

    run2 = tmp_path / "run2"
    run([volgan, "train", "--data", data, "--minutes", "2", "--steps", "3", "--run-dir", run2, *quiet], tmp_path, env)
    assert list((run2 / "checkpoints").glob("*.pt"))
    assert (run2 / "plan.json").exists()
