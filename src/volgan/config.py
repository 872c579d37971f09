"""Typed, validated configuration loaded from YAML.

One loader builds the nested models below; unknown keys, wrong types and out-of-range values
are rejected with one line that names the file and the dotted key.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import to_jsonable_python

from volgan.errors import ConfigError
from volgan.safety import DEFAULT_MAX_DECODED_GB, load_yaml, read_config_text, shown

log = logging.getLogger("volgan")

_NUMBERS = (int, float, int | None, float | None)


class _Section(BaseModel):
    # inf/NaN would pass the range checks below (inf >= 0) and only surface as NaN losses mid-run;
    # the docstring below each field is its description, the one source of config/default.yaml's
    # comments and of the configuration reference page (scripts/write_config_docs.py, docs/hooks)
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, use_attribute_docstrings=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _bool_is_not_a_number(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic reads true/false as 1/0; in YAML that is a slip (`steps: yes`), never a count
        if isinstance(v, bool) and info.field_name and cls.model_fields[info.field_name].annotation in _NUMBERS:
            raise ValueError(f"Input should be a number, got {v}")
        return v


class DataConfig(_Section):
    """Where the volumes come from and how they are brought onto the training grid."""

    root: str | None = None
    """a folder with one sub-folder per class (0/, 1/, ...), a folder of volumes (unconditional) or a
    MedMNIST-style .npz file; null: give it with --data"""
    size: int = Field(64, ge=8, le=512)
    """edge of the cubic training grid in voxels: base * 2**k with base in 4..7 (32, 48, 64, 96, 128, ...)"""
    resample: Literal["fit", "spacing", "none"] = "fit"
    """fit: isotropic voxels so the whole field of view fits the grid, then pad; spacing: resample to
    data.spacing mm, then pad or crop to the grid; none: no resampling, every volume must already be size³"""
    spacing: float | None = Field(None, gt=0)
    """target voxel size in mm for resample: spacing"""
    orientation: str = "RAS"
    """axis codes NIfTI volumes are reoriented to (e.g. RAS, LPS)"""
    interpolation: Literal["linear", "nearest"] = "linear"
    """linear or nearest (nearest keeps label maps and masks binary)"""
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)
    """per-volume clip at these percentiles (low, high) before scaling to [-1, 1]"""
    binary: bool = False
    """expect occupancy grids: any volume not two-valued {0, m} is rejected; 0 -> -1 and m -> +1 exactly,
    without percentile clipping; a resampled volume is re-thresholded at 0.5 so it stays binary"""
    threshold: float = Field(0.5, ge=0, le=1)
    """occupancy level in [0, 1] at which generated volumes are cut into solid and empty (meshes, renders)"""
    npz_split: str = "train"
    """which split of a MedMNIST-style .npz to read (train, val, test)"""
    cache_dir: str | None = None
    """folder of the preprocessed-volume cache; null: $VOLGAN_CACHE_DIR or ~/.cache/volgan"""
    max_decoded_gb: float = Field(DEFAULT_MAX_DECODED_GB, gt=0)
    """largest array (GB, counted as float32 at least) one input file may decode or resample to; a file,
    .npz member or data.spacing grid past it is refused before anything is allocated"""

    @field_validator("orientation")
    @classmethod
    def _axcodes(cls, v: str) -> str:
        v = v.upper()
        axis = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        if len(v) != 3 or any(c not in axis for c in v) or len({axis[c] for c in v}) != 3:
            raise ValueError(f"must be three axis codes such as 'RAS' or 'LPS', got {v!r}")
        return v

    @field_validator("intensity_percentiles")
    @classmethod
    def _percentiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"must satisfy 0 <= low < high <= 100, got [{lo}, {hi}]")
        return v

    @model_validator(mode="after")
    def _spacing_needed(self) -> DataConfig:
        if self.resample == "spacing" and self.spacing is None:
            raise ValueError("resample: spacing needs data.spacing (target voxel size in mm)")
        return self


# Defaults that differ between the families; a key left out (or null) in a config takes the
# value of its model.family. WGAN-GP: Gulrajani et al. 2017 plus the mode-seeking term, which ends
# its one-volume-per-class phase. DCGAN: the 3D-GAN architecture (Wu et al. 2016) with settings
# that learn in a CPU budget; the paper's own settings are the 3dgan-published preset. Why each
# value: docs/diversity_measurements.md.
FAMILY_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "wgan_gp": {
        "model": {"latent_dim": 128, "ngf": 32, "ndf": 32, "ac_weight": 0.0, "minibatch_std": False},
        "train": {
            "batch_size": 4,
            "lr_g": 1e-4,
            "lr_d": 1e-4,
            "betas": (0.0, 0.9),
            "mode_seeking": 1.0,
            "ema_decay": 0.999,
        },
    },
    # No D-accuracy gate (the paper's 0.8 freezes D and the generator collapses onto one volume)
    # and a faster D than the paper's 1e-5; one-sided label smoothing, an AC head and
    # minibatch-stddev keep the classes; a weak mode-seeking term keeps the shapes within a class
    # apart (the voxel32 preset uses a stronger one for real shapes).
    "dcgan": {
        "model": {"latent_dim": 200, "ngf": 32, "ndf": 32, "ac_weight": 1.0, "minibatch_std": True},
        "train": {
            "batch_size": 32,
            "lr_g": 1e-3,
            "lr_d": 2e-4,
            "betas": (0.5, 0.999),
            "mode_seeking": 0.2,
            "ema_decay": 0.99,
        },
    },
}


class ModelConfig(_Section):
    """Architecture of the generator and the critic (WGAN-GP) or discriminator (DCGAN)."""

    family: Literal["wgan_gp", "dcgan"] = "wgan_gp"
    """wgan_gp (conditional WGAN-GP, Tanh output) or dcgan (3D-GAN, sigmoid output); it sets the defaults
    of the keys left null"""
    # upper bounds: past them one layer alone needs gigabytes (a 2048-to-2048 4³ conv is 1 GB of weights)
    latent_dim: int = Field(128, ge=1, le=8192)
    """length of the noise vector (at most 8192)"""
    num_classes: int | None = Field(None, ge=0, le=100_000)
    """number of classes; null: from the data; 0: unconditional"""
    embed_dim: int = Field(64, ge=1, le=4096)
    """width of the class embedding for the generator's conditional InstanceNorm (at most 4096)"""
    ngf: int = Field(32, ge=1, le=1024)
    """generator width at the finest resolution, doubling per stage down (at most 1024; the 3D-GAN paper: 64,
    i.e. 512-256-128-64 at 64³)"""
    ndf: int = Field(32, ge=1, le=1024)
    """critic/discriminator width at the finest resolution, doubling per stage down (at most 1024; the
    3D-GAN paper: 64)"""
    max_channels: int = Field(512, ge=1, le=2048)
    """cap on the channels of any stage (at most 2048)"""
    ac_weight: float = Field(0.0, ge=0)
    """weight of the auxiliary-classifier (AC-GAN) classification loss on top of the projection, both
    families; 0: projection only"""
    minibatch_std: bool = False
    """minibatch-stddev feature map before the discriminator's dense layer / the critic's head, against
    mode collapse; wgan_gp: contiguous groups of 4 (or 3, 2) within each process's share, so real and fake
    volumes are never grouped together and the penalty's gradient gains only this feature's small cross terms
    (as in ProGAN)"""
    mapping_layers: int = Field(0, ge=0, le=8)
    """wgan_gp: depth of a mapping network from (latent, class) to a style that sets every instance norm's
    scale and shift (AdaIN); 0: the seed design, the latent enters at the stem only"""
    output_head: Literal["transposed", "resize"] = "transposed"
    """the generator's last layer: transposed (a 4³ transposed convolution with stride 2, the seed design) or
    resize (nearest-neighbour up-sampling then a 3³ convolution, which cannot leave a checkerboard of
    isolated voxels; both families)"""
    stage_upsampling: Literal["transposed", "resize"] = "transposed"
    """the generator's up-sampling stages before its last layer: transposed (4³ transposed convolutions with
    stride 2, the seed design) or resize (nearest-neighbour up-sampling then a 3³ convolution, as the resize
    head; both families)"""
    top_hats: Literal["none", "black", "both"] = "none"
    """what the critic/discriminator sees beside the volume: none; black (its black top-hat by a 3³ cube,
    what is darker and narrower than the cube: pinholes, gaps); both (the white top-hat too, what is
    brighter and thinner: isolated voxels, thin walls); one input channel each, both families
    (measurements: docs/diversity_measurements.md)"""

    top_hats_from: float = Field(0.0, ge=0, lt=1)
    """the part of the run (the clock of train.lr_decay linear: train.steps or train.budget_minutes) from
    which the critic sees model.top_hats; before it those channels are zeros, and the critic's weights on
    them start at 0 so they come in without a jump in its scores. 0: from the first step"""

    @field_validator("top_hats", mode="before")
    @classmethod
    def _top_hats_as_switch(cls, v: Any) -> Any:
        return {True: "both", False: "none"}.get(v, v) if isinstance(v, bool) else v  # its first form, a switch


