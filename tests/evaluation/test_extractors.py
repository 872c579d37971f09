"""Standard feature spaces (MedicalNet 3D ResNet, 2.5D ResNet-50) from local weight files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from test_audit import write_phantoms

from volgan.cli import main
from volgan.data.phantom import make_phantom_set
from volgan.errors import CheckpointError, MetricError
from volgan.evaluation.extractors import (
    RadImageNet25DFeatures,
    load_standard_extractor,
    medicalnet_resnet,
    parse_spec,
    radimagenet_resnet50,
)

SIZE = 16


def save_medicalnet(path: Path, depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in MedicalNet's release layout: {'state_dict': {'module.<key>': tensor}} from
    DataParallel, with a segmentation head (``conv_seg``) and without BatchNorm step counters."""
    torch.manual_seed(seed)
    net = medicalnet_resnet(depth)
    for m in net.modules():  # non-trivial BatchNorm statistics, so a skipped key would show
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["module.conv_seg.0.weight"] = torch.zeros(32, 512 if depth < 50 else 2048, 3, 3, 3)
    torch.save({"state_dict": state, "epoch": 200}, path)
    return net.state_dict()


def save_resnet50_2d(path: Path) -> None:
    """Random weights in torchvision's ResNet-50 layout, classifier head included."""
    torch.manual_seed(1)
    state = dict(radimagenet_resnet50().state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(165, 2048), torch.zeros(165)
    torch.save(state, path)


@pytest.mark.parametrize(
    ("depth", "dim"),
    [(10, 512), (18, 512), (34, 512), (50, 2048)],
)
def test_medicalnet_feature_width_and_dilated_resolution(depth: int, dim: int) -> None:
    """Pooled width per depth; layer4 keeps 1/8 of the input size (stride 2 twice in the stem,
    once in layer2, then dilation), as in MedicalNet, instead of MONAI's 1/32."""
    net = medicalnet_resnet(depth).eval()
    seen: list[tuple[int, ...]] = []
    net.layer4.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        out = net(torch.randn(2, 1, 24, 17, 32))
    assert out.shape == (2, dim)
    assert seen == [(2, dim, 3, 3, 4)]


def test_parse_spec() -> None:
    assert parse_spec("medicalnet:resnet50:/w/resnet_50_23dataset.pth") == (
        "medicalnet",
        50,
        Path("/w/resnet_50_23dataset.pth"),
    )
    assert parse_spec("radimagenet2.5d:rad.pt") == ("radimagenet2.5d", 50, Path("rad.pt"))
    assert parse_spec("features.ts") is None
    with pytest.raises(MetricError, match=r"medicalnet:resnetN:PATH"):
        parse_spec("medicalnet:/w/resnet_50.pth")
    with pytest.raises(MetricError, match=r"depth must be one of"):
        load_standard_extractor("medicalnet:resnet42:/w/x.pth")


def test_medicalnet_file_loads_with_key_mapping_and_records_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "resnet_10_23dataset.pth"
    expected = save_medicalnet(path, 10)
    ex = load_standard_extractor(f"medicalnet:resnet10:{path}", size=SIZE)
    assert ex is not None
    loaded = ex.module.net.state_dict()
    for key in ("conv1.weight", "layer1.0.bn1.running_var", "layer4.0.downsample.0.weight"):
        torch.testing.assert_close(loaded[key], expected[key], rtol=0, atol=0)
    info = ex.info
    assert info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["ignored_keys"] == ["conv_seg.0.weight"] and info["feature_dim"] == 512 and info["input_size"] == SIZE
    assert "z-score" in info["preprocessing"] and "comparable only" in info["comparability"]
    with torch.no_grad():
        feats = ex.module(torch.rand(3, 1, 20, 20, 20) * 2 - 1)  # resized to 16³ first
    assert feats.shape == (3, 512) and torch.isfinite(feats).all()


def test_medicalnet_normalisation_makes_features_intensity_invariant(tmp_path: Path) -> None:
    path = tmp_path / "r10.pth"
    save_medicalnet(path, 10)
    ex = load_standard_extractor(f"medicalnet:resnet10:{path}")
    assert ex is not None
    x = torch.rand(2, 1, SIZE, SIZE, SIZE)
    with torch.no_grad():
        a, b = ex.module(x), ex.module(0.3 * x - 0.7)  # an affine intensity change: z-score removes it
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_radimagenet_25d_is_the_mean_over_slices_and_planes(tmp_path: Path) -> None:
    path = tmp_path / "RadImageNet-ResNet50.pt"
    save_resnet50_2d(path)
    ex = load_standard_extractor(f"radimagenet2.5d:{path}")
    assert ex is not None and ex.info["ignored_keys"] == ["fc.bias", "fc.weight"] and ex.info["feature_dim"] == 2048
    module = ex.module
    assert isinstance(module, RadImageNet25DFeatures)
    x = torch.rand(1, 1, 12, 12, 12) * 2 - 1
    with torch.no_grad():
        got = module(x)
        v = (x - x.min()) / (x.max() - x.min())
        mean = torch.tensor([0.406, 0.456, 0.485]).view(1, 3, 1, 1)
        by_hand = []
        for slices in (v[0, 0], v[0, 0].permute(1, 0, 2), v[0, 0].permute(2, 0, 1)):
            rgb = slices[:, None].expand(-1, 3, -1, -1) - mean
            by_hand.append(module.net(rgb).mean(0))
    assert got.shape == (1, 2048)
    torch.testing.assert_close(got[0], torch.stack(by_hand).mean(0), rtol=1e-4, atol=1e-5)


def test_wrong_or_missing_weight_files_are_one_clear_error(tmp_path: Path) -> None:
    r10 = tmp_path / "resnet_10.pth"
    save_medicalnet(r10, 10)
    with pytest.raises(
        CheckpointError, match=r"resnet_10\.pth: weights do not fit MedicalNet ResNet-50 .*conv1\.weight"
    ):
        load_standard_extractor(f"medicalnet:resnet50:{r10}")
    with pytest.raises(CheckpointError, match=r"weights do not fit 2D ResNet-50 .*torchvision-layout"):
        load_standard_extractor(f"radimagenet2.5d:{r10}")
    with pytest.raises(CheckpointError, match=r"nowhere\.pth: MedicalNet ResNet-10 weight file not found"):
        load_standard_extractor(f"medicalnet:resnet10:{tmp_path / 'nowhere.pth'}")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a weight file")
    with pytest.raises(CheckpointError, match=r"junk\.pth: (damaged or truncated|refused to load)"):
        load_standard_extractor(f"medicalnet:resnet10:{junk}")
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    with pytest.raises(CheckpointError, match=r"list\.pth: not a state dict"):
        load_standard_extractor(f"radimagenet2.5d:{listed}")


def test_evaluate_in_medicalnet_space_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(tmp_path / "cache"))
    write = write_phantoms
    train = write(tmp_path / "train", *make_phantom_set(6, SIZE, seed=0))
    test = write(tmp_path / "test", *make_phantom_set(8, SIZE, seed=1))
    fake = write(tmp_path / "fake", *make_phantom_set(8, SIZE, seed=2))
    clf = tmp_path / "clf"
    assert main(["train-classifier", "--data", str(train), "--out", str(clf), "--size", str(SIZE), "--epochs", "1",
                 "--device", "cpu"]) == 0  # fmt: skip
    weights = tmp_path / "resnet_10_23dataset.pth"
    save_medicalnet(weights, 10)
    base = ["evaluate", "--samples", str(fake), "--real", str(test), "--classifier", str(clf), "--no-tstr",
            "--no-audit", "--draws", "1", "--device", "cpu"]  # fmt: skip
    out = tmp_path / "eval"
    assert main([*base, "--out", str(out), "--features", f"medicalnet:resnet10:{weights}"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    info = m["inputs"]["feature_extractor"]
    assert info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert m["inputs"]["feature_dim"] == 512 and info["name"] == "medicalnet"
    assert m["distribution"]["overall"]["reference"]["fd"] is not None
    report = (out / "report.md").read_text()
    assert info["weights_sha256"] in report and "**Comparability.**" in report
    capsys.readouterr()
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"module.conv1.weight": torch.zeros(1)}}, bad)
    assert main([*base, "--out", str(tmp_path / "e2"), "--features", f"medicalnet:resnet10:{bad}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pth: weights do not fit MedicalNet ResNet-10" in err[0]
