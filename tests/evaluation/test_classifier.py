import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from volgan.data.phantom import CLASS_NAMES, make_phantom_set
from volgan.errors import CheckpointError
from volgan.evaluation.classifier import (
    ClassifierReport,
    VolumeClassifier,
    accuracy,
    augment_batch,
    balanced_accuracy,
    extract_features,
    load_classifier,
    load_feature_network,
    per_class_accuracy,
    predict,
    save_classifier,
    stratified_split,
    train_classifier,
)

# torch.jit is deprecated in recent PyTorch but is still the format users export pretrained networks in.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

META = {"class_names": list(CLASS_NAMES), "size": 16, "intensity": "[-1, 1]"}
# Settings that reach > 0.9 held-out accuracy on 24 phantoms per class at 16³ in ~1-2 s on one core.
FAST: dict[str, Any] = {"epochs": 40, "batch_size": 8, "lr": 2e-3}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Training is a few ms per step at 16³; a second thread only adds contention with other jobs.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def phantoms() -> tuple[np.ndarray, np.ndarray]:
    return make_phantom_set(24, 16, seed=0)


@pytest.fixture(scope="module")
def fresh_phantoms() -> tuple[np.ndarray, np.ndarray]:
    """Phantoms from another seed: never seen in training or model selection."""
    return make_phantom_set(20, 16, seed=1)


@pytest.fixture(scope="module")
def trained(phantoms: tuple[np.ndarray, np.ndarray]) -> tuple[VolumeClassifier, ClassifierReport]:
    return train_classifier(*phantoms, 3, **FAST, seed=0)


@pytest.mark.parametrize(
    ("size", "num_classes", "width", "feature_dim"),
    [(8, 2, 4, 8), (16, 3, 4, 16), (24, 3, 4, 16), (32, 5, 2, 12), (13, 2, 4, 8)],
)
def test_output_shapes(size: int, num_classes: int, width: int, feature_dim: int) -> None:
    model = VolumeClassifier(size, num_classes, width=width, feature_dim=feature_dim)
    x = torch.rand(3, 1, size, size, size) * 2 - 1
    assert model.features(x).shape == (3, feature_dim)
    assert model(x).shape == (3, num_classes)
    # Channels double per stage and stop at 8 * width; the last stage sees a 4³-7³ grid.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert max(c.out_channels for c in convs) <= 8 * width
    h = model.stages(x)
    assert 4 <= h.shape[-1] <= 7


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size must be >= 8, got 6"):
        VolumeClassifier(6, 3)
    with pytest.raises(ValueError, match="num_classes >= 2, got 1"):
        VolumeClassifier(16, 1)
    with pytest.raises(ValueError, match=r"expected volumes of shape \(B, 1, S, S, S\)"):
        VolumeClassifier(16, 2, width=2).features(torch.zeros(2, 16, 16, 16))


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat([0, 1, 2], [10, 20, 5])
    train, val = stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[val]).tolist() == [2, 4, 1]
    assert sorted(np.r_[train, val].tolist()) == list(range(35))
    again = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])


def test_augment_batch_flips_and_shifts() -> None:
    x = torch.arange(16 * 8**3, dtype=torch.float32).view(16, 1, 8, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(0), max_shift=0)
    # Without shifts every sample is its input flipped along some subset of the three spatial axes.
    subsets = [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]
    used = [next(d for d in subsets if torch.equal(a, b.flip(d) if d else b)) for a, b in zip(out, x, strict=True)]
    assert len(set(used)) > 1

    # A bright voxel at the centre of a 9³ grid (fixed under flips) moves by at most max_shift per axis.
    delta = torch.full((16, 1, 9, 9, 9), -1.0)
    delta[:, :, 4, 4, 4] = 1.0
    out = augment_batch(delta, torch.Generator().manual_seed(0), max_shift=1)
    positions = {tuple(np.argwhere(v[0].numpy() == 1.0)[0]) for v in out}
    assert all(max(abs(p - 4) for p in pos) <= 1 for pos in positions) and len(positions) > 1
    assert out.shape == delta.shape and set(out.unique().tolist()) == {-1.0, 1.0}


