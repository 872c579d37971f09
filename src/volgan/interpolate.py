"""Walks through a generator's inputs: between two latents (slerp) and between two classes (embedding mix).

* **Latent**: frame ``k`` of ``steps`` uses ``slerp(latent_for(seed, i), latent_for(seed, j), t_k)``
  with ``t_k = k / (steps - 1)``, so the first and last frames are volumes ``i`` and ``j`` of
  ``volgan sample --seed seed``. Spherical rather than linear: a Gaussian latent's length
  concentrates near sqrt(latent_dim), and the straight line between two latents passes through
  shorter vectors the generator rarely saw (White 2016, "Sampling Generative Networks").
* **Class**: at the fixed latent of index ``i``, the class embedding moves linearly from class
  ``a``'s to class ``b``'s, ``(1 - t) e_a + t e_b``. The generator's own ``forward`` runs unchanged
  (the mixed embeddings are looked up from a temporary table, see :func:`class_embeddings`), so
  whatever it does with the embedding (concatenation, conditional norms, a mapping network)
  applies to the mix; the end frames are the plain class ``a`` and ``b`` volumes.

:func:`write_interpolation` writes the frames as volumes with JSON sidecars, a montage PNG (rows =
walks, columns = frames) and an animated GIF of the mid-slices.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volgan.api import VolumeGenerator
from volgan.errors import VolganError
from volgan.files import atomic_write
from volgan.safety import inside, make_output_dir, safe_name, safe_names
from volgan.sampling import default_batch_size, generate_from_latents, latent_for, provenance, write_volume

MAX_STEPS = 1000


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: a, b (latent_dim,), t (K,) in [0, 1] -> (K, latent_dim) float32.

    Computed in float64; t = 0 and t = 1 give a and b exactly. Nearly parallel vectors (angle
    below 1e-6) fall back to linear interpolation, where the two agree.
    """
    a64, b64, t64 = a.double(), b.double(), t.double()[:, None]
    cos = torch.dot(a64 / a64.norm(), b64 / b64.norm()).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega) < 1e-6:
        out = (1 - t64) * a64 + t64 * b64
    else:
        out = (torch.sin((1 - t64) * omega) * a64 + torch.sin(t64 * omega) * b64) / torch.sin(omega)
    return out.float()