class WGANGPTrainConfig(_Section):
    """wgan_gp only: the critic's steps and its penalties (train.wgan_gp)."""

    n_critic: int = Field(5, ge=1)
    """critic steps per generator step"""
    gp_weight: float = Field(10.0, ge=0)
    """λ of the gradient penalty (the gradient's norm over all voxels of each sample)"""
    gp_every: int | None = Field(None, ge=1)
    """lazy regularisation (Karras et al. 2020): the penalty on every k-th critic step only,
    weighted k; 1..n_critic; null: once per generator step (k = n_critic); 1: every critic step (the seed
    design)"""
    drift_weight: float = Field(0.001, ge=0)
    """ε of the drift term ε * E[D(real)^2], which keeps critic scores near zero; 0 disables it"""


class DCGANTrainConfig(_Section):
    """dcgan only: the discriminator's gate, targets and noise (train.dcgan)."""

    d_acc_threshold: float = Field(1.0, ge=0, le=1)
    """update D only while its batch accuracy is at most this (the 3D-GAN paper: 0.8); 1: always"""
    real_label: float = Field(0.9, gt=0.5, le=1)
    """target for real volumes, in (0.5, 1]; below 1: one-sided label smoothing"""
    label_noise: float = Field(0.0, ge=0, le=0.5)
    """half-width of the uniform noise added to the targets"""
    label_flip: float = Field(0.0, ge=0, le=0.5)
    """probability of swapping a real/fake target"""
    instance_noise: float = Field(0.0, ge=0, le=1)
    """standard deviation of the Gaussian noise added to every D input, real and fake (0..1 units)"""
    instance_noise_steps: int = Field(0, ge=0)
    """instance_noise falls linearly to 0 over this many steps; 0: it stays constant"""