def test_trains_on_phantoms_well_above_chance(
    trained: tuple[VolumeClassifier, ClassifierReport], fresh_phantoms: tuple[np.ndarray, np.ndarray]
) -> None:
    model, report = trained
    assert report.n_train == 57 and report.n_val == 15  # 5 of each class's 24 held out
    assert report.epochs_run == FAST["epochs"]
    assert report.val_accuracy is not None and report.val_accuracy > 0.8
    assert set(report.per_class_val_accuracy) == {0, 1, 2}
    assert accuracy(model, *fresh_phantoms) > 0.8
    assert min(per_class_accuracy(model, *fresh_phantoms).values()) > 0.6


def test_training_is_deterministic_under_a_seed(phantoms: tuple[np.ndarray, np.ndarray]) -> None:
    volumes, labels = phantoms[0][::3], phantoms[1][::3]
    runs = [train_classifier(volumes, labels, 3, epochs=3, batch_size=4, width=4, seed=s)[0] for s in (7, 7, 8)]
    a, b, c = (m.state_dict() for m in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_imbalanced_labels_do_not_collapse_to_the_majority(fresh_phantoms: tuple[np.ndarray, np.ndarray]) -> None:
    volumes, labels = make_phantom_set(30, 16, seed=0)
    keep = np.r_[0:30, 30:40, 60:90]  # 30 healthy, 10 lesion, 30 atrophy
    model, report = train_classifier(volumes[keep], labels[keep], 3, **FAST, val_fraction=0.0, seed=0)
    assert report.val_accuracy is None and report.n_val == 0
    # Unweighted cross-entropy scores 0.0 on the lesion class here with every seed tried.
    assert per_class_accuracy(model, *fresh_phantoms)[1] > 0.5


def test_balanced_accuracy_gives_a_constant_guess_chance_however_imbalanced() -> None:
    labels = np.array([0] * 78 + [1] * 22)
    majority = np.zeros_like(labels)
    assert float((majority == labels).mean()) == pytest.approx(0.78)  # what plain accuracy would keep
    assert balanced_accuracy(majority, labels) == pytest.approx(0.5)
    assert balanced_accuracy(labels, labels) == 1.0
    half = labels.copy()
    half[78:89] = 0  # 11 of the 22 minority volumes called majority
    assert balanced_accuracy(half, labels) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="at least one label"):
        balanced_accuracy(np.array([], dtype=np.int64), np.array([], dtype=np.int64))


def test_kept_epoch_is_the_best_balanced_one_not_the_best_plain_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # The held-out scores are scripted: epoch 1 calls all 10 held-out volumes the majority class
    # (plain 0.9, balanced 0.5), epoch 2 gets the minority one and 7 of the 9 others (plain 0.8,
    # balanced 0.89). Selecting by plain accuracy would keep epoch 1's weights.
    import volgan.evaluation.classifier as clf

    volumes, labels = make_phantom_set(10, 16, seed=0)
    held_out = (volumes[np.r_[0:9, 10]], labels[np.r_[0:9, 10]])
    scripted = [[0] * 10, [0] * 7 + [1, 1, 1]]  # predictions for held-out labels [0] * 9 + [1]
    real_run = clf._run
    trained: list[nn.Module] = []  # the model being trained, as training's held-out pass hands it over
    snapshots: list[dict[str, torch.Tensor]] = []  # its weights after each epoch
    seen: list[dict[str, Any]] = []  # each epoch's stats

    def run(fn: Any, module: Any, vols: np.ndarray, batch_size: int, device: Any) -> torch.Tensor:
        if len(vols) == 10 and len(snapshots) < len(scripted):  # epoch len(snapshots) + 1's held-out pass
            trained[:] = [module]
            return torch.nn.functional.one_hot(torch.tensor(scripted[len(snapshots)]), 2).float()
        return real_run(fn, module, vols, batch_size, device)

    def after_epoch(stats: dict[str, Any]) -> None:
        seen.append(stats)
        snapshots.append({k: v.clone() for k, v in trained[0].state_dict().items()})

    monkeypatch.setattr(clf, "_run", run)
    model, _ = train_classifier(
        volumes[10:], labels[10:], 3, epochs=2, batch_size=8, width=4, val_set=held_out, log_every_epoch=after_epoch
    )
    assert [round(s["val_accuracy"], 3) for s in seen] == [0.9, 0.8]
    assert [round(s["val_balanced_accuracy"], 3) for s in seen] == [0.5, 0.889]
    kept = model.state_dict()
    assert all(torch.equal(kept[k], snapshots[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], snapshots[0][k]) for k in kept)


