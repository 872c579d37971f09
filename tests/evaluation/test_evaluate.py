"""`volgan train-classifier` and `volgan evaluate` end to end on the built-in phantom (16³)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_data
from volgan.cli import main
from volgan.data.phantom import CLASS_NAMES, make_phantom_set
from volgan.errors import VolganError
from volgan.evaluation.evaluate import Labelled, align_classes

SIZE = 16


def write_set(root: Path, volumes: np.ndarray, labels: np.ndarray, names: tuple[str, ...] = CLASS_NAMES) -> Path:
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (v, y) in enumerate(zip(volumes, labels, strict=True)):
        np.save(root / names[y] / f"v{i:03d}.npy", v)
    return root


@pytest.fixture(scope="module")
def phantom_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real train/test phantoms, a trained judge, a faithful synthetic set (fresh phantoms) and a
    collapsed one (one phantom per class, repeated)."""
    root = tmp_path_factory.mktemp("eval")
    mp = pytest.MonkeyPatch()
    mp.setenv("VOLGAN_CACHE_DIR", str(root / "cache"))
    train = write_set(root / "train", *make_phantom_set(24, SIZE, seed=0))
    test = write_set(root / "test", *make_phantom_set(16, SIZE, seed=1))
    good = write_set(root / "good", *make_phantom_set(16, SIZE, seed=2))
    vols, labels = make_phantom_set(1, SIZE, seed=3)
    write_set(root / "collapsed", np.repeat(vols, 16, axis=0), np.repeat(labels, 16))
    vols, labels = make_phantom_set(16, SIZE, seed=2)  # the faithful set with isolated bright voxels
    dots = np.random.default_rng(4).random(vols.shape) < 0.01
    write_set(root / "speckled", np.where(dots, np.float32(1), vols), labels)
    clf = root / "clf"
    assert main(["train-classifier", "--data", str(train), "--out", str(clf), "--size", str(SIZE), "--epochs", "30",
                 "--batch-size", "8", "--lr", "2e-3", "--device", "cpu"]) == 0  # fmt: skip
    yield {
        "root": root,
        "train": train,
        "test": test,
        "good": good,
        "collapsed": root / "collapsed",
        "speckled": root / "speckled",
        "clf": clf,
    }
    mp.undo()


def evaluate(setup: dict[str, Path], samples: str, out: str, *extra: str) -> dict:
    args = ["evaluate", "--samples", str(setup[samples]), "--real", str(setup["test"]), "--classifier",
            str(setup["clf"]), "--out", str(setup["root"] / out), "--draws", "3", "--device", "cpu",
            *extra]  # fmt: skip
    assert main(args) == 0
    return json.loads((setup["root"] / out / "metrics.json").read_text())


def test_classifier_is_saved_with_its_held_out_accuracy(phantom_setup: dict[str, Path]) -> None:
    meta = json.loads((phantom_setup["clf"] / "classifier.json").read_text())["meta"]
    assert meta["class_names"] == sorted(CLASS_NAMES) and meta["size"] == SIZE
    assert meta["held_out_accuracy"] > 0.6  # chance is 1/3 (15 held-out volumes)


@pytest.fixture(scope="module")
def reports(phantom_setup: dict[str, Path]) -> dict[str, dict]:
    """metrics.json of the faithful set (with TSTR) and of the collapsed one, each evaluated once."""
    return {
        "good": evaluate(phantom_setup, "good", "report_good", "--tstr-epochs", "20"),
        "collapsed": evaluate(phantom_setup, "collapsed", "report_collapsed", "--no-tstr"),
    }


# The bounds below hold for any valid judge, not just the one this CPU trains: measured with judges
# trained with seeds 0-4 on an AVX2-limited run and seed 0 on AVX-512 (2026-11-29). FD with 24 volumes
# per half in a 128-d space is noisy: the faithful set scored 1.5-6.1x the single real-vs-real split
# (so no bound against that one number), but always 0.13-0.37x the collapsed set's FD, which was
# 8.6-22x the reference. Recall: faithful 0.92-1.0, collapsed 0.0. Collapsed coverage 0.67-0.79.


@pytest.mark.numerics
def test_faithful_set_scores_like_real_and_tstr_beats_chance(
    phantom_setup: dict[str, Path], reports: dict[str, dict]
) -> None:
    m = reports["good"]
    syn, ref = m["distribution"]["overall"]["synthetic"], m["distribution"]["overall"]["reference"]
    collapsed = reports["collapsed"]["distribution"]["overall"]["synthetic"]
    assert syn["fd"] < 0.6 * collapsed["fd"], (syn["fd"], collapsed["fd"])
    assert syn["recall"] > 0.8 and syn["coverage"] > 0.8 and ref["recall"] > 0.8
    acc = m["conditional_accuracy"]["overall"]
    assert acc["synthetic"] > 0.6 and abs(acc["synthetic"] - acc["real"]) < 0.2  # the judge is ~80-100 % accurate
    use = m["usefulness"]
    assert use["tstr"]["accuracy"] > 0.6 and use["trtr"]["accuracy"] > 0.6  # chance: 1/3
    assert "real_plus_synthetic" in use
    report = (phantom_setup["root"] / "report_good" / "report.md").read_text()
    assert "reference (real B vs real A)" in report and "TSTR" in report
    for png in ("slices.png", "intensity_histograms.png", "features_pca.png", "metrics_by_class.png"):
        assert (phantom_setup["root"] / "report_good" / png).stat().st_size > 5000