class ExperimentalConfig(_Section):
    """Switches measured and left off: no preset or plan uses them; kept for research
    (measurements: docs/diversity_measurements.md)."""

    grow_from: int | None = Field(None, ge=8)
    """wgan_gp: progressive growing (Karras et al. 2018) from this grid, one of data.size / 2**k (e.g. 16
    or 32 for 64³), up to data.size; adds an output layer per coarser grid to the generator and an input
    layer to the critic (an architecture key); null: train at data.size from the first step (measurements:
    docs/diversity_measurements.md)"""
    grow_steps: int | list[int] = Field(1000)
    """with grow_from: generator steps at each grid below data.size, coarse first; one number (the
    same for each grid) or a list with one number per grid"""
    grow_fade: int = Field(200, ge=0)
    """with grow_from: generator steps over which each finer grid fades in (its output blended with
    the coarser one's, upsampled, weight 0 to 1; the critic's input likewise)"""
    mode_seeking_pool: int = Field(1, ge=1)
    """the mode-seeking term's distance between a pair's volumes on the means of pool³ blocks (1: voxelwise,
    as Mao et al., and what a checkpoint from before this key resumes with): independent voxel noise averages
    out, so only differences of shape count (measurements: docs/diversity_measurements.md)"""

    @field_validator("grow_steps")
    @classmethod
    def _grow_steps(cls, v: int | list[int]) -> int | list[int]:
        if any(n < 1 for n in ([v] if isinstance(v, int) else v)):
            raise ValueError(f"each number of steps must be >= 1, got {v}")
        return v


