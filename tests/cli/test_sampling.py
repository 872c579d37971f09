import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import assert_same_volume, tiny_config, tiny_data
from volgan.errors import VolganError
from volgan.sampling import class_index, generate, latent_for, load_generator, write_samples
from volgan.training import Trainer

pytestmark = pytest.mark.numerics  # results depend on the CPU kernels: rerun limited to AVX2


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("sampling") / "run"
    Trainer(tiny_config(run_dir, train={"steps": 2, "batch_size": 3, "wgan_gp": {"n_critic": 1}}), tiny_data()).fit()
    return run_dir


def test_latent_depends_only_on_seed_and_index() -> None:
    assert torch.equal(latent_for(3, 7, 16), latent_for(3, 7, 16))
    assert not torch.equal(latent_for(3, 7, 16), latent_for(3, 8, 16))
    assert not torch.equal(latent_for(3, 7, 16), latent_for(4, 7, 16))


def test_volume_i_does_not_depend_on_batch_size_or_start(run: Path) -> None:
    loaded = load_generator(run)
    labels = torch.tensor([0, 1, 1, 0, 1])
    one_by_one = generate(loaded.generator, labels, seed=11, batch_size=1)
    batched = generate(loaded.generator, labels, seed=11, batch_size=4)
    assert_same_volume(one_by_one, batched)  # float rounding only: another batch is another summation order
    tail = generate(loaded.generator, labels[3:], seed=11, start=3, batch_size=2)
    assert_same_volume(tail, batched[3:])
    assert torch.equal(tail, generate(loaded.generator, labels[3:], seed=11, start=3, batch_size=2))  # same computation
    assert not torch.allclose(batched[0], batched[3])  # different latents, same class


def test_written_files_carry_affine_range_and_sidecar(tmp_path: Path, run: Path) -> None:
    loaded = load_generator(run, ema=False)
    vols = generate(loaded.generator, torch.tensor([1, 1]), seed=5).numpy()
    paths = write_samples(loaded, vols, [1, 1], [0, 1], 5, tmp_path, "nii.gz")
    assert [p.parent for p in paths] == [tmp_path / "c1"] * 2  # one folder per class, as training data
    img = nib.load(paths[0])
    assert img.shape == (16, 16, 16)
    np.testing.assert_allclose(np.diag(img.affine)[:3], [2.0, 2.0, 2.0])  # the training grid's spacing
    data = img.get_fdata()
    assert data.min() >= 0.0 and data.max() <= 100.0  # back in the data's intensity range (0..100)
    np.testing.assert_allclose(data, (vols[0] + 1) / 2 * 100.0, atol=1e-3)
    meta = json.loads(paths[0].with_name(paths[0].name.replace(".nii.gz", ".json")).read_text())
    assert meta["class_name"] == "c1" and meta["seed"] == 5 and meta["checkpoint_step"] == 2 and meta["ema"] is False
    npy = write_samples(loaded, vols, [1, 1], [0, 1], 5, tmp_path / "npy", "npy")
    assert np.load(npy[1]).shape == (16, 16, 16)


def test_class_by_name_or_index(run: Path) -> None:
    loaded = load_generator(run)
    assert class_index(loaded, "c1") == 1 and class_index(loaded, "0") == 0
    with pytest.raises(VolganError, match=r"unknown class 'c7'; this model knows \['c0', 'c1'\]"):
        class_index(loaded, "c7")


def test_ema_and_raw_generators_differ(run: Path) -> None:
    ema, raw = load_generator(run, ema=True), load_generator(run, ema=False)
    labels = torch.tensor([0])
    assert not torch.equal(generate(ema.generator, labels, 0), generate(raw.generator, labels, 0))


def test_another_models_volumes_are_never_replaced_silently(
    tmp_path: Path, run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`volgan sample` of a second model into the first one's --out stops, naming both; the same
    model's command run again (finishing an interrupted set) goes on; --overwrite replaces."""
    from volgan.cli import main

    other = tmp_path / "other"
    Trainer(tiny_config(other, train={"steps": 3, "batch_size": 3, "wgan_gp": {"n_critic": 1}}), tiny_data()).fit()
    out = tmp_path / "samples"
    args = ["sample", "--n", "2", "--seed", "4", "--out", str(out), "--format", "npy"]
    assert main([*args, "--checkpoint", str(run)]) == 0
    files = sorted(out.rglob("*.*"))
    before = {f: f.read_bytes() for f in files}
    assert len(files) == 8  # 2 classes x 2 volumes, each with its sidecar
    assert main([*args, "--checkpoint", str(run)]) == 0  # the same model again: fine
    assert main([*args, "--checkpoint", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err, err
    assert re.search(
        r"already holds volumes of another model \(.*run.*, step 2\); these come from .*other.*, step 3", err
    )
    assert {f: f.read_bytes() for f in sorted(out.rglob("*.*"))} == before  # nothing replaced
    assert main([*args, "--checkpoint", str(other), "--overwrite"]) == 0
    steps = {json.loads(f.read_text())["checkpoint_step"] for f in out.rglob("*.json")}
    assert steps == {3}
