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

For the line-of-sight fit (:mod:`dds_infer.los`): :func:`simulate_cloud_sightline` (stars behind
and in front of a cloud, observed as above) and :func:`simulate_sightline_images` (per-star
p(μ, E) images drawn directly, without the stellar model).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .catalog import StarCatalog
from .galaxy import sample_components_and_feh, sample_distances
from .survey import GREEN2020_SURVEY, SurveyModel, observe_parallax, photometric_errors

__all__ = ["draw_from_prior", "simulate_observations", "simulate_cloud_sightline", "simulate_sightline_images"]


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

    Bands observed outside their survey's saturation / detection limits (``BandNoise.bright``,
    ``faint``) and random drop-outs are missing. Keeps the stars whose *observed* reference-band
    magnitude lies in ``window``
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
    # each survey's detection / saturation limits on the observed magnitude (as real catalogues)
    drop |= (mag < np.array([nz.bright for nz in survey.noise])) | (mag > np.array([nz.faint for nz in survey.noise]))
    drop[:, 0] = False  # keep the reference band (selected on below)
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


def simulate_cloud_sightline(emulator, prior, n: int, l: float, b: float, *, cloud_pc: float = 400.0,
                             delta_E: float = 0.5, E_fg: float = 0.05, scatter: float = 0.03, seed: int = 0,
                             mu_range=None, config=None, survey: SurveyModel = GREEN2020_SURVEY):
    """n observed stars along one sightline (l, b) behind a thin dust cloud (a LOS-fit test bed).

    Stars (θ, μ) come from ``prior`` along (l, b) (:func:`draw_from_prior`); the true reddening is
    the step profile E(μ) = E_fg + delta_E·[d > cloud_pc], times (1 + ``scatter``·N(0, 1)) per star
    (clipped at 0), observed with :func:`simulate_observations` (same selection window).
    mu_range: draw distances only in this range (e.g. stars selected by parallax around a nearby
    cloud, as Zucker et al. 2019 do); the Galactic p(μ | l, b) shape is kept inside it. Returns
    (StarCatalog with l, b; truth dict of (n,) arrays teff, logg, feh, mu, E, and the profile).
    """
    from .inference import InferenceConfig

    config = InferenceConfig() if config is None else config
    rng = np.random.default_rng(seed + 104729)
    m = 4 * n + 100
    p = prior.replace(reddening_kind="halfnormal") if prior.reddening_kind != "halfnormal" else prior
    if mu_range is not None:
        p = p.replace(mu_range=jnp.asarray(mu_range, dtype=jnp.float32))
    draws = draw_from_prior(p, m, seed=seed, l=l, b=b)
    mu_c = 5.0 * np.log10(cloud_pc / 10.0)
    E = (E_fg + delta_E * (draws["mu"] > mu_c)) * (1.0 + scatter * rng.standard_normal(m))
    draws = dict(draws, E=np.maximum(E, 0.0))
    cat, keep = simulate_observations(emulator, draws, config, seed=seed, survey=survey, l=l, b=b)
    if cat.n_stars < n:
        raise RuntimeError(f"only {cat.n_stars} of {m} drawn stars pass the selection; need {n}")
    cat = cat.subset(np.arange(n))
    truth = {k: np.asarray(draws[k])[keep[:n]] for k in ("teff", "logg", "feh", "mu", "E")}
    truth.update(cloud_pc=float(cloud_pc), cloud_mu=float(mu_c), delta_E=float(delta_E), E_fg=float(E_fg))
    return cat, truth


def simulate_sightline_images(n_stars, *, cloud_mu=8.0103, cloud_dE=0.5, E_fg=0.05, sigma_mu=0.2, sigma_E=0.05,
                              rho=0.0, mu_star_range=(6.0, 12.0), seed=0, mu_centers=None, E_centers=None):
    """Synthetic per-star p(μ, E) images for tests of :mod:`dds_infer.los`: one sightline with sharp clouds.

    True μ uniform in ``mu_star_range``; true E = E_fg + Σ ΔE_k [μ > μ_k] (cloud_mu/cloud_dE scalars
    or sequences); observed centre = truth + Gaussian noise with sd (sigma_mu, sigma_E) and
    correlation rho; image = that 2-D Gaussian centred on the observed point, evaluated at the
    pixel centres (grid default :func:`dds_infer.los.default_grid`) and normalised to sum 1.
    Returns (pdf (n, n_mu, n_E) float32, mu_centers, E_centers, truth dict).
    """
    if n_stars < 1 or sigma_mu <= 0 or sigma_E <= 0 or not abs(rho) < 1:
        raise ValueError("need n_stars >= 1, sigma_mu > 0, sigma_E > 0 and |rho| < 1")
    if mu_centers is None or E_centers is None:
        from .los import default_grid

        mu_centers, E_centers = default_grid()
    mu_c, E_c = np.asarray(mu_centers, float), np.asarray(E_centers, float)
    rng = np.random.default_rng(seed)
    cm, cd = np.atleast_1d(cloud_mu).astype(float), np.atleast_1d(cloud_dE).astype(float)
    mu_true = rng.uniform(*mu_star_range, n_stars)
    E_true = E_fg + (mu_true[:, None] > cm).astype(float) @ cd
    z1, z2 = rng.standard_normal((2, n_stars))
    mu_obs = mu_true + sigma_mu * z1
    E_obs = E_true + sigma_E * (rho * z1 + np.sqrt(1 - rho ** 2) * z2)
    x = ((mu_c[None, :, None] - mu_obs[:, None, None]) / sigma_mu).astype(np.float32)
    y = ((E_c[None, None, :] - E_obs[:, None, None]) / sigma_E).astype(np.float32)
    pdf = np.exp(-0.5 * (x * x - 2 * rho * x * y + y * y) / (1 - rho ** 2))
    pdf /= pdf.sum(axis=(1, 2), keepdims=True)
    truth = {"mu": mu_true, "E": E_true, "mu_obs": mu_obs, "E_obs": E_obs, "cloud_mu": cm, "cloud_dE": cd,
             "E_fg": E_fg, "distance_pc": 10.0 ** (cm / 5.0 + 1.0)}
    return pdf, mu_c, E_c, truth
