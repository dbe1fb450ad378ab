"""Fitting models to a trace: an arrival process and a length distribution.

Each fit returns a small record whose ``spec()`` is the YAML mapping to paste into an
experiment (``workload.arrival`` or a size), so a trace can be replaced by a generator with
the same statistics and then dialled (more load, more burstiness).

* :func:`fit_gamma`: a Gamma renewal process with the trace's mean rate and inter-arrival CV
  (method of moments; it matches the gaps, not their correlation).
* :func:`fit_mmpp`: a Markov-modulated Poisson process by expectation-maximisation (Baum-Welch)
  on the arrival counts per time bin: a hidden Markov chain over ``states`` levels with
  Poisson counts. Sojourns shorter than a bin cannot be seen; the default bin is the shorter
  of 1 s and 20 mean gaps, widened so the trace spans at most 20,000 bins.
* :func:`fit_lognormal`: a log-normal length distribution by maximum likelihood on the
  logarithms of the positive values, with the data's min and max as clipping bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GammaFit", "LogNormalFit", "MMPPFit", "fit_gamma", "fit_lognormal", "fit_mmpp"]


@dataclass(frozen=True)
class GammaFit:
    """A Gamma renewal fit: mean rate (requests/s) and CV of the gaps."""

    rate_rps: float
    cv: float

    def spec(self) -> dict[str, Any]:
        """``workload.arrival`` for this fit (set ``workload.rate_rps`` to :attr:`rate_rps`)."""
        return {"process": "gamma", "cv": round(self.cv, 4)}


def fit_gamma(arrival_s: np.ndarray) -> GammaFit:
    """Fit a Gamma renewal process to sorted arrival times (seconds) by moments."""
    gaps = np.diff(np.asarray(arrival_s, dtype=float))
    if len(gaps) < 2 or gaps.mean() <= 0:
        raise ValueError(f"need at least three arrivals spread in time to fit, got {len(arrival_s)}")
    return GammaFit(rate_rps=float(1.0 / gaps.mean()), cv=float(gaps.std() / gaps.mean()))


@dataclass(frozen=True)
class MMPPFit:
    """An MMPP fit: per state, the arrival rate (requests/s) and mean sojourn (s); the
    log-likelihood of the binned counts, the bin width (s) and EM iterations used."""

    rates_rps: tuple[float, ...]
    mean_sojourn_s: tuple[float, ...]
    log_likelihood: float
    bin_s: float
    iterations: int

    @property
    def mean_rate_rps(self) -> float:
        """The stationary mean rate (requests/s)."""
        from workloads.arrivals import MMPP

        return MMPP(MMPP.Params(rates_rps=self.rates_rps, mean_sojourn_s=self.mean_sojourn_s)).mean_rate_rps()

    def spec(self) -> dict[str, Any]:
        """``workload.arrival`` for this fit (``workload.rate_rps``: :attr:`mean_rate_rps`)."""
        return {
            "process": "mmpp",
            "rates_rps": [round(r, 4) for r in self.rates_rps],
            "mean_sojourn_s": [round(s, 4) for s in self.mean_sojourn_s],
        }


def _poisson_logpmf(counts: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Log P(count | lam) for every bin (rows) and state (columns)."""
    lam = np.maximum(lam, 1e-12)
    lgam = np.array([math.lgamma(c + 1.0) for c in range(int(counts.max()) + 1)])[counts]
    return counts[:, None] * np.log(lam)[None, :] - lam[None, :] - lgam[:, None]


