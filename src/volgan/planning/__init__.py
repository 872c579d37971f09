"""Self-configuring training: fingerprint the data, time a few steps here, plan the recipe for a budget.

``volgan plan --data DIR --minutes N`` prints what :func:`make_plan` decides; ``volgan train --data
DIR`` with no config trains it. :mod:`.fingerprint` reads the data, :mod:`.probe` times steps,
:mod:`.planner` holds the rules.
"""

from volgan.planning.fingerprint import Fingerprint, fingerprint_path, fingerprint_volumes
from volgan.planning.planner import DEFAULT_MINUTES, Choice, Plan, make_plan
from volgan.planning.probe import StepTime

__all__ = [
    "DEFAULT_MINUTES",
    "Choice",
    "Fingerprint",
    "Plan",
    "StepTime",
    "fingerprint_path",
    "fingerprint_volumes",
    "make_plan",
]
