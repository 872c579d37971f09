"""The field's standard feature spaces for 3D FD, built in code and fed from local weight files.

* ``medicalnet:resnet50:PATH`` — MedicalNet (Chen et al. 2019, "Med3D"): a 3D ResNet-10…200 with
  MedicalNet's layout (7³ stem with stride 2, shortcut A for ResNet-18/34 and B otherwise,
  bias-free shortcut convolutions, layer3/layer4 with stride 1 and dilation 2/4, no head); the
  features are the globally pooled layer4 output (2048-d for ResNet-50, 512-d for ResNet-10/18/34).
  Preprocessing as MAISI's FID script applies it for MedicalNet: trilinear resize to the input
  size, then a per-volume z-score ``(x - mean) / (std + 1e-5)`` over all voxels.
* ``radimagenet2.5d:PATH`` — "2.5D FD" as MAISI reports it: a 2D ResNet-50 (torchvision's
  layout) over every axial, coronal and sagittal slice. Preprocessing as MAISI's: per-volume
  min–max to [0, 1], the grey slice repeated to 3 channels, the BGR means (0.406, 0.456, 0.485)
  subtracted. Each slice's feature map is averaged spatially; a volume's feature is the mean over
  its slices of a plane, averaged over the three planes (MAISI instead reports one FID per plane
  with every slice a sample; per-volume features are what FD and the memorisation audit need here).

Architectures are MONAI's :class:`monai.networks.nets.ResNet`; weights come only from the path the
user gives, read with ``torch.load(weights_only=True)`` (:func:`volgan.checkpoint.load_weights`)
and key-mapped (a ``state_dict`` wrapper, ``module.`` prefixes and a segmentation/classifier head
are accepted). Nothing is ever downloaded. The file's sha256 is part of :attr:`StandardExtractor.info`.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from volgan.checkpoint import load_weights
from volgan.errors import CheckpointError, MetricError

MEDICALNET = "medicalnet"
RADIMAGENET = "radimagenet2.5d"
DEPTHS = (10, 18, 34, 50, 101, 152, 200)
BGR_MEAN = (0.406, 0.456, 0.485)
# Prefixes the original releases put before the backbone keys (DataParallel, wrappers); stripped once.
PREFIXES = ("module.", "model.", "backbone.", "encoder.")
# Heads that the feature network does not have: MedicalNet's segmentation head, a classifier.
HEADS = ("conv_seg.", "fc.")

COMPARABILITY = (
    "Fréchet distances are comparable only between evaluations with the same extractor, the same "
    "weights (sha256), the same preprocessing and input size, and the same sample sizes n; compare "
    "a synthetic FD with the real-vs-real reference computed here in the same space, never with a "
    "number from another setup."
)


@dataclass
class StandardExtractor:
    """A feature network mapping (B, 1, S, S, S) volumes in [-1, 1] to (B, F), and what it is."""

    module: nn.Module
    info: dict[str, Any]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or tuple(x.shape[2:]) == (size,) * (x.ndim - 2):
        return x
    return F.interpolate(x, size=(size,) * (x.ndim - 2), mode="trilinear", align_corners=False)


def medicalnet_resnet(depth: int) -> nn.Module:
    """MedicalNet's 3D ResNet-``depth`` without head: (B, 1, D, H, W) -> (B, 512 or 2048).

    MONAI's ResNet has MedicalNet's parameter layout but strides layer3/layer4 by 2; MedicalNet
    keeps their resolution and dilates instead (2 and 4), which changes the features, not the
    keys, so those convolutions are switched to stride 1 with MedicalNet's dilation and padding.
    """
    from monai.networks.nets.resnet import ResNet, get_inplanes, get_medicalnet_pretrained_resnet_args, resnet_params

    if depth not in DEPTHS:
        raise MetricError(f"MedicalNet ResNet depth must be one of {DEPTHS}, got {depth}")
    block, layers, *_ = resnet_params[f"resnet{depth}"]
    bias_downsample, shortcut = get_medicalnet_pretrained_resnet_args(depth)
    net = ResNet(
        block,
        layers,
        get_inplanes(),
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type=shortcut,
        bias_downsample=bias_downsample,
        feed_forward=False,
    )
    for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
        for blk in layer:
            for conv in (m for m in blk.modules() if isinstance(m, nn.Conv3d)):
                conv.stride = (1, 1, 1)
                if conv.kernel_size == (3, 3, 3):
                    conv.dilation = conv.padding = (dilation,) * 3
            if isinstance(blk.downsample, functools.partial):  # shortcut A: zero-padded identity
                kwargs = {**blk.downsample.keywords, "stride": 1}
                setattr(blk, "downsample", functools.partial(blk.downsample.func, **kwargs))  # noqa: B010
    return net


def radimagenet_resnet50() -> nn.Module:
    """A 2D ResNet-50 with torchvision's layout and keys, no head: (B, 3, H, W) -> (B, 2048)."""
    from monai.networks.nets.resnet import ResNet, get_inplanes

    return ResNet(
        "bottleneck",
        [3, 4, 6, 3],
        get_inplanes(),
        spatial_dims=2,
        n_input_channels=3,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
    )