def fit_mmpp(
    arrival_s: np.ndarray, states: int = 2, bin_s: float | None = None, max_iter: int = 200, tol: float = 1e-7
) -> MMPPFit:
    """Fit an MMPP with ``states`` levels to sorted arrival times (seconds) by Baum-Welch on
    the counts in bins of ``bin_s`` seconds (see the module docstring for the default)."""
    t = np.asarray(arrival_s, dtype=float)
    if len(t) < 10 or t[-1] <= t[0]:
        raise ValueError(f"need at least ten arrivals spread in time to fit, got {len(t)}")
    span = float(t[-1] - t[0])
    mean_gap = span / (len(t) - 1)
    if bin_s is None:
        bin_s = min(1.0, 20 * mean_gap)
    bin_s = max(bin_s, span / 20_000)
    edges = np.arange(t[0], t[-1] + bin_s, bin_s)
    counts = np.histogram(t, bins=edges)[0].astype(np.int64)
    n, k = len(counts), states
    # start: levels at spread quantiles of the counts, sticky transitions
    qs = np.quantile(counts, np.linspace(0.1, 0.9, k)) + 1e-3
    lam = np.sort(qs)[::-1].astype(float)
    trans = np.full((k, k), 0.05 / max(k - 1, 1))
    np.fill_diagonal(trans, 0.95)
    init = np.full(k, 1.0 / k)
    prev = -np.inf
    loglik = -np.inf
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (iterations are reported)
        logb = _poisson_logpmf(counts, lam)
        shift = logb.max(axis=1, keepdims=True)
        b = np.exp(logb - shift)
        alpha = np.empty((n, k))
        scale = np.empty(n)
        a = init * b[0]
        scale[0] = a.sum()
        alpha[0] = a / scale[0]
        for i in range(1, n):  # the recursions are sequential; k is small
            a = (alpha[i - 1] @ trans) * b[i]
            scale[i] = a.sum()
            alpha[i] = a / scale[i]
        beta = np.empty((n, k))
        beta[-1] = 1.0
        for i in range(n - 2, -1, -1):
            beta[i] = (trans @ (b[i + 1] * beta[i + 1])) / scale[i + 1]
        gamma = alpha * beta
        gamma /= gamma.sum(axis=1, keepdims=True)
        xi = (alpha[:-1, :, None] * trans[None, :, :] * (b[1:] * beta[1:])[:, None, :]) / scale[1:, None, None]
        loglik = float(np.log(scale).sum() + shift.sum())
        init = gamma[0]
        trans = xi.sum(axis=0)
        trans /= trans.sum(axis=1, keepdims=True)
        lam = (gamma * counts[:, None]).sum(axis=0) / np.maximum(gamma.sum(axis=0), 1e-12)
        if loglik - prev < tol * abs(loglik):
            break
        prev = loglik
    order = np.argsort(-lam)
    stay = np.clip(np.diag(trans)[order], 0.0, 1 - 1e-9)
    return MMPPFit(
        rates_rps=tuple(float(x) for x in lam[order] / bin_s),
        mean_sojourn_s=tuple(float(bin_s / (1 - p)) for p in stay),
        log_likelihood=loglik,
        bin_s=float(bin_s),
        iterations=it,
    )


@dataclass(frozen=True)
class LogNormalFit:
    """A log-normal fit: ``median`` (= exp(mu)), log-space ``sigma``, and the data's range."""

    median: float
    sigma: float
    min: int
    max: int

    def spec(self) -> dict[str, Any]:
        """The size spec (``{dist: lognormal, ...}``) for a mix entry."""
        return {
            "dist": "lognormal",
            "median": round(self.median, 3),
            "sigma": round(self.sigma, 4),
            "min": self.min,
            "max": self.max,
        }


def fit_lognormal(values: np.ndarray) -> LogNormalFit:
    """Fit a log-normal to token counts (or any positive sizes) by maximum likelihood on the
    logs of the values > 0."""
    v = np.asarray(values, dtype=float)
    pos = v[v > 0]
    if len(pos) < 2:
        raise ValueError("need at least two positive values to fit a log-normal")
    logs = np.log(pos)
    return LogNormalFit(
        median=float(np.exp(logs.mean())),
        sigma=float(max(logs.std(), 1e-6)),
        min=int(max(pos.min(), 1)),
        max=int(pos.max()),
    )
