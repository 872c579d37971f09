"""The Python API: volgan.load -> sample / sample_images / save, lazily exported from `import volgan`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import volgan
from conftest import assert_same_volume, tiny_config, tiny_data
from volgan import checkpoint as ckpt
from volgan.cli import main
from volgan.errors import VolganError
from volgan.sampling import generate, load_generator
from volgan.training import Trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("api") / "run"
    Trainer(tiny_config(run_dir, train={"steps": 2, "batch_size": 3, "wgan_gp": {"n_critic": 1}}), tiny_data()).fit()
    return run_dir


@pytest.fixture(scope="module")
def g(run: Path) -> volgan.VolumeGenerator:
    return volgan.load(run)


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_volgan_and_help_do_not_import_torch() -> None:
    assert _python("import volgan, sys; print(volgan.__version__, 'torch' in sys.modules)").endswith("False")
    code = (
        "import sys\nfrom volgan.cli import main\n"
        "for argv in (['--help'], ['sample', '--help'], ['export', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)"
    )
    assert _python(code).endswith("False")
    # the real entry point, as the shell runs it: -X importtime lists every module imported
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "volgan", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "usage: volgan" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "volgan.cli" in imported and not {m for m in imported if m.split(".")[0] in ("torch", "numpy", "monai")}
    # the lazy names resolve on first use (and only then import torch)
    assert _python("import volgan, sys; volgan.load; print('torch' in sys.modules)") == "True"


def test_public_names_are_lazy_attributes() -> None:
    assert {"load", "VolumeGenerator", "SyntheticDataset", "export_onnx", "slerp"} <= set(dir(volgan))
    assert set(volgan.__all__) <= set(dir(volgan))
    assert volgan.SyntheticDataset.__module__ == "volgan.synthetic"
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        volgan.nope  # noqa: B018


def test_sample_is_the_cli_volume_in_data_intensities(g: volgan.VolumeGenerator, run: Path) -> None:
    vols = g.sample(n=3, cls="c1", seed=4, batch_size=3)
    assert vols.shape == (3, 1, 16, 16, 16) and vols.dtype == torch.float32 and vols.device.type == "cpu"
    unit = generate(load_generator(run).generator, torch.tensor([1, 1, 1]), seed=4, batch_size=3)
    # the same computation as `volgan sample`, mapped as it maps: (v + 1) / 2 * (hi - lo) + lo
    assert torch.equal(vols[:, 0], torch.from_numpy(((unit.double().numpy() + 1) / 2 * 100.0).astype(np.float32)))
    assert vols.min() >= 0.0 and vols.max() <= 100.0  # tiny_data's intensity range
    assert torch.equal(vols, g.sample(n=3, cls=1, seed=4, batch_size=3))  # name or index: the same class


@pytest.mark.numerics  # another batch size: float results depend on the CPU kernels
def test_volume_i_depends_on_seed_and_index_only(g: volgan.VolumeGenerator) -> None:
    whole = g.sample(4, "c0", seed=7, batch_size=4)
    one_by_one = g.sample(4, "c0", seed=7, batch_size=1)
    assert_same_volume(whole, one_by_one, value_range=100.0)  # another batch: another summation order
    assert_same_volume(g.sample(2, "c0", seed=7, start=2, batch_size=2), whole[2:], value_range=100.0)
    assert not torch.allclose(whole[0], whole[1])  # different latents
    assert not torch.allclose(whole, g.sample(4, "c0", seed=8, batch_size=4))


def test_sample_images_carry_affine_and_provenance(g: volgan.VolumeGenerator) -> None:
    imgs = g.sample_images(n=2, cls="c1", seed=3, start=5)
    assert len(imgs) == 2 and all(isinstance(im, MetaTensor) for im in imgs)
    assert imgs[0].shape == (1, 16, 16, 16)
    np.testing.assert_array_equal(imgs[1].affine.numpy(), g.affine)
    assert np.allclose(np.diag(g.affine)[:3], 2.0)  # tiny_data's 2 mm spacing
    assert imgs[1].meta["class_name"] == "c1" and imgs[1].meta["index"] == 6 and imgs[1].meta["seed"] == 3
    assert torch.equal(torch.stack([im.as_tensor() for im in imgs]), g.sample(2, "c1", seed=3, start=5))


def test_save_writes_the_bytes_volgan_sample_writes(g: volgan.VolumeGenerator, run: Path, tmp_path: Path) -> None:
    paths = g.save(g.sample_images(n=2, cls="c0", seed=1, batch_size=2), tmp_path / "api")
    cli = ["sample", "--checkpoint", str(run), "--out", str(tmp_path / "cli"), "--class", "c0", "--n", "2"]
    assert main([*cli, "--seed", "1", "--batch-size", "2", "--device", "cpu"]) == 0
    assert [p.relative_to(tmp_path / "api").as_posix() for p in paths] == [
        "c0/c0_seed1_00000.nii.gz",
        "c0/c0_seed1_00001.nii.gz",
    ]
    for p in paths:
        twin = tmp_path / "cli" / p.relative_to(tmp_path / "api")
        assert p.read_bytes() == twin.read_bytes()
        sidecar = p.with_name(p.name.replace(".nii.gz", ".json"))
        assert sidecar.read_bytes() == twin.with_name(sidecar.name).read_bytes()
    # a plain tensor says what it holds through seed/cls/start; the files are the same again
    again = g.save(g.sample(2, "c0", seed=1, batch_size=2), tmp_path / "tensor", cls="c0", seed=1)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    npy = g.save(g.sample(1, "c1", seed=2), tmp_path / "npy", "npy", cls="c1", seed=2, start=9)
    assert npy[0].name == "c1_seed2_00009.npy" and json.loads(npy[0].with_suffix(".json").read_text())["index"] == 9


def test_save_refuses_what_it_cannot_name(g: volgan.VolumeGenerator, tmp_path: Path) -> None:
    with pytest.raises(VolganError, match="pass seed="):
        g.save(g.sample(1, "c0"), tmp_path)
    with pytest.raises(VolganError, match="carries no sample provenance"):
        g.save([torch.zeros(1, 16, 16, 16)], tmp_path)
    with pytest.raises(VolganError, match=r"volumes must be \(n, 1, 16, 16, 16\)"):
        g.save(torch.zeros(2, 1, 8, 8, 8), tmp_path, cls="c0", seed=0)
    with pytest.raises(VolganError, match="fmt must be one of"):
        g.save(g.sample(1, "c0"), tmp_path, "tiff", cls="c0", seed=0)


def test_class_and_argument_errors(g: volgan.VolumeGenerator) -> None:
    with pytest.raises(VolganError, match=r"this model is conditional: pass cls, one of \['c0', 'c1'\]"):
        g.sample(1)
    with pytest.raises(VolganError, match=r"unknown class 'c9'"):
        g.sample(1, "c9")
    with pytest.raises(VolganError, match=r"class index 2 out of range 0\.\.1"):
        g.sample(1, 2)
    with pytest.raises(VolganError, match="n must be an integer >= 0, got -1"):
        g.sample(-1, "c0")
    with pytest.raises(VolganError, match="batch_size must be >= 1, got 0"):
        g.sample(1, "c0", batch_size=0)
    assert g.sample(0, "c0").shape == (0, 1, 16, 16, 16)


def test_load_from_pt_and_safetensors_gives_the_same_volumes(g: volgan.VolumeGenerator, run: Path) -> None:
    pt = ckpt.resolve_checkpoint(run)
    exported = ckpt.export_safetensors(ckpt.load_checkpoint(pt), run.parent / "g.safetensors", source=pt)
    expected = g.sample(2, "c1", seed=0, batch_size=2)
    for where in (pt, exported):
        loaded = volgan.load(where)
        assert loaded.class_names == ["c0", "c1"] and loaded.size == 16 and loaded.intensity_range == (0.0, 100.0)
        assert torch.equal(loaded.sample(2, "c1", seed=0, batch_size=2), expected)  # same weights, same computation
    raw = volgan.load(run, ema=False)
    assert not torch.equal(raw.sample(2, "c1", seed=0, batch_size=2), expected)


def test_sampling_changes_no_process_state(g: volgan.VolumeGenerator) -> None:
    rng, threads, grad = torch.random.get_rng_state(), torch.get_num_threads(), torch.is_grad_enabled()
    g.sample(2, "c0", seed=0, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), rng)  # latents come from their own generators
    assert torch.get_num_threads() == threads and torch.is_grad_enabled() == grad
    assert g.device == torch.device("cpu") and "step 2" in repr(g)


def _guide_page(name: str) -> str:
    return (Path(__file__).resolve().parents[2] / "docs" / "guide" / name).read_text()


def test_readme_python_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```python block of the guide's Python API page, in order, against a tiny run with the demo's classes."""
    from volgan.data.dataset import VolumeSet

    rng = np.random.default_rng(0)
    data = VolumeSet.from_arrays(
        np.tanh(rng.normal(size=(6, 16, 16, 16))).astype(np.float32),
        np.arange(6) % 3,
        ["healthy", "lesion", "atrophy"],
        spacing=2.0,
        intensity_range=(0.0, 100.0),
    )
    Trainer(
        tiny_config(tmp_path / "runs" / "demo", train={"steps": 1, "batch_size": 3, "wgan_gp": {"n_critic": 1}}), data
    ).fit()
    monkeypatch.chdir(tmp_path)
    blocks = _guide_page("python-api.md").split("```python\n")[1:]
    assert len(blocks) >= 5
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block.split("```")[0], "docs/guide/python-api.md", "exec"), namespace)
    assert len(list((tmp_path / "synth" / "lesion").glob("*.nii.gz"))) == 8
    assert (tmp_path / "generator.onnx").exists() and namespace["volumes"].shape == (3, 1, 16, 16, 16)  # type: ignore[attr-defined]
    assert namespace["walk"].shape == (8, 1, 16, 16, 16)  # type: ignore[attr-defined]
    assert namespace["mine"].step == 2 and namespace["mine"].class_names == ["healthy", "lesion"]  # type: ignore[attr-defined]
