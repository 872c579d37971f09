"""From what the user gave to a run's config: a preset or config file as given, or, with neither, the plan.

``volgan train``, ``volgan plan`` and :func:`volgan.train` all call :func:`resolve_config`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from volgan.config import Config, load_config, merge_dicts, parse_override
from volgan.data.volume_set import VolumeSet
from volgan.errors import ConfigError
from volgan.planning.planner import Plan, make_plan


def base_mapping(config: str | Path | None, preset: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The base a run starts from: a YAML file, a named preset, or None (plan it); and its name."""
    from volgan.config import read_yaml

    if config is not None and preset is not None:
        raise ConfigError(f"--config {config} and --preset {preset} both give the base settings; pass one")
    if preset is not None:
        from volgan.presets import load_preset

        return load_preset(preset), f"preset {preset}"
    if config is not None:
        return read_yaml(Path(config)), str(config)
    return None, None


def resolve_config(
    base: Mapping[str, Any] | None,
    *,
    name: str | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
    minutes: float | None = None,
    data: VolumeSet | None = None,
    before_data: Callable[[Config], None] | None = None,
) -> tuple[Config, Plan | None]:
    """The run's config, and the plan it came from.

    ``base``: the settings of a config file or preset, or None to plan them from the data (``data``
    if given, else ``data.root``), this machine and ``minutes`` (None: the planner's default
    budget). ``values`` (a nested mapping) and ``overrides`` (``KEY=VALUE`` texts) are the user's
    own settings: they win over the base and over the plan. With a base, ``minutes`` becomes
    ``train.budget_minutes``, so the budget's schedules are fitted to it. ``before_data`` sees the
    user's settings before the plan reads any data (e.g. to refuse a run folder in use first).
    """
    what = "command-line overrides" if overrides else "overrides"
    if minutes is not None and not minutes > 0:  # the CLI's parser refuses these first
        raise ConfigError(f"--minutes must be > 0, got {minutes:g}")
    if base is not None:
        budget = {"train": {"budget_minutes": minutes}} if minutes is not None else {}
        merged = merge_dicts(dict(values or {}), budget)
        return load_config(dict(base), overrides, values=merged, name=name, what=what), None
    return planned_config(
        overrides=overrides, values=values, minutes=minutes, data=data, name=name, before_data=before_data
    )


def planned_config(
    *,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
    minutes: float | None = None,
    data: VolumeSet | None = None,
    name: str | None = None,
    before_data: Callable[[Config], None] | None = None,
) -> tuple[Config, Plan]:
    """The plan for the data and ``minutes``, and its config with the user's settings on top."""
    what = "command-line overrides" if overrides else "overrides"
    given: dict[str, Any] = dict(values or {})
    for text in overrides:
        given = merge_dicts(given, parse_override(text))
    first = load_config(given, name=f"<your settings> ({what})")  # your keys checked before any data is read
    if before_data is not None:
        before_data(first)
    fp = _fingerprint(first, data)
    device, threads, memory = _machine(first.device)
    plan = make_plan(fp, minutes, given, device=device, threads=threads, memory_gb=memory)
    cfg = load_config(plan.overrides(), overrides, values=values, name=name or "<plan>", what=what)
    return cfg, plan


def _fingerprint(cfg: Config, data: VolumeSet | None) -> Any:
    from volgan.planning.fingerprint import fingerprint_path, fingerprint_volumes

    if data is not None:
        return fingerprint_volumes(data)
    if cfg.data.root is None:
        raise ConfigError("no data: pass --data DIR (or set data.root); the plan is made from the data")
    return fingerprint_path(cfg.data)


def _machine(choice: str) -> tuple[str, int, float | None]:
    """The device type the run will use, torch's CPU threads, and the GPU's memory in GB (None on a CPU)."""
    import torch

    from volgan.device import resolve_device

    device = resolve_device(choice)
    memory = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    return device.type, torch.get_num_threads(), memory


def write_plan(run_dir: Path, plan: Plan) -> Path:
    """``RUN/plan.json`` (atomically): the plan, its reasons, the probe's timings and the fingerprint."""
    from volgan.files import atomic_write

    path = run_dir / "plan.json"
    text = json.dumps(plan.to_dict(), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path
