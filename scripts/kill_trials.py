#!/usr/bin/env python
"""Kill-safety trials: stop a real ``volgan train`` at random moments, then check its run folder and resume it.

Each trial starts ``python -m volgan train`` on a tiny 16³ config that writes a checkpoint after
every step, waits a seeded random time inside the run's active period and stops it:

- ``first-write``: SIGKILL the moment the temp file of the very first checkpoint appears;
- ``later-write``: SIGKILL the moment a later checkpoint's temp file appears;
- ``random``:      SIGKILL at a random time after the run has started;
- ``sigterm``:     SIGTERM after a random time; the run must exit 130 with a final checkpoint.

Then it checks that (a) every ``step_*.pt`` in ``RUN/checkpoints`` loads with
:func:`volgan.checkpoint.load_checkpoint` (temp files ``.step_*.tmp`` may be left, but are never
listed or resolved), and (b) ``volgan train --resume RUN --steps <newest + 2>`` exits 0 and writes
that later checkpoint, taking over the lock the killed process left (a run killed before its
first checkpoint restarts from scratch in the same folder instead). Prints one line per trial and
a summary table; exits 1 on any failure::

    OMP_NUM_THREADS=1 python scripts/kill_trials.py --trials 20 --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODES = ("first-write", "random", "sigterm", "later-write", "random")  # cycled: any 3 trials cover all kinds
STEPS = 100_000  # never reached: every trial stops the run itself
RANDOM_WINDOW_S = 2.5  # `random` kills land this long after the run started: before and after its first checkpoint
START_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 120.0
TINY = [
    *("--set", "data.size=16", "--set", "model.ngf=4", "--set", "model.ndf=4"),
    *("--set", "model.latent_dim=8", "--set", "model.embed_dim=4"),
    *("--set", "train.batch_size=2", "--set", "train.wgan_gp.n_critic=1"),
    *("--set", "log.checkpoint_every=1", "--set", "log.keep_checkpoints=3", "--set", "log.every=1"),
    *("--set", "log.image_every=1000000", "--set", "log.progress_bar=false", "--device", "cpu"),
]
_STEP = re.compile(r"^step_(\d+)\.pt$")
_TEMP = re.compile(r"^\.step_\d+\.pt\..*\.tmp$")


@dataclass
class Trial:
    index: int
    mode: str
    killed_at: float = 0.0  # seconds after the run started (config.yaml written)
    newest: int | None = None  # newest checkpoint step after the kill
    temps_left: int = 0
    resumed_to: int | None = None
    survived: bool = False  # check (a), and for SIGTERM: exit 130 with a final checkpoint
    resumed: bool = False  # check (b)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.survived and self.resumed and not self.problems


def write_data(root: Path, classes: int = 2, per_class: int = 3, size: int = 16) -> Path:
    """ROOT/c<k>/v<i>.npy: tiny 16³ volumes with a class-dependent mean."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            np.save(root / f"c{k}" / f"v{i}.npy", (rng.normal(size=(size,) * 3) + 3 * k).astype(np.float32))
    return root


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Poll ``condition`` (tightly: a checkpoint write lasts milliseconds) until true; fail if the run exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise RuntimeError(f"training exited (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.0002)


def checkpoint_files(run: Path) -> tuple[list[tuple[int, Path]], list[Path], list[Path]]:
    """(finished step files by step, temp files, anything else) in RUN/checkpoints."""
    folder = run / "checkpoints"
    steps, temps, other = [], [], []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if m := _STEP.match(p.name):
            steps.append((int(m.group(1)), p))
        elif _TEMP.match(p.name):
            temps.append(p)
        else:
            other.append(p)
    return sorted(steps), temps, other


def has_temp(run: Path, step: int | None = None) -> bool:
    prefix = ".step_" if step is None else f".step_{step:08d}.pt."
    try:
        return any(e.name.startswith(prefix) and e.name.endswith(".tmp") for e in os.scandir(run / "checkpoints"))
    except FileNotFoundError:
        return False


def has_checkpoint(run: Path) -> bool:
    try:
        return any(_STEP.match(e.name) for e in os.scandir(run / "checkpoints"))
    except FileNotFoundError:
        return False


def check_folder(trial: Trial, run: Path) -> None:
    """Check (a): every finished checkpoint loads; temp files are never listed or resolved."""
    from volgan.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint
    from volgan.errors import CheckpointError

    steps, temps, other = checkpoint_files(run)
    trial.temps_left = len(temps)
    if other:
        trial.problems.append(f"unexpected files in checkpoints/: {[p.name for p in other]}")
    for step, path in steps:
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            trial.problems.append(f"a finished checkpoint does not load: {e}")
            continue
        if state.get("step") != step:
            trial.problems.append(f"{path.name} holds step {state.get('step')}")
    listed = list_checkpoints(run)
    if listed != [p for _, p in steps]:
        trial.problems.append(f"list_checkpoints gives {[p.name for p in listed]}")
    if steps:
        trial.newest = steps[-1][0]
        if resolve_checkpoint(run) != steps[-1][1]:
            trial.problems.append(f"resolve_checkpoint picks {resolve_checkpoint(run).name}")
    trial.survived = not trial.problems


def check_sigterm(trial: Trial, run: Path, code: int, log: str) -> None:
    """A SIGTERM-ed run exits 130, leaves no temp file or lock, and its newest checkpoint is its last step."""
    if code != 130:
        trial.problems.append(f"SIGTERM: exit code {code}, expected 130")
    if trial.temps_left:
        trial.problems.append("SIGTERM: a clean stop left temp files")
    if (run / ".lock").exists():
        trial.problems.append("SIGTERM: the lock file was not released")
    logged = [int(m) for m in re.findall(r'"step": (\d+)', (run / "stats.jsonl").read_text())]
    if trial.newest is None or not logged or trial.newest != max(logged):
        trial.problems.append(
            f"SIGTERM: newest checkpoint {trial.newest}, last logged step {max(logged, default=None)}"
        )
    if f"step_{trial.newest or 0:08d}.pt" not in log:
        trial.problems.append("SIGTERM: the final checkpoint is not the one the run reported")
    trial.survived = not trial.problems


def restart(trial: Trial, run: Path, data: Path, env: dict[str, str], stale_lock: bool) -> None:
    """Check (b): resume to newest + 2 (or, with no checkpoint yet, train 2 steps afresh in the same folder)."""
    from volgan.checkpoint import load_checkpoint, newest_checkpoint

    py = [sys.executable, "-m", "volgan", "train"]
    if trial.newest is not None:
        target = trial.newest + 2
        cmd = [*py, "--resume", str(run), "--steps", str(target)]
    else:
        target = 2
        cmd = [*py, "--data", str(data), "--run-dir", str(run), "--steps", str(target), *TINY]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        trial.problems.append(f"restart did not finish within {EXIT_TIMEOUT_S:.0f} s")
        return
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        trial.problems.append(f"restart exited {proc.returncode}: {tail}")
        return
    if stale_lock and "taking over a stale lock" not in proc.stderr:
        trial.problems.append("restart did not report taking over the stale lock")
    newest = newest_checkpoint(run)
    if newest is None or load_checkpoint(newest)["step"] != target:
        trial.problems.append(f"restart to step {target} left newest checkpoint {newest}")
        return
    trial.resumed_to = target
    trial.resumed = not trial.problems


def run_trial(index: int, mode: str, rng: random.Random, workdir: Path, data: Path, env: dict[str, str]) -> Trial:
    trial = Trial(index, mode)
    run = workdir / f"trial_{index:02d}"
    shutil.rmtree(run, ignore_errors=True)
    log_path = workdir / f"trial_{index:02d}.log"
    cmd = [sys.executable, "-m", "volgan", "train", "--data", str(data), "--run-dir", str(run)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*cmd, "--steps", str(STEPS), *TINY], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # the active period starts when fit() writes config.yaml, under the run's lock
        wait_for(lambda: (run / "config.yaml").exists(), proc, START_TIMEOUT_S, "the run started")
        started = time.monotonic()
        if mode == "first-write":
            wait_for(lambda: has_temp(run, 1) or has_checkpoint(run), proc, START_TIMEOUT_S, "the first checkpoint")
        elif mode == "later-write":
            wait_for(lambda: has_checkpoint(run), proc, START_TIMEOUT_S, "the first checkpoint")
            time.sleep(rng.uniform(0.2, 1.5))
            wait_for(lambda: has_temp(run), proc, START_TIMEOUT_S, "a checkpoint write")
        elif mode == "random":
            time.sleep(rng.uniform(0.0, RANDOM_WINDOW_S))
        else:  # sigterm: once the first checkpoint exists, the signal handlers are installed
            wait_for(lambda: has_checkpoint(run), proc, START_TIMEOUT_S, "the first checkpoint")
            time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            raise RuntimeError(f"training exited (code {proc.returncode}) before it was stopped")
        proc.send_signal(signal.SIGTERM if mode == "sigterm" else signal.SIGKILL)
        trial.killed_at = time.monotonic() - started
        code = proc.wait(timeout=EXIT_TIMEOUT_S)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        proc.kill()
        proc.wait()
        trial.problems.append(str(e))
        return trial
    stale_lock = (run / ".lock").exists()
    check_folder(trial, run)
    if mode == "sigterm":
        check_sigterm(trial, run, code, log_path.read_text(errors="replace"))
    elif code != -signal.SIGKILL:
        trial.problems.append(f"exit code {code}, expected death by SIGKILL")
    restart(trial, run, data, env, stale_lock)
    return trial


def describe(t: Trial) -> str:
    signal_name = "SIGTERM" if t.mode == "sigterm" else "SIGKILL"
    at = f"{signal_name} at {t.killed_at:5.2f}s"
    newest = f"newest step {t.newest}" if t.newest is not None else "no checkpoint yet"
    temps = f", {t.temps_left} temp left" if t.temps_left else ""
    how = "resumed" if t.newest is not None else "restarted"
    after = f"{how} to step {t.resumed_to}" if t.resumed_to is not None else "no restart"
    verdict = "OK" if t.ok else "FAIL: " + "; ".join(t.problems)
    return f"trial {t.index:2d}  {t.mode:<11}  {at}  {newest}{temps}  -> {after}  {verdict}"


def summary(trials: list[Trial]) -> str:
    rows = [(mode, [t for t in trials if t.mode == mode]) for mode in dict.fromkeys(MODES)]
    rows.append(("all", trials))
    lines = [
        "| stop            | trials | kills survived | resumes OK | failures |",
        "|-----------------|-------:|---------------:|-----------:|---------:|",
    ]
    for name, group in rows:
        if group:
            survived, resumed = sum(t.survived for t in group), sum(t.resumed for t in group)
            failures = sum(not t.ok for t in group)
            lines.append(f"| {name:<15} | {len(group):6d} | {survived:14d} | {resumed:10d} | {failures:8d} |")
    mid_write = sum(t.temps_left > 0 for t in trials)
    lines.append(
        f"({mid_write} of {len(trials)} stops landed mid-write and left a temp file, never listed as a checkpoint)"
    )
    failures = sum(not t.ok for t in trials)
    lines.append(
        f"summary: {len(trials)} trials, {sum(t.survived for t in trials)} kills survived, "
        f"{sum(t.resumed for t in trials)} resumes OK, {failures} failures"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="number of trials (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stop times (default 0)")
    parser.add_argument("--workdir", type=Path, help="keep data, runs and logs here (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    import torch

    torch.set_num_threads(1)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="volgan-kill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = write_data(workdir / "data")
    env = {**os.environ, "VOLGAN_CACHE_DIR": str(workdir / "cache"), "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    trials = []
    for i in range(args.trials):
        rng = random.Random(f"{args.seed}-{i}")
        trial = run_trial(i, MODES[i % len(MODES)], rng, workdir, data, env)
        print(describe(trial), flush=True)
        trials.append(trial)
    print(summary(trials))
    failed = any(not t.ok for t in trials)
    if failed or args.workdir:
        print(f"runs and logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
