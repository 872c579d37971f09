"""Per-seed sampling from a trained generator and writing volumes to NIfTI / NumPy.

Volume ``i`` of a request is generated from a latent drawn with its own RNG seeded by
``(seed, i)``, so it is the same whatever the batch size, device count or order of generation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volgan import checkpoint as ckpt
from volgan import perf
from volgan.cleanup import Cleanup
from volgan.config import PerfConfig, surface_level
from volgan.errors import VolganError
from volgan.files import atomic_write
from volgan.models import AnyGenerator, build_models
from volgan.safety import inside, make_output_dir, safe_names

log = logging.getLogger("volgan")

FORMATS = ("nii.gz", "nii", "npy")


# Sampling throughput grows with the batch up to about 2^22 voxels per pass on a CPU (benchmarks/sample.py).
_VOXELS_PER_PASS = 2**22


def default_batch_size(size: int) -> int:
    """Volumes per forward pass at ``size``³ when none is given: 16 at 64³, 2 at 128³, at most 64."""
    return max(1, min(64, _VOXELS_PER_PASS // size**3))


def latent_for(seed: int, index: int, latent_dim: int) -> torch.Tensor:
    """The latent vector (latent_dim,) of volume ``index`` under ``seed``; depends on nothing else."""
    mixed = int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])
    return torch.randn(latent_dim, generator=torch.Generator().manual_seed(mixed))


def generate(
    generator: AnyGenerator,
    labels: torch.Tensor,
    seed: int,
    start: int = 0,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """labels: (N,) int64 -> volumes (N, S, S, S) float32 on the CPU, in [-1, 1].

    Volume ``j`` uses the latent of index ``start + j``, so it depends only on ``(seed, start + j,
    label)``: the same bytes for the same ``batch_size`` on the same machine; with another batch
    size, process count or CPU it agrees to float32 rounding (≈1e-6 relative), since the
    convolution kernels sum in another order. Every family's output range (Tanh's
    [-1, 1], sigmoid's [0, 1]) is mapped to the data convention [-1, 1]. ``autocast``: run the
    generator under autocast to this dtype (bf16 on CUDA, see ``perf.autocast_dtype``).
    """
    latent_dim = int(generator.latent_dim)
    z = [latent_for(seed, start + j, latent_dim) for j in range(len(labels))]
    latents = torch.stack(z) if z else torch.empty(0, latent_dim)
    return generate_from_latents(generator, latents, labels, batch_size, device, autocast)


def preview(
    generator: AnyGenerator,
    class_names: list[str],
    seed: int,
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
    cleanup: Cleanup | None = None,
) -> dict[str, np.ndarray]:
    """Two volumes per class from the fixed latents 0 and 1 of ``seed`` (cleaned by ``cleanup``, if
    given): class name -> (2, S, S, S)."""
    out = {}
    for k, name in enumerate(class_names):
        labels = torch.full((2,), k, dtype=torch.long)
        volumes = generate(generator, labels, seed=seed, device=device, autocast=autocast).numpy()
        out[name] = volumes if cleanup is None else cleanup(volumes)
    return out


@torch.inference_mode()
def generate_from_latents(
    generator: AnyGenerator,
    latents: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """latents: (N, latent_dim), labels: (N,) int64 -> volumes (N, S, S, S) float32 on the CPU, in [-1, 1].

    What :func:`generate` runs once it has drawn the latents; interpolation passes its own.
    """
    generator.eval()
    device = torch.device(device)
    out = []
    for first in range(0, len(labels), batch_size):
        z = latents[first : first + batch_size].to(device)
        y = labels[first : first + batch_size].to(device)
        with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            volume = generator(z, y)
        out.append(volume[:, 0].float().cpu())
    volumes = torch.cat(out) if out else torch.empty(0)
    lo, hi = generator.output_range
    return volumes if (lo, hi) == (-1.0, 1.0) else (volumes - lo) / (hi - lo) * 2 - 1


@dataclass
class LoadedGenerator:
    generator: AnyGenerator
    class_names: list[str]
    num_classes: int
    intensity_range: tuple[float, float]
    spacing: float
    affine: np.ndarray
    size: int
    step: int
    config_hash: str
    checkpoint: Path
    ema: bool
    threshold: float  # surface level for meshes, in [0, 1] occupancy units (data.threshold)
    autocast: torch.dtype | None = None  # what ``generate`` should autocast to on this device
    cleanup: Cleanup | None = None  # sample.clean: measured from the training data, kept in the checkpoint

    def finish(self, volumes: np.ndarray) -> np.ndarray:
        """Generated volumes (N, S, S, S) in [-1, 1] as the model's samples are given out: cleaned
        where the run set ``sample.clean``, as they are otherwise."""
        return volumes if self.cleanup is None else self.cleanup(volumes)


def load_generator(
    where: str | Path,
    *,
    ema: bool = True,
    device: torch.device | str = "cpu",
    perf_cfg: PerfConfig | None = None,
    clean: bool = True,
) -> LoadedGenerator:
    """Rebuild the generator of a checkpoint file, run folder (latest checkpoint) or ``.safetensors`` export.

    ``clean``: give samples out cleaned (:meth:`LoadedGenerator.finish`) where the run set
    ``sample.clean``; false: the generator's volumes as they are.

    ``perf_cfg``: the speed switches for this machine (default: all fast paths), not the training run's.
    """
    path = ckpt.resolve_checkpoint(where)
    state = ckpt.load_safetensors(path) if path.suffix == ".safetensors" else ckpt.load_checkpoint(path)
    ckpt.require_keys(state, ckpt.GENERATOR_KEYS, path)
    cfg = ckpt.config_from_checkpoint(state, path)
    generator, _ = build_models(cfg, int(state["num_classes"]))
    part = "ema" if ema else "generator"
    if part not in state:
        hint = "pass --no-ema, or export with --which ema" if ema else "leave out --no-ema, or export with --which all"
        raise ckpt.CheckpointError(f"{path}: holds no {'EMA' if ema else 'raw'} generator weights ({hint})")
    try:
        generator.load_state_dict(state[part])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise ckpt.CheckpointError(
            f"{path}: generator weights do not fit its config ({ckpt.describe_load_error(e)})"
        ) from None
    names = state["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ckpt.CheckpointError(f"{path}: class_names must be a list of strings")
    if len(names) != (int(state["num_classes"]) or len(names)):
        raise ckpt.CheckpointError(f"{path}: {len(names)} class names for {int(state['num_classes'])} classes")
    safe_names(names, str(path))  # refused here, before any volume is generated
    lo, hi = state["intensity_range"]
    record = state.get("cleanup") if clean else None
    try:
        cleanup = Cleanup.from_dict(record, str(path)) if record is not None else None
    except ValueError as e:
        raise ckpt.CheckpointError(str(e)) from None
    perf_cfg = perf_cfg or PerfConfig()
    device = torch.device(device)
    generator.to(device).eval()
    perf.configure_models(perf_cfg, generator)
    return LoadedGenerator(
        generator,
        list(state["class_names"]),
        int(state["num_classes"]),
        (float(lo), float(hi)),
        float(state["spacing"]),
        np.asarray(state["affine"], dtype=np.float64),
        cfg.data.size,
        int(state["step"]),
        cfg.digest(),
        path,
        ema,
        cfg.data.threshold,
        perf.autocast_dtype(perf_cfg, device),
        cleanup,
    )


def class_index(loaded: LoadedGenerator, requested: str) -> int:
    """A class given by name or by index -> its index; unknown classes are a clear error."""
    if not loaded.num_classes:
        raise VolganError(f"{loaded.checkpoint}: this model is unconditional; leave out --class")
    if requested in loaded.class_names:
        return loaded.class_names.index(requested)
    if requested.isdigit() and int(requested) < loaded.num_classes:
        return int(requested)
    raise VolganError(
        f"unknown class {requested!r}; this model knows {loaded.class_names} "
        f"(names or indices 0..{loaded.num_classes - 1})"
    )


def write_volume(volume: np.ndarray, path: Path, affine: np.ndarray) -> None:
    """Write one volume as .nii/.nii.gz (with ``affine``) or .npy, atomically."""
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.Nifti1Image(volume.astype(np.float32), affine)
        img.header.set_xyzt_units("mm")
        payload = img.to_bytes()
        if path.name.endswith(".gz"):
            import gzip

            payload = gzip.compress(payload, compresslevel=6, mtime=0)
        atomic_write(path, lambda f: f.write(payload))
    else:
        atomic_write(path, lambda f: np.save(f, volume.astype(np.float32)))


def provenance(loaded: LoadedGenerator) -> dict[str, Any]:
    """What every written volume's JSON sidecar says of the model that made it."""
    return {
        "checkpoint": str(loaded.checkpoint),
        "checkpoint_step": loaded.step,
        "config_hash": loaded.config_hash,
        "ema": loaded.ema,
        "intensity_range": list(loaded.intensity_range),
        "spacing_mm": loaded.spacing,
        "cleanup": None if loaded.cleanup is None else loaded.cleanup.to_dict(),  # sample.clean, as applied
    }


