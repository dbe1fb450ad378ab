"""Calibration: measuring or converting operator and collective timings into hardware profiles.

The torch harness (``ldsim calibrate``, :func:`calibrate`) times operators on the machine at
hand and writes a measured profile; ``ldsim profile check`` (:func:`check_profile`) re-measures
held-out shapes and layer blocks and reports the profile's error; :func:`show_profile` and
:func:`diff_profiles` read and compare profiles. :mod:`simulator.calibrate.vidur` converts
published A100 measurements instead of measuring.

Modules, in the order a calibration uses them: :mod:`.device` (torch, the target device and
its environment), :mod:`.process` (the isolated measuring process), :mod:`.timing` (one
operator's median and spread), :mod:`.operators` (what is timed, as ldsim operators and as
torch code), :mod:`.grids` (which shapes), :mod:`.transfers`, :mod:`.collectives`,
:mod:`.blocks`, :mod:`.records` (raw rows and tables), :mod:`.writer` (the profile files),
:mod:`.harness` (the whole run), :mod:`.check` and :mod:`.describe`. Importing this package
does not import torch.
"""

from __future__ import annotations

from simulator.calibrate.check import CheckResult, CheckRow, FamilyStats, check_profile
from simulator.calibrate.describe import diff_profiles, show_profile
from simulator.calibrate.harness import CalibrationResult, calibrate

__all__ = [
    "CalibrationResult",
    "CheckResult",
    "CheckRow",
    "FamilyStats",
    "calibrate",
    "check_profile",
    "diff_profiles",
    "show_profile",
]
