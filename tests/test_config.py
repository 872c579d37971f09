import importlib.util
import logging
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic.fields import FieldInfo

from volgan.config import Config, build_config, default_yaml, load_config, parse_override, reference_rows
from volgan.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_documented_default_yaml_equals_builtin_defaults() -> None:
    assert load_config(REPO / "config" / "default.yaml") == Config()


def test_every_key_of_default_yaml_has_a_comment() -> None:
    for line in (REPO / "config" / "default.yaml").read_text().splitlines():
        if ":" in line and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"undocumented key: {line.strip()}"


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["train.batch_size=8", "train.betas=[0.5, 0.99]", "data.root=/x"])
    assert cfg.train.batch_size == 8 and cfg.train.betas == (0.5, 0.99) and cfg.data.root == "/x"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("train:\n  n_critc: 5\n", r"c\.yaml: unknown key 'train\.n_critc'"),
        ("bogus: 1\n", r"unknown key 'bogus'"),
        ("train:\n  wgan_gp:\n    n_critic: 0\n", r"train\.wgan_gp\.n_critic: .*greater than or equal to 1, got 0"),
        ("train:\n  batch_size: four\n", r"train\.batch_size: .*integer.*got 'four'"),
        ("data:\n  size: 50\n", r"data\.size 50 cannot be built"),
        ("data:\n  size: 4\n", r"data\.size: .*greater than or equal to 8"),
        ("model:\n  num_classes: 1\n", r"needs >= 2 classes"),
        ("model:\n  mapping_layers: 2\n  family: dcgan\n", r"model\.mapping_layers: only for family wgan_gp"),
        ("data:\n  orientation: RAX\n", r"data\.orientation: must be three axis codes"),
        ("data:\n  intensity_percentiles: [99, 1]\n", r"low < high"),
        ("data:\n  resample: spacing\n", r"needs data\.spacing"),
        ("train:\n  betas: [0.5, 1.5]\n", r"train\.betas: each beta"),
        ("device: tpu\n", r"device: .*'auto', 'cpu' or 'cuda'"),
        ("train: [1, 2]\n", r"train: .*valid dictionary"),
        ("- a\n- b\n", r"expected a mapping"),
        ("train:\n  steps: 3\n bad indent: 1\n", r"YAML syntax error at line \d+"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)
    assert str(tmp_path / "c.yaml") in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override() -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.steps")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.stepz'"):
        load_config(None, ["train.stepz=3"])


def test_digest_tracks_architecture_only() -> None:
    a, b = Config(), load_config(None, ["train.steps=5"])
    assert a.digest() == b.digest()
    assert a.digest() != load_config(None, ["model.ngf=16"]).digest()


