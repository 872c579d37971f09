"""The planner: a dataset's fingerprint, this machine's step times and a time budget -> a full recipe.

Every rule below is one the project measured (docs/planner.md names each measurement); rules for
cases nobody has measured yet (budgets of hours, GPUs) are planned from step-time arithmetic and
say so in their reason. Anything the user set (``--config``, ``--preset``, ``--set``) wins over
the plan and is shown as theirs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from volgan.config import merge_dicts, renamed_keys, unflatten
from volgan.errors import ConfigError
from volgan.planning.fingerprint import Fingerprint
from volgan.planning.probe import StepTime, scaled, time_config

DEFAULT_MINUTES = 30.0
# Generator steps a family needs before its samples are worth having (docs/planner.md, the data.size rule).
MIN_STEPS = {"wgan_gp": 1000, "dcgan": 2000}
# The full widths (32) only where the budget holds this many of their steps (planned, not measured).
WIDE_STEPS = {"wgan_gp": 3000, "dcgan": 6000}
# WGAN-GP rates fall to 0 only where the budget holds this many steps; in a shorter run they stop part-way,
# at 1 - steps / POLISH_STEPS of their start (docs/planner.md, the train.lr_decay rule).
POLISH_STEPS = 4000
GRIDS = (32, 64, 128)
# A GPU candidate is planned only if its step's peak memory stays under this share of the device's.
MEMORY_SHARE = 0.8
MAX_GRID = {"cpu": 64, "cuda": 128}
# The probe may spend this share of the budget (and at least MIN_PROBE_S seconds on the first timing).
PROBE_SHARE = 0.015  # (the fingerprint comes on top: the two together stay under 2 %)
MIN_PROBE_S = 2.0
# train.steps is this many times the predicted steps: a probe slowed by another job must not end the run early.
STEPS_MARGIN = 10
# The generator's last layer (docs/planner.md: five side-by-side runs, masks and voxel shapes).
RESIZE_REASON = (
    "up-sampling then a 3³ convolution: 1.3-7x fewer holes per volume than the transposed head in 5 of 5 "
    "runs measured, FD at the end ahead or within the real-vs-real spread, the same step cost"
)

# On two-valued data the critic sees the top-hats from this part of the run on (docs/planner.md).
TOP_HATS_FROM = 0.5
TOP_HATS_REASON = (
    "from half-way the discriminator also sees the volume's top-hats (pinholes, thin walls): holes per shape at "
    "20 minutes within 21 % of real's in 3 of 3 seeds (2.7-4.2x real's without), FD behind (measured on voxel shapes)"
)
WGAN_TOP_HATS_REASON = (
    "from half-way the critic also sees the mask's top-hats (pinholes, thin walls): on 64³ masks in 30 minutes "
    "1.3-2x fewer holes than without in 2 of 2 paired seeds, FD level or ahead in both feature spaces"
)

# Samples cleaned as the training data are clean (docs/planner.md: re-scored checkpoints, both sets).
CLEAN_REASON = (
    "pieces smaller than the training volumes hold are removed (occupancy data written 0/1, pin-holes closed where "
    "the training volumes have none): in 10 re-scored runs 1.0-1.2 pieces per volume at the end in 8 (real "
    "1.0-1.07, 2.3-212 as generated), judge-FD lower in 7 and in every one with this plan's head on occupancy data"
)


@dataclass(frozen=True)
class Choice:
    """One planned setting: its dotted key, value, why, and who chose it ("plan" or "you")."""

    key: str
    value: Any
    reason: str
    by: str = "plan"


@dataclass
class Plan:
    """What :func:`make_plan` decided, with its reasons (``plan.json`` in the run folder)."""

    minutes: float
    budget_from: str
    device: str
    threads: int
    fingerprint: Fingerprint
    choices: list[Choice]
    step_time: StepTime
    predicted_steps: int
    probes: list[StepTime] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    planning_seconds: float = 0.0

    def value(self, key: str) -> Any:
        return next(c.value for c in self.choices if c.key == key)

    def overrides(self) -> dict[str, Any]:
        """The planned settings as a nested mapping (the user's own settings are merged on top later)."""
        out: dict[str, Any] = {}
        for c in self.choices:
            if c.by == "plan":
                out = merge_dicts(out, unflatten(c.key, c.value))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "minutes": self.minutes,
            "budget_from": self.budget_from,
            "device": self.device,
            "threads": self.threads,
            "predicted_steps": self.predicted_steps,
            "seconds_per_step": self.step_time.to_dict(),
            "choices": [{"key": c.key, "value": c.value, "by": c.by, "reason": c.reason} for c in self.choices],
            "probes": [p.to_dict() for p in self.probes],
            "notes": self.notes,
            "planning_seconds": self.planning_seconds,
            "fingerprint": self.fingerprint.to_dict(),
        }

    def summary(self) -> str:
        """The plan in one screen: budget, the predicted steps, then each setting and its reason."""
        t = self.step_time
        head = [
            f"budget:   {self.minutes:g} min of training ({self.budget_from})",
            f"machine:  {self.device}, {self.threads} threads; {t.seconds:.3g} s per generator step "
            f"({t.how}) -> ~{self.predicted_steps} steps",
            f"planning: {self.planning_seconds:.1f} s (fingerprint and probe)",
            "",
        ]
        width = max(len(c.key) for c in self.choices)
        shown = max(8, *(len(_fmt(c.value)) for c in self.choices))
        rows = []
        for c in self.choices:
            mark = "  [set by you]" if c.by == "you" else ""
            rows.append(f"  {c.key:<{width}}  {_fmt(c.value):<{shown}} {c.reason}{mark}")
        return "\n".join(head + rows + [f"note: {n}" for n in self.notes])


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"wgan_gp": {"n_critic": 2}}}`` -> ``{"train.wgan_gp.n_critic": 2}``."""
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out |= flatten(v, key + ".")
        else:
            out[key] = v
    return out


def _fmt(value: Any) -> str:
    """As YAML would say it: 1e-04, null, [0, 100]."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