class TrainConfig(_Section):
    """Optimisation schedule, losses and time limits (a key marked wgan_gp or dcgan is for that family only)."""

    steps: int = Field(10000, ge=1)
    """generator steps (wgan_gp: each follows n_critic critic steps)"""
    batch_size: int = Field(4, ge=1)
    """volumes per step (wgan_gp's InstanceNorm also trains with 1)"""
    lr_g: float = Field(1e-4, gt=0)
    """Adam learning rate of the generator (the 3D-GAN paper: 2.5e-3)"""
    lr_d: float = Field(1e-4, gt=0)
    """Adam learning rate of the critic/discriminator, set apart from lr_g for TTUR (the 3D-GAN paper:
    1e-5)"""
    betas: tuple[float, float] = (0.0, 0.9)
    """Adam betas of both optimisers, each in [0, 1)"""
    ema_decay: float = Field(0.999, ge=0, lt=1)
    """decay of the EMA of the generator weights that sampling uses; the cap of the warm-up (ema_warmup)"""
    ema_warmup: float = Field(10.0, gt=1)
    """the EMA's warm-up, > 1: after u updates its decay is min(ema_decay, (1 + u) / (ema_warmup + u)), an
    average over about the last 1 / (ema_warmup - 1) of the run until ema_decay caps it (10: the last ninth,
    for some 9000 updates with ema_decay 0.999; 4: the last third; measurements: docs/diversity_measurements.md)"""
    lr_decay: Literal["none", "linear"] = "none"
    """learning rates of both networks: none (constant) or linear: base * (1 - the part of the run done),
    0 at the end as in Gulrajani et al. 2017's code (or to train.lr_decay_to of base). The part done is
    step / train.steps, or the part of train.budget_minutes trained if that is larger (a resumed run
    continues it); max_minutes does not move it"""
    lr_decay_to: float = Field(0.0, ge=0, lt=1)
    """with lr_decay linear: the rates' share of their base at the end of the run (0: they reach 0; 0.5: they
    fall in a straight line to half), for runs too short to polish at rates near 0"""
    max_minutes: float | None = Field(None, gt=0)
    """wall-clock limit of this invocation, after which it stops with a checkpoint; a resumed run gets it
    afresh"""
    budget_minutes: float | None = Field(None, gt=0)
    """wall-clock budget of the whole run, counted over every invocation and resume (kept in the
    checkpoint) and, for a new run of volgan train / volgan.train, from the command's start (planning and
    reading the data count, up to half of it); the run stops with a checkpoint when it is spent (keeping
    room for that checkpoint and the figures, timed from the last ones), and a resumed run whose budget
    is spent trains no step. With lr_decay linear the rates reach train.lr_decay_to there: the
    decay fits a time budget without knowing the machine's seconds per step"""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """what a NaN or Inf loss does: stop (naming the step and the last good checkpoint) or skip the update"""
    mode_seeking: float = Field(0.0, ge=0)
    """weight of the mode-seeking term 1 / (mean|G(z1) - G(z2)| / mean|z1 - z2| + 1e-5) in the generator loss,
    both families, over adjacent pairs of the generator's batch, which share a class (Mao et al. 2019; an odd
    last volume has no partner); 0: off, and what a checkpoint from before this key resumes with
    (measurements: docs/diversity_measurements.md)"""
    mode_seeking_end: float | None = Field(None, ge=0)
    """the mode-seeking term's weight at the end of the run (train.steps, or train.budget_minutes if that comes
    first), reached in a straight line from train.mode_seeking on the clock of lr_decay linear; null: the
    weight stays train.mode_seeking. Needs train.mode_seeking > 0 (measurements: docs/diversity_measurements.md)"""

    wgan_gp: WGANGPTrainConfig = Field(default_factory=WGANGPTrainConfig)
    dcgan: DCGANTrainConfig = Field(default_factory=DCGANTrainConfig)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v


class LogConfig(_Section):
    """How often the run logs, draws figures and writes checkpoints."""

    every: int = Field(10, ge=1)
    """steps between log lines, stats.jsonl records and TensorBoard scalars"""
    image_every: int = Field(200, ge=1)
    """steps between TensorBoard mid-slice images of EMA samples per class"""
    checkpoint_every: int = Field(500, ge=1)
    """steps between checkpoints (RUN/checkpoints/step_XXXXXXXX.pt); one is always written at the end"""
    keep_checkpoints: int = Field(3, ge=1)
    """how many of the newest checkpoints are kept"""
    progress_bar: bool = True
    """a progress bar with ETA on a terminal"""


class SampleConfig(_Section):
    """What is done to generated volumes before anyone sees them (samples, figures, evaluation)."""

    clean: bool = False
    """remove foreground pieces smaller than the training volumes ever hold (never a volume's largest)
    and write occupancy data (data.binary) as 0/1; the sizes are measured from the training data when
    training starts and kept in the checkpoint (volgan.cleanup)"""


class PerfConfig(_Section):
    """Speed switches. Every fast path computes the same mathematics as the plain one (tests compare
    them); turn one off to measure it or to work around a platform."""

    channels_last: bool = True
    """channels_last_3d memory format for the models and batches (oneDNN / cuDNN's fast layout)"""
    fused_norm: bool = True
    """instance norm: moments from one matrix product, then one multiply-add with the affine and the
    conditional scale/shift folded in"""
    subpixel_conv: bool = True
    """the generator's last (one-channel) layer as a 2³ conv + depth-to-space shuffle at the coarse grid (the
    transposed head, and the resize head through its tied 4³ kernel)"""
    dense_stem: bool = False
    """the generator's first layer (a transposed conv on a 1³ input) as the dense layer it is; off by
    default, being slower per training step (measurements: docs/results/performance.md)"""
    tune_allocator: bool = True
    """CPU, glibc: keep freed memory in the heap instead of unmapping and re-faulting it every step"""
    amp: Literal["auto", "bf16", "off"] = "auto"
    """CUDA only: auto, bf16 or off; bf16 autocast for the networks (auto: where the GPU supports it); the
    gradient penalty's pass stays in float32"""
    tf32: bool = True
    """CUDA only: TensorFloat-32 matrix products and convolutions for the float32 parts"""
    cudnn_benchmark: bool = True
    """CUDA only: let cuDNN time its convolution algorithms once per shape and keep the fastest"""


