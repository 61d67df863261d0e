"""Scoring posteriors against a known truth: accuracy, interval coverage, SBC ranks.

Used by the demo, the calibration benchmark (``bench/sbc.py``) and the real-star
accuracy benchmark. Inputs are plain arrays; nothing here knows about samplers.

* accuracy: median bias and robust σ (1.4826 × MAD) of posterior medians minus
  truth, and of z = (median − truth) / sqrt(σ_post² + σ_ref²) where σ_post is the
  half-width of the 16–84% interval and σ_ref an optional reference error (e.g.
  the spectroscopic label error when scoring against real labels);
* coverage: fraction of stars whose truth lies inside the central 68% / 95%
  interval of their (optionally weighted) draws;
* ranks: simulation-based calibration ranks (Talts et al. 2018, arXiv:1804.06788):
  the number of draws below the truth; uniform when the posterior is calibrated;
* agreement of two posteriors of the same stars (e.g. grid path vs NUTS): posterior
  medians within ``tol`` reference σ.
"""

from __future__ import annotations

import numpy as np

from .evaluate import robust_sigma

__all__ = ["accuracy", "interval_coverage", "sbc_ranks", "median_agreement", "plot_recovery",
           "plot_rank_histograms"]


def accuracy(median, q16, q84, truth, ref_sigma=None) -> dict:
    """{bias, sigma, z_bias, z_sigma, n} for one variable (arrays of shape (N,))."""
    median, q16, q84, truth = (np.asarray(a, dtype=float) for a in (median, q16, q84, truth))
    ok = np.isfinite(median) & np.isfinite(truth)
    d = median[ok] - truth[ok]
    s_post = 0.5 * (q84[ok] - q16[ok])
    s_ref = 0.0 if ref_sigma is None else np.asarray(ref_sigma, dtype=float)[ok]
    z = d / np.sqrt(s_post**2 + s_ref**2)
    return {"bias": float(np.median(d)) if d.size else float("nan"), "sigma": robust_sigma(d),
            "z_bias": float(np.median(z)) if z.size else float("nan"), "z_sigma": robust_sigma(z),
            "n": int(ok.sum())}


def _weighted_quantiles(draws, weights, qs):
    """Quantiles per row of draws (N, S) with weights (N, S) (None = equal)."""
    order = np.argsort(draws, axis=1)
    x = np.take_along_axis(draws, order, axis=1)
    w = np.ones_like(x) if weights is None else np.take_along_axis(weights, order, axis=1)
    c = np.cumsum(w, axis=1)
    c = (c - 0.5 * w) / c[:, -1:]
    return np.stack([np.array([np.interp(q, ci, xi) for ci, xi in zip(c, x)]) for q in qs], axis=-1)


def interval_coverage(draws, truth, level: float, weights=None) -> float:
    """Fraction of rows whose truth is inside the central ``level`` interval of draws (N, S)."""
    draws = np.asarray(draws, dtype=float)
    lo, hi = 0.5 - level / 2, 0.5 + level / 2
    q = _weighted_quantiles(draws, weights, (lo, hi))
    truth = np.asarray(truth, dtype=float)
    return float(np.mean((truth >= q[:, 0]) & (truth <= q[:, 1])))


def sbc_ranks(draws, truth, weights=None) -> np.ndarray:
    """Normalised SBC rank in [0, 1]: (weighted) fraction of draws below the truth, per row."""
    draws = np.asarray(draws, dtype=float)
    below = draws < np.asarray(truth, dtype=float)[:, None]
    if weights is None:
        return below.mean(axis=1)
    w = np.asarray(weights, dtype=float)
    return (below * w).sum(axis=1) / w.sum(axis=1)


def median_agreement(median, ref_median, ref_q16, ref_q84, tol: float = 0.25) -> np.ndarray:
    """|median − ref_median| < tol × σ_ref with σ_ref = (ref_q84 − ref_q16)/2, elementwise
    (arrays (N, V): stars × variables); boolean (N, V)."""
    sig = 0.5 * (np.asarray(ref_q84, float) - np.asarray(ref_q16, float))
    return np.abs(np.asarray(median, float) - np.asarray(ref_median, float)) < tol * np.maximum(sig, 1e-12)


def _plt():
    from .plots import _plt as p

    return p()


def plot_recovery(median, q16, q84, truth, names, units=None):
    """Posterior median (16-84% bars) vs truth, one panel per variable; returns the Figure."""
    plt = _plt()
    median, q16, q84, truth = (np.asarray(a, dtype=float) for a in (median, q16, q84, truth))
    k = len(names)
    fig, axes = plt.subplots(1, k, figsize=(3.3 * k, 3.3), constrained_layout=True)
    for j, ax in enumerate(np.atleast_1d(axes)):
        t, m = truth[:, j], median[:, j]
        yerr = np.vstack([m - q16[:, j], q84[:, j] - m])
        ax.errorbar(t, m, yerr=np.clip(yerr, 0, None), fmt=".", ms=3, alpha=0.5, lw=0.5)
        lo, hi = np.nanpercentile(np.concatenate([t, m]), [0.5, 99.5])
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        label = names[j] + (f" [{units[j]}]" if units and units[j] else "")
        ax.set_xlabel("true " + label)
        ax.set_ylabel("posterior " + label)
    return fig


def plot_rank_histograms(ranks, names, bins: int = 20):
    """SBC rank histograms (ranks (N, V) in [0, 1]) with the 99% band of a uniform histogram."""
    plt = _plt()
    ranks = np.asarray(ranks, dtype=float)
    n = ranks.shape[0]
    k = len(names)
    fig, axes = plt.subplots(1, k, figsize=(3.0 * k, 2.8), constrained_layout=True)
    expect = n / bins
    band = 2.576 * np.sqrt(expect * (1 - 1 / bins))
    for j, ax in enumerate(np.atleast_1d(axes)):
        ax.axhspan(expect - band, expect + band, color="0.85")
        ax.hist(ranks[:, j], bins=bins, range=(0, 1), histtype="step", color="C0")
        ax.set_xlabel(f"rank of true {names[j]}")
        ax.set_yticks([])
    return fig
