"""Fits recover the parameters of data drawn from the fitted model.

Tolerances: the Gamma CV and the log-normal parameters within 4 standard errors; the MMPP
(EM on binned counts, an approximation of the continuous-time process) within 5% on the
rates and 25% on the mean sojourns, which the binning biases a little upwards.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from workloads.arrivals import MMPP, GammaRenewal, arrival_times
from workloads.fitting import fit_gamma, fit_lognormal, fit_mmpp


def test_fit_gamma_recovers_rate_and_cv() -> None:
    proc = GammaRenewal(GammaRenewal.Params(cv=2.5))
    times = arrival_times(proc, 40.0, np.random.default_rng(1), 400_000, None)
    fit = fit_gamma(times)
    n = len(times)
    assert abs(fit.rate_rps - 40.0) < 4 * 40.0 * 2.5 / math.sqrt(n)
    k = 1 / 2.5**2  # SE of the CV from the SE of the variance: kurtosis 3 + 6/k
    assert abs(fit.cv - 2.5) < 4 * 2.5 * 0.5 * math.sqrt((2 + 6 / k) / n)
    assert fit.spec() == {"process": "gamma", "cv": round(fit.cv, 4)}


def test_fit_mmpp_recovers_an_on_off_source() -> None:
    proc = MMPP(MMPP.Params(rates_rps=[20.0, 2.0], mean_sojourn_s=[30.0, 60.0]))
    times = arrival_times(proc, proc.mean_rate_rps(), np.random.default_rng(3), None, 40_000.0)
    fit = fit_mmpp(times)
    assert fit.rates_rps == pytest.approx((20.0, 2.0), rel=0.05)
    assert fit.mean_sojourn_s == pytest.approx((30.0, 60.0), rel=0.25)
    assert fit.mean_rate_rps == pytest.approx(proc.mean_rate_rps(), rel=0.05)
    assert fit.spec()["process"] == "mmpp"


def test_fit_lognormal_recovers_median_and_sigma() -> None:
    values = np.random.default_rng(4).lognormal(math.log(800), 1.2, 200_000)
    fit = fit_lognormal(values)
    se_mu = 1.2 / math.sqrt(len(values))
    assert abs(math.log(fit.median) - math.log(800)) < 4 * se_mu
    assert abs(fit.sigma - 1.2) < 4 * 1.2 / math.sqrt(2 * len(values))
    assert fit.spec()["dist"] == "lognormal" and fit.min >= 1