class AugmentConfig(_Section):
    """3D differentiable augmentation of every critic/discriminator input (real and fake alike)."""

    enabled: bool = False
    """augment every critic/discriminator input (measured effect and when to turn it on:
    docs/guide/augmentation.md)"""
    p: float = Field(0.2, ge=0, le=1)
    """probability of each operation per volume: fixed, or the starting value when adaptive"""
    adaptive: bool = True
    """ADA: steer p from the overfitting signal (reals scored above their paired fakes / positive), logged
    as aug_p and aug_signal"""
    target: float = Field(0.6, ge=-1, le=1)
    """signal level p is steered to, in [-1, 1]: p rises while the signal is above it, falls below it"""
    speed: float = Field(0.01, gt=0, le=1)
    """change of p per adjustment"""
    interval: int = Field(4, ge=1)
    """generator steps between adjustments (the signal is averaged over them)"""
    p_max: float = Field(0.8, ge=0, le=1)
    """upper bound of p"""
    flip: tuple[bool, bool, bool] = (True, False, False)
    """flip along each grid axis (after reorientation to data.orientation: axis 0 is left-right in RAS);
    enable only the axes along which a flipped volume is still plausible"""
    translate: float = Field(0.125, ge=0, le=0.5)
    """integer shift of up to this fraction of each axis"""
    subvoxel: float = Field(0.5, ge=0, le=4)
    """sub-voxel shift of up to this many voxels (part of the affine resampling)"""
    rotate_deg: float = Field(5.0, ge=0, le=45)
    """rotation of up to this many degrees about each axis"""
    scale: float = Field(0.05, ge=0, le=0.5)
    """isotropic scaling by a factor in [1/(1+s), 1+s]"""
    cutout: float = Field(0.25, ge=0, le=1)
    """side of the cube set to the background, as a fraction of each axis (0: off)"""
    brightness: float = Field(0.1, ge=0, le=1)
    """additive shift of up to this fraction of the value range"""
    contrast: float = Field(0.2, ge=0, le=1)
    """scaling about the volume's mean by a factor in [1/(1+c), 1+c]"""
    gamma: float = Field(0.2, ge=0, le=1)
    """gamma exponent in [1/(1+g), 1+g] on the value range mapped to [0, 1]"""
    noise: float = Field(0.02, ge=0, le=1)
    """Gaussian noise with a standard deviation of up to this fraction of the value range"""


class DistConfig(_Section):
    """Multi-process training under torchrun (ignored by a single process)."""

    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """auto, nccl or gloo; auto: NCCL when each process has a GPU, Gloo on CPUs"""
    timeout_s: float = Field(600.0, gt=0)
    """a collective that waits longer than this ends the job with an error naming the rank (no hang)"""
    sync_batchnorm: bool = True
    """dcgan: BatchNorm statistics over the whole global batch (SyncBatchNorm), so N processes compute
    what one process computes; false keeps per-process statistics (cheaper, not equivalent)"""


