"""``volgan export``: generator weights as safetensors or ONNX."""

from __future__ import annotations

import argparse
from typing import Any

from volgan.errors import VolganError
from volgan.safety import check_output_dir


def cmd_export(args: argparse.Namespace) -> int:
    from volgan import checkpoint as ckpt

    fmt = args.format or ("onnx" if args.out.suffix == ".onnx" else "safetensors")
    if fmt == "onnx":
        return cmd_export_onnx(args)
    if args.out.suffix != ".safetensors":
        raise VolganError(f"{args.out}: --out must end in .safetensors")
    if args.out.is_dir():
        raise VolganError(f"{args.out}: --out is a folder; give a file name ending in .safetensors")
    check_output_dir(args.out.parent, "--out's folder")
    path = ckpt.resolve_checkpoint(args.checkpoint)
    state = ckpt.load_checkpoint(path)
    ckpt.require_keys(state, (*ckpt.GENERATOR_KEYS, *ckpt.EXPORT_PARTS[args.which]), path)
    ckpt.export_safetensors(state, args.out, args.which, source=path)
    print(f"wrote {args.out} ({args.which} weights, step {state['step']}) from {path}")
    return 0


def cmd_export_onnx(args: Any) -> int:
    """`volgan export --format onnx`: --out must end in .onnx; --which ema (default) or generator."""
    from volgan.onnx_export import export_onnx

    if args.out.suffix != ".onnx":
        raise VolganError(f"{args.out}: with --format onnx, --out must end in .onnx")
    if args.out.is_dir():
        raise VolganError(f"{args.out}: --out is a folder; give a file name ending in .onnx")
    if args.which == "all":
        raise VolganError("--format onnx writes one generator: --which ema or --which generator")
    check_output_dir(args.out.parent, "--out's folder")
    meta = export_onnx(args.checkpoint, args.out, ema=args.which == "ema")
    checked = (
        f"; onnxruntime matches PyTorch to {meta['max_abs_diff']:.2g} (intensity units, batches 1 and 3)"
        if "max_abs_diff" in meta
        else "; not checked (onnxruntime is not installed)"
    )
    print(f"wrote {args.out} ({meta['weights']} generator, step {meta['step']}){checked}")
    return 0
