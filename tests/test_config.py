from pathlib import Path

import pytest
import yaml

from volgan.config import Config, load_config, parse_override
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
        ("train:\n  n_critic: 0\n", r"train\.n_critic: .*greater than or equal to 1, got 0"),
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


def test_every_config_key_is_in_default_yaml_and_in_the_configuration_reference() -> None:
    """A key added to the config is documented where users look: config/default.yaml and the
    configuration reference page (a row naming `section.key`, or `key` in a row of `section.` keys)."""
    reference = (REPO / "docs" / "reference" / "config.md").read_text()
    rows = [line for line in reference.splitlines() if line.startswith("|")]
    documented = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    for section, field in Config.model_fields.items():
        keys = getattr(field.annotation, "model_fields", None)
        if keys is None:  # a top-level key (seed, device, run_dir)
            assert section in documented, f"config/default.yaml lacks {section}"
            assert any(f"`{section}`" in r.split("|")[1] for r in rows), f"docs/reference/config.md lacks {section}"
            continue
        for key in keys:
            assert key in (documented.get(section) or {}), f"config/default.yaml lacks {section}.{key}"
            named = [c for c in (r.split("|")[1] for r in rows) if f"`{section}." in c]
            found = any(f"`{section}.{key}`" in c or f"`{key}`" in c for c in named)
            assert found, f"docs/reference/config.md lacks {section}.{key}"
