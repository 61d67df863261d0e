"""Draws from the inference prior and observations from the inference likelihood (for SBC).

Simulation-based calibration (Talts et al. 2018, arXiv:1804.06788) needs stars
drawn from *exactly* the prior and likelihood the sampler uses. This module draws

* (μ, [Fe/H]) from :mod:`dds_infer.galaxy` — the same p(μ | l, b) ∝ n(d) d³ and
  p([Fe/H] | μ, l, b) as :mod:`dds_infer.priors` (sky-averaged without l, b),
  truncated to ``prior.mu_range``;
* (T_eff, log g) by rejection from the prior's own HR table: uniform proposals in
  the grid box accepted with probability exp(log p_HR(θ) − max log p_HR), which is
  exact because the trilinear interpolant never exceeds the table maximum;
* E from the prior's reddening term (half-normal, or uniform for "flat");

and observes them with the likelihood's noise model: photometric errors from a
:class:`~dds_infer.survey.SurveyModel`, noise of σ² = σ_m² + σ_floor², missing
bands completely at random (the survey's drop-out rates: ignorable), Gaia
parallax noise around ϖ_true + ϖ_zp with the configured inflation factor.
"""

from __future__ import annotations

import jax
import numpy as np

from .catalog import StarCatalog
from .galaxy import sample_components_and_feh, sample_distances
from .survey import GREEN2020_SURVEY, SurveyModel, observe_parallax, photometric_errors

__all__ = ["draw_from_prior", "simulate_observations"]


def draw_from_prior(prior, n: int, seed: int = 0, l=None, b=None, max_rounds: int = 200) -> dict:
    """n draws of (teff, logg, feh, mu, E) from ``prior`` (a :class:`dds_infer.priors.Prior`).

    l, b: one sightline (floats) or None for the sky average. Returns a dict of (n,)
    arrays plus ``n_proposed`` (proposals made) for the record.
    """
    from .priors import log_hr_prior

    if prior.reddening_kind not in ("halfnormal", "flat") or prior.theta_kind != "density":
        raise ValueError("draw_from_prior supports theta='density' with reddening 'halfnormal' or 'flat'")
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    lo, hi = np.asarray(prior.grid_lo, float), np.asarray(prior.grid_hi, float)
    log_max = float(np.max(np.asarray(prior.log_hr)))
    mu_range = tuple(float(v) for v in np.asarray(prior.mu_range))
    out: dict[str, list] = {k: [] for k in ("teff", "logg", "feh", "mu", "component")}
    got = proposed = 0
    for _ in range(max_rounds):
        if got >= n:
            break
        m = 8192
        key, k_mu, k_feh = jax.random.split(key, 3)
        if l is None:
            mu = np.asarray(sample_distances(k_mu, None, None, m, prior.galaxy, mu_range))
            comp, feh = sample_components_and_feh(k_feh, mu, None, None, prior.galaxy)
        else:
            mu = np.asarray(sample_distances(k_mu, float(l), float(b), m, prior.galaxy, mu_range))
            comp, feh = sample_components_and_feh(k_feh, mu, float(l), float(b), prior.galaxy)
        teff = rng.uniform(lo[0], hi[0], m)
        logg = rng.uniform(lo[1], hi[1], m)
        theta = np.stack([teff, logg, np.asarray(feh)], axis=-1)
        log_p = np.asarray(log_hr_prior(theta, prior), dtype=float)
        accept = np.log(rng.random(m)) < log_p - log_max
        proposed += m
        idx = np.flatnonzero(accept)[: n - got]
        for k, v in (("teff", teff), ("logg", logg), ("feh", np.asarray(feh)), ("mu", mu),
                     ("component", np.asarray(comp))):
            out[k].append(np.asarray(v)[idx])
        got += len(idx)
    if got < n:
        raise RuntimeError(f"only {got} of {n} prior draws accepted after {proposed} proposals")
    res = {k: np.concatenate(v) for k, v in out.items()}
    if prior.reddening_kind == "halfnormal":
        res["E"] = np.abs(rng.normal(0.0, prior.E_scale, n))
    else:
        res["E"] = rng.uniform(0.0, prior.E_max, n)
    res["n_proposed"] = proposed
    return res


def simulate_observations(emulator, draws: dict, config, seed: int = 0,
                          survey: SurveyModel = GREEN2020_SURVEY, l=None, b=None,
                          window=(8.0, 21.0)):
    """Observe ``draws`` through the likelihood of ``config`` (an
    :class:`dds_infer.inference.InferenceConfig`).

    Keeps the stars whose *observed* reference-band magnitude lies in ``window``
    (a selection on observed data only, which leaves each kept star's posterior
    unchanged). Returns (StarCatalog of the kept stars, kept indices into draws).
    """
    rng = np.random.default_rng(seed + 7919)
    theta = np.stack([draws["teff"], draws["logg"], draws["feh"]], axis=-1)
    m_true = np.asarray(emulator.predict_apparent(theta, draws["mu"], draws["E"]), dtype=float)
    sig = photometric_errors(m_true, survey)
    tot = np.sqrt(sig**2 + config.sigma_floor**2)
    mag = m_true + tot * rng.standard_normal(m_true.shape)
    drop = rng.random(mag.shape) < np.array([nz.dropout for nz in survey.noise])
    drop[:, 0] = False  # keep the reference band
    mag = np.where(drop, np.nan, mag)
    err = np.where(drop, np.nan, sig)
    plx, plx_err = observe_parallax(rng, draws["mu"], m_true[:, survey.bands.index(survey.parallax_band)],
                                    survey, zero_point=config.zero_point_mas,
                                    inflation=config.parallax_inflation)
    keep = np.flatnonzero((mag[:, 0] >= window[0]) & (mag[:, 0] <= window[1]))
    optional = {}
    if l is not None:
        optional.update(l=np.full(keep.size, float(l)), b=np.full(keep.size, float(b)))
    ids = np.array([f"sbc{seed}_{i:06d}" for i in keep])
    cat = StarCatalog.from_arrays(mag[keep], err[keep], plx[keep], plx_err[keep], emulator.bands,
                                  ids=ids, **optional)
    return cat, keep