def test_a_judge_at_chance_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    # Identical volumes in both classes: every prediction is the same class, whatever training does.
    volumes = np.full((24, 16, 16, 16), -1.0, dtype=np.float32)
    labels = np.array([0] * 18 + [1] * 6)
    with caplog.at_level("WARNING", logger="volgan"):
        _, report = train_classifier(volumes, labels, 2, epochs=2, batch_size=8, width=4, val_fraction=0.25, seed=0)
    assert report.val_balanced_accuracy == pytest.approx(0.5)
    assert "no better than chance" in caplog.text


def test_val_set_callback_and_time_limit(phantoms: tuple[np.ndarray, np.ndarray]) -> None:
    volumes, labels = phantoms
    seen: list[dict[str, object]] = []
    _, report = train_classifier(
        volumes[::2],
        labels[::2],
        3,
        epochs=5,
        width=4,
        val_set=(volumes[1::4], labels[1::4]),
        log_every_epoch=seen.append,
    )
    assert report.n_train == 36 and report.n_val == 18
    assert [s["epoch"] for s in seen] == [1, 2, 3, 4, 5]
    assert {"train_loss", "val_accuracy", "val_loss", "seconds"} <= set(seen[0])
    _, report = train_classifier(volumes, labels, 3, epochs=5, width=4, max_minutes=0.0)
    assert report.epochs_run == 1


def test_training_rejects_bad_input(phantoms: tuple[np.ndarray, np.ndarray]) -> None:
    volumes, labels = phantoms
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1, got 0\.\.2"):
        train_classifier(volumes, labels, 2)
    with pytest.raises(ValueError, match=r"scaled to \[-1, 1\], got \[0, 255\]"):
        train_classifier(np.full_like(volumes, 255.0) * (labels[:, None, None, None] > 0), labels, 3)
    with pytest.raises(ValueError, match=r"val_fraction must lie in \[0, 1\), got 1\.0"):
        train_classifier(volumes, labels, 3, val_fraction=1.0)


