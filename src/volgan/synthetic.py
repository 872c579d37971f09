"""Synthetic volumes on the fly, as a ``torch.utils.data.Dataset`` for a downstream training loop.

Item ``i`` of ``SyntheticDataset(g, classes, length, seed)`` is the volume of latent index ``i``
under ``seed`` (what ``volgan sample --seed seed`` writes for index ``i``) in class
``classes[i % len(classes)]``, so it depends only on ``(seed, i)`` and the classes alternate
(balanced). Items are MONAI-style dicts, so real and synthetic volumes can share one loader and
one chain of MONAI dictionary transforms.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from volgan.api import VolumeGenerator, load
from volgan.errors import VolganError


class SyntheticDataset(Dataset[dict[str, Any]]):
    """Generated volumes as dicts ``{"image": (1, S, S, S), "label": int, "class_name": str}``.

    ``g``: a :class:`volgan.VolumeGenerator` or where to load one (run folder, ``.pt``,
    ``.safetensors``). ``classes``: names or indices to draw (default: every class); item ``i``
    has class ``classes[i % len(classes)]`` and ``label`` is the model's class index, i.e. the
    training data's ``class_to_idx``, so labels agree with the real data's. ``image`` is a MONAI
    ``MetaTensor`` carrying the training grid's affine and the sample's provenance (``meta=False``:
    a plain tensor) in the data's intensity range. ``transform`` is applied to each dict (e.g. a
    MONAI ``Compose`` of dictionary transforms).

    Safe with ``DataLoader(num_workers > 0)``: the dataset holds a CPU copy of the generator and
    each process moves its own copy to ``device`` on its first item, so the parent process never
    touches ``device`` (with ``device="cuda"``, give the loader ``multiprocessing_context="spawn"``:
    CUDA cannot start in a forked process). Every item is generated alone (batch 1), so an item is
    the same whichever worker makes it, to float32 rounding across thread counts.
    """

    def __init__(
        self,
        g: VolumeGenerator | str | Path,
        classes: Sequence[str | int] | None = None,
        length: int = 1000,
        seed: int = 0,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        device: torch.device | str = "cpu",
        meta: bool = True,
    ) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise VolganError(f"length must be an integer >= 0, got {length!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise VolganError(f"seed must be an integer >= 0, got {seed!r}")
        # its own CPU copy: moving or changing ``g`` later does not move or change the dataset
        source = g.copy_to("cpu") if isinstance(g, VolumeGenerator) else load(g, device="cpu")
        if classes is None:
            labels = list(range(source.num_classes)) or [0]
        else:
            if isinstance(classes, str | int):
                raise VolganError(f"classes must be a list of class names or indices, got {classes!r}")
            if not classes:
                raise VolganError(f"classes is empty; pick from {source.class_names}")
            labels = [source.class_index(c) for c in classes]
        self.source = source
        self.labels = labels
        self.length = length
        self.seed = seed
        self.transform = transform
        self.device = torch.device(device)
        self.meta = meta
        self._local: tuple[int, VolumeGenerator] | None = None  # (pid, this process's generator on device)

    def __len__(self) -> int:
        return self.length

    def label_of(self, i: int) -> int:
        """The class label of item ``i``."""
        return self.labels[i % len(self.labels)]

    def _generator(self) -> VolumeGenerator:
        if self.device.type == "cpu":
            return self.source  # after a fork, each worker's copy of it is its own
        pid = os.getpid()
        if self._local is None or self._local[0] != pid:
            self._local = (pid, self.source.copy_to(self.device))
        return self._local[1]

    def __getitem__(self, i: int) -> Any:
        i = operator.index(i)
        if not 0 <= i < self.length:
            raise IndexError(f"item {i} out of range for a SyntheticDataset of length {self.length}")
        g = self._generator()
        label = self.label_of(i)
        cls = label if g.conditional else None
        volume = g.sample(1, cls, self.seed, start=i, batch_size=1)[0]
        image = g.as_image(volume, label, self.seed, i) if self.meta else volume
        item = {"image": image, "label": label, "class_name": g.class_names[label] if g.conditional else ""}
        return self.transform(item) if self.transform is not None else item

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_local"] = None  # a device copy belongs to the process that made it
        return state

    def __repr__(self) -> str:
        names = [self.source.class_names[k] for k in self.labels] if self.source.conditional else "unconditional"
        return f"SyntheticDataset({self.length} items, seed {self.seed}, classes {names}, {self.device})"