class Config(_Section):
    """The whole run configuration (the resolved form is saved in every run folder)."""

    seed: int = Field(0, ge=0, lt=2**63)  # numpy's SeedSequence and torch.manual_seed both accept this range
    """one seed for weights, data order and noise; the same seed gives the same run"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto, cpu or cuda; auto: CUDA if available, else the CPU (resolved once and logged)"""
    run_dir: str = "runs/default"
    """the run's folder: checkpoints/, tensorboard/, figures/, stats.jsonl, config.yaml, train.log"""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    perf: PerfConfig = Field(default_factory=PerfConfig)
    dist: DistConfig = Field(default_factory=DistConfig)
    experimental: ExperimentalConfig = Field(default_factory=ExperimentalConfig)

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        """Fill keys that are missing or null with the defaults of ``model.family``."""
        if not isinstance(data, dict):
            return data
        model = data.get("model") or {}
        family = model.get("family", "wgan_gp") if isinstance(model, dict) else None
        if not isinstance(family, str) or family not in FAMILY_DEFAULTS:
            return data  # field validation reports the bad value
        data = dict(data)
        for section, values in FAMILY_DEFAULTS[family].items():
            given = data.get(section) or {}
            if isinstance(given, dict):
                data[section] = {**given, **{k: v for k, v in values.items() if given.get(k) is None}}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        grid_stages(self.data.size)  # raises ValueError for a size the architecture can't make
        if self.model.num_classes == 1:
            raise ValueError("model.num_classes: a conditional model needs >= 2 classes (0 = unconditional)")
        if self.model.mapping_layers and self.model.family != "wgan_gp":
            raise ValueError(
                "model.mapping_layers: only for family wgan_gp (its instance norms take the style; the 3D-GAN "
                "generator uses BatchNorm)"
            )
        w = self.train.wgan_gp
        if w.gp_every is not None and w.gp_every > w.n_critic:
            raise ValueError(
                f"train.wgan_gp.gp_every: {w.gp_every} is more than train.wgan_gp.n_critic ({w.n_critic}); "
                "every generator step must follow at least one penalised critic step"
            )
        for family, section, default in (
            ("wgan_gp", self.train.wgan_gp, WGANGPTrainConfig()),
            ("dcgan", self.train.dcgan, DCGANTrainConfig()),
        ):
            changed = [k for k in type(section).model_fields if getattr(section, k) != getattr(default, k)]
            if changed and self.model.family != family:
                raise ValueError(
                    f"train.{family}.{changed[0]}: for model.family {family} only; this config trains "
                    f"{self.model.family}"
                )
        if self.train.mode_seeking_end is not None and not self.train.mode_seeking:
            raise ValueError(
                "train.mode_seeking_end: needs train.mode_seeking > 0, the weight the schedule starts from"
            )
        if self.model.top_hats_from and self.model.top_hats == "none":
            raise ValueError("model.top_hats_from: needs model.top_hats black or both, the channels it brings in")
        self._check_growth()
        return self

    def _check_growth(self) -> None:
        e, size = self.experimental, self.data.size
        if e.grow_from is None:
            return
        if self.model.family != "wgan_gp":
            raise ValueError("experimental.grow_from: progressive growing is only for family wgan_gp")
        grids = grow_grids(size)
        if e.grow_from not in grids:
            raise ValueError(
                f"experimental.grow_from: {e.grow_from} is not data.size {size} halved 1..{len(grids)} times "
                f"(one of {', '.join(map(str, grids))})"
            )
        levels = grids.index(e.grow_from) + 1
        if isinstance(e.grow_steps, list) and len(e.grow_steps) != levels:
            raise ValueError(
                f"experimental.grow_steps: {len(e.grow_steps)} numbers for {levels} grids below {size} "
                f"({', '.join(map(str, reversed(grids[:levels])))}); give {levels} or one number"
            )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """Short hash of the architecture-relevant settings, recorded with every sample."""
        # grow_from is an architecture key (it lived in model before experimental): hashed there, so a
        # config's digest is what it was
        model = {**self.model.model_dump(mode="json"), "grow_from": self.experimental.grow_from}
        blob = json.dumps({"data": self.data.model_dump(mode="json"), "model": model}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def grow_grids(size: int) -> list[int]:
    """The grids progressive growing can start from, fine to coarse: ``size`` halved once, twice, ...
    while the generator still has a stage below (e.g. 64 -> [32, 16, 8])."""
    return [size // 2**k for k in range(1, grid_stages(size)[1])]


def surface_level(threshold: float) -> float:
    """``data.threshold`` (an occupancy level in 0..1) on the [-1, 1] scale volumes are generated on."""
    return 2 * threshold - 1


def grid_stages(size: int) -> tuple[int, int]:
    """Return ``(base, n_stages)`` with ``size == base * 2**n_stages``, base in 4..7, n_stages >= 1.

    The generator starts from a ``base``³ block and doubles ``n_stages`` times; the critic mirrors it.
    """
    if size < 8:
        raise ValueError(f"data.size must be >= 8, got {size}")
    n = math.floor(math.log2(size / 4))
    base, rem = divmod(size, 2**n)
    if rem or not 4 <= base <= 7:
        raise ValueError(
            f"data.size {size} cannot be built by doubling: use base * 2**k with base in 4..7 "
            f"(e.g. 32, 48, 64, 80, 96, 128)"
        )
    return base, n


_COMMENT_COLUMN = 25  # default_yaml: where the comments start, as in a hand-aligned file
_LINE_WIDTH = 120
_FAMILY = "family: "  # reference_rows: how the default of a key taken from model.family begins


def _sections() -> list[tuple[str, type[_Section]]]:
    """``("", Config)`` for the top-level keys, then each section's dotted name and model, in declaration
    order (a section inside a section, like ``train.wgan_gp``, right after its parent)."""

    def walk(prefix: str, model: type[_Section]) -> list[tuple[str, type[_Section]]]:
        out: list[tuple[str, type[_Section]]] = []
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, _Section):
                dotted = f"{prefix}.{name}" if prefix else name
                out += [(dotted, field.annotation), *walk(dotted, field.annotation)]
        return out

    return [("", Config), *walk("", Config)]


def _leaves(model: type[_Section]) -> list[str]:
    """The keys of ``model`` that hold a value rather than a section."""
    return [
        k
        for k, f in model.model_fields.items()
        if not (isinstance(f.annotation, type) and issubclass(f.annotation, _Section))
    ]


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _yaml_value(value: Any) -> str:
    """``value`` as YAML writes it on one line: ``null``, ``true``, ``[0.5, 99.5]``, ``runs/default``."""
    text: str = yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, width=2**31)
    return text.strip().removesuffix("...").strip()


