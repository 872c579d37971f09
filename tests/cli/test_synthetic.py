"""SyntheticDataset: item i deterministic in (seed, i), MONAI-style dicts, safe with DataLoader workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import ScaleIntensityd
from torch.utils.data import ConcatDataset, DataLoader

import volgan
from conftest import assert_same_volume, tiny_config, tiny_data
from volgan.errors import VolganError
from volgan.training import Trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("synthetic") / "run"
    data = tiny_data(n=9, classes=3)
    Trainer(tiny_config(run_dir, train={"steps": 2, "batch_size": 3, "wgan_gp": {"n_critic": 1}}), data).fit()
    return run_dir


@pytest.fixture(scope="module")
def g(run: Path) -> volgan.VolumeGenerator:
    return volgan.load(run)


def test_item_i_is_volume_i_of_its_class(g: volgan.VolumeGenerator) -> None:
    ds = volgan.SyntheticDataset(g, length=7, seed=5)
    assert len(ds) == 7 and [ds.label_of(i) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]  # round robin: balanced
    item = ds[4]
    assert set(item) == {"image", "label", "class_name"} and item["label"] == 1 and item["class_name"] == "c1"
    assert isinstance(item["image"], MetaTensor) and item["image"].shape == (1, 16, 16, 16)
    assert item["image"].meta["index"] == 4 and item["image"].meta["seed"] == 5
    torch.testing.assert_close(item["image"].affine, torch.as_tensor(g.affine))
    # the volume `volgan sample --seed 5` writes for index 4, class c1 (batch 1 both: the same computation)
    assert torch.equal(item["image"].as_tensor(), g.sample(1, "c1", seed=5, start=4, batch_size=1)[0])
    assert torch.equal(ds[4]["image"].as_tensor(), item["image"].as_tensor())
    assert not torch.equal(volgan.SyntheticDataset(g, length=7, seed=6)[4]["image"], item["image"])


def test_classes_subset_keeps_the_models_labels(g: volgan.VolumeGenerator) -> None:
    ds = volgan.SyntheticDataset(g, classes=["c2", 0], length=4, seed=0, meta=False)
    assert [ds[i]["label"] for i in range(4)] == [2, 0, 2, 0]  # the data's class_to_idx, not positions
    assert type(ds[0]["image"]) is torch.Tensor and ds[0]["class_name"] == "c2"


@pytest.mark.numerics  # workers run one thread, this process two: the same volume to float rounding
def test_dataloader_with_two_workers_gives_the_same_items(g: volgan.VolumeGenerator, run: Path) -> None:
    ds = volgan.SyntheticDataset(run, length=6, seed=2)  # loaded from the run folder, on the CPU
    assert not torch.cuda.is_initialized()
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    batches = list(loader)
    assert not torch.cuda.is_initialized()  # the parent never touched a device
    images = torch.cat([b["image"].as_tensor() for b in batches])
    assert images.shape == (6, 1, 16, 16, 16)
    assert torch.cat([b["label"] for b in batches]).tolist() == [0, 1, 2, 0, 1, 2]
    assert [n for b in batches for n in b["class_name"]] == ["c0", "c1", "c2", "c0", "c1", "c2"]
    in_process = torch.stack([ds[i]["image"].as_tensor() for i in range(6)])
    assert_same_volume(images, in_process, value_range=100.0)
    assert torch.equal(torch.cat([b["image"].as_tensor() for b in loader]), images)  # workers again: same bytes


def test_monai_transforms_and_real_data_share_a_loader(g: volgan.VolumeGenerator) -> None:
    to_unit = ScaleIntensityd(keys="image", minv=0.0, maxv=1.0)
    synthetic = volgan.SyntheticDataset(g, length=3, seed=0, transform=to_unit)
    item = synthetic[0]
    assert float(item["image"].min()) == 0.0 and float(item["image"].max()) == 1.0
    real = [{"image": torch.rand(1, 16, 16, 16), "label": 1, "class_name": "c1"} for _ in range(3)]
    batch = next(iter(DataLoader(ConcatDataset([real, synthetic]), batch_size=6)))
    assert batch["image"].shape == (6, 1, 16, 16, 16) and batch["label"].tolist() == [1, 1, 1, 0, 1, 2]


def test_pickles_for_spawned_workers(g: volgan.VolumeGenerator) -> None:
    ds = volgan.SyntheticDataset(g, length=3, seed=1)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2]["image"].as_tensor(), ds[2]["image"].as_tensor())


def test_bad_arguments(g: volgan.VolumeGenerator) -> None:
    with pytest.raises(VolganError, match="length must be an integer >= 0, got -1"):
        volgan.SyntheticDataset(g, length=-1)
    with pytest.raises(VolganError, match=r"classes is empty; pick from \['c0', 'c1', 'c2'\]"):
        volgan.SyntheticDataset(g, classes=[])
    with pytest.raises(VolganError, match="classes must be a list"):
        volgan.SyntheticDataset(g, classes="c0")
    with pytest.raises(VolganError, match="unknown class 'c7'"):
        volgan.SyntheticDataset(g, classes=["c7"])
    with pytest.raises(IndexError, match="item 3 out of range for a SyntheticDataset of length 3"):
        volgan.SyntheticDataset(g, length=3)[3]


def test_holds_its_own_copy_of_the_generator(run: Path) -> None:
    g = volgan.load(run)
    ds = volgan.SyntheticDataset(g, length=2, seed=0)
    before = ds[1]["image"].as_tensor()
    with torch.no_grad():
        for p in g.module.parameters():
            p.zero_()
    assert torch.equal(ds[1]["image"].as_tensor(), before)  # changing (or moving) g later leaves the dataset alone


def test_example_script_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/synthetic_training.py end to end, on a tiny phantom-class run and a handful of steps."""
    import runpy

    from volgan.data.dataset import VolumeSet
    from volgan.data.phantom import CLASS_NAMES, make_phantom_set

    volumes, labels = make_phantom_set(2, 16, seed=0)
    data = VolumeSet.from_arrays(volumes, labels, list(CLASS_NAMES), spacing=16.0, intensity_range=(0.0, 1000.0))
    Trainer(tiny_config(tmp_path / "run", train={"steps": 1, "batch_size": 3, "wgan_gp": {"n_critic": 1}}), data).fit()
    script = Path(__file__).resolve().parents[2] / "examples" / "synthetic_training.py"
    args = ["--checkpoint", str(tmp_path / "run"), "--real-per-class", "1", "--synthetic", "6", "--steps", "2"]
    args += ["--test-per-class", "2", "--seeds", "1", "--reference-per-class", "1"]
    monkeypatch.setattr("sys.argv", [str(script), *args])
    runpy.run_path(str(script), run_name="__main__")
    table = capsys.readouterr().out
    assert "| real only | 3 |" in table and "| real + synthetic | 3 + 6 |" in table and "| reference" in table