def write_samples(
    loaded: LoadedGenerator,
    volumes: np.ndarray,
    labels: list[int],
    indices: list[int],
    seed: int,
    out_dir: Path,
    fmt: str = "nii.gz",
    meshes: Sequence[str] = (),
    intensities: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Map volumes (N, S, S, S) in [-1, 1] back to data intensities and write one file + JSON sidecar each,
    into one sub-folder per class (``out_dir/<class>/``): the layout ``volgan train`` and
    ``volgan evaluate --samples`` read, so a sample set can be evaluated or trained on as it is.

    ``meshes`` (any of "obj", "stl", "ply") adds marching-cubes surfaces at the model's threshold,
    in world millimetres of the training grid. ``intensities``: the volumes are already in the data's
    intensity range (what ``volgan.load(...).sample`` returns), so they are written as they are.
    A volume of another model (its sidecar names another checkpoint step, config or weights) is
    never replaced unless ``overwrite``; the same model's volumes are (finishing an interrupted set).
    """
    from volgan.data.preprocess import unscale

    if intensities and meshes:
        raise ValueError("meshes are drawn from volumes in [-1, 1]; pass intensities=False with meshes")

    make_output_dir(out_dir, "output folder")
    # file names from sanitised, collision-checked class names: never a path component unchecked
    folders = safe_names(loaded.class_names, str(loaded.checkpoint)) if loaded.num_classes else []
    written: list[Path] = []
    for vol, label, i in zip(volumes, labels, indices, strict=True):
        name = loaded.class_names[label] if loaded.num_classes else "all"
        folder = folders[label] if loaded.num_classes else "all"
        stem = f"{folder}_seed{seed}_{i:05d}"
        class_dir = inside(out_dir, out_dir / folder)
        path = class_dir / f"{stem}.{fmt}"
        meta: dict[str, Any] = {
            "class_name": name,
            "class_index": label if loaded.num_classes else None,
            "seed": seed,
            "index": i,
            **provenance(loaded),
        }
        if meshes:
            meta["meshes"] = [f"{stem}.{m}" for m in meshes]
            meta["mesh_level"] = loaded.threshold
        if not overwrite:
            _check_not_replacing(class_dir / f"{stem}.json", loaded, out_dir)
        target = class_dir
        pair = [path, *(class_dir / f"{stem}.{m}" for m in meshes), class_dir / f"{stem}.json"]
        try:
            class_dir.mkdir(exist_ok=True)
            target = path
            write_volume(vol if intensities else unscale(vol, *loaded.intensity_range), path, loaded.affine)
            for mesh_format in meshes:
                target = class_dir / f"{stem}.{mesh_format}"
                _write_mesh(vol, target, surface_level(loaded.threshold), loaded.affine)
            target = class_dir / f"{stem}.json"
            sidecar = json.dumps(meta, indent=2).encode()
            atomic_write(target, lambda f, sidecar=sidecar: f.write(sidecar))
        except OSError as e:  # e.g. a full disk: what was written before stays whole
            raise VolganError(
                f"{target}: could not write ({e.strerror or e}); "
                f"the {len(written)} volumes written before it are intact"
            ) from None
        except KeyboardInterrupt:  # only complete (volume + sidecar) pairs may stay behind
            for part in pair:
                part.unlink(missing_ok=True)
            raise
        written.append(path)
    return written


class SamplingInterrupted(Exception):
    """Ctrl-C while writing a sample set: every index before ``resume_at`` is complete in every class."""

    def __init__(self, resume_at: int) -> None:
        super().__init__(f"interrupted at index {resume_at}")
        self.resume_at = resume_at


def sample_to_folder(
    loaded: LoadedGenerator,
    classes: Sequence[int],
    indices: range,
    seed: int,
    out_dir: Path,
    fmt: str = "nii.gz",
    meshes: Sequence[str] = (),
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    overwrite: bool = False,
) -> int:
    """Generate volumes ``indices`` of each class in ``classes`` and write them (:func:`write_samples`);
    returns how many this process wrote.

    The indices are cut into batches exactly as one process cuts them, and rank r of N takes batches
    r, r + N, ...: every batch is computed as it would be in one process, so the files are bit for
    bit those one process writes (volume i depends only on seed, i and class). Index-major, so that
    after Ctrl-C (:class:`SamplingInterrupted`) every index before the current batch is complete."""
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    device = next(loaded.generator.parameters()).device
    total, resume_at = 0, indices.start
    try:
        for idx in batches[rank::world_size]:
            resume_at = idx.start
            for k in classes:
                labels = torch.full((len(idx),), k, dtype=torch.long)
                vols = generate(loaded.generator, labels, seed, idx.start, batch_size, device, loaded.autocast)
                written = write_samples(
                    loaded,
                    loaded.finish(vols.numpy()),
                    [k] * len(idx),
                    list(idx),
                    seed,
                    out_dir,
                    fmt,
                    meshes,
                    overwrite=overwrite,
                )
                total += len(written)
    except KeyboardInterrupt:
        raise SamplingInterrupted(resume_at) from None
    return total


def _check_not_replacing(sidecar: Path, loaded: LoadedGenerator, out_dir: Path) -> None:
    """Refuse, in one line, to replace a volume whose sidecar says another model wrote it."""
    try:
        meta = json.loads(sidecar.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError):  # not a sidecar volgan can read: not a volume of ours to judge
        return
    if not isinstance(meta, dict) or "config_hash" not in meta:
        return
    theirs = (meta.get("config_hash"), meta.get("checkpoint_step"), meta.get("ema"))
    if theirs != (loaded.config_hash, loaded.step, loaded.ema):
        raise VolganError(
            f"{out_dir}: already holds volumes of another model ({meta.get('checkpoint')}, step "
            f"{meta.get('checkpoint_step')}{'' if meta.get('ema', True) else ', raw weights'}); these come from "
            f"{loaded.checkpoint}, step {loaded.step}{'' if loaded.ema else ', raw weights'}; choose another "
            "--out, or pass --overwrite to replace them"
        )


def _write_mesh(volume: np.ndarray, path: Path, level: float, affine: np.ndarray) -> None:
    from volgan.render import export_mesh

    try:
        export_mesh(volume, path, level, affine)
    except ValueError as e:
        raise VolganError(f"{path}: {e}") from None
