"""Layers with an exact fast path: same parameters, same state dict, same mathematics, faster kernels.

Each module here is a drop-in subclass of the stock layer with one switch, ``fast`` (on by default;
``volgan.perf.configure_models`` sets it from ``perf.*``). With the switch off it runs the stock
PyTorch forward, which is what the equivalence tests compare against.

* :class:`InstanceNorm3d` — the statistics from one matrix product (:func:`channel_moments`) and the
  normalisation, the affine and a conditional scale/shift folded into one multiply-add. PyTorch's own
  instance norm reshapes to a batch norm, which copies a channels-last tensor twice per call.
* :class:`SubpixelConvTranspose3d` — a stride-2, kernel-4 transposed convolution computed as an
  ordinary 2³ convolution with 8× the output channels, followed by a depth-to-space shuffle
  ("sub-pixel convolution", Shi et al. 2016). The weights are a fixed re-indexing of the transposed
  convolution's, so outputs and gradients are those of the transposed convolution; its CPU kernel for
  one output channel (the generator's last layer) is 2-3x slower than the convolution.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# Transposed conv (k=4, s=2, p=1): output index p = 2*i - 1 + k for input i and tap k. Writing
# p + 1 = 2*j + c (phase c in {0, 1}) and i = j - 1 + t (t in {0, 1}) gives k = c + 2 - 2*t.
_PHASE_TAP = torch.tensor([[2, 0], [3, 1]])  # [c][t] -> k


def instance_norm(
    x: torch.Tensor,
    eps: float = 1e-5,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalise each (sample, channel) over its voxels, then ``* scale + shift``.

    x: (B, C, D, H, W); scale, shift: (C,) or (B, C) or None -> (B, C, D, H, W). Biased variance and
    ``eps`` inside the square root, as ``torch.nn.functional.instance_norm``.
    """
    var, mean = channel_moments(x)
    factor = torch.rsqrt(var + eps)
    if scale is not None:
        factor = factor * _per_channel(scale, x)
    offset = -mean * factor
    if shift is not None:
        offset = offset + _per_channel(shift, x)
    return torch.addcmul(offset, x, factor)


def channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Biased variance and mean of each (sample, channel) over its voxels: x (B, C, D, H, W) -> two (B, C, 1, 1, 1).

    On the CPU, ``torch.var_mean`` over the voxels runs at under 1 GB/s (a Welford loop): at 64³ it
    took a third of the generator's time. Here the sums come from one matrix product instead (the
    diagonal of each sample's C x C Gram matrix holds the sums of squares), ~12x faster, and the
    variance is E[x²] - E[x]². Where that subtraction would cancel (variance below 1e-3 of the
    squared mean, i.e. fewer than ~4 of float32's 7 digits left) the exact two-pass ``var_mean`` is used.
    """
    b, c = x.shape[:2]
    if x.device.type != "cpu" or x.dim() != 5:
        return torch.var_mean(x, dim=(2, 3, 4), keepdim=True, correction=0)
    n = x[0, 0].numel()
    if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        rows = x.permute(0, 2, 3, 4, 1).reshape(b, n, c)  # a view: voxels x channels
        gram = torch.bmm(rows.transpose(1, 2), rows)
    else:
        rows = x.reshape(b, c, n)  # channels x voxels (a view when x is contiguous)
        gram = torch.bmm(rows, rows.transpose(1, 2))
    mean = x.sum(dim=(2, 3, 4)) / n
    var = torch.diagonal(gram, dim1=1, dim2=2) / n - mean * mean
    if bool(((var <= 1e-3 * mean * mean) & (mean != 0)).any()):
        return torch.var_mean(x, dim=(2, 3, 4), keepdim=True, correction=0)
    return var.view(b, c, 1, 1, 1), mean.view(b, c, 1, 1, 1)


def class_embedding(embed: nn.Embedding | None, labels: torch.Tensor | None, what: str) -> torch.Tensor | None:
    """``embed(labels)`` for a conditional network (``embed`` set), None for an unconditional one;
    a conditional ``what`` ("generator", "critic", ...) called without labels is refused."""
    if embed is None:
        return None
    if labels is None:
        raise ValueError(f"a conditional {what} needs class labels")
    return embed(labels)


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1 if v.dim() == 2 else 1, x.shape[1], 1, 1, 1)


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (no running statistics) with the fused fast path of :func:`instance_norm`."""

    fast = True

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False) -> None:
        super().__init__(num_features, eps=eps, affine=affine, track_running_stats=False)

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, C, D, H, W); optional extra scale/shift (B, C) applied after the affine."""
        if self.fast:
            if self.affine:  # (IN(x) * w + b) * scale + shift = IN(x) * (w * scale) + (b * scale + shift)
                b = self.bias if scale is None else self.bias * scale
                scale = self.weight if scale is None else self.weight * scale
                shift = b if shift is None else b + shift
            return instance_norm(x, self.eps, scale, shift)
        y = super().forward(x)
        if scale is not None:
            y = y * _per_channel(scale, y)
        if shift is not None:
            y = y + _per_channel(shift, y)
        return y


def _subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """Transposed-conv weight (C_in, C_out, 4, 4, 4) -> conv weight (C_out * 8, C_in, 2, 2, 2)."""
    c_in, c_out = weight.shape[:2]
    idx = _PHASE_TAP.to(weight.device)
    w = weight[:, :, idx][:, :, :, :, idx][..., idx]  # (C_in, C_out, c_d, t_d, c_h, t_h, c_w, t_w)
    return w.permute(1, 2, 4, 6, 0, 3, 5, 7).reshape(c_out * 8, c_in, 2, 2, 2)


def subpixel_conv_transpose3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv_transpose3d(x, weight, bias, stride=2, padding=1)`` for a 4³ kernel, via a 2³ convolution.

    x: (B, C_in, D, H, W); weight: (C_in, C_out, 4, 4, 4) -> (B, C_out, 2D, 2H, 2W).
    """
    c_out = weight.shape[1]
    b = None if bias is None else bias.repeat_interleave(8)
    y = F.conv3d(x, _subpixel_weight(weight), b, padding=1)  # (B, C_out*8, D+1, H+1, W+1)
    n, _, d, h, w = y.shape
    y = y.reshape(n, c_out, 2, 2, 2, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(n, c_out, 2 * d, 2 * h, 2 * w)
    return y[:, :, 1:-1, 1:-1, 1:-1]


class SubpixelConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d(c_in, c_out, 4, stride=2, padding=1)`` with the sub-pixel fast path."""

    fast = True

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 4, stride=2, padding=1, bias=bias)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        """x: (B, C_in, D, H, W) -> (B, C_out, 2D, 2H, 2W)."""
        if self.fast and output_size is None:
            return subpixel_conv_transpose3d(x, self.weight, self.bias)
        return super().forward(x, output_size)


class StemConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d(c_in, c_out, k)`` applied to a 1³ input: a dense layer to a k³ block.

    The fast path computes it as that dense layer (one matrix product, 10x faster on the CPU than the
    transposed-convolution kernel at this shape) and returns it in the weight's memory format.
    """

    fast = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias=bias)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        """x: (B, C_in, 1, 1, 1) -> (B, C_out, k, k, k)."""
        if not (self.fast and output_size is None and x.shape[2:] == (1, 1, 1)):
            return super().forward(x, output_size)
        k = self.kernel_size
        y = (x.flatten(1) @ self.weight.flatten(1)).view(x.shape[0], self.out_channels, *k)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1, 1)
        if self.weight.is_contiguous(memory_format=torch.channels_last_3d) and not self.weight.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last_3d)
        return y


# Nearest 2x up-sampling then a 3-tap kernel (w0, w1, w2) is, along each axis, the stride-2
# transposed convolution with the 4 taps (w2, w1 + w2, w0 + w1, w0): rows of this matrix.
_RESIZE_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


class ResizeConv3d(nn.Module):
    """Nearest-neighbour 2x up-sampling, then a 3³ convolution: an up-sampling layer whose every output
    voxel sees the same kernel, so it cannot leave the transposed convolution's checkerboard of isolated
    voxels (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").

    The fast path computes the same volume at the coarse grid: the layer equals a stride-2 transposed
    convolution whose 4³ kernel is tied to the 3³ one (``_RESIZE_TAPS``), run as a sub-pixel convolution
    without the up-sampled features ever being stored."""

    fast = True

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, D, H, W) -> (B, C_out, 2D, 2H, 2W)."""
        if not self.fast:
            return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        a = _RESIZE_TAPS.to(self.conv.weight)
        tied = torch.einsum("oidef,ad,be,cf->ioabc", self.conv.weight, a, a, a)  # (C_in, C_out, 4, 4, 4)
        return subpixel_conv_transpose3d(x, tied.contiguous(), self.conv.bias)


def up_layer(in_channels: int, out_channels: int, kind: str) -> nn.Module:
    """A generator stage's 2x up-sampling convolution without bias (``model.stage_upsampling``)."""
    if kind == "resize":
        return ResizeConv3d(in_channels, out_channels, bias=False)
    return nn.ConvTranspose3d(in_channels, out_channels, 4, stride=2, padding=1, bias=False)


def output_layer(in_channels: int, kind: str) -> nn.Module:
    """The generator's last layer, features at half the grid -> one channel at the grid (``model.output_head``)."""
    if kind == "resize":
        return ResizeConv3d(in_channels, 1)
    return SubpixelConvTranspose3d(in_channels, 1)