def test_save_load_round_trip_gives_identical_predictions(
    trained: tuple[VolumeClassifier, ClassifierReport], fresh_phantoms: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model, _ = trained
    path = save_classifier(tmp_path / "clf", model, {**META, "val_accuracy": 0.9})
    assert path == tmp_path / "clf" / "classifier.pt"
    readable = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert readable["meta"]["class_names"] == list(CLASS_NAMES) and readable["config"] == model.config
    for where in (tmp_path / "clf", path):
        loaded, meta = load_classifier(where)
        assert meta == {**META, "val_accuracy": 0.9}
        assert not loaded.training
        assert np.array_equal(predict(loaded, fresh_phantoms[0]), predict(model, fresh_phantoms[0]))
        assert np.array_equal(extract_features(loaded, fresh_phantoms[0]), extract_features(model, fresh_phantoms[0]))


def test_save_rejects_incomplete_meta(tmp_path: Path) -> None:
    model = VolumeClassifier(16, 3, width=2, feature_dim=4)
    with pytest.raises(ValueError, match=r"missing \['intensity'\]"):
        save_classifier(tmp_path, model, {"class_names": ["a", "b", "c"], "size": 16})
    with pytest.raises(ValueError, match="meta size 32 does not match the model's size 16"):
        save_classifier(tmp_path, model, {**META, "size": 32})
    assert not (tmp_path / "classifier.pt").exists()


def test_load_classifier_refuses_damaged_foreign_and_misfit_files(tmp_path: Path) -> None:
    small = VolumeClassifier(16, 3, width=2, feature_dim=4)
    path = save_classifier(tmp_path / "ok", small, META)
    with pytest.raises(CheckpointError, match=r"nothing: classifier file not found"):
        load_classifier(tmp_path / "nothing")

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: damaged or truncated classifier file"):
        load_classifier(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: damaged or truncated"):
        load_classifier(garbage)

    state = torch.load(path, weights_only=True)
    misfit = tmp_path / "misfit.pt"
    torch.save({**state, "config": {**state["config"], "width": 4}}, misfit)
    with pytest.raises(CheckpointError, match=r"misfit\.pt: weights do not fit .*of another shape"):
        load_classifier(misfit)
    torch.save({**state, "config": {**state["config"], "size": 32}}, misfit)  # one more stage
    with pytest.raises(CheckpointError, match=r"misfit\.pt: weights do not fit .*missing \(e\.g\. stages\.6"):
        load_classifier(misfit)
    torch.save({**state, "meta": {"class_names": ["a"]}}, misfit)
    with pytest.raises(CheckpointError, match=r"misfit\.pt: classifier meta must hold"):
        load_classifier(misfit)
    torch.save({**state, "format": "volgan-checkpoint"}, misfit)
    with pytest.raises(CheckpointError, match=r"misfit\.pt: not a volgan classifier file"):
        load_classifier(misfit)
    torch.save({**state, "meta": {**META, "extra": torch.nn.Identity()}}, misfit)  # a pickled module
    with pytest.raises(
        CheckpointError,
        match=r"misfit\.pt: refused to load: not a plain weights file "
        r"\(it asks to import torch\.nn.*Identity, which could run code\)$",
    ):
        load_classifier(misfit)


class _TinyFeatures(nn.Module):
    """(B, 1, S, S, S) -> (B, 4, S/2, S/2, S/2): a stand-in for a pretrained feature network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def test_extract_features_from_a_classifier_a_torchscript_module_and_a_callable(tmp_path: Path) -> None:
    volumes = np.random.default_rng(0).uniform(-1, 1, (5, 16, 16, 16)).astype(np.float32)
    x = torch.from_numpy(volumes).unsqueeze(1)
    model = VolumeClassifier(16, 3, width=2, feature_dim=6).train()
    feats = extract_features(model, volumes, batch_size=2)
    assert feats.shape == (5, 6) and feats.dtype == np.float32
    assert model.training  # the caller's mode is restored
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(feats), model.eval().features(x), rtol=1e-5, atol=1e-6)

    torch.manual_seed(0)
    torch.jit.script(_TinyFeatures()).save(str(tmp_path / "net.pt"))
    net = load_feature_network(tmp_path / "net.pt")
    feats = extract_features(net, volumes[:, None], batch_size=3)  # (N, 1, S, S, S) input works too
    assert feats.shape == (5, 4)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(feats), net(x).mean(dim=(2, 3, 4)), rtol=1e-5, atol=1e-6)

    feats = extract_features(lambda t: t.flatten(1)[:, :7], volumes)
    assert np.array_equal(feats, volumes.reshape(5, -1)[:, :7])
    with pytest.raises(ValueError, match=r"must map \(B, 1, S, S, S\) to \(B, F\).*got \(5,\)"):
        extract_features(lambda t: t.flatten(1).mean(1), volumes, batch_size=8)


def test_load_feature_network_refuses_state_dicts_and_missing_files(tmp_path: Path) -> None:
    plain = tmp_path / "medicalnet.pth"
    torch.save(_TinyFeatures().state_dict(), plain)
    with pytest.raises(CheckpointError, match=r"medicalnet\.pth: a torch\.save file .*torch\.jit\.script\(net\)"):
        load_feature_network(plain)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a TorchScript archive or damaged"):
        load_feature_network(junk)
    with pytest.raises(CheckpointError, match=r"absent\.pt: feature network file not found"):
        load_feature_network(tmp_path / "absent.pt")