def _family_defaults(section: str, key: str) -> list[tuple[str, str]]:
    """``[(family, default as YAML), ...]`` for a key whose default is its family's; [] for any other."""
    values = [(family, sections.get(section, {})) for family, sections in FAMILY_DEFAULTS.items()]
    return [(family, _yaml_value(given[key])) for family, given in values if key in given]


def section_descriptions() -> dict[str, str]:
    """Each section's description (its model's docstring) on one line, by name; ``""``: the top level."""
    return {name: _one_line(inspect.cleandoc(model.__doc__ or "")) for name, model in _sections()}


def reference_rows() -> list[tuple[str, str, str]]:
    """One ``(dotted key, default, description)`` per key that holds a value, in declaration order.

    The default is written as in YAML (``null``, ``true``, ``[0.5, 99.5]``), or for a key that takes its
    family's default as ``family: 128 (wgan_gp) / 200 (dcgan)``. The description is the field's
    docstring on one line. The configuration reference page is written from these rows.
    """
    rows = []
    for section, model in _sections():
        for key in _leaves(model):
            field = model.model_fields[key]
            family = _family_defaults(section, key)
            default = (
                _FAMILY + " / ".join(f"{value} ({name})" for name, value in family)
                if family
                else _yaml_value(field.get_default(call_default_factory=True))
            )
            rows.append((f"{section}.{key}" if section else key, default, _one_line(field.description)))
    return rows


def _commented(entry: str, comment: str) -> list[str]:
    """``entry`` with ``comment`` after it, wrapped to the line width under its first line's ``#``."""
    column = max(_COMMENT_COLUMN, len(entry) + 2)
    wrapped = textwrap.wrap(comment, _LINE_WIDTH - column - 2, break_long_words=False, break_on_hyphens=False)
    return [f"{entry if i == 0 else '':<{column}}# {line}" for i, line in enumerate(wrapped or [""])]


_HEADER = """\
# volgan default configuration: every key with its default; a config file may give any subset.
# Keys marked "family default" stay null here: they take the value of model.family (wgan_gp: Gulrajani
# et al. 2017; dcgan: 3D-GAN, Wu et al. 2016). Unknown keys, wrong types and out-of-range values are
# rejected with the key's name.
# Override on the command line with `--set section.key=value`, e.g. `--set train.batch_size=8`.
# Written by scripts/write_config_docs.py from the field descriptions in src/volgan/config.py.
# The preset seed-design, the same as giving no config at all:
#   volgan train --preset seed-design --data DIR
"""


