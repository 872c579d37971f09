"""The memorisation audit: copies of training volumes are flagged, fresh phantoms are not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from volgan.cli import main
from volgan.data.phantom import CLASS_NAMES, make_phantom_set
from volgan.evaluation.audit import memorisation_audit, nearest
from volgan.evaluation.evaluate import Labelled

SIZE = 16
N = 24  # per class


def labelled(volumes: np.ndarray, labels: np.ndarray, source: str) -> Labelled:
    return Labelled(volumes.astype(np.float32), labels, list(CLASS_NAMES), source)


@pytest.fixture(scope="module")
def sets() -> dict[str, Labelled]:
    return {
        "train": labelled(*make_phantom_set(N, SIZE, seed=0), "train"),
        "heldout": labelled(*make_phantom_set(N, SIZE, seed=1), "heldout"),
        "honest": labelled(*make_phantom_set(N, SIZE, seed=2), "honest"),
    }


def copies(train: Labelled, noise: float, seed: int = 0) -> Labelled:
    """A 'generator' that returns training volumes with a little Gaussian noise."""
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(train.labels))
    vols = train.volumes[pick] + rng.normal(0, noise, train.volumes[pick].shape).astype(np.float32)
    return labelled(np.clip(vols, -1, 1), train.labels[pick], "copies")


def write_phantoms(root: Path, vols: np.ndarray, labels: np.ndarray) -> Path:
    """Phantoms as class folders of .npy files."""
    for i, (v, y) in enumerate(zip(vols, labels, strict=True)):
        (root / CLASS_NAMES[y]).mkdir(parents=True, exist_ok=True)
        np.save(root / CLASS_NAMES[y] / f"v{i:03d}.npy", v)
    return root


def test_nearest_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(7, 50)), rng.normal(size=(11, 50))
    d, i = nearest(q, r, chunk=3)
    full = np.linalg.norm(q[:, None] - r[None], axis=2)
    torch.testing.assert_close(torch.from_numpy(d), torch.from_numpy(full.min(1)), rtol=1e-9, atol=1e-9)
    assert (i == full.argmin(1)).all()


def test_near_copies_of_training_volumes_are_flagged(sets: dict[str, Labelled]) -> None:
    result = memorisation_audit(sets["train"], sets["heldout"], copies(sets["train"], noise=0.05))
    m = result.metrics
    assert m["flagged"] and m["verdict"].startswith("FLAGGED")
    overall = m["spaces"]["voxel"]["overall"]
    # RMS noise 0.05 is far below the distance between two different phantoms, so every copy is
    # closer than the closest held-out volume.
    assert overall["p1"]["share"] == 1.0 and overall["p1"]["p_value"] < 1e-10
    assert all(m["spaces"]["voxel"][name]["flagged"] for name in CLASS_NAMES)
    # the closest pair is a copy of the training volume it was made from
    pair = m["closest_pairs"][0]
    assert pair["distance"] < 0.06 and pair["heldout_share_closer"] == 0.0
    assert pair["synthetic_class"] == pair["train_class"]


def test_exact_copies_in_a_mostly_honest_set_are_flagged(sets: dict[str, Labelled]) -> None:
    """A quarter of the set copied verbatim: the share below p1 is ~25 %, far above the ~5 % bound."""
    honest, train = sets["honest"], sets["train"]
    vols = honest.volumes.copy()
    for k in range(len(CLASS_NAMES)):  # 6 of each class's 24 replaced by training volumes of that class
        vols[np.flatnonzero(honest.labels == k)[:6]] = train.volumes[np.flatnonzero(train.labels == k)[:6]]
    m = memorisation_audit(train, sets["heldout"], labelled(vols, honest.labels, "mixed")).metrics
    assert m["flagged"]
    assert m["spaces"]["voxel"]["overall"]["identical"] == 18
    assert m["spaces"]["voxel"]["overall"]["p1"]["share"] >= 0.25


def test_fresh_phantoms_are_not_flagged(sets: dict[str, Labelled]) -> None:
    m = memorisation_audit(sets["train"], sets["heldout"], sets["honest"]).metrics
    assert not m["flagged"], m["verdict"]
    overall = m["spaces"]["voxel"]["overall"]
    # an honest set's share below p5 is ~5 %; its 99 % bound with 72 held-out volumes is ~13 %
    assert overall["p5"]["share"] < overall["p5"]["expected_share_max"]
    assert overall["identical"] == 0 and m["heldout_identical_to_train"] == 0
    ratio = overall["median_synthetic"] / overall["median_heldout"]
    assert 0.8 < ratio < 1.25  # fresh phantoms sit as far from the training set as held-out ones


def test_feature_space_audit_uses_the_given_features(sets: dict[str, Labelled]) -> None:
    train, heldout, fake = sets["train"], sets["heldout"], copies(sets["train"], noise=0.05)
    proj = np.random.default_rng(0).normal(size=(SIZE**3, 8))

    def feats(x: Labelled) -> np.ndarray:
        return x.volumes.reshape(len(x.labels), -1) @ proj

    m = memorisation_audit(train, heldout, fake, (feats(train), feats(heldout), feats(fake)), "projection").metrics
    assert m["distance"]["features"] == "projection"
    assert m["spaces"]["features"]["overall"]["flagged"]


def test_evaluate_writes_the_audit_table_and_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLGAN_CACHE_DIR", str(tmp_path / "cache"))
    write = write_phantoms
    train_vols, train_labels = make_phantom_set(8, SIZE, seed=0)
    train = write(tmp_path / "train", train_vols, train_labels)
    test = write(tmp_path / "test", *make_phantom_set(8, SIZE, seed=1))
    fake = write(tmp_path / "fake", train_vols, train_labels)  # verbatim copies
    clf = tmp_path / "clf"
    assert main(["train-classifier", "--data", str(train), "--out", str(clf), "--size", str(SIZE), "--epochs", "1",
                 "--device", "cpu"]) == 0  # fmt: skip
    out = tmp_path / "eval"
    assert main(["evaluate", "--samples", str(fake), "--real", str(test), "--classifier", str(clf), "--real-train",
                 str(train), "--out", str(out), "--no-tstr", "--draws", "1", "--device", "cpu"]) == 0  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())["memorisation"]
    assert m["flagged"] and m["spaces"]["voxel"]["overall"]["identical"] == 24
    assert set(m["spaces"]) == {"voxel", "features"}
    report = (out / "report.md").read_text()
    assert "## Memorisation audit" in report and "FLAGGED" in report
    assert (out / "memorisation_pairs.png").stat().st_size > 0 and (out / "memorisation_distances.png").is_file()
    out2 = tmp_path / "eval_no_audit"
    assert main(["evaluate", "--samples", str(fake), "--real", str(test), "--classifier", str(clf), "--out", str(out2),
                 "--no-tstr", "--no-audit", "--draws", "1", "--device", "cpu"]) == 0  # fmt: skip
    assert "memorisation" not in json.loads((out2 / "metrics.json").read_text())
