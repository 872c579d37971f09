"""``volgan export --format onnx``: the generator, with its class input, as an ONNX graph.

The graph maps ``z`` (B, latent_dim) float32 and ``labels`` (B,) int64 to ``volume`` (B, 1, S, S, S)
float32 in the data's intensity range (the values ``volgan sample`` writes), with the batch
dimension dynamic. An unconditional model's graph has the ``z`` input only. What a runtime needs to
read the output as data (class names, intensity range, affine, latent recipe) is stored as JSON in
the model's ``metadata_props``.

The generator is traced with PyTorch's TorchScript-based exporter (``dynamo=False``): it needs only
the ``onnx`` package, where the newer ``torch.export`` path also needs ``onnxscript``. It is traced
on the plain layers (every ``perf.*`` fast path off): the fast paths compute the same mathematics,
but the fused instance norm chooses between two formulas by a data-dependent test that a trace would
freeze into one branch.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volgan.config import PerfConfig
from volgan.errors import VolganError
from volgan.files import atomic_write
from volgan.sampling import latent_for, load_generator

OPSET = 17
FORMAT = "volgan-onnx"
VERSION = 1
PLAIN = PerfConfig(channels_last=False, fused_norm=False, subpixel_conv=False, dense_stem=False)
"""Every fast path off: the layers a trace can follow (same mathematics, stock PyTorch kernels)."""

RELATIVE_TOLERANCE = 1e-4
"""The export check: onnxruntime and PyTorch agree to this fraction of the intensity range.

Both compute in float32 but with other convolution kernels (MLAS vs oneDNN), so they sum in other
orders; measured on the test models: ≈ 4e-7 of the range."""

LATENT_RECIPE = (
    "z[i] = torch.randn(latent_dim, generator=torch.Generator().manual_seed(int(numpy.random.SeedSequence([seed, i])"
    ".generate_state(1, numpy.uint64)[0]))), as volgan.sampling.latent_for(seed, i, latent_dim); any N(0, 1) "
    "vector is a valid latent"
)


class IntensityGenerator(nn.Module):
    """``generator`` followed by the map from its output range to the data's intensity range.

    forward: z (B, latent_dim) float32, labels (B,) int64 -> (B, 1, S, S, S) float32.
    """

    def __init__(self, generator: nn.Module, intensity_range: tuple[float, float]) -> None:
        super().__init__()
        self.generator = generator
        self.conditional = bool(getattr(generator, "num_classes", 0))
        out_lo, out_hi = generator.output_range  # type: ignore[misc]
        lo, hi = intensity_range
        # one multiply-add: output range -> [-1, 1] -> [lo, hi]
        self.scale = (hi - lo) / (out_hi - out_lo)
        self.offset = lo - out_lo * self.scale

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        volume = self.generator(z, labels if self.conditional else None)
        return volume * self.scale + self.offset


def export_onnx(where: str | Path, out: str | Path, *, ema: bool = True, check: bool = True) -> dict[str, Any]:
    """Write the generator of a run folder, checkpoint or ``.safetensors`` export to ``out`` (.onnx).

    Returns the metadata written into the file, plus ``max_abs_diff`` (onnxruntime vs PyTorch on
    batches of 1 and 3, in intensity units) when ``check`` and onnxruntime is installed. The check
    fails (VolganError) beyond :data:`RELATIVE_TOLERANCE` of the intensity range.
    """
    try:
        import onnx
    except ImportError:
        raise VolganError("ONNX export needs the onnx package: pip install 'volgan[onnx]'") from None
    out = Path(out)
    loaded = load_generator(where, ema=ema, device="cpu", perf_cfg=PLAIN)
    model = IntensityGenerator(loaded.generator, loaded.intensity_range).eval()
    conditional = model.conditional
    latent_dim = int(loaded.generator.latent_dim)
    example = _inputs(loaded.num_classes, latent_dim, 2)
    names = ["z", "labels"] if conditional else ["z"]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # the legacy exporter announces its deprecation, and the trace warns about shape checks in
        # stock layers that it records as constants (correct: the grid size is fixed)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        # instance norm always normalises by the volume's own statistics (no running ones): "train mode" is right
        warnings.filterwarnings("ignore", message=".*'instance_norm' is set to train=True", category=UserWarning)
        torch.onnx.export(
            model,
            example,
            Path(tmp) / "generator.onnx",
            dynamo=False,
            input_names=names,
            output_names=["volume"],
            dynamic_axes={name: {0: "batch"} for name in [*names, "volume"]},
            opset_version=OPSET,
            do_constant_folding=True,
        )
        proto = onnx.load(Path(tmp) / "generator.onnx")
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "class_names": loaded.class_names if conditional else [],
        "num_classes": loaded.num_classes,
        "latent_dim": latent_dim,
        "size": loaded.size,
        "intensity_range": list(loaded.intensity_range),
        "spacing": loaded.spacing,
        "affine": np.asarray(loaded.affine).tolist(),
        "step": loaded.step,
        "weights": "ema" if ema else "generator",
        "source": loaded.checkpoint.name,
        "latent": LATENT_RECIPE,
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.producer_name = "volgan"
    onnx.checker.check_model(proto)
    payload = proto.SerializeToString()
    try:
        atomic_write(out, lambda f: f.write(payload))
    except OSError as e:
        raise VolganError(f"{out}: could not write ({e.strerror or e})") from None
    if check:
        diff = check_onnx(out, model, loaded.num_classes, latent_dim, loaded.intensity_range)
        if diff is not None:
            metadata["max_abs_diff"] = diff
    return metadata


def _inputs(num_classes: int, latent_dim: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.stack([latent_for(0, i, latent_dim) for i in range(batch)])
    return z, torch.arange(batch, dtype=torch.long) % max(num_classes, 1)


def check_onnx(
    path: Path, model: nn.Module, num_classes: int, latent_dim: int, intensity_range: tuple[float, float]
) -> float | None:
    """Largest |onnxruntime - PyTorch| over batches of 1 and 3 (None without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    lo, hi = intensity_range
    worst = 0.0
    for batch in (1, 3):
        z, labels = _inputs(num_classes, latent_dim, batch)
        feed = {k: v.numpy() for k, v in (("z", z), ("labels", labels)) if k in wanted}
        got = session.run(["volume"], feed)[0]
        with torch.inference_mode():
            expected = model(z, labels).numpy()
        if got.shape != expected.shape:
            raise VolganError(
                f"{path}: onnxruntime returned shape {got.shape} for batch {batch}, expected {expected.shape}"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > RELATIVE_TOLERANCE * abs(hi - lo):
        raise VolganError(
            f"{path}: onnxruntime differs from PyTorch by up to {worst:.3g}, more than {RELATIVE_TOLERANCE:g} of "
            f"the intensity range; the file is written but should not be trusted"
        )
    return worst
