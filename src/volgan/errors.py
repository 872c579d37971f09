"""User-facing errors: each one is printed by the CLI as a single line, without a traceback."""

from __future__ import annotations


class VolganError(Exception):
    """Base class for problems the user can fix (bad input, bad config, bad checkpoint)."""


class ConfigError(VolganError):
    """A config file or override is invalid; the message names the file and the key."""


class DataError(VolganError):
    """A data file or folder is unusable; the message names the path and what is expected."""


class CheckpointError(VolganError):
    """A checkpoint is missing, damaged, untrusted or does not fit the requested model."""


class MetricError(VolganError):
    """Inputs to an evaluation metric are unusable; the message says what is wrong and what is expected."""


class TrainingDiverged(VolganError):
    """A loss or a weight became NaN/Inf during training."""