class MedicalNetFeatures(nn.Module):
    """MedicalNet features: (B, 1, S, S, S) in [-1, 1] -> (B, F) after resize and z-score."""

    def __init__(self, net: nn.Module, size: int | None) -> None:
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(x.float(), self.size)
        flat = x.flatten(1)
        mean = flat.mean(1).view(-1, 1, 1, 1, 1)
        std = flat.std(1).view(-1, 1, 1, 1, 1)
        return self.net((x - mean) / (std + 1e-5))


class RadImageNet25DFeatures(nn.Module):
    """2.5D features: (B, 1, S, S, S) in [-1, 1] -> (B, 2048), the mean over slices and planes."""

    def __init__(self, net: nn.Module, size: int | None, batch_slices: int = 256) -> None:
        super().__init__()
        self.net, self.size, self.batch_slices = net, size, batch_slices
        self.bgr_mean: torch.Tensor
        self.register_buffer("bgr_mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(x.float(), self.size)
        lo = x.flatten(1).amin(1).view(-1, 1, 1, 1, 1)
        hi = x.flatten(1).amax(1).view(-1, 1, 1, 1, 1)
        x = (x - lo) / (hi - lo + 1e-10)
        b = x.shape[0]
        planes = []
        for axis in (2, 3, 4):  # slices across depth (axial), height and width
            slices = x.movedim(axis, 1).reshape(-1, 1, *[x.shape[a] for a in (2, 3, 4) if a != axis])
            rgb = slices.expand(-1, 3, -1, -1) - self.bgr_mean  # grey is the same in RGB and BGR
            feats = torch.cat([self.net(chunk) for chunk in rgb.split(self.batch_slices)])
            planes.append(feats.view(b, -1, feats.shape[1]).mean(1))
        return torch.stack(planes).mean(0)


def _unwrap(state: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The backbone's tensors from a weight file's content, and the keys dropped (heads)."""
    for wrapper in ("state_dict", "model", "net"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: not a state dict (expected a dict of tensors, optionally under 'state_dict')")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    dropped = sorted(k for k in tensors if k.startswith(HEADS))
    return {k: v for k, v in tensors.items() if not k.startswith(HEADS)}, dropped


def _expected(net: nn.Module, n: int = 3) -> str:
    keys = [(k, v) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")]
    picks = [keys[0], keys[len(keys) // 2], keys[-1]][:n]
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in picks)


def load_backbone(net: nn.Module, path: Path, what: str, layout: str) -> list[str]:
    """Load ``path`` into ``net`` (strict, after key mapping); returns the head keys it ignored."""
    from volgan.evaluation.classifier import _fit_problem

    state, dropped = _unwrap(load_weights(path, f"{what} weight file"), path)
    # Files saved before PyTorch 0.4.1 lack BatchNorm's step counter; it plays no part in eval mode.
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    problem = _fit_problem(net, state)
    if problem:
        raise CheckpointError(
            f"{path}: weights do not fit {what} ({problem}); expected {layout} with keys such as "
            f"{_expected(net)} ({len(net.state_dict())} entries)"
        )
    net.load_state_dict(state)
    return dropped


def parse_spec(spec: str) -> tuple[str, int | None, Path] | None:
    """``medicalnet:resnetN:PATH`` or ``radimagenet2.5d:PATH`` -> (kind, depth, path); None for
    anything else (a TorchScript file)."""
    kind, _, rest = spec.partition(":")
    if kind == RADIMAGENET:
        if not rest:
            raise MetricError(f"--features {spec!r}: expected {RADIMAGENET}:PATH to a ResNet-50 weight file")
        return RADIMAGENET, 50, Path(rest)
    if kind == MEDICALNET:
        arch, _, path = rest.partition(":")
        digits = arch.lower().removeprefix("resnet")
        if not path or not digits.isdigit():
            raise MetricError(
                f"--features {spec!r}: expected {MEDICALNET}:resnetN:PATH with N in {DEPTHS}, "
                f"e.g. {MEDICALNET}:resnet50:resnet_50_23dataset.pth"
            )
        return MEDICALNET, int(digits), Path(path)
    return None


def load_standard_extractor(spec: str, size: int | None = None) -> StandardExtractor | None:
    """Build and load the extractor that ``spec`` names (see :func:`parse_spec`); None if it names none.

    ``size``: the cubic input size volumes are resized to (None: keep the evaluation grid).
    """
    parsed = parse_spec(spec)
    if parsed is None:
        return None
    kind, depth, path = parsed
    if size is not None and size < 8:
        raise MetricError(f"--features-size must be >= 8, got {size}")
    if kind == MEDICALNET:
        assert depth is not None
        net = medicalnet_resnet(depth)
        layout = f"MedicalNet resnet_{depth} (optionally under 'state_dict' with 'module.' prefixes)"
        dropped = load_backbone(net, path, f"MedicalNet ResNet-{depth}", layout)
        module: nn.Module = MedicalNetFeatures(net, size)
        arch = (
            f"MedicalNet 3D ResNet-{depth} (Chen et al. 2019; shortcut {'A' if depth in (18, 34) else 'B'}, "
            "layer3/layer4 dilated 2/4, global average pooling; MONAI ResNet)"
        )
        pre = "trilinear resize to the input size; per-volume z-score (x - mean) / (std + 1e-5) over all voxels"
    else:
        net = radimagenet_resnet50()
        layout = "a torchvision-layout ResNet-50 (conv1, bn1, layer1..layer4; fc ignored)"
        dropped = load_backbone(net, path, "2D ResNet-50", layout)
        module = RadImageNet25DFeatures(net, size)
        arch = (
            "2D ResNet-50 (torchvision layout, e.g. RadImageNet weights; MONAI ResNet), 2.5D: every axial, "
            "coronal and sagittal slice, spatial mean, mean over slices, mean over the three planes"
        )
        pre = (
            "trilinear resize to the input size; per-volume min-max to [0, 1]; grey repeated to 3 channels; "
            "BGR means (0.406, 0.456, 0.485) subtracted (MAISI's RadImageNet normalisation)"
        )
    info = {
        "name": kind,
        "architecture": arch,
        "weights": str(path.resolve()),
        "weights_sha256": sha256(path),
        "ignored_keys": dropped,
        "preprocessing": pre,
        "input_size": size,
        "feature_dim": _feature_dim(net),
        "comparability": COMPARABILITY,
    }
    return StandardExtractor(module.eval(), info)


def _feature_dim(net: nn.Module) -> int:
    """Channels of the last layer's output (the pooled feature size)."""
    last = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d)][-1]
    return int(last.num_features)
