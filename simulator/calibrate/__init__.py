"""Calibration: measuring or converting operator and collective timings into hardware profiles.

:mod:`simulator.calibrate.vidur` converts published A100 measurements into a profile.
"""
