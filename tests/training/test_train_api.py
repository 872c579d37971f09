"""volgan.train (issue 16, item 2): train from Python on a folder, a VolumeSet or a torch Dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import volgan
from conftest import tiny_config, tiny_data, write_class_folders
from volgan.config import DataConfig
from volgan.data.from_dataset import volume_set_from_dataset
from volgan.data.preprocess import intensity_bounds, scale_to_unit
from volgan.errors import ConfigError, DataError, VolganError

TINY: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "model": {"latent_dim": 8, "embed_dim": 4, "ngf": 4, "ndf": 4},
    "train": {"steps": 1, "batch_size": 3, "wgan_gp": {"n_critic": 1}},
    "log": {"every": 1, "image_every": 100, "checkpoint_every": 100, "progress_bar": False},
}


class Pairs(torch.utils.data.Dataset[Any]):
    """(volume (1, S, S, S) tensor, label) tuples, or MONAI dicts with ``monai=True``."""

    def __init__(self, volumes: np.ndarray, labels: np.ndarray, monai: bool = False) -> None:
        self.volumes, self.labels, self.monai = volumes, labels, monai

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> Any:
        image = torch.from_numpy(self.volumes[i])[None]
        if self.monai:
            return {"image": image, "label": torch.tensor(int(self.labels[i]))}
        return image, int(self.labels[i])


def test_train_on_a_volume_set_returns_the_run_and_its_generator(tmp_path: Path) -> None:
    data = tiny_data()
    result = volgan.train(TINY, data, run_dir=tmp_path / "run", train={"steps": 2})
    assert result.step == 2 and result.run_dir == tmp_path / "run"
    assert result.checkpoint is not None and result.checkpoint.exists()
    g = result.load()
    assert isinstance(g, volgan.VolumeGenerator)
    assert g.class_names == data.class_names and g.size == 16 and g.step == 2
    assert g.sample(2, cls="c1", seed=0).shape == (2, 1, 16, 16, 16)


def test_a_dataset_in_unit_range_is_the_same_set_as_its_arrays() -> None:
    data = tiny_data()
    for monai in (False, True):
        got = volume_set_from_dataset(Pairs(data.volumes, data.labels, monai), DataConfig(size=16))
        assert np.array_equal(got.volumes, data.volumes) and np.array_equal(got.labels, data.labels)
        assert got.class_names == ["0", "1"] and got.intensity_range == (-1.0, 1.0)
    named = volume_set_from_dataset(Pairs(data.volumes, data.labels), DataConfig(size=16), class_names=["a", "b"])
    assert named.class_names == ["a", "b"]


def test_a_dataset_in_other_units_is_scaled_as_the_folder_loader_scales() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(100, 20, size=(4, 16, 16, 16)).astype(np.float32)
    got = volume_set_from_dataset(Pairs(raw, np.array([3, 7, 3, 7])), DataConfig(size=16))
    lo, hi = intensity_bounds(raw[1], DataConfig().intensity_percentiles)
    np.testing.assert_array_equal(got.volumes[1], scale_to_unit(raw[1], lo, hi))
    assert got.class_names == ["3", "7"] and got.labels.tolist() == [0, 1, 0, 1]
    assert 40 < got.intensity_range[0] < 100 < got.intensity_range[1] < 160


def test_a_non_cubic_volume_is_put_on_the_grid() -> None:
    raw = np.tanh(np.random.default_rng(1).normal(size=(2, 20, 16, 12))).astype(np.float32)
    got = volume_set_from_dataset(Pairs(raw, np.array([0, 0])), DataConfig(size=16))
    assert got.volumes.shape == (2, 16, 16, 16) and got.class_names == ["0"]


def test_train_on_a_monai_style_dataset(tmp_path: Path) -> None:
    data = tiny_data(6)
    result = volgan.train(TINY, Pairs(data.volumes, data.labels, monai=True), run_dir=tmp_path / "run",
                          class_names=["healthy", "lesion"])  # fmt: skip
    assert result.load().class_names == ["healthy", "lesion"]


def test_train_on_a_folder_and_from_a_yaml_config(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{size: 16, cache_dir: {tmp_path / 'cache'}}}\n")  # the data section: here
    result = volgan.train(config, root, run_dir=tmp_path / "run", **TINY)
    assert result.step == 1 and result.load().class_names == ["0", "1"]


def test_refusals_are_one_clear_error(tmp_path: Path) -> None:
    data = tiny_data()
    with pytest.raises(VolganError, match=r"10 volumes of 16³ float32 needs 0.000164 GB, more than .*max_decoded_gb"):
        volume_set_from_dataset(Pairs(data.volumes, data.labels), DataConfig(size=16, max_decoded_gb=1e-4))
    with pytest.raises(ConfigError, match="no data: pass data="):
        volgan.train(TINY, run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"data.size is 32 but the volumes are 16³"):
        volgan.train(tiny_config(tmp_path / "b", data={"size": 32}), data)
    with pytest.raises(DataError, match="dataset item 0: label must be one integer class index"):
        volume_set_from_dataset([(data.volumes[0], 0.5)], DataConfig(size=16))
    with pytest.raises(DataError, match=r"labels run 0..1, but class_names has 1 names"):
        volume_set_from_dataset(Pairs(data.volumes, data.labels), DataConfig(size=16), class_names=["a"])
    with pytest.raises(VolganError, match=r"expected a folder, an \.npz file, a VolumeSet or a torch Dataset"):
        volgan.train(TINY, 3, run_dir=tmp_path / "c")