@pytest.mark.parametrize("path", sorted((REPO / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg != Config()


def _leaf_keys() -> list[str]:
    """Every dotted key that holds a value, in declaration order, from the built-in defaults."""

    def walk(d: dict[str, Any], prefix: str = "") -> list[str]:
        return [
            k for key, v in d.items() for k in (walk(v, f"{prefix}{key}.") if isinstance(v, dict) else [prefix + key])
        ]

    return walk(Config().to_dict())


def _field(dotted: str) -> FieldInfo:
    model: Any = Config
    *sections, key = dotted.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[key]


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hook_reference", REPO / "docs" / "hooks" / "reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_yaml_is_written_from_the_descriptions() -> None:
    """config/default.yaml (and so the preset seed-design, its copy) is default_yaml() to the byte: after
    changing a description or a default, run scripts/write_config_docs.py."""
    assert (REPO / "config" / "default.yaml").read_bytes() == default_yaml().encode("utf-8"), (
        "config/default.yaml is stale: run python scripts/write_config_docs.py"
    )


def _yaml_comments(text: str) -> dict[str, str]:
    """The comment of each dotted key of a default.yaml text, its continuation lines joined."""
    out: dict[str, str] = {}
    path: list[str] = []  # the sections the current line is in, by indentation
    key = ""
    for line in text.splitlines():
        code, _, comment = line.partition("# ")
        if not code.strip():  # the header, or a continuation line (indented)
            if key and line.startswith(" "):
                out[key] += " " + comment.strip()
            continue
        depth = (len(code) - len(code.lstrip(" "))) // 2
        name, _, value = (part.strip() for part in code.partition(":"))
        path = path[:depth]
        if value:
            key = ".".join([*path, name])
            out[key] = comment.strip()
        else:  # a section's line: its comment is the section's description
            path.append(name)
            key = ""
    return out


def test_default_yaml_comments_are_the_descriptions_and_family_keys_stay_null() -> None:
    text = default_yaml()
    assert max(len(line) for line in text.splitlines()) <= 120
    documented = yaml.safe_load(text)
    comments = _yaml_comments(text)
    assert list(comments) == _leaf_keys()
    for key, default, meaning in reference_rows():
        value = documented
        for part in key.split("."):
            value = value[part]
        if default.startswith("family: "):
            assert value is None, key
            assert comments[key] == f"{meaning}; family default {default.removeprefix('family: ')}", key
        else:
            assert comments[key] == meaning, key
    assert "#   volgan train --preset seed-design --data DIR" in text


def test_every_key_has_a_description() -> None:
    """The field's docstring is its description (use_attribute_docstrings): the one source of the key's
    documentation. A key added without one fails here."""
    keys = _leaf_keys()
    assert len(keys) > 80
    missing = [key for key in keys if not (_field(key).description or "").strip()]
    assert not missing, f"config keys without a docstring in src/volgan/config.py: {missing}"


def test_reference_rows_cover_every_key_once_in_order() -> None:
    rows = reference_rows()
    assert [key for key, _, _ in rows] == _leaf_keys()
    by_key = {key: (default, meaning) for key, default, meaning in rows}
    assert by_key["data.intensity_percentiles"][0] == "[0.5, 99.5]"
    assert by_key["data.root"][0] == "null" and by_key["log.progress_bar"][0] == "true"
    assert by_key["run_dir"][0] == "runs/default" and by_key["data.size"][0] == "64"
    assert by_key["model.latent_dim"][0] == "family: 128 (wgan_gp) / 200 (dcgan)"
    assert by_key["train.betas"][0] == "family: [0.0, 0.9] (wgan_gp) / [0.5, 0.999] (dcgan)"
    for key, (_, meaning) in by_key.items():
        assert meaning == " ".join((_field(key).description or "").split()), key


def test_every_config_key_is_in_default_yaml() -> None:
    documented = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    for key in _leaf_keys():
        node = documented
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"config/default.yaml lacks {key}"
            node = node[part]


def test_configuration_reference_page_lists_every_key() -> None:
    """docs/reference/config.md holds the marker; the MkDocs hook turns it into one table per section
    with a row per key, its cells' `|` escaped so each row keeps three cells."""
    page = (REPO / "docs" / "reference" / "config.md").read_text()
    hook = _hook()
    assert hook.CONFIG in page
    built = hook.on_page_markdown(page, page=None)
    assert hook.CONFIG not in built
    rows = [line for line in built.splitlines() if line.startswith("| `")]
    cells = [re.split(r"(?<!\\)\|", row)[1:-1] for row in rows]
    assert all(len(c) == 3 for c in cells), [row for row, c in zip(rows, cells, strict=True) if len(c) != 3]
    assert [c[0].strip().strip("`") for c in cells] == _leaf_keys()
    for section in {key.rpartition(".")[0] for key in _leaf_keys()} - {""}:
        assert f"\n## {section}\n" in built
    assert "The `perf.*` keys change" in built


def test_family_sections_are_refused_for_the_other_family() -> None:
    with pytest.raises(ConfigError, match=r"x\.yaml: train\.dcgan\.label_noise: for model\.family dcgan only"):
        build_config({"train": {"dcgan": {"label_noise": 0.1}}}, "x.yaml")
    with pytest.raises(ConfigError, match=r"train\.wgan_gp\.n_critic: for model\.family wgan_gp only"):
        build_config({"model": {"family": "dcgan"}, "train": {"wgan_gp": {"n_critic": 2}}}, "x.yaml")
    assert build_config(
        {"model": {"family": "dcgan"}, "train": {"dcgan": {"label_noise": 0.1}}}
    ).train.dcgan.label_noise


def test_old_key_names_load_in_their_new_places_with_one_note(caplog: pytest.LogCaptureFixture) -> None:
    """A config (or checkpoint) from before the family sections: each old key is read where it lives now,
    one warning line names them; a family-only key of the other family (a saved dump holds them all) is
    dropped, and an old key given beside its new one wins (it is what the user wrote)."""
    old = {
        "model": {"grow_from": None},
        "train": {"n_critic": 3, "gp_every": 1, "d_acc_threshold": 0.8, "mode_seeking_pool": 2},
    }
    with caplog.at_level(logging.WARNING, logger="volgan"):
        cfg = build_config(old, "old.yaml")
    assert (cfg.train.wgan_gp.n_critic, cfg.train.wgan_gp.gp_every) == (3, 1)
    assert cfg.experimental.mode_seeking_pool == 2 and cfg.train.dcgan == build_config({}).train.dcgan
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and notes[0].startswith("old.yaml: renamed keys read in their new places: ")
    assert "train.n_critic -> train.wgan_gp.n_critic" in notes[0] and "d_acc_threshold" not in notes[0]
    both = {"train": {"n_critic": 4, "wgan_gp": {"n_critic": 2}}}
    assert build_config(both).train.wgan_gp.n_critic == 4
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="volgan"):
        build_config({"train": {"wgan_gp": {"n_critic": 2}}})
    assert not caplog.records  # today's names: no note