def fractions(steps: int) -> torch.Tensor:
    """t_k = k / (steps - 1) for k = 0..steps-1: (steps,) float64 from 0 to 1."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= MAX_STEPS:
        raise VolganError(f"steps must be an integer in 2..{MAX_STEPS}, got {steps!r}")
    return torch.arange(steps, dtype=torch.float64) / (steps - 1)


@contextlib.contextmanager
def class_embeddings(generator: nn.Module, table: torch.Tensor) -> Iterator[None]:
    """Within the block, label ``k`` of ``generator`` looks up ``table[k]`` (K, embed_dim) instead of
    class ``k``'s learned embedding; the learned table is back afterwards (also after an error).

    The generator object is changed for the duration: do not use it from another thread meanwhile.
    """
    learned = getattr(generator, "embed", None)
    if not isinstance(learned, nn.Embedding):
        raise VolganError("class interpolation needs a conditional model (this one has no class embedding)")
    if table.ndim != 2 or table.shape[1] != learned.embedding_dim:
        raise ValueError(f"table must be (K, {learned.embedding_dim}), got {tuple(table.shape)}")
    generator.embed = nn.Embedding.from_pretrained(table.to(learned.weight.device, learned.weight.dtype), freeze=True)
    try:
        yield
    finally:
        generator.embed = learned


def _checked_index(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise VolganError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def interpolate_latents(
    g: VolumeGenerator,
    from_index: int,
    to_index: int,
    steps: int = 8,
    cls: str | int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    *,
    intensities: bool = True,
) -> torch.Tensor:
    """Volumes along the slerp from latent ``from_index`` to ``to_index`` (under ``seed``) in class ``cls``.

    Returns (steps, 1, S, S, S) float32 in the data's intensity range (``intensities=False``: the
    model's [-1, 1]); the first and last are ``g.sample(1, cls, seed, start=from_index)`` and
    ``start=to_index`` (to float32 rounding: another batch).
    """
    t = fractions(steps)
    a = latent_for(seed, _checked_index(from_index, "from_index"), g.latent_dim)
    b = latent_for(seed, _checked_index(to_index, "to_index"), g.latent_dim)
    labels = torch.full((steps,), g.class_index(cls), dtype=torch.long)
    bs = batch_size or default_batch_size(g.size)
    frames = generate_from_latents(g.module, slerp(a, b, t), labels, bs, g.device, g.loaded.autocast)
    frames = torch.from_numpy(g.loaded.finish(frames.numpy()))[:, None]  # cleaned as the samples are
    return g.to_intensity(frames) if intensities else frames


def interpolate_classes(
    g: VolumeGenerator,
    from_cls: str | int,
    to_cls: str | int,
    steps: int = 8,
    index: int = 0,
    seed: int = 0,
    batch_size: int | None = None,
    *,
    intensities: bool = True,
) -> torch.Tensor:
    """Volumes at the latent of ``index`` (under ``seed``) as the class embedding moves linearly from
    ``from_cls`` to ``to_cls``: (steps, 1, S, S, S) float32 in the data's intensity range
    (``intensities=False``: the model's [-1, 1])."""
    if not g.conditional:
        raise VolganError(f"{g.checkpoint}: this model is unconditional; there are no classes to interpolate")
    t = fractions(steps).float()[:, None]
    a, b = g.class_index(from_cls), g.class_index(to_cls)
    learned = g.module.embed
    assert learned is not None  # conditional
    with torch.no_grad():
        table = (1 - t) * learned.weight[a].detach().cpu() + t * learned.weight[b].detach().cpu()
    z = latent_for(seed, _checked_index(index, "index"), g.latent_dim).expand(steps, -1)
    labels = torch.arange(steps, dtype=torch.long)  # row k of the mixed table
    bs = batch_size or default_batch_size(g.size)
    with class_embeddings(g.module, table):
        frames = generate_from_latents(g.module, z, labels, bs, g.device, g.loaded.autocast)
        frames = torch.from_numpy(g.loaded.finish(frames.numpy()))[:, None]
    return g.to_intensity(frames) if intensities else frames


# ---------------------------------------------------------------------------- writing


def write_interpolation(
    g: VolumeGenerator,
    walks: Mapping[str, torch.Tensor],
    out_dir: Path,
    stem: str,
    meta: Mapping[str, Mapping[str, Any]],
    fmt: str = "nii.gz",
) -> dict[str, Any]:
    """Write walks (row name -> frames (K, 1, S, S, S) in [-1, 1]) into ``out_dir``.

    Everything goes into ``out_dir/<stem>/`` (its own folder, so no walk is mistaken for the class
    folders of ``volgan sample``): each frame as ``<row>/step<k>.<fmt>`` (data intensities,
    training-grid affine) with a JSON sidecar ``<row>/step<k>.json`` holding ``meta[row]`` and ``t``;
    ``<stem>.png``, the montage (rows = walks, columns = frames); ``<stem>.gif``, the montage's
    mid-slices frame by frame, there and back. ``stem`` and the row names are made safe for file names
    here. Returns the paths written.
    """
    from volgan.data.preprocess import unscale
    from volgan.figures import save_sample_grid

    make_output_dir(out_dir, "--out")
    stem = safe_name(stem)
    walk_dir = inside(out_dir, out_dir / stem)
    walk_dir.mkdir(exist_ok=True)
    folders = safe_names(list(walks), str(out_dir))
    steps = {len(v) for v in walks.values()}
    if len(steps) != 1:
        raise ValueError(f"every walk must have the same number of frames, got {sorted(steps)}")
    t = fractions(steps.pop()).tolist()
    written: dict[str, Any] = {"volumes": []}
    base = provenance(g.loaded)
    for (row, frames), folder in zip(walks.items(), folders, strict=True):
        row_dir = inside(out_dir, walk_dir / folder)
        row_dir.mkdir(exist_ok=True)
        for k, frame in enumerate(frames[:, 0].numpy()):
            path = row_dir / f"step{k:03d}.{fmt}"
            sidecar = json.dumps({**meta[row], "t": t[k], "step": k, **base}, indent=2).encode()
            try:
                write_volume(unscale(frame, *g.intensity_range), path, g.affine)
                atomic_write(row_dir / f"step{k:03d}.json", lambda f, b=sidecar: f.write(b))
            except OSError as e:
                raise VolganError(f"{path}: could not write ({e.strerror or e})") from None
            written["volumes"].append(path)
    titles = [f"t = {x:.2f}" for x in t]
    rows = {name: frames.numpy() for name, frames in walks.items()}
    montage = inside(out_dir, walk_dir / f"{stem}.png")
    written["montage"] = save_sample_grid(rows, montage, title=stem, column_titles=titles)
    written["gif"] = _write_gif(list(walks.values()), inside(out_dir, walk_dir / f"{stem}.gif"))
    return written


def _write_gif(walks: Sequence[torch.Tensor], path: Path, frame_ms: int = 150, min_height: int = 192) -> Path:
    """Animated GIF: frame k shows every walk's frame k as a row of mid-slices; plays there and back."""
    from PIL import Image

    from volgan.figures import slice_montage

    images = [slice_montage(torch.stack([w[k] for w in walks]).numpy()) for k in range(len(walks[0]))]
    zoom = max(1, -(-min_height // images[0].shape[0]))  # small grids (16³) get nearest-neighbour enlarged
    frames = [
        Image.fromarray(np.kron(np.round(img * 255).astype(np.uint8), np.ones((zoom, zoom), np.uint8)))
        for img in images
    ]
    frames += frames[-2:0:-1]  # back again, so the loop has no jump
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    payload = buffer.getvalue()
    try:
        atomic_write(path, lambda f: f.write(payload))
    except OSError as e:
        raise VolganError(f"{path}: could not write ({e.strerror or e})") from None
    return path


# ---------------------------------------------------------------------------- `volgan sample --interpolate`
