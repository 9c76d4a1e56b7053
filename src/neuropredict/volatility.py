"""Volatility forecasts of the next log return, from what one window of prices holds.

- EWMA: RiskMetrics' sigma² <- λ·sigma² + (1-λ)·r², seeded with the training variance;
- GARCH(1,1): sigma² <- ω + α·r² + β·sigma², the forecast decades of studies find hard to beat
  (Hansen & Lunde 2005). Fitted per symbol on the training period's returns by maximum
  likelihood with variance targeting (Engle & Mezrich 1996): ω = (1 - α - β)·v, v the training
  variance, so only α and β are estimated and the recursion starts from v, as EWMA's does.

Both are functions of the window and fitted constants alone, so the worker computes exactly
what offline scoring does. The fit is a few lines of scipy rather than the `arch` package: the
serving image needs only the recursion, and `arch` would bring statsmodels to fit two numbers.
"""

from __future__ import annotations

import math

import numpy as np

# Where the likelihood's optimiser starts and the bounds it keeps to (α + β < 1: stationary).
GARCH_START = (0.08, 0.90)
PERSISTENCE_MAX = 0.9999


def window_returns(windows: np.ndarray) -> np.ndarray:
    windows = np.asarray(windows, dtype=np.float64)
    return np.log(windows[:, 1:] / windows[:, :-1])


def ewma_scale(windows: np.ndarray, training_sd: np.ndarray, lam: float) -> np.ndarray:
    """sigma of the next return after the window's returns, EWMA from the training variance."""
    returns = window_returns(windows)
    variance = np.asarray(training_sd, dtype=np.float64) ** 2
    for k in range(returns.shape[1]):
        variance = lam * variance + (1.0 - lam) * returns[:, k] ** 2
    return np.sqrt(variance)


def garch_scale(windows: np.ndarray, training_sd: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """sigma of the next return after the window's returns, GARCH(1,1) from the training variance
    (α, β per row: the row's symbol's)."""
    returns = window_returns(windows)
    v = np.asarray(training_sd, dtype=np.float64) ** 2
    omega = (1.0 - alpha - beta) * v
    variance = v
    for k in range(returns.shape[1]):
        variance = omega + alpha * returns[:, k] ** 2 + beta * variance
    return np.sqrt(variance)


def garch_variances(returns: np.ndarray, alpha: float, beta: float, v: float) -> np.ndarray:
    """sigma²_t of each return given those before it, from sigma²_1 = v (a linear filter in r²)."""
    from scipy.signal import lfilter

    drive = (1.0 - alpha - beta) * v + alpha * returns[:-1] ** 2
    later = lfilter([1.0], [1.0, -beta], drive, zi=[beta * v])[0]
    return np.concatenate(([v], later))


def garch_fit(returns: np.ndarray, v: float) -> tuple[float, float]:
    """(α, β) maximising the Gaussian likelihood of `returns` (zero mean, as the intervals are
    centred for the baselines) with long-run variance v."""
    from scipy.optimize import minimize

    r = np.asarray(returns, dtype=np.float64)

    def negative_log_likelihood(theta: np.ndarray) -> float:
        alpha, beta = theta
        if alpha + beta >= PERSISTENCE_MAX:
            return 1e12
        s2 = garch_variances(r, alpha, beta, v)
        return 0.5 * float(np.sum(np.log(s2) + r**2 / s2))

    best = minimize(negative_log_likelihood, np.array(GARCH_START), method="L-BFGS-B",
                    bounds=[(0.0, PERSISTENCE_MAX), (0.0, PERSISTENCE_MAX)])
    alpha, beta = (float(x) for x in best.x)
    return alpha, beta


def log_likelihood(returns: np.ndarray, variances: np.ndarray) -> float:
    """Gaussian log likelihood of zero-mean returns with these variances."""
    r, s2 = np.asarray(returns, dtype=np.float64), np.asarray(variances, dtype=np.float64)
    return float(-0.5 * np.sum(math.log(2 * math.pi) + np.log(s2) + r**2 / s2))
