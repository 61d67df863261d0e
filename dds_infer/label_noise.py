"""Errors-in-variables corrections for noisy spectroscopic labels used in training.

Training fits M(θ) at the labels θ̂ = θ + ε, ε ~ N(0, C_θ). The fit then
learns E[M(θ) | θ̂], not M(θ̂): where the label density is steep (the main
sequence in log g, the edges of the HR diagram) the learned model is biased
(regression dilution; on the 120,000-star physical mock ``bench/mock_recovery.py``
measures 0.09 mag RMS in M with realistic label errors, 0.02-0.03 mag with
near-exact labels).

:func:`tweedie_label_means` replaces each label by an estimate of its
posterior mean given the label population, by Tweedie's formula
(Robbins 1956; Efron 2011, JASA 106, 1602):

    E[θ | θ̂] = θ̂ + C_θ ∇ log p(θ̂),

where p is the density of the *noisy* labels, which the catalogue itself
samples. p is a Gaussian-smoothed histogram of the labels in units of the
median label σ per axis. The formula is exact for Gaussian errors with one
common C_θ; with per-star C_θ it uses the pooled density, an approximation
(the smoothing bandwidth keeps stars with large errors from being
over-corrected). Pure numpy/scipy, once per training run.

The formula holds conditionally on any variable z that is independent of the
label noise given θ: E[θ | θ̂, z] = θ̂ + C_θ ∇ log p(θ̂ | z).
:func:`grouped_tweedie_label_means` uses the parallax as z. In a
magnitude-limited sample the θ population depends on distance: distant stars
are mostly luminous. A single pooled density shrinks distant turn-off dwarfs
towards the nearby, fainter population. On the physical mock their log g is
+0.009 dex too high at ϖ < 0.5 mas, and −0.011 dex at ϖ > 2 mas. Four parallax
groups remove both biases (+0.001, −0.002).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

__all__ = ["label_density_score", "tweedie_label_means", "grouped_tweedie_label_means", "quantile_groups",
           "centre_label_shifts"]


def label_density_score(theta, reference, scale, *, bandwidth: float = 1.0, bin_width: float = 0.5):
    """∇ log p(θ) (physical units⁻¹, shape (N, 3)) of the density of the ``reference`` labels.

    p: histogram of ``reference / scale`` with bins of ``bin_width``, smoothed by a
    Gaussian of σ = ``bandwidth`` (both in units of ``scale`` per axis); the
    gradient of log p by central differences, interpolated linearly at ``theta``.
    Where no reference label lies within 6 bandwidths the density is 0 and the
    score is 0 (no information, no shift).
    """
    scale = np.asarray(scale, dtype=float)
    u_ref = np.asarray(reference, dtype=float) / scale
    u = np.asarray(theta, dtype=float) / scale
    if not (bandwidth > 0 and bin_width > 0):
        raise ValueError(f"bandwidth and bin_width must be > 0, got {bandwidth}, {bin_width}")
    if not np.all(np.isfinite(u_ref)) or not np.all(np.isfinite(u)):
        raise ValueError("label_density_score needs finite labels (drop or fill unusable rows first)")
    pad = 5.0 * bandwidth + 2 * bin_width
    lo = np.minimum(u_ref.min(axis=0), u.min(axis=0)) - pad
    hi = np.maximum(u_ref.max(axis=0), u.max(axis=0)) + pad
    n_bins = np.ceil((hi - lo) / bin_width).astype(int) + 1
    edges = [lo[k] + bin_width * np.arange(n_bins[k] + 1) - bin_width / 2 for k in range(3)]
    hist, _ = np.histogramdd(u_ref, bins=edges)
    dens = gaussian_filter(hist, sigma=bandwidth / bin_width, mode="constant", truncate=6.0)
    logd = np.log(np.maximum(dens, 1e-300))
    coords = ((u - lo) / bin_width).T  # fractional bin-centre index
    grads = np.gradient(logd, bin_width)
    score_u = np.stack([map_coordinates(g, coords, order=1, mode="nearest") for g in grads], axis=-1)
    return score_u / scale


def tweedie_label_means(theta, theta_cov, *, reference=None, bandwidth: float = 1.0, bin_width: float = 0.5,
                        max_shift: float = 3.0):
    """Labels shrunk to their posterior means under the label population: θ̂ + C_θ ∇ log p(θ̂) (Tweedie).

    theta: (N, 3) labels θ̂; theta_cov: (N, 3, 3) their covariances; reference:
    labels whose density is p (default ``theta``; e.g. the training split only).
    The unit per axis is the median label σ of ``theta_cov``. Far from the bulk
    of the labels the smoothed density's log-gradient grows without bound, so a
    shift longer than ``max_shift`` in the star's own Mahalanobis metric
    (√(δᵀ C_θ⁻¹ δ)) is shortened to it. Returns (θ̃ (N, 3), capped (N,) bool).
    """
    theta = np.asarray(theta, dtype=float)
    cov = np.asarray(theta_cov, dtype=float)
    ref = theta if reference is None else np.asarray(reference, dtype=float)
    scale = np.sqrt(np.median(np.diagonal(cov, axis1=1, axis2=2), axis=0))
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError(f"label covariances must have positive finite diagonals (median σ {scale})")
    if not max_shift > 0:
        raise ValueError(f"max_shift must be > 0, got {max_shift}")
    score = label_density_score(theta, ref, scale, bandwidth=bandwidth, bin_width=bin_width)
    shift = np.einsum("nij,nj->ni", cov, score)
    maha = np.sqrt(np.maximum(np.einsum("ni,ni->n", shift, score), 0.0))  # δᵀ C⁻¹ δ = ∇ᵀ C ∇
    capped = maha > max_shift
    factor = np.where(capped, max_shift / np.maximum(maha, 1e-300), 1.0)
    return theta + factor[:, None] * shift, capped


def grouped_tweedie_label_means(theta, theta_cov, condition, *, n_groups: int = 4, reference=None, **kwargs):
    """:func:`tweedie_label_means` with the density estimated separately in ``n_groups`` quantile groups of ``condition``.

    condition: (N,) a variable independent of the label noise (e.g. the parallax);
    reference: (N,) bool, the stars whose labels define the densities (default
    all); the group edges are quantiles of ``condition`` over them. Stars
    with a non-finite ``condition`` use the density of all reference stars.
    Returns (θ̃ (N, 3), capped (N,) bool, group (N,) int, -1 = no condition).
    """
    theta = np.asarray(theta, dtype=float)
    cov = np.asarray(theta_cov, dtype=float)
    ref = np.ones(len(theta), bool) if reference is None else np.asarray(reference, bool)
    group = quantile_groups(condition, n_groups, ref)
    out, capped = theta.copy(), np.zeros(len(theta), bool)
    for g in np.unique(group):
        sel = group == g
        pool = ref if g < 0 else ref & sel
        out[sel], capped[sel] = tweedie_label_means(theta[sel], cov[sel], reference=theta[pool], **kwargs)
    return out, capped, group


def quantile_groups(condition, n_groups: int, reference) -> np.ndarray:
    """Group index 0..n_groups-1 of each star by quantiles of ``condition`` over the ``reference``
    stars (bool (N,)); -1 where ``condition`` is not finite."""
    z = np.asarray(condition, dtype=float)
    ref = np.asarray(reference, bool)
    if int(n_groups) < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    has = np.isfinite(z)
    if not (ref & has).any():
        raise ValueError("no reference star has a finite condition (parallax)")
    edges = np.quantile(z[ref & has], np.linspace(0.0, 1.0, int(n_groups) + 1))[1:-1]
    return np.where(has, np.searchsorted(edges, np.where(has, z, 0.0), side="right"), -1)


def centre_label_shifts(theta_new, theta_prior, group, reference):
    """Remove the population-mean label shift of a per-star update, group by group.

    If ``theta_prior`` is each star's posterior mean given its label (and group),
    E[θ | θ̂, photometry] averages back to it over the stars of a group (the law
    of total expectation), so a non-zero mean of θ_new − θ_prior in a group is
    not information about the stars: in the joint update it is the labels
    following the network's own zero-point (the flat direction of the joint fit
    of M(θ) and the labels). The mean over the ``reference`` stars (bool (N,),
    e.g. the training split) of each group (int (N,), :func:`quantile_groups`)
    is subtracted from every star of that group. Returns (θ (N, 3), shifts
    (G, 3) in the order of ``np.unique(group)``).
    """
    theta_new = np.asarray(theta_new, dtype=float)
    d = theta_new - np.asarray(theta_prior, dtype=float)
    group = np.asarray(group)
    ref = np.asarray(reference, bool)
    out, shifts = theta_new.copy(), []
    for g in np.unique(group):
        sel = group == g
        pool = sel & ref
        shift = d[pool].mean(axis=0) if pool.any() else np.zeros(d.shape[1])
        out[sel] -= shift
        shifts.append(shift)
    return out, np.array(shifts).reshape(-1, d.shape[1])
