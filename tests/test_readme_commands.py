"""The README's commands, copied as a new user would, run on the built-in data at a tiny size.

Only the sizes change (a budget of one minute cut at two steps, a 16³ grid, a few volumes); every
command, flag and path is the README's own, in the README's order.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from volgan.cli import main

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "train": [
        "--steps",
        "2",
        "--set",
        "data.size=16",
        "--set",
        "model.latent_dim=8",
        "--set",
        "log.progress_bar=false",
    ],
    "train-classifier": ["--epochs", "1"],
    "evaluate": ["--n-per-class", "8", "--draws", "2", "--no-tstr"],
}


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    lines = [ln for block in re.findall(r"```bash\n(.*?)```", text, re.S) for ln in block.splitlines()]
    return [shlex.split(ln, comments=True) for ln in lines if ln.startswith("volgan ")]


def tiny(argv: list[str]) -> list[str]:
    out = list(argv[1:])
    for flag, value in (("--minutes", "1"), ("--n", "2"), ("--size", "16")):
        if flag in out:
            out[out.index(flag) + 1] = value
    if out[0] == "train" and "--resume" in out:
        return [*out, "--steps", "3"]
    return out + SMALL.get(out[0], [])


@pytest.mark.slow
def test_readme_commands_run_from_a_fresh_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(tmp_path / "cache"))
    commands = readme_commands()
    assert [c[1] for c in commands] == [
        "train", "train", "sample", "sample", "train", "train-classifier", "evaluate", "export", "export",
    ]  # fmt: skip
    # the README's "no data at hand?" line, and held-out folders for its evaluate example
    for argv in (
        ["demo-data", "--out", "scans", "--n-per-class", "4", "--size", "16"],
        ["demo-data", "--family", "dcgan", "--out", "shapes", "--n-per-class", "4", "--size", "16"],
        ["demo-data", "--out", "train_scans", "--n-per-class", "4", "--size", "16", "--seed", "0"],
        ["demo-data", "--out", "test_scans", "--n-per-class", "8", "--size", "16", "--seed", "2"],
    ):
        assert main(argv) == 0, argv
    for argv in commands:
        assert main(tiny(argv)) == 0, shlex.join(argv)
    assert (tmp_path / "runs" / "mri" / "plan.json").exists() and (tmp_path / "runs" / "shapes" / "plan.json").exists()
    assert list((tmp_path / "shapes_out").rglob("*.obj")) and (tmp_path / "report" / "metrics.json").exists()
    assert (tmp_path / "g.safetensors").exists() and (tmp_path / "g.onnx").exists()


@pytest.mark.slow
def test_readme_python_api_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["demo-data", "--out", "scans", "--n-per-class", "4", "--size", "16"]) == 0
    (block,) = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    small = block.replace("minutes=20,", 'minutes=1, train={"steps": 2}, model={"latent_dim": 8},', 1)
    small = small.replace("length=256", "length=4")
    assert small != block
    namespace: dict[str, object] = {}
    exec(compile(small, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "mri" / "plan.json").exists()
    assert namespace["vols"].shape[:2] == (8, 1)  # type: ignore[attr-defined]
    assert len(namespace["synthetic"]) == 4  # type: ignore[arg-type]
