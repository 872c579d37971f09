"""The Python API: train a GAN, load a trained generator, sample volumes, save them as ``volgan sample`` does.

``volgan.load(where)`` returns a :class:`VolumeGenerator`, which holds the network and what a
volume needs to be read as data (class names, intensity range, affine). Sampling keeps the CLI's
per-seed guarantee: volume ``i`` of ``sample(n, cls, seed, start)`` depends only on
``(seed, start + i, cls)``. Device and batch size are arguments; nothing here changes
process-wide state (no seeds, no allocator or TF32 settings).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from volgan import perf
from volgan.config import Config, DataConfig, PerfConfig
from volgan.data.volume_set import VolumeSet
from volgan.errors import ConfigError, VolganError
from volgan.sampling import (
    LoadedGenerator,
    class_index,
    default_batch_size,
    generate,
    load_generator,
    write_samples,
)

log = logging.getLogger("volgan")

if TYPE_CHECKING:
    from monai.data import MetaTensor

    from volgan.models import AnyGenerator


class VolumeGenerator:
    """A trained generator and the facts that turn its output into data volumes.

    Built by :func:`load`. ``sample`` returns a tensor (n, 1, D, H, W) in the data's intensity range;
    ``sample_images`` the same volumes as MONAI ``MetaTensor`` s (1, D, H, W) carrying the affine;
    ``save`` writes either as ``volgan sample`` does (NIfTI + JSON sidecar, one folder per class).
    """

    def __init__(self, loaded: LoadedGenerator, perf_cfg: PerfConfig | None = None) -> None:
        self._loaded = loaded
        self._perf = perf_cfg or PerfConfig()
        self._device = next(loaded.generator.parameters()).device

    # -- what the model is ---------------------------------------------------------------------
    @property
    def module(self) -> AnyGenerator:
        """The ``torch.nn.Module``: ``forward(z (B, latent_dim), labels (B,) int64) -> (B, 1, S, S, S)``."""
        return self._loaded.generator

    @property
    def class_names(self) -> list[str]:
        """Class names in label order; ``[]`` for an unconditional model."""
        return list(self._loaded.class_names) if self._loaded.num_classes else []

    @property
    def num_classes(self) -> int:
        return self._loaded.num_classes

    @property
    def conditional(self) -> bool:
        return self._loaded.num_classes > 0

    @property
    def size(self) -> int:
        """Edge length of the cubic grid: volumes are (size, size, size)."""
        return self._loaded.size

    @property
    def latent_dim(self) -> int:
        return int(self._loaded.generator.latent_dim)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world affine of the training grid (millimetres)."""
        return self._loaded.affine.copy()

    @property
    def spacing(self) -> float:
        return self._loaded.spacing

    @property
    def intensity_range(self) -> tuple[float, float]:
        """What the generator's [-1, 1] maps to: the data's intensity range."""
        return self._loaded.intensity_range

    @property
    def step(self) -> int:
        return self._loaded.step

    @property
    def checkpoint(self) -> Path:
        return self._loaded.checkpoint

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def loaded(self) -> LoadedGenerator:
        """What ``volgan.sampling`` works with (for the lower-level functions there)."""
        return self._loaded

    def __repr__(self) -> str:
        classes = self.class_names or "unconditional"
        return (
            f"VolumeGenerator({self.checkpoint.name}, step {self.step}, {self.size}³, classes {classes}, "
            f"{'EMA' if self._loaded.ema else 'raw'} weights, {self.device})"
        )

    # -- where it runs ---------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> VolumeGenerator:
        """Move the network to ``device`` (in place) and return self."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device != self._device:
            self._loaded.generator.to(device)
            self._loaded.autocast = perf.autocast_dtype(self._perf, device)
            self._device = device
        return self

    def copy_to(self, device: torch.device | str) -> VolumeGenerator:
        """An independent copy on ``device``; this one stays where it is."""
        loaded = copy.copy(self._loaded)
        loaded.generator = copy.deepcopy(self._loaded.generator)
        return VolumeGenerator(loaded, self._perf).to(device)

    # -- sampling --------------------------------------------------------------------------------
    def class_index(self, cls: str | int | None) -> int:
        """A class name, index or index string -> its label; ``None`` for an unconditional model."""
        if not self.conditional:
            if cls is not None:
                raise VolganError(f"{self.checkpoint}: this model is unconditional; leave out cls (got {cls!r})")
            return 0
        if cls is None:
            raise VolganError(f"this model is conditional: pass cls, one of {self.class_names} or an index")
        if isinstance(cls, bool) or not isinstance(cls, str | int):
            raise VolganError(f"cls must be a class name or index, got {cls!r}")
        if isinstance(cls, int):
            if not 0 <= cls < self.num_classes:
                raise VolganError(f"class index {cls} out of range 0..{self.num_classes - 1} ({self.class_names})")
            return cls
        return class_index(self._loaded, cls)

    def sample_unit(
        self,
        n: int,
        cls: str | int | None = None,
        seed: int = 0,
        start: int = 0,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Like :meth:`sample`, but in the model's own range [-1, 1]: (n, 1, S, S, S) float32 on the CPU."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise VolganError(f"n must be an integer >= 0, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise VolganError(f"seed must be an integer >= 0, got {seed!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise VolganError(f"start must be an integer >= 0, got {start!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)):
            raise VolganError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if batch_size is not None and batch_size < 1:
            raise VolganError(f"batch_size must be >= 1, got {batch_size}")
        label = self.class_index(cls)
        if device is not None:
            self.to(device)
        labels = torch.full((n,), label, dtype=torch.long)
        volumes = generate(
            self.module,
            labels,
            seed,
            start,
            batch_size or default_batch_size(self.size),
            self._device,
            self._loaded.autocast,
        )
        volumes = torch.from_numpy(self._loaded.finish(volumes.numpy()))  # cleaned where the run set sample.clean
        return volumes.reshape(n, 1, self.size, self.size, self.size)

    def to_intensity(self, unit: torch.Tensor) -> torch.Tensor:
        """Volumes in [-1, 1] -> the data's intensity range, float32, exactly as ``volgan sample`` maps them."""
        from volgan.data.preprocess import unscale

        return torch.from_numpy(unscale(unit.detach().cpu().numpy(), *self.intensity_range))

    def sample(
        self,
        n: int,
        cls: str | int | None = None,
        seed: int = 0,
        start: int = 0,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` volumes of class ``cls`` -> (n, 1, S, S, S) float32 on the CPU, in the data's intensity range.

        Volume ``j`` uses latent index ``start + j``: the same volume as ``volgan sample --seed seed``
        writes for that index (bit for bit with the same batch size on the same machine, to float32
        rounding with another). ``cls``: a class name, an index, or None for an unconditional model.
        ``batch_size``: volumes per forward pass (default: about 2^22 voxels' worth). ``device``: run
        there (the network moves and stays there); default: where it is.
        """
        return self.to_intensity(self.sample_unit(n, cls, seed, start, batch_size, device))

    def sample_images(
        self,
        n: int,
        cls: str | int | None = None,
        seed: int = 0,
        start: int = 0,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
    ) -> list[MetaTensor]:
        """:meth:`sample` as a list of MONAI ``MetaTensor`` s (1, S, S, S), channel first, with the
        training grid's affine and the sample's provenance in ``.meta`` (``class_name``, ``class_index``,
        ``seed``, ``index``, ``checkpoint``, ``checkpoint_step``)."""
        volumes = self.sample(n, cls, seed, start, batch_size, device)
        label = self.class_index(cls)
        return [self.as_image(volumes[j], label, seed, start + j) for j in range(n)]

    def as_image(self, volume: torch.Tensor, label: int, seed: int, index: int) -> MetaTensor:
        """One volume (1, S, S, S) in intensity units -> a ``MetaTensor`` with the affine and provenance."""
        from monai.data import MetaTensor

        meta = {
            "class_name": self.class_names[label] if self.conditional else None,
            "class_index": label if self.conditional else None,
            "seed": seed,
            "index": index,
            "checkpoint": str(self.checkpoint),
            "checkpoint_step": self.step,
        }
        return MetaTensor(volume, affine=torch.as_tensor(self._loaded.affine), meta=meta)

    # -- writing ---------------------------------------------------------------------------------
    def save(
        self,
        volumes: torch.Tensor | Sequence[torch.Tensor],
        folder: str | Path,
        fmt: str = "nii.gz",
        *,
        cls: str | int | None = None,
        seed: int | None = None,
        start: int = 0,
        overwrite: bool = False,
    ) -> list[Path]:
        """Write volumes in the data's intensity range as ``volgan sample`` does, with a JSON sidecar each:
        ``folder/<class>/<class>_seed<seed>_<index>.<fmt>``. Returns the volume files.

        ``volumes``: what :meth:`sample_images` returned (each image's ``.meta`` names its class, seed
        and index), or a tensor (n, 1, S, S, S) / (n, S, S, S) from :meth:`sample`, for which ``cls``,
        ``seed`` and ``start`` say what it holds. The files are the bytes ``volgan sample`` writes
        for the same volumes. Volumes another model wrote into ``folder`` are not replaced unless
        ``overwrite``.
        """
        from volgan.sampling import FORMATS

        if fmt not in FORMATS:
            raise VolganError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
        if isinstance(volumes, torch.Tensor) and not hasattr(volumes, "meta"):
            if seed is None:
                raise VolganError("saving a plain tensor: pass seed= (and cls=, start=) to say which volumes it holds")
            stack = volumes.detach().cpu().float()
            labels = [self.class_index(cls)] * len(stack)
            indices = list(range(start, start + len(stack)))
            seeds = [seed] * len(stack)
        else:
            items = list(volumes) if not isinstance(volumes, torch.Tensor) else [volumes]
            stack, labels, indices, seeds = self._from_images(items)
        if stack.ndim == 5 and stack.shape[1] == 1:
            stack = stack[:, 0]
        if stack.ndim != 4 or tuple(stack.shape[1:]) != (self.size,) * 3:
            raise VolganError(
                f"volumes must be (n, 1, {self.size}, {self.size}, {self.size}) or (n, {self.size}, {self.size}, "
                f"{self.size}) for this model, got {tuple(stack.shape)}"
            )
        written: list[Path] = []
        # write_samples names files by one seed; images from several seeds are written seed by seed
        for s in dict.fromkeys(seeds):
            pick = [j for j, sj in enumerate(seeds) if sj == s]
            arrays = stack[pick].numpy()
            written += write_samples(
                self._loaded,
                arrays,
                [labels[j] for j in pick],
                [indices[j] for j in pick],
                s,
                Path(folder),
                fmt,
                intensities=True,
                overwrite=overwrite,
            )
        return written

    def _from_images(self, items: list[Any]) -> tuple[torch.Tensor, list[int], list[int], list[int]]:
        """MetaTensors from :meth:`sample_images` -> stacked volumes and each one's label, index and seed."""
        labels, indices, seeds, arrays = [], [], [], []
        for k, image in enumerate(items):
            meta = getattr(image, "meta", None)
            if not isinstance(meta, dict) or "seed" not in meta or "index" not in meta:
                raise VolganError(
                    f"volume {k} carries no sample provenance (.meta with seed and index); save what sample_images "
                    "returned, or a tensor with seed=, cls= and start="
                )
            label = meta.get("class_index")
            labels.append(self.class_index(None if label is None else int(label)))
            indices.append(int(meta["index"]))
            seeds.append(int(meta["seed"]))
            arrays.append(torch.as_tensor(image).detach().cpu().float())
        if not arrays:
            return torch.empty(0, self.size, self.size, self.size), [], [], []
        return torch.stack(arrays), labels, indices, seeds


def load(
    where: str | Path,
    *,
    ema: bool = True,
    device: torch.device | str = "cpu",
    perf_cfg: PerfConfig | None = None,
) -> VolumeGenerator:
    """Load a trained generator from a run folder (its newest checkpoint), a ``.pt`` checkpoint or a
    ``volgan export`` ``.safetensors`` file.

    Checkpoints are read with ``torch.load(weights_only=True)``: a file that asks to import anything
    is refused before anything runs. ``ema``: the EMA weights (default, what ``volgan sample`` uses)
    or the raw generator's. ``perf_cfg``: the speed switches (default: every fast path; they change
    how, never what, is computed).
    """
    perf_cfg = perf_cfg or PerfConfig()
    return VolumeGenerator(load_generator(where, ema=ema, device=device, perf_cfg=perf_cfg), perf_cfg)


@dataclasses.dataclass
class Run:
    """A finished (or interrupted) training run, as :func:`train` returns it: its folder, step, newest
    checkpoint, and whether a signal stopped it; :meth:`load` gives its generator."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    interrupted: bool = False

    def load(self, **kwargs: Any) -> VolumeGenerator:
        """The run's generator (:func:`load` of its checkpoint; same keyword arguments)."""
        return load(self.checkpoint or self.run_dir, **kwargs)


def train(
    config: Config | Mapping[str, Any] | str | Path | None = None,
    data: str | Path | VolumeSet | Any | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    spacing: float = 1.0,
    minutes: float | None = None,
    preset: str | None = None,
    **overrides: Any,
) -> Run:
    """Train a GAN as ``volgan train`` does, in this process; returns the run (``.load()`` gives its generator).

    ``config``: a :class:`~volgan.config.Config`, a mapping of sections or a YAML path, trained as
    given; ``preset``: a named recipe (:func:`volgan.presets.preset_names`); neither: the plan for
    the data, this machine and ``minutes`` (as ``volgan train --data DIR --minutes N``; None: the
    planner's default budget). ``minutes`` is the run's budget in every case (``train.budget_minutes``).
    ``overrides``: sections or keys on top of it all, e.g. ``train={"steps": 200}, seed=1`` (they win
    over the plan; the ``data`` section goes in ``config``: the keyword ``data`` is the data).
    ``data``: a class-folder tree or ``.npz`` file (as ``--data``), a :class:`VolumeSet`, or a torch
    ``Dataset`` of ``(volume, label)`` tuples or MONAI dicts ``{"image": (1, D, H, W) or (D, H, W),
    "label": int}`` (read once into memory: :func:`~volgan.data.from_dataset.volume_set_from_dataset`
    says how, and what ``class_names`` and ``spacing`` mean); None: ``data.root`` of the config.
    ``data.size`` defaults to the edge of a VolumeSet's (or a dataset's cubic) volumes.
    ``resume``: a run folder or checkpoint to continue. Process-wide settings are set for the
    duration only (README, "What volgan changes in your process").
    """
    from volgan.config import config_mapping, merge_dicts
    from volgan.planning.setup import base_mapping, resolve_config
    from volgan.run_setup import check_run_dir, start_trainer

    started = time.perf_counter()  # the budget counts planning and reading the data
    if config is not None and preset is not None:
        raise ConfigError("config= and preset= both give the base settings; pass one")
    base: dict[str, Any] | None
    if preset is not None:
        base, source = base_mapping(None, preset)
    elif config is not None or resume is not None:  # a resumed run keeps its settings: nothing to plan
        base, source = config_mapping(config)
    else:
        base, source = None, None
    extra: dict[str, Any] = dict(overrides)
    if run_dir is not None:
        extra["run_dir"] = str(run_dir)
    if isinstance(data, str | Path):
        extra = merge_dicts(extra, {"data": {"root": str(data)}})
    elif "size" not in {**(base or {}).get("data", {}), **extra.get("data", {})} and data is not None:
        edge = _edge(data)
        if edge is not None:
            extra = merge_dicts(extra, {"data": {"size": edge}})
    if base is None and data is None and not extra.get("data", {}).get("root"):
        raise ConfigError("no data: pass data= (a folder, .npz, VolumeSet or Dataset) or set data.root")
    volumes = _InMemory(data, class_names, spacing)
    to_plan = None
    if base is None and volumes.given:  # plan from the volumes given, read with the user's data settings
        to_plan = volumes.read(_user_data_settings(extra))
    cfg, plan = resolve_config(
        base, name=source, values=extra, minutes=minutes, data=to_plan, before_data=check_run_dir
    )
    check_run_dir(cfg)
    trainer = start_trainer(
        cfg,
        volumes.read(cfg.data),
        plan=plan,
        resume=None if resume is None else Path(resume),
        source="data",
        started=started,
    )
    return Run(**dataclasses.asdict(trainer.fit()))


def _user_data_settings(extra: Mapping[str, Any]) -> DataConfig:
    """The data section of the user's own settings (no base, no plan yet)."""
    from volgan.config import load_config

    return load_config(dict(extra), name="<your settings>").data


class _InMemory:
    """What :func:`train` was given as data, read into a VolumeSet once per data section: a folder
    or .npz (``data.root``), a VolumeSet as it is, or a torch Dataset read into memory."""

    def __init__(self, data: Any, class_names: Sequence[str] | None, spacing: float) -> None:
        self.data, self.class_names, self.spacing = data, class_names, spacing
        self.given = data is not None and not isinstance(data, str | Path)
        self._read: dict[str, VolumeSet] = {}

    def read(self, settings: DataConfig) -> VolumeSet:
        from volgan.data.dataset import load_volumes
        from volgan.data.from_dataset import volume_set_from_dataset

        if isinstance(self.data, VolumeSet):
            return self.data
        if not self.given:
            if settings.root is None:
                raise ConfigError("no data: pass data= (a folder, .npz, VolumeSet or Dataset) or set data.root")
            return load_volumes(settings)
        key = settings.model_dump_json()
        if key not in self._read:  # a Dataset is read again only if the plan changed how
            self._read[key] = volume_set_from_dataset(
                self.data, settings, class_names=self.class_names, spacing=self.spacing
            )
        return self._read[key]


def _edge(data: Any) -> int | None:
    """The edge of a VolumeSet's volumes, or of a dataset's first volume if it is a cube; else None."""
    if isinstance(data, VolumeSet):
        return data.size
    from volgan.data.from_dataset import _array, _split

    try:
        shape = _array(_split(data[0], 0)[0], 0).shape
    except (VolganError, IndexError, KeyError, TypeError):  # the full read reports what is wrong
        return None
    return shape[0] if shape[0] == shape[1] == shape[2] else None