class _Timer:
    """Step times for (grid, width) candidates: timed here while the probe's share of the budget
    lasts, else scaled from the nearest timed candidate."""

    def __init__(self, config_for: Callable[[int, int], dict[str, Any]], num_classes: int, allowance_s: float):
        self.config_for, self.num_classes = config_for, num_classes
        self.allowance_s, self.spent_s = allowance_s, 0.0
        self.timed: dict[tuple[int, int], StepTime] = {}

    def measure(self, grid: int, width: int) -> StepTime:
        import torch

        start = time.perf_counter()
        try:
            result = time_config(self.config_for(grid, width), self.num_classes)
        except torch.OutOfMemoryError:  # this candidate does not fit the GPU: never planned
            torch.cuda.empty_cache()
            result = StepTime(grid, width, math.inf, True, "out of GPU memory here", math.inf)
        self.spent_s += time.perf_counter() - start
        self.timed[(grid, width)] = result
        return result

    def estimate(self, grid: int, width: int) -> StepTime:
        """Timed if it was, else scaled from the timed candidate closest in work (the cheapest
        candidate is timed first, so there is always one)."""
        if not self.timed:
            self.measure(min(grid, GRIDS[0]), width)
        if (grid, width) in self.timed:
            return self.timed[(grid, width)]
        base = min(self.timed.values(), key=lambda t: abs((t.grid / grid) ** 3 * (t.width / width) - 1))
        return scaled(base, grid, width)

    def get(self, grid: int, width: int) -> StepTime:
        """Timed here if it was, or if timing it fits what is left of the probe's share; else the estimate."""
        guess = self.estimate(grid, width)
        if guess.measured or self.spent_s + 3 * guess.seconds + 1.0 > self.allowance_s:
            return guess
        return self.measure(grid, width)


