"""Interpolation: slerp between latents, class-embedding mix, and `volgan sample --interpolate` outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

import volgan
from conftest import assert_same_volume, tiny_config, tiny_data
from volgan.cli import main
from volgan.interpolate import class_embeddings
from volgan.models import DCGANGenerator, Generator
from volgan.sampling import latent_for
from volgan.training import Trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("interpolate") / "run"
    Trainer(
        tiny_config(run_dir, train={"steps": 2, "batch_size": 3, "wgan_gp": {"n_critic": 1}}), tiny_data(classes=3)
    ).fit()
    return run_dir


@pytest.fixture(scope="module")
def g(run: Path) -> volgan.VolumeGenerator:
    return volgan.load(run)


def test_slerp_ends_exactly_and_stays_on_the_arc() -> None:
    a, b = latent_for(0, 0, 64), latent_for(0, 1, 64)
    path = volgan.slerp(a, b, torch.linspace(0, 1, 5, dtype=torch.float64))
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = volgan.slerp(e0, e1, torch.tensor([0.5]))[0]
    torch.testing.assert_close(mid, torch.tensor([math.sqrt(0.5)] * 2), rtol=0, atol=1e-7)  # on the unit circle
    parallel = volgan.slerp(e0, 2 * e0, torch.tensor([0.5]))[0]  # angle 0: the linear midpoint
    torch.testing.assert_close(parallel, torch.tensor([1.5, 0.0]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("family", [Generator, DCGANGenerator])
def test_embedding_table_runs_the_generators_own_forward(family: type) -> None:
    kwargs = {"mapping_layers": 1} if family is Generator else {}  # the mapping network sees the mix too
    gen = family(16, 8, 3, 4, 4, **kwargs).eval()
    z = torch.randn(2, 8)
    learned = gen.embed
    with torch.no_grad(), class_embeddings(gen, gen.embed.weight[[2, 0]].clone()):
        swapped = gen(z, torch.tensor([0, 1]))
    assert gen.embed is learned
    with torch.no_grad():
        assert torch.equal(swapped, gen(z, torch.tensor([2, 0])))  # same rows, same computation
    with pytest.raises(RuntimeError, match="boom"), class_embeddings(gen, torch.zeros(1, 4)):
        raise RuntimeError("boom")
    assert gen.embed is learned  # restored after an error too


@pytest.mark.numerics  # the walk's batch vs sample's batch: float rounding only
def test_walk_ends_are_the_sampled_volumes(g: volgan.VolumeGenerator) -> None:
    walk = volgan.interpolate_latents(g, from_index=2, to_index=5, steps=4, cls="c1", seed=3)
    assert walk.shape == (4, 1, 16, 16, 16)
    assert_same_volume(walk[0], g.sample(1, "c1", seed=3, start=2)[0], value_range=100.0)
    assert_same_volume(walk[-1], g.sample(1, "c1", seed=3, start=5)[0], value_range=100.0)
    mix = volgan.interpolate_classes(g, "c0", "c2", steps=3, index=4, seed=3)
    assert_same_volume(mix[0], g.sample(1, "c0", seed=3, start=4)[0], value_range=100.0)
    assert_same_volume(mix[-1], g.sample(1, "c2", seed=3, start=4)[0], value_range=100.0)
    assert not torch.allclose(mix[1], mix[0]) and not torch.allclose(mix[1], mix[2])


def test_cli_writes_frames_montage_and_gif(run: Path, tmp_path: Path) -> None:
    base = ["sample", "--checkpoint", str(run), "--out", str(tmp_path), "--device", "cpu", "--seed", "2"]
    assert main([*base, "--interpolate", "latent", "--to-index", "3", "--steps", "5", "--class", "c0"]) == 0
    walk = tmp_path / "latent_seed2_00000-00003"
    assert sorted(p.name for p in (walk / "c0").glob("*.nii.gz")) == [f"step{k:03d}.nii.gz" for k in range(5)]
    meta = json.loads((walk / "c0" / "step002.json").read_text())
    assert meta["t"] == 0.5 and meta["from_index"] == 0 and meta["to_index"] == 3 and meta["class_name"] == "c0"
    assert Image.open(walk / f"{walk.name}.png").size[0] > 500
    gif = Image.open(walk / f"{walk.name}.gif")
    assert gif.n_frames == 8 and gif.size[1] >= 192  # there (5) and back (3), enlarged from 16 px
    assert main([*base, "--interpolate", "class", "--class", "c1", "--to-class", "2", "--from-index", "4"]) == 0
    mix = tmp_path / "class_c1-to-c2_seed2_00004"
    assert len(list((mix / "c1-to-c2").glob("*.nii.gz"))) == 8  # --steps defaults to 8
    last = json.loads((mix / "c1-to-c2" / "step007.json").read_text())
    assert last["t"] == 1.0 and last["to_class"] == "c2" and last["index"] == 4
    assert (mix / f"{mix.name}.png").exists() and (mix / f"{mix.name}.gif").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--to-class", "c1"], "--to-class: only with --interpolate"),
        (["--interpolate", "latent", "--n", "3"], "leave out --n"),
        (["--interpolate", "latent", "--to-index", "0"], "--from-index and --to-index must differ"),
        (["--interpolate", "class", "--class", "c0"], "needs one --class A and --to-class B"),
        (["--interpolate", "class", "--class", "c0", "--to-class", "c0"], "must name different classes"),
        (["--interpolate", "class", "--class", "c0", "--to-class", "c9"], "unknown class 'c9'"),
        (["--interpolate", "latent", "--steps", "1"], "--steps: must be in 2..1000"),
    ],
)
def test_cli_refuses_bad_walks(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    try:
        code = main(["sample", "--checkpoint", str(run), "--out", str(tmp_path / "o"), "--device", "cpu", *flags])
    except SystemExit as e:  # argparse's own checks
        code = int(e.code or 0)
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