def default_yaml() -> str:
    """The text of ``config/default.yaml`` (and of the preset ``seed-design``, its byte-equal copy).

    Every section and key with its default and its description as a comment (the rows of
    :func:`reference_rows`); a key that takes its family's default is ``null``, with the families'
    values in its comment, so that loading the file gives ``Config()``. ``scripts/write_config_docs.py``
    writes it.
    """
    docs = section_descriptions()
    lines = [_HEADER]
    current = ""
    for dotted, default, description in reference_rows():
        section, _, key = dotted.rpartition(".")
        if section != current:
            current = section
            indent = "  " * section.count(".")
            lines += ["", *_commented(f"{indent}{section.rpartition('.')[2]}:", docs[section])]
        value, comment = default, description
        if default.startswith(_FAMILY):
            value, comment = "null", f"{description}; family default {default.removeprefix(_FAMILY)}"
        indent = "  " * (section.count(".") + 1) if section else ""
        lines += _commented(f"{indent}{key}: {value}", comment)
    return "\n".join(lines) + "\n"


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] in ("extra_forbidden", "invalid_key"):  # invalid_key: a number or null as a key
        return f"{source}: unknown key '{key}'"
    if not first["loc"]:  # a cross-field check: its message names the keys
        return f"{source}: {msg}"
    got = first.get("input")
    got_txt = "" if isinstance(got, dict) or first["type"].startswith("value_error") else f", got {shown(got)}"
    return f"{source}: {key}: {msg}{got_txt}"


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``train.batch_size=8`` into ``{"train": {"batch_size": 8}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.batch_size=8")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: expected a dotted key before '=', e.g. train.batch_size=8")
    try:
        value = load_yaml(raw, f"override {shown(text)}") if raw else None
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; any problem is a ConfigError naming the file."""
    try:
        text = read_config_text(path)  # a regular file of bounded size: not a FIFO, not /dev/zero
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file ({e.__class__.__name__}: {e})") from None
    try:
        data = load_yaml(text, str(path))  # duplicate keys and alias bombs refused
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (data, model, train, ...), got {type(data).__name__}"
        )
    return data


# keys that moved: old (section, key) -> new dotted path; the family a family-only key is for
RENAMED: dict[tuple[str, str], tuple[str, str | None]] = {
    **{("train", k): (f"train.wgan_gp.{k}", "wgan_gp") for k in ("n_critic", "gp_weight", "gp_every", "drift_weight")},
    **{
        ("train", k): (f"train.dcgan.{k}", "dcgan")
        for k in (
            "d_acc_threshold",
            "real_label",
            "label_noise",
            "label_flip",
            "instance_noise",
            "instance_noise_steps",
        )
    },
    ("model", "grow_from"): ("experimental.grow_from", None),
    ("train", "grow_steps"): ("experimental.grow_steps", None),
    ("train", "grow_fade"): ("experimental.grow_fade", None),
    ("train", "mode_seeking_pool"): ("experimental.mode_seeking_pool", None),
}


def renamed_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` with keys that moved (:data:`RENAMED`) in their new places, said in one log line. A
    family-only key of the other family (what configs saved before the family sections hold) is dropped."""
    model = data.get("model") or {}
    family = model.get("family", "wgan_gp") if isinstance(model, dict) else None
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    moved: list[str] = []
    extra: dict[str, Any] = {}
    for (section, key), (new, only) in RENAMED.items():
        given = out.get(section)
        if not isinstance(given, dict) or key not in given:
            continue
        value = given.pop(key)
        if only is not None and only != family:
            continue
        moved.append(f"{section}.{key} -> {new}")
        extra = merge_dicts(extra, unflatten(new, value))
    if moved:
        log.warning("%s: renamed keys read in their new places: %s", source, ", ".join(moved))
        out = merge_dicts(out, extra)
    return out


def unflatten(dotted: str, value: Any) -> dict[str, Any]:
    """``"a.b.c", v`` -> ``{"a": {"b": {"c": v}}}``."""
    out: dict[str, Any] = {}
    node = out
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value
    return out


def build_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a plain mapping into a Config (keys that moved are read in their new places, said in
    one log line), or raise one ConfigError line."""
    if isinstance(data, dict):
        data = renamed_keys(data, source)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None
    except (TypeError, ValueError) as e:  # e.g. a non-string key in a hand-built mapping
        raise ConfigError(f"{source}: {e}") from None


def config_mapping(source: str | Path | Mapping[str, Any] | Config | None) -> tuple[dict[str, Any], str]:
    """What a config source says, as a plain mapping (a YAML file read, a Config dumped, None: {}),
    and the name errors give it."""
    if isinstance(source, Config):
        return source.to_dict(), "<Config>"
    if isinstance(source, Mapping):
        return dict(source), "<mapping>"
    if source is None:
        return {}, "<defaults>"
    if isinstance(source, str | Path):
        return read_yaml(Path(source)), str(source)
    raise ConfigError(f"config must be a Config, a mapping, a YAML path or None, got {type(source).__name__}")


def load_config(
    source: str | Path | Mapping[str, Any] | Config | None = None,
    overrides: Iterable[str] = (),
    *,
    values: Mapping[str, Any] | None = None,
    name: str | None = None,
    what: str = "overrides",
) -> Config:
    """The one way volgan turns what a user gave into a validated :class:`Config` (the CLI, the
    Python API and evaluation all call it).

    ``source``: a YAML file, a mapping, a Config, or None for the built-in defaults. Then ``values``
    (a nested mapping, e.g. ``{"train": {"steps": 200}}``) and ``KEY=VALUE`` texts (``--set``) are
    merged on top, in that order. Errors name ``name`` (default: the file, ``<mapping>``,
    ``<defaults>``), followed by "(with {what})" when anything was merged.
    """
    data, label = config_mapping(source)
    texts = list(overrides)
    if values:
        data = merge_dicts(data, dict(values))
    for text in texts:
        data = merge_dicts(data, parse_override(text))
    label = name or label
    return build_config(data, label + (f" (with {what})" if values or texts else ""))


def save_config(cfg: Config, path: Path, facts: dict[str, Any] | None = None) -> None:
    """The resolved config as YAML; ``facts`` (how the run was launched) follow as comment lines, so
    the file still loads as a config."""
    notes = "".join(f"# {key}: {value}\n" for key, value in (facts or {}).items())
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False) + notes)
