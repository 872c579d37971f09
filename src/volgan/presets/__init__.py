"""Named training configurations that ship with the package: ``volgan train --preset NAME``.

Each preset is ``NAME.yaml`` in this package, the one source of its settings and of the comments that
say what was measured with them. The repository keeps a readable copy of each under ``config/``
(:data:`READABLE_COPIES`), byte for byte the same (a test holds them equal).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import yaml

from volgan.errors import ConfigError
from volgan.safety import load_yaml, shown

_SUFFIX = ".yaml"

# preset -> its readable copy, relative to the repository root
READABLE_COPIES: dict[str, str] = {
    "3dgan-published": "config/examples/3dgan_published.yaml",
    "cpu-fast32": "config/examples/cpu_fast32.yaml",
    "cpu-fast64": "config/examples/cpu_fast64.yaml",
    "seed-design": "config/default.yaml",
    "voxel32": "config/examples/voxel32.yaml",
}


def preset_names() -> list[str]:
    """The names of the shipped presets, sorted."""
    return sorted(
        entry.name[: -len(_SUFFIX)]
        for entry in files(__name__).iterdir()
        if entry.name.endswith(_SUFFIX) and entry.is_file()
    )


def preset_text(name: str) -> str:
    """The YAML text of preset ``name``, comments included; ConfigError naming the presets if unknown."""
    names = preset_names()
    # only a listed name is ever joined to a path: '../x' or '' cannot reach a file outside the package
    if name not in names:
        raise ConfigError(f"unknown preset {shown(name)}; presets: {', '.join(names)}")
    return files(__name__).joinpath(name + _SUFFIX).read_text(encoding="utf-8")


def load_preset(name: str) -> dict[str, Any]:
    """Preset ``name`` as the mapping of sections a config file gives (``{"model": {...}, ...}``)."""
    source = f"preset {name}"
    try:
        data = load_yaml(preset_text(name), source)
    except yaml.YAMLError as e:  # a shipped file is tested; this guards an edited installation
        raise ConfigError(f"{source}: YAML syntax error: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    return data
