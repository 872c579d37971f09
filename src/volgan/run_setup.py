"""The one set-up of a training run that ``volgan train`` and :func:`volgan.train` share.

Both resolve the config (:mod:`volgan.planning.setup`), refuse a run folder that is unsafe or in use
before any data is read (:func:`check_run_dir`), read their data their own way (a folder for the
CLI; a folder, VolumeSet or Dataset for the API), then :func:`start_trainer` builds the run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from volgan import distributed
from volgan.config import Config
from volgan.data.volume_set import VolumeSet
from volgan.errors import ConfigError
from volgan.planning.planner import Plan
from volgan.planning.setup import write_plan
from volgan.runlock import check_unlocked
from volgan.safety import check_output_dir, safe_names
from volgan.training import Trainer

log = logging.getLogger("volgan")


def check_run_dir(cfg: Config, what: str = "run_dir") -> None:
    """Refuse a run folder that cannot be written or that another training holds (``what`` names
    the setting in the message); ``fit()`` takes the folder's lock itself."""
    check_output_dir(Path(cfg.run_dir), what)
    check_unlocked(Path(cfg.run_dir))


def start_trainer(
    cfg: Config,
    volumes: VolumeSet,
    *,
    plan: Plan | None = None,
    resume: Path | None = None,
    resume_state: dict[str, Any] | None = None,
    dist: distributed.DistContext = distributed.SINGLE,
    source: str = "data",
    started: float | None = None,
) -> Trainer:
    """The run's :class:`Trainer` over ``volumes``, its plan (if planned) printed and kept as ``RUN/plan.json``.

    ``source`` names the data in errors (class names that sampling could not keep apart are refused
    now, not after training). ``started``: the command's start (``time.perf_counter()``); a new run
    with a budget counts the seconds since then (planning, reading the data; at most half the budget)
    as trained, so that ``--minutes N`` ends the command near N minutes."""
    if volumes.size != cfg.data.size:
        raise ConfigError(f"data.size is {cfg.data.size} but the volumes are {volumes.size}³; leave data.size out")
    safe_names(volumes.class_names, source)
    trainer = Trainer(cfg, volumes, resume=resume, resume_state=resume_state, dist=dist)
    if started is not None and resume is None and cfg.train.budget_minutes:
        # every rank counts the same seconds: the learning-rate schedule reads them
        spent = distributed.mean_values({"setup": time.perf_counter() - started}, dist, trainer.device)["setup"]
        spent = min(spent, 30 * cfg.train.budget_minutes)  # at most half: a new run always trains
        trainer.trained_seconds = spent
        if dist.is_main:
            log.info(
                "planning and reading the data took %.0f s of the %g-minute budget", spent, cfg.train.budget_minutes
            )
    if plan is not None and dist.is_main:
        log.info("planned for %g min (%s):\n%s", plan.minutes, plan.budget_from, plan.summary())
        write_plan(Path(cfg.run_dir), plan)
    return trainer
