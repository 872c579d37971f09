"""Side-by-side timing: one worker process per contender, rounds alternated A B A B …, medians.

Separate processes keep process-wide settings (allocator, thread pools, caches of compiled kernels)
of one contender from helping or hurting another; alternating rounds spreads the machine's drift
over all of them. A worker imports ``module:function``, calls it with keyword arguments to get a
``Contender`` (setup and warm-up happen there) and then answers commands on stdin:

    run   -> runs one round, prints its seconds
    flops -> runs one round under a FLOP counter, prints the count
    peak  -> prints the peak memory in bytes (CUDA allocator, else the process's peak RSS)
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

HERE = Path(__file__).resolve().parent
# the perf.* switches --ablation turns off one at a time (the CUDA-only ones change nothing on a CPU)
SWITCHES = ("channels_last", "fused_norm", "subpixel_conv", "dense_stem", "tune_allocator")
DEFAULT_YARDSTICK = HERE.parents[1] / "shared" / "bench" / "naive_cwgan.py"


@dataclass
class Contender:
    """What a worker times: ``round()`` does one unit of work (``volumes`` volumes) on ``device``."""

    round: Callable[[], object]
    volumes: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class FlopCount(TorchDispatchMode):
    """Counts matrix-product/convolution FLOPs with torch's own formulas (``torch.utils.flop_counter``).

    Unlike ``FlopCounterMode`` it tracks no modules, so it also counts inside ``autograd.grad``
    (the gradient penalty's double backward), which the module tracker refuses.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:
            # Under inference_mode composite ops such as conv3d arrive undecomposed: decompose them
            # so the convolution inside reaches this mode.
            with self:  # the mode is popped while it runs; push it again for the decomposition
                decomposed = func.decompose(*args, **kwargs)
            return func(*args, **kwargs) if decomposed is NotImplemented else decomposed
        out = func(*args, **kwargs)
        self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker_main() -> None:
    target, kwargs = sys.argv[1], json.loads(sys.argv[2])
    module_name, function = target.split(":")
    sys.path.insert(0, str(HERE))
    contender: Contender = getattr(importlib.import_module(module_name), function)(**kwargs)
    contender.round()  # warm-up: first-touch allocations, oneDNN primitive caches, cuDNN autotuning
    _sync(contender.device)
    print(json.dumps({"ready": contender.volumes}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            _sync(contender.device)
            start = time.perf_counter()
            contender.round()
            _sync(contender.device)
            print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
        elif command == "flops":
            with FlopCount() as counter:
                contender.round()
            print(json.dumps({"flops": counter.total}), flush=True)
        elif command == "peak":
            print(json.dumps({"peak": _peak_bytes(contender.device)}), flush=True)
        else:
            return


class Worker:
    def __init__(self, name: str, target: str, env: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_harness.py"), target, json.dumps(kwargs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.volumes = int(self._ask(None)["ready"])
        self.times: list[float] = []
        self.flops = 0
        self.peak = 0

    def _ask(self, command: str | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"benchmark worker {self.name!r} died (exit code {self.proc.wait()})")
        return dict(json.loads(line))

    def run(self) -> None:
        self.times.append(float(self._ask("run")["seconds"]))

    def finish(self, count_flops: bool) -> None:
        if count_flops:
            self.flops = int(self._ask("flops")["flops"])
        self.peak = int(self._ask("peak")["peak"])
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the worker's loop ends at end of input
        self.proc.wait()

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def add_contender_args(ap: Any) -> None:
    """The options train_step.py and sample.py share: --ablation and --yardstick."""
    ap.add_argument("--ablation", action="store_true", help="also run volgan with each perf switch off, and all off")
    ap.add_argument(
        "--yardstick",
        default=str(DEFAULT_YARDSTICK),
        help="path of naive_cwgan.py, or 'none' to compare volgan's variants only (ratios to the first row)",
    )


def start_contenders(module: str, args: Any, **shape: Any) -> list[Worker]:
    """Workers for ``module``'s ``yardstick`` (unless --yardstick none) and ``volgan`` contenders, the
    latter once with every fast path and, with --ablation, with each perf switch off and all off."""
    with_yardstick = args.yardstick != "none"
    if with_yardstick and not Path(args.yardstick).exists():
        raise SystemExit(f"yardstick not found: {args.yardstick} (pass --yardstick PATH, or --yardstick none)")
    variants: list[tuple[str, dict[str, Any]]] = [("volgan", {})]
    if args.ablation:
        from volgan.config import PerfConfig

        default = PerfConfig()
        # each switch flipped from its default (e.g. "fused_norm=off", "dense_stem=on")
        variants += [
            (f"volgan, {s}={'off' if getattr(default, s) else 'on'}", {s: not getattr(default, s)}) for s in SWITCHES
        ]
        variants += [("volgan, all perf off", dict.fromkeys(SWITCHES, False))]
    workers = [Worker("yardstick", f"{module}:yardstick", **shape, path=args.yardstick)] if with_yardstick else []
    return workers + [Worker(name, f"{module}:volgan", **shape, perf=perf) for name, perf in variants]


def race(workers: list[Worker], rounds: int, count_flops: bool = True) -> None:
    """Alternate one round per worker, ``rounds`` times; then count FLOPs and read peak memory."""
    for _ in range(rounds):
        for w in workers:
            w.run()
    for w in workers:
        w.finish(count_flops)


def table(workers: list[Worker], unit: str, baseline: Worker, per: int = 1) -> str:
    """Rows of median seconds per ``unit``, volumes/s, GFLOP/s, peak memory and ratio to ``baseline``.

    ``per``: how many units one round holds (e.g. n_critic critic steps).
    """
    lines = [f"{'':<28}{f's/{unit}':>14}{'volumes/s':>11}{'GFLOP/s':>9}{'peak MiB':>10}{'ratio':>7}"]
    for w in workers:
        sec = w.seconds / per
        gflops = w.flops / w.seconds / 1e9 if w.flops else float("nan")
        lines.append(
            f"{w.name:<28}{sec:>14.4f}{w.volumes / w.seconds:>11.2f}{gflops:>9.1f}"
            f"{w.peak / 2**20:>10.0f}{baseline.seconds / w.seconds:>6.2f}x"
        )
    return "\n".join(lines)


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{time.strftime('%Y-%m-%d')}, {cpu} ({os.cpu_count()} CPUs){gpu}, torch {torch.__version__}"


def load_yardstick(path: Path) -> Any:
    import importlib.util

    if not path.exists():
        raise SystemExit(f"yardstick not found: {path} (pass --yardstick)")
    spec = importlib.util.spec_from_file_location("naive_cwgan", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    worker_main()
