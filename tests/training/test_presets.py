"""The presets shipped in the package: each loads and validates, and its readable copy under config/ is
the same file byte for byte."""

import os
import re
from pathlib import Path

import pytest

import volgan.presets
from volgan.config import Config, load_config
from volgan.errors import ConfigError
from volgan.presets import READABLE_COPIES, load_preset, preset_names, preset_text

REPO = Path(__file__).resolve().parents[2]
NAMES = ["3dgan-published", "cpu-fast32", "cpu-fast64", "seed-design", "voxel32"]


def test_names_are_the_shipped_files_sorted() -> None:
    assert preset_names() == NAMES
    assert sorted(READABLE_COPIES) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_loads_and_validates(name: str) -> None:
    assert isinstance(load_config(load_preset(name), name=name), Config)


def test_presets_hold_what_their_names_say() -> None:
    assert load_config(load_preset("seed-design")) == Config()
    assert load_config(load_preset("voxel32")).model.family == "dcgan"
    assert load_config(load_preset("3dgan-published")).model.family == "dcgan"
    assert load_config(load_preset("cpu-fast32")).data.size == 32
    assert load_config(load_preset("cpu-fast64")).data.size == 64


@pytest.mark.parametrize("name", NAMES)
def test_readable_copy_is_the_preset_byte_for_byte(name: str) -> None:
    copy = REPO / READABLE_COPIES[name]
    assert copy.read_bytes() == preset_text(name).encode("utf-8"), (
        f"{READABLE_COPIES[name]} differs from src/volgan/presets/{name}.yaml: edit the preset, then copy it"
    )


@pytest.mark.parametrize("name", NAMES)
def test_header_gives_the_preset_command(name: str) -> None:
    assert f"#   volgan train --preset {name} --data DIR" in preset_text(name)


def test_every_example_config_is_the_copy_of_exactly_one_preset() -> None:
    examples = [*(REPO / "config" / "examples").glob("*.yaml"), REPO / "config" / "default.yaml"]
    copies = sorted(REPO / path for path in READABLE_COPIES.values())
    assert sorted(examples) == copies  # no example left without a preset, no two presets on one copy


@pytest.mark.parametrize("name", ["cpu-fats32", "../x", "", "cpu-fast32.yaml", "../../config/default", "/etc/passwd"])
def test_unknown_or_odd_names_are_refused_in_one_line(name: str) -> None:
    listed = re.escape("; presets: 3dgan-published, cpu-fast32, cpu-fast64, seed-design, voxel32")
    with pytest.raises(ConfigError, match=rf"^unknown preset {re.escape(repr(name))}{listed}$") as info:
        load_preset(name)
    assert "\n" not in str(info.value)


def test_a_name_with_a_newline_stays_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^unknown preset 'a\\nb'; presets: ") as info:
        preset_text("a\nb")
    assert "\n" not in str(info.value)


def test_a_path_to_a_real_yaml_outside_the_package_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "outside.yaml").write_text("train:\n  steps: 3\n")
    package = Path(volgan.presets.__file__).parent
    name = os.path.relpath(tmp_path / "outside", package)  # '../../../tmp/.../outside'
    assert (package / f"{name}.yaml").resolve() == (tmp_path / "outside.yaml").resolve()
    with pytest.raises(ConfigError, match=r"^unknown preset '\.\./\.\./.*; presets: 3dgan-published, "):
        load_preset(name)
