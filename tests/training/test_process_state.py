"""No hidden side effects (issue 16, item 6): importing volgan, building its objects and training
leave the process-wide state as they found it; what fit() sets, it sets inside and puts back."""

from __future__ import annotations

import platform
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conftest import tiny_config, tiny_data
from volgan import perf
from volgan.config import PerfConfig
from volgan.training import Trainer


def process_state() -> dict[str, Any]:
    """What volgan could change process-wide (mallopt cannot be read back: perf records it)."""
    return {
        "torch_rng": torch.get_rng_state().numpy().tobytes(),
        "initial_seed": torch.initial_seed(),
        "numpy_rng": str(np.random.get_state()[1].tolist()[:8]),
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "grad_enabled": torch.is_grad_enabled(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "sigint": signal.getsignal(signal.SIGINT),
        "sigterm": signal.getsignal(signal.SIGTERM),
        "allocator_tuned": perf.allocator_tuned(),
    }


def test_building_and_training_a_trainer_leaves_the_process_state_alone(tmp_path: Path) -> None:
    perf.restore_allocator()  # another test may have tuned it for good
    torch.manual_seed(123)
    torch.randn(3)  # a state no seed call gives
    before = process_state()
    trainer = Trainer(tiny_config(tmp_path / "run", train={"steps": 2}), tiny_data())
    assert process_state() == before
    seen: dict[str, Any] = {}
    step = trainer.train_step

    def observed() -> dict[str, float]:  # what fit() runs under
        seen.update(process_state())
        return step()

    trainer.train_step = observed  # type: ignore[method-assign]
    trainer.fit()
    assert process_state() == before
    assert seen["allocator_tuned"] is (platform.libc_ver()[0] == "glibc")  # perf.tune_allocator applied inside
    assert seen["sigint"] != before["sigint"] and seen["sigterm"] != before["sigterm"]
    assert seen["torch_rng"] != before["torch_rng"]  # the run's own stream was in the global generator


def test_the_global_seed_does_not_change_a_run(tmp_path: Path) -> None:
    data = tiny_data()
    torch.manual_seed(1)
    a = Trainer(tiny_config(tmp_path / "a", train={"steps": 2}), data)
    a.fit()
    torch.manual_seed(2)
    b = Trainer(tiny_config(tmp_path / "b", train={"steps": 2}), data)
    torch.randn(10)  # draws between building and training do not shift the run's stream
    b.fit()
    for (name, p), q in zip(a.generator.state_dict().items(), b.generator.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(a.state_dict()["rng"]["torch"], b.state_dict()["rng"]["torch"])


def test_backend_settings_set_the_cuda_flags_inside_and_restore_them() -> None:
    """Only Python flags are set for a CUDA device, so this runs on any machine."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        with perf.backend_settings(PerfConfig(tf32=True, cudnn_benchmark=True), torch.device("cuda")):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
            assert torch.backends.cudnn.benchmark
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def test_backend_settings_undo_only_the_allocator_setting_they_applied() -> None:
    perf.restore_allocator()
    with perf.backend_settings(PerfConfig(), torch.device("cpu")):
        assert perf.allocator_tuned() is True
    assert perf.allocator_tuned() is False
    perf.tune_allocator()  # set for good by someone else (a CLI command): a run leaves it set
    with perf.backend_settings(PerfConfig(), torch.device("cpu")):
        pass
    assert perf.allocator_tuned() is True
    perf.restore_allocator()


def test_importing_volgan_changes_no_process_state() -> None:
    code = """
import signal, torch
def state():
    return (torch.get_rng_state().numpy().tobytes(), torch.initial_seed(), torch.get_num_threads(),
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
            signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
before = state()
import volgan, volgan.api, volgan.training, volgan.perf, volgan.synthetic, volgan.sampling
assert state() == before
assert volgan.perf.allocator_tuned() is False
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