def _max3(v: torch.Tensor, dim: int) -> torch.Tensor:
    """The maximum over each voxel's window of three along ``dim`` (two at the ends)."""
    n = v.shape[dim]
    if n == 1:
        return v
    pair = torch.maximum(v.narrow(dim, 0, n - 1), v.narrow(dim, 1, n - 1))  # pair[i] = max(v[i], v[i + 1])
    inner = torch.maximum(pair.narrow(dim, 0, n - 2), pair.narrow(dim, 1, n - 2))
    return torch.cat([pair.narrow(dim, 0, 1), inner, pair.narrow(dim, n - 2, 1)], dim)


def _max3_grad(v: torch.Tensor, out: torch.Tensor, g: torch.Tensor, dim: int) -> torch.Tensor:
    """The gradient of :func:`_max3` for v: each window's gradient shared equally among the voxels
    that hold its maximum (a subgradient; occupancy grids tie everywhere)."""
    n = v.shape[dim]
    if n == 1:
        return g
    head, tail = (lambda t: t.narrow(dim, 0, n - 1)), (lambda t: t.narrow(dim, 1, n - 1))
    at_centre = (v == out).to(g.dtype)
    from_left = (head(v) == tail(out)).to(g.dtype)  # window j + 1's maximum at voxel j
    from_right = (tail(v) == head(out)).to(g.dtype)  # window j's maximum at voxel j + 1
    count = at_centre.clone()  # at least the voxel that holds it
    tail(count).add_(from_left)
    head(count).add_(from_right)
    share = g / count
    grad = share * at_centre
    head(grad).add_(tail(share) * from_left)
    tail(grad).add_(head(share) * from_right)
    return grad


class _Dilate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        steps = [x]
        for dim in range(2, x.dim()):
            steps.append(_max3(steps[-1], dim))
        ctx.save_for_backward(*steps)
        return steps[-1]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        steps = ctx.saved_tensors
        for k in range(len(steps) - 1, 0, -1):
            g = _max3_grad(steps[k - 1], steps[k], g, k + 1)
        return g


def dilate(x: torch.Tensor) -> torch.Tensor:
    """Grey dilation by a 3³ cube, (B, C, D, H, W): each voxel the maximum of its neighbourhood inside
    the grid, the values of ``F.max_pool3d(x, 3, 1, 1)``. Three elementwise passes: on a CPU ~14x faster
    forward than the pooling, ~1.8x with the backward; the gradient is the pooling's where a maximum
    is unique and shared among tied voxels where not (differentiable again, for the gradient penalty)."""
    return _Dilate.apply(x)


TOP_HAT_CHANNELS = {"none": 1, "black": 2, "both": 3}
"""Input channels of a critic that sees the volume and these top-hats (``model.top_hats``)."""


class InputConv3d(nn.Conv3d):
    """A critic's first convolution: given fewer channels than it reads, it takes the missing last ones
    as zeros and skips their weights (the top-hats before ``model.top_hats_from``: the plain step's cost)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return super().forward(x) if c == self.in_channels else self._conv_forward(x, self.weight[:, :c], self.bias)


def zero_top_hat_weights(conv: nn.Module) -> None:
    """A first convolution that reads the top-hats from 0: until it learns them, its output is the
    plain critic's (``model.top_hats_from``: the channels appear part-way without a jump in the scores)."""
    assert isinstance(conv, nn.Conv3d)
    with torch.no_grad():
        conv.weight[:, 1:] = 0


def top_hats(x: torch.Tensor, which: str = "both", on: bool = True) -> torch.Tensor:
    """(B, 1, D, H, W) -> (B, TOP_HAT_CHANNELS[which], D, H, W): the volume, then (both) its white
    top-hat (x - its grey opening) and (black, both) its black top-hat (its grey closing - x), by a 3³
    cube (``model.top_hats``). The white top-hat holds what is brighter than its surroundings and
    thinner than the cube (isolated voxels, thin walls), the black one what is darker and narrower
    (pinholes, gaps): the critic sees them as given inputs instead of having to learn such detectors
    first. Outside the grid counts as neither, so the border neither erodes nor dilates the volume.
    ``on=False`` (``model.top_hats_from``: not yet seen): the volume alone, which an :class:`InputConv3d`
    reads as the volume and zeros in the top-hats' channels."""
    if which == "none" or not on:
        return x

    def erode(v: torch.Tensor) -> torch.Tensor:
        return -dilate(-v)

    black = erode(dilate(x)) - x
    return torch.cat([x, x - dilate(erode(x)), black] if which == "both" else [x, black], dim=1)