def _family(fp: Fingerprint, grid: int) -> str:
    """The 3D-GAN for occupancy grids trained on their own grid, where it was measured (32³); the
    WGAN-GP for everything else: intensities, and masks resampled to a coarser grid (docs/planner.md)."""
    return "dcgan" if fp.occupancy_like and grid <= 32 and fp.native_edge <= grid else "wgan_gp"


def _top_grid(fp: Fingerprint, device: str) -> int:
    """The finest grid worth training: the largest of 32/64/128 the data fill (a quarter of
    upsampling allowed), at most 64 on a CPU and 128 on a GPU."""
    cap = MAX_GRID["cuda" if device.startswith("cuda") else "cpu"]
    fits = [g for g in GRIDS if g <= max(32, 1.25 * fp.native_edge) and g <= cap]
    return fits[-1]


# long: the planner's decisions in the order they depend on each other, each a helper call with its reason
def make_plan(
    fp: Fingerprint,
    minutes: float | None,
    user: Mapping[str, Any] | None = None,
    *,
    device: str = "cpu",
    threads: int = 1,
    memory_gb: float | None = None,
    timer: Callable[[int, int], StepTime] | None = None,
) -> Plan:
    """Plan a run for ``fp`` in ``minutes`` (None: :data:`DEFAULT_MINUTES`).

    ``user``: the settings the user gave (a nested mapping); they win over the plan. ``memory_gb``:
    the GPU's memory (candidates needing more than :data:`MEMORY_SHARE` of it are not planned).
    ``timer``: seconds per generator step for (grid, width) (default: the probe, timing candidates here).
    """
    start = time.perf_counter()
    budget_from = "--minutes" if minutes is not None else f"default: no --minutes given, {DEFAULT_MINUTES:g} min"
    minutes = DEFAULT_MINUTES if minutes is None else float(minutes)
    if not minutes > 0:
        raise ConfigError(f"--minutes must be > 0, got {minutes:g}")
    given = flatten(renamed_keys(dict(user or {}), "your settings"))
    budget_s = 60 * minutes
    family = given.get("model.family") or _family(fp, int(given.get("data.size", _top_grid(fp, device))))
    conditional = fp.num_classes >= 2

    def binary_at(grid: int) -> bool:
        """Occupancy on its own grid or finer stays two-valued; resampled coarser it holds partial volumes."""
        return bool(given.get("data.binary", fp.occupancy_like and fp.native_edge <= grid))

    def config_for(grid: int, width: int) -> dict[str, Any]:
        cand = _recipe(family, grid, width, conditional, minutes, binary_at(grid), predicted=10**8)
        return merge_dicts(cand, {"device": device, **{k: v for k, v in (user or {}).items() if k != "data"}})

    probe = None
    estimate: Callable[[int, int], StepTime]
    if timer is None:
        probe = _Timer(config_for, fp.num_classes, max(MIN_PROBE_S, PROBE_SHARE * budget_s))
        timer, estimate = probe.get, probe.estimate
    else:
        estimate = timer  # a given timer is exact: nothing to estimate
    widths = [int(given["model.ngf"])] if "model.ngf" in given else [16, 32]
    decided = _decide(fp, family, given, widths, budget_s, device, timer, estimate, memory_gb)
    step = timer(decided.grid, decided.width)
    predicted = int(budget_s / step.seconds)
    if predicted < 1:
        raise ConfigError(
            f"{minutes:g} minutes hold no generator step at {decided.grid}³ on this machine; "
            f"the smallest plan needs ~{step.seconds:.0f} s"
        )
    short = predicted < MIN_STEPS[family]  # from the step time the plan rests on (timed here where it could be)
    if short:
        decided.notes.append(
            f"the budget holds ~{predicted} steps at {decided.grid}³, fewer than the ~{MIN_STEPS[family]} the "
            f"measured runs needed: expect rough samples; --minutes {math.ceil(MIN_STEPS[family] * step.seconds / 60)} "
            "would hold them"
        )
    binary = binary_at(decided.grid)
    recipe = flatten(_recipe(family, decided.grid, decided.width, conditional, minutes, binary, predicted, short))
    if fp.occupancy_like and not binary and "data.intensity_percentiles" not in given:
        recipe["data.intensity_percentiles"] = [0.0, 100.0]
    reasons = _reasons(fp, family, decided, conditional, minutes, predicted, step)
    reasons |= {"log.checkpoint_every": "about ten checkpoints over the run", "log.image_every": "~20 previews"}
    recipe["log.checkpoint_every"] = max(50, predicted // 10)
    recipe["log.image_every"] = max(25, predicted // 20)
    first = ("model.family", "data.size", "model.ngf")  # the choices the others follow from
    order = sorted(recipe, key=lambda k: first.index(k) if k in first else len(first))
    choices = [
        Choice(k, given[k], reasons.get(k, ""), "you") if k in given else Choice(k, recipe[k], reasons.get(k, ""))
        for k in order
    ]
    choices += [Choice(k, v, "", "you") for k, v in given.items() if k not in recipe and k != "data.root"]
    notes = list(decided.notes)
    if device.startswith("cuda"):
        notes.append(
            "GPU: these rules were measured on CPUs; on a GPU the plan follows from the step times and memory "
            "above and has not been checked against quality curves yet"
        )
    plan = Plan(
        minutes=minutes,
        budget_from=budget_from,
        device=device,
        threads=threads,
        fingerprint=fp,
        choices=choices,
        step_time=step,
        predicted_steps=predicted,
        probes=list(probe.timed.values()) if probe else [],
        notes=notes,
    )
    plan.planning_seconds = time.perf_counter() - start
    return plan


@dataclass
class _Decision:
    grid: int
    width: int
    grid_reason: str
    width_reason: str
    notes: list[str]


def _decide(
    fp: Fingerprint,
    family: str,
    given: dict[str, Any],
    widths: list[int],
    budget_s: float,
    device: str,
    timer: Callable[[int, int], StepTime],
    estimate: Callable[[int, int], StepTime],
    memory_gb: float | None = None,
) -> _Decision:
    """Grid and width: the finest grid whose budget holds the steps it needs at the narrowest width
    (and whose step fits the GPU's memory), then the full width only where the budget holds many of
    its steps."""
    narrow, notes = min(widths), []
    need = MIN_STEPS[family]

    def held(grid: int, width: int, threshold: int) -> int:
        """Steps the budget holds; timed here (``timer``) only where the estimate is near the threshold."""
        guess = estimate(grid, width).seconds
        if 0.5 * threshold <= budget_s / guess <= 2 * threshold:
            return int(budget_s / timer(grid, width).seconds)
        return int(budget_s / guess)

    def fits(grid: int, width: int) -> bool:
        used = estimate(grid, width).memory_gb
        if memory_gb is not None and used is not None and used > 0.5 * MEMORY_SHARE * memory_gb:
            used = timer(grid, width).memory_gb  # near the limit: measured
        return memory_gb is None or used is None or used <= MEMORY_SHARE * memory_gb

    if "data.size" in given:
        grid = int(given["data.size"])
        grid_reason = "your grid"
    else:
        top = grid = _top_grid(fp, device)
        while grid > GRIDS[0] and (held(grid, narrow, need) < need or not fits(grid, narrow)):
            grid //= 2
        steps = held(grid, narrow, need)
        if steps < need:
            grid_reason = f"the smallest grid planned: ~{steps} steps at width {narrow} (< {need}, see the note)"
        elif grid == top:
            grid_reason = (
                f"the data's {fp.native_edge}-voxel extent fills {grid}³; the budget holds ~{steps} steps at "
                f"width {narrow} (>= {need} needed)"
            )
        else:
            at_top = held(top, narrow, need)
            grid_reason = f"{top}³ would hold only ~{at_top} steps (< {need} needed); {grid}³ holds ~{steps}"
        if top == MAX_GRID["cpu"] and not device.startswith("cuda") and fp.native_edge > top:
            notes.append(f"grids above {top}³ are not planned on a CPU (too slow to train); set data.size to force")
    if len(widths) == 1:
        return _Decision(grid, widths[0], grid_reason, "your width", notes)
    wide = max(widths)
    wide_steps = held(grid, wide, WIDE_STEPS[family])
    if wide_steps >= WIDE_STEPS[family] and fits(grid, wide):
        width = wide
        width_reason = (
            f"the budget holds ~{wide_steps} steps at width {wide} (>= {WIDE_STEPS[family]}): the seed design's "
            "widths (planned, not yet measured against half widths at this length)"
        )
    else:
        width = narrow
        narrow_steps = held(grid, narrow, MIN_STEPS[family])
        width_reason = (
            f"~{narrow_steps} steps at width {narrow} vs ~{wide_steps} at {wide}: half widths reached the "
            "targets sooner in every CPU budget measured"
        )
    return _Decision(grid, width, grid_reason, width_reason, notes)


def _recipe(
    family: str,
    grid: int,
    width: int,
    conditional: bool,
    minutes: float,
    binary: bool,
    predicted: int,
    short: bool = False,
) -> dict[str, Any]:
    """The full recipe for one family, grid and width (the measured settings; docs/planner.md).
    ``predicted``: the steps the budget holds; ``short``: fewer than the family needs."""
    data: dict[str, Any] = {"size": grid}
    if binary:
        data["binary"] = True
    if family == "dcgan":
        train: dict[str, Any] = {
            "batch_size": 16 if width <= 16 else 32,
            "mode_seeking": 1.0,
            "lr_decay": "none",
            "ema_decay": 0.99,
        }
        model: dict[str, Any] = {
            "family": "dcgan",
            "ngf": width,
            "ndf": width,
            "top_hats": "both",
            "top_hats_from": TOP_HATS_FROM,
        }
    else:
        train = {
            "batch_size": 4,
            "wgan_gp": {"n_critic": 2 if width <= 16 else 5, "gp_weight": 10.0, "gp_every": None},
            "mode_seeking": 1.0,
            "lr_decay": "none" if short else "linear",  # rates falling to 0 within too few steps were far behind
            "ema_decay": 0.999,
        }
        if not short and decay_to(predicted):
            train["lr_decay_to"] = decay_to(predicted)
        if grid <= 32:
            train["mode_seeking_end"] = 0.0
        model = {"family": "wgan_gp", "ngf": width, "ndf": width, "ac_weight": 1.0 if conditional else 0.0}
        if binary:  # masks on their own grid: the top-hats from half-way (resampled, partial volumes: unmeasured)
            model |= {"top_hats": "both", "top_hats_from": TOP_HATS_FROM}
    model["output_head"] = "resize"
    train |= {"budget_minutes": minutes, "steps": STEPS_MARGIN * predicted}
    return {"data": data, "model": model, "train": train, "sample": {"clean": True}}


def decay_to(predicted: int) -> float:
    """train.lr_decay_to for a WGAN-GP run of ``predicted`` steps: 0 from POLISH_STEPS on, rising
    towards 1 (constant rates) as the run gets shorter."""
    return round(max(0.0, 1.0 - predicted / POLISH_STEPS), 2)


def _reasons(
    fp: Fingerprint,
    family: str,
    d: _Decision,
    conditional: bool,
    minutes: float,
    predicted: int,
    step: StepTime,
) -> dict[str, str]:
    if family == "dcgan":
        fam = (
            f"{fp.two_valued_share:.0%} of sampled volumes hold two values, on their own {fp.native_edge}-voxel "
            "grid: occupancy grids -> the 3D-GAN (sigmoid output, binary cross-entropy)"
        )
    elif fp.occupancy_like and fp.native_edge > d.grid:
        fam = (
            f"masks resampled from {fp.native_edge} to {d.grid} voxels hold partial volumes -> the conditional "
            "WGAN-GP (ahead of the 3D-GAN on resampled masks at every point measured)"
        )
    elif fp.occupancy_like:
        fam = f"occupancy grids at {d.grid}³: the 3D-GAN is measured at 32³ only -> the conditional WGAN-GP"
    else:
        fam = "intensity-valued volumes -> the conditional WGAN-GP (Tanh output, gradient penalty)"
    r = {
        "model.family": fam,
        "data.size": d.grid_reason,
        "data.binary": "two-valued volumes scaled exactly 0 -> -1, max -> +1 (no percentile clipping)",
        "data.intensity_percentiles": "min to max: percentile clipping would cut the foreground of sparse masks",
        "model.ngf": d.width_reason,
        "model.ndf": "as model.ngf",
        "train.budget_minutes": "the budget: the run stops here with a checkpoint, samples and figures",
        "train.steps": f"{STEPS_MARGIN}x the ~{predicted} steps predicted: the budget, not this, ends the run",
        "model.output_head": RESIZE_REASON,
        "sample.clean": CLEAN_REASON,
    }
    if family == "dcgan":
        r |= {
            "train.batch_size": "16 at half widths: more steps a minute, targets met on voxel shapes at 32³"
            if d.width <= 16
            else "the family's 32 at full widths",
            "train.mode_seeking": "the full mode-seeking term: one shape per class ends, diversity near real's",
            "train.lr_decay": "constant rates: a decay fitted to the budget was behind at every point measured",
            "train.ema_decay": "the family's 0.99: the averaged generator follows a run of a few thousand steps",
            "model.top_hats": TOP_HATS_REASON,
            "model.top_hats_from": "half-way: seen from the first step, the shapes were over-filled, further behind",
        }
        return r
    r |= {
        "train.batch_size": "4: the seed design (InstanceNorm, stable down to 1)",
        "train.wgan_gp.n_critic": "2 critic steps per generator step at half widths (measured); 5 at full widths"
        if d.width <= 16
        else "5: the seed design at full widths",
        "train.mode_seeking": "the mode-seeking term ends the collapse onto one volume per class",
        "train.lr_decay": "both rates fall linearly to train.lr_decay_to of their start at the end of the budget"
        if predicted >= MIN_STEPS[family]
        else f"constant rates: ~{predicted} steps are fewer than {MIN_STEPS[family]}, and rates falling to 0 "
        "within so few steps were far behind constant ones (measured)",
        "train.wgan_gp.gp_weight": "the gradient penalty's usual 10 (Gulrajani et al. 2017)",
        "train.wgan_gp.gp_every": (
            "lazy: the penalty once per generator step, weighted n_critic (more critic steps a second)"
        ),
        "train.ema_decay": "samples from the exponential moving average of the generator (warm-up over the run)",
        "model.ac_weight": "an auxiliary-classifier head keeps the class" if conditional else "one class: no head",
        "model.top_hats": WGAN_TOP_HATS_REASON,
        "model.top_hats_from": "half-way, as the 3D-GAN's: the first half trains at the plain step's cost",
    }
    if predicted >= MIN_STEPS[family] and decay_to(predicted):
        r["train.lr_decay_to"] = (
            f"~{predicted} steps are fewer than the ~{POLISH_STEPS} a decay to 0 was measured ahead with; "
            "falling to 0 within ~1450 steps was far behind one that stopped part-way (measured)"
        )
    if d.grid <= 32:
        r["train.mode_seeking_end"] = "at 32³ and below the term falls to 0 over the run: it clears the speckle"
    return r