@pytest.mark.numerics
def test_collapsed_set_is_flagged_by_recall_coverage_and_ms_ssim(reports: dict[str, dict]) -> None:
    m = reports["collapsed"]
    syn, ref = m["distribution"]["overall"]["synthetic"], m["distribution"]["overall"]["reference"]
    assert syn["recall"] < 0.5 * ref["recall"]
    assert syn["coverage"] < 0.9 * ref["coverage"]  # 3 distinct volumes still touch many 5-NN balls
    assert syn["fd"] > 3 * ref["fd"]
    div = m["diversity_ms_ssim"]["overall"]
    assert div["synthetic"] > 0.99 > div["real"]
    assert "usefulness" not in m


def test_empty_sample_folder_is_one_clear_error(
    phantom_setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty" / "healthy").mkdir(parents=True)
    args = ["evaluate", "--samples", str(tmp_path / "empty"), "--real", str(phantom_setup["test"]),
            "--classifier", str(phantom_setup["clf"]), "--out", str(tmp_path / "r"), "--no-tstr"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "class folder 'healthy' is empty" in err
    assert not (tmp_path / "r").exists()


def test_class_absent_from_the_real_data_is_one_clear_error(
    phantom_setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vols, labels = make_phantom_set(3, SIZE, seed=5)
    samples = write_set(tmp_path / "s", vols, labels, ("healthy", "lesion", "tumour"))
    args = ["evaluate", "--samples", str(samples), "--real", str(phantom_setup["test"]),
            "--classifier", str(phantom_setup["clf"]), "--out", str(tmp_path / "r"), "--no-tstr"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "class 'tumour' is absent from the real data" in err


def test_generator_grid_must_match_the_classifier(
    phantom_setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import tiny_config
    from volgan.training import Trainer

    data = tiny_data(n=6, size=8, classes=3)
    Trainer(tiny_config(tmp_path / "run", data={"size": 8}, train={"steps": 1}), data).fit()
    args = ["evaluate", "--checkpoint", str(tmp_path / "run"), "--real", str(phantom_setup["test"]),
            "--classifier", str(phantom_setup["clf"]), "--out", str(tmp_path / "r"), "--no-tstr"]  # fmt: skip
    assert main(args) == 2
    assert "the generator makes 8³ volumes, the classifier takes 16³" in capsys.readouterr().err


def test_align_classes_maps_by_name() -> None:
    real = Labelled(np.zeros((2, 8, 8, 8), np.float32), np.array([0, 1]), ["a", "b"], "real")
    fake = Labelled(np.zeros((3, 8, 8, 8), np.float32), np.array([0, 0, 1]), ["b", "a"], "fake")
    assert align_classes(real, fake).labels.tolist() == [1, 1, 0]
    with pytest.raises(VolganError, match="no synthetic volumes"):
        align_classes(real, Labelled(np.zeros((0, 8, 8, 8), np.float32), np.zeros(0, int), ["a"], "fake"))


def test_generated_volumes_get_the_intensity_step_of_loaded_files() -> None:
    from volgan.config import DataConfig
    from volgan.evaluation.labelled import as_loaded

    vols, _ = make_phantom_set(1, SIZE, seed=0)
    cfg = DataConfig(size=SIZE)
    scaled = as_loaded(vols * 0.5 - 0.2, cfg)  # percentile scaling ignores a linear change of units
    np.testing.assert_allclose(scaled, as_loaded(vols, cfg), atol=1e-5)
    assert scaled.min() == -1.0 and scaled.max() == 1.0
    occupancy = as_loaded(np.array([[[[-0.9, -0.1], [0.1, 0.9]]]], np.float32), DataConfig(size=8, binary=True))
    assert occupancy.tolist() == [[[[-1.0, -1.0], [1.0, 1.0]]]]


def test_speckle_holes_and_the_pca_space_are_reported_beside_real(
    phantom_setup: dict[str, Path], reports: dict[str, dict]
) -> None:
    train = str(phantom_setup["train"])
    st = evaluate(phantom_setup, "speckled", "report_speckled", "--no-tstr", "--real-train", train)
    good = reports["good"]["structure"]
    assert good["pca"] is not None  # without --real-train the judge's training data is the real training data
    for name in CLASS_NAMES:
        clean, spotted, real = (
            good["by_class"][name]["synthetic"],
            st["structure"]["by_class"][name]["synthetic"],
            (good["by_class"][name]["real"]),
        )
        assert spotted["components"] > clean["components"] + 5 and spotted["speckle_share"] > clean["speckle_share"]
        assert abs(clean["components"] - real["components"]) < 0.5 * spotted["components"]
        assert set(real) == {"components", "speckle_share", "holes", "tunnels", "cavities"}
    pca = st["structure"]["pca"]
    assert pca["pca_fd_ref"] > 0 and pca["pca_fd"] > 0
    report = (phantom_setup["root"] / "report_speckled" / "report.md").read_text()
    assert "pieces per volume" in report and "PCA space" in report
