"""`volgan export --format onnx`: the generator with its class input, dynamic batch, checked with onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import volgan
from conftest import tiny_config, tiny_data
from volgan.cli import main
from volgan.onnx_export import RELATIVE_TOLERANCE
from volgan.sampling import latent_for
from volgan.training import Trainer

# onnxruntime (MLAS kernels) and PyTorch (oneDNN) both compute in float32 but sum in other orders; the
# export promises agreement to RELATIVE_TOLERANCE (1e-4) of the intensity range, here 0..100.
ONNX_VS_TORCH = {"rtol": 0.0, "atol": RELATIVE_TOLERANCE * 100.0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    steps = {"steps": 2, "batch_size": 3, "wgan_gp": {"n_critic": 1}}
    # conditional WGAN-GP with the mapping network (style at every norm), unconditional 3D-GAN (sigmoid output)
    wgan = tiny_config(root / "wgan", train=steps, model={"latent_dim": 8, "embed_dim": 4, "ngf": 4, "ndf": 4,
                                                          "mapping_layers": 1})  # fmt: skip
    dcgan = tiny_config(root / "dcgan", train={"steps": 2, "batch_size": 4},
                        model={"family": "dcgan", "latent_dim": 8, "embed_dim": 4, "ngf": 4, "ndf": 4})  # fmt: skip
    Trainer(wgan, tiny_data(classes=2)).fit()
    Trainer(dcgan, tiny_data(classes=1)).fit()
    return {"wgan": root / "wgan", "dcgan": root / "dcgan"}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_conditional_graph_matches_pytorch_at_batch_1_and_3(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "g.onnx"
    assert main(["export", "--checkpoint", str(runs["wgan"]), "--format", "onnx", "--out", str(out)]) == 0
    session = _session(out)
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == ["z", "labels"] and inputs["z"].type == "tensor(float)"
    assert inputs["labels"].type == "tensor(int64)" and inputs["z"].shape == ["batch", 8]
    assert session.get_outputs()[0].name == "volume" and session.get_outputs()[0].shape == ["batch", 1, 16, 16, 16]
    g = volgan.load(runs["wgan"])
    for batch, cls in ((1, "c1"), (3, "c0")):
        z = torch.stack([latent_for(0, i, 8) for i in range(batch)]).numpy()
        labels = np.full(batch, g.class_names.index(cls), dtype=np.int64)
        got = session.run(["volume"], {"z": z, "labels": labels})[0]
        assert got.shape == (batch, 1, 16, 16, 16)
        # the fast-path PyTorch model vs the plain-path graph in another runtime: same mathematics
        torch.testing.assert_close(torch.from_numpy(got), g.sample(batch, cls, seed=0), **ONNX_VS_TORCH)
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta["class_names"] == ["c0", "c1"] and meta["intensity_range"] == [0.0, 100.0]
    assert meta["latent_dim"] == 8 and meta["weights"] == "ema" and np.allclose(np.diag(meta["affine"])[:3], 2.0)


def test_unconditional_dcgan_has_only_z(runs: dict[str, Path], tmp_path: Path) -> None:
    meta = volgan.export_onnx(runs["dcgan"], tmp_path / "d.onnx")
    assert meta["max_abs_diff"] <= ONNX_VS_TORCH["atol"] and meta["num_classes"] == 0
    session = _session(tmp_path / "d.onnx")
    assert [i.name for i in session.get_inputs()] == ["z"]
    z = torch.stack([latent_for(3, i, 8) for i in range(3)]).numpy()
    got = session.run(None, {"z": z})[0]
    torch.testing.assert_close(torch.from_numpy(got), volgan.load(runs["dcgan"]).sample(3, seed=3), **ONNX_VS_TORCH)


def test_export_errors(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["export", "--checkpoint", str(runs["wgan"])]
    assert main([*base, "--format", "onnx", "--out", str(tmp_path / "g.safetensors")]) == 2
    assert "with --format onnx, --out must end in .onnx" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "g.onnx"), "--which", "all"]) == 2
    assert "--which ema or --which generator" in capsys.readouterr().err
    assert main([*base, "--format", "safetensors", "--out", str(tmp_path / "g.onnx")]) == 2
    assert "--out must end in .safetensors" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
