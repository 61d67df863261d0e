"""The per-star NumPyro model of Green et al. (2021), Eq. 19.

    p(θ, μ, E | m̂, ϖ̂) ∝ Π_{b observed} N(m̂_b | M_b(θ) + μ + E R_b(θ) + δ_b, σ_b² + σ_floor²)
                       × N(ϖ̂ − ϖ_zp | 10^((10 − μ)/5) mas, (f σ_ϖ)²)
                       × p(θ) p(μ) p(E)                             (:mod:`dds_infer.priors`)

Sample sites (the engine samples them in NumPyro's unconstrained space):

* ``"x"`` (3,): normalised θ, x = (θ − theta_med)/theta_std (the emulator's input);
  improper flat site, the prior enters through the ``"log_prior"`` factor. The factor
  includes log|dθ/dx| = Σ log theta_std, so the model density is the density of x.
* ``config.parameterization == "whitened"`` (default): ``"z_mu"``, ``"z_E"`` (improper flat on
  ℝ), and deterministic ``"mu"``, ``"E"`` from :func:`whitened_to_mu_E`. For fixed θ, Eq. 2 is
  linear in (μ, E), so the photometric likelihood is a Gaussian in (μ, E) whose mean moves
  with θ (the ridges that made NUTS take ~140 leapfrog steps per draw). The map
  (x, z_μ, z_E) → (x, μ, E) centres and scales (μ, E) on that conditional Gaussian at each x
  (a non-centred parameterisation, Papaspiliopoulos, Roberts & Sköld 2007, Stat. Sci. 22, 59),
  so the sampler sees z ≈ N(0, 1) independent of x; its log-Jacobian is added as the factor
  ``"reparam_jacobian"``. The posterior is the same (exact change of variables).
* ``"direct"``: ``"mu"`` (improper flat on ℝ) and ``"E"`` (``constraints.positive``: NumPyro
  samples u = log E and adds the log-Jacobian u).
* deterministic ``"teff"``, ``"logg"``, ``"feh"``; ``"reparam_log_jac"`` (whitened only), see
  :func:`direct_log_density`.

The parallax zero-point ϖ_zp is subtracted from the measured parallax (ϖ̂ − ϖ_zp; DR2:
ϖ_zp = −0.029 mas, Lindegren et al. 2018, A&A 616, A2; DR3: −0.017 mas, Lindegren et al.
2021, A&A 649, A4). Missing bands and parallaxes contribute exactly zero.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from flax import struct
from numpyro.distributions import constraints

from .priors import Prior, log_prior

__all__ = ["InferenceConfig", "StarData", "star_data_from_catalog", "star_data_counts",
           "photometric_variance", "mu_E_normal_equations", "conditional_mu_E", "whitened_to_mu_E",
           "mu_E_to_whitened", "unconstrained_init", "direct_log_density",
           "star_model", "log_likelihood", "photometric_prediction", "photometric_residuals", "parallax_residual", "ZERO_POINTS", "MISSING_PARALLAX_ERR", "PARAMETERIZATIONS",
           "POSITION_MODES"]

ZERO_POINTS = {"dr2": -0.029, "dr3": -0.017, "none": 0.0}  # mas
MISSING_PARALLAX_ERR = 1e6  # mas: parallax_err at or above MISSING_PARALLAX_ERR / 10 means "no parallax"
PARAMETERIZATIONS = ("whitened", "direct")
POSITION_MODES = ("mixed", "none", "all")
_RIDGE_MU, _RIDGE_E, _MU0 = 1e-4, 1e-4, 12.0  # σ = 100 mag pull to (μ0, 0): keeps A invertible


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Static likelihood settings (hashable).

    sigma_floor: mag, a calibration/model-error floor added in quadrature to each σ_m. When a
        catalogue declares that its errors already include a floor (``meta["mag_err_floor"]``,
        e.g. the Green2020 release's 0.02 mag), only the excess is added:
        σ² = σ_cat² + max(σ_floor² − floor_cat², 0) (:func:`photometric_variance`), so the floor
        is not counted twice.
    zp: parallax zero-point, "dr2" (−0.029 mas), "dr3" (−0.017 mas), "none", or a float in mas.
    parallax_inflation: f in σ_ϖ → f σ_ϖ.
    band_offsets: per-band photometric zero-point offsets (mag) added to the model, or None.
    use_parallax: False drops the parallax term.
    parameterization: "whitened" (default) or "direct": how the model's sample sites map to
        (μ, E) (module docstring). The posterior is the same; "whitened" needs ~10× fewer
        leapfrog steps per draw (bench/infer_bench.py reports both).
    """

    sigma_floor: float = 0.02
    zp: str | float = "dr2"
    parallax_inflation: float = 1.0
    band_offsets: tuple | None = None
    use_parallax: bool = True
    parameterization: str = "whitened"

    def __post_init__(self):
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}")
        if not (np.isfinite(self.sigma_floor) and self.sigma_floor >= 0):
            raise ValueError(f"sigma_floor must be finite and >= 0, got {self.sigma_floor!r}")
        if isinstance(self.zp, str):
            if self.zp.lower() not in ZERO_POINTS:
                raise ValueError(f"zp must be one of {sorted(ZERO_POINTS)} or a float (mas), got {self.zp!r}")
        elif not np.isfinite(float(self.zp)):
            raise ValueError(f"zp must be finite, got {self.zp!r}")
        if not (np.isfinite(self.parallax_inflation) and self.parallax_inflation > 0):
            raise ValueError(f"parallax_inflation must be > 0, got {self.parallax_inflation!r}")
        if self.band_offsets is not None:
            object.__setattr__(self, "band_offsets", tuple(float(v) for v in self.band_offsets))
            if not all(np.isfinite(self.band_offsets)):
                raise ValueError(f"band_offsets must be finite, got {self.band_offsets!r}")

    @property
    def zero_point_mas(self) -> float:
        """ϖ_zp in mas (negative for Gaia: the corrected parallax is ϖ̂ − ϖ_zp > ϖ̂)."""
        return ZERO_POINTS[self.zp.lower()] if isinstance(self.zp, str) else float(self.zp)

    def offsets(self, n_bands: int):
        """(B,) band offsets δ (zeros if None); raises if the length is not n_bands."""
        if self.band_offsets is None:
            return jnp.zeros(n_bands)
        if len(self.band_offsets) != n_bands:
            raise ValueError(f"band_offsets has {len(self.band_offsets)} entries, the emulator has {n_bands} bands")
        return jnp.asarray(self.band_offsets)


@struct.dataclass
class StarData:
    """One star, or a batch with a leading star axis; all arrays, no NaN inside.

    mag (B,) 0 where unobserved; mag_err (B,) 1 where unobserved; observed (B,) bool;
    parallax () mas, 0 if missing; parallax_err () mas, MISSING_PARALLAX_ERR if missing;
    l, b () deg (0 when unknown) and has_position () bool (False: sky-averaged distance prior);
    E_ref, E_ref_err () optional per-star reddening reference for the "dustmap" prior
    (None when absent; 0 and 1e3 for stars without one).
    mag_floor (B,) optional floor already included in mag_err (None: none).
    positions: static, what ``has_position`` holds for the whole batch: "none", "all" or
    "mixed" (the default; always correct). With "none" or "all" the priors evaluate only the
    sky-averaged or only the sightline branch instead of both (under ``vmap`` a
    ``jnp.where`` computes both); :func:`star_data_from_catalog` sets it.
    """

    mag: jnp.ndarray
    mag_err: jnp.ndarray
    observed: jnp.ndarray
    parallax: jnp.ndarray
    parallax_err: jnp.ndarray
    l: jnp.ndarray
    b: jnp.ndarray
    has_position: jnp.ndarray
    E_ref: jnp.ndarray | None = None
    E_ref_err: jnp.ndarray | None = None
    mag_floor: jnp.ndarray | None = None
    positions: str = struct.field(pytree_node=False, default="mixed")

    def __post_init__(self):
        if self.positions not in POSITION_MODES:
            raise ValueError(f"StarData.positions must be one of {POSITION_MODES}, got {self.positions!r}")

    @property
    def has_parallax(self):
        return self.parallax_err < 0.1 * MISSING_PARALLAX_ERR


def star_data_counts(catalog) -> dict:
    """What :func:`star_data_from_catalog` fills in: counts of stars per missing-data case."""
    obs = catalog.observed
    plx = np.isfinite(catalog.parallax) & np.isfinite(catalog.parallax_err) & (catalog.parallax_err > 0)
    pos = (np.zeros(catalog.n_stars, bool) if catalog.l is None
           else np.isfinite(catalog.l) & np.isfinite(catalog.b))
    ref = (np.zeros(catalog.n_stars, bool) if catalog.E_prior is None
           else np.isfinite(catalog.E_prior) & np.isfinite(catalog.E_prior_err))
    return {"n_stars": int(catalog.n_stars), "n_no_photometry": int((~obs.any(axis=1)).sum()),
            "n_one_band": int((obs.sum(axis=1) == 1).sum()),
            "n_bands_observed": {b: int(n) for b, n in zip(catalog.bands.names, obs.sum(axis=0))},
            "n_no_parallax": int((~plx).sum()), "n_no_position": int((~pos).sum()),
            "n_no_E_ref": int((~ref).sum())}


def star_data_from_catalog(catalog) -> StarData:
    """:class:`StarData` with a leading axis N from a StarCatalog (float32 arrays, bool masks).

    Returns the StarData only; :func:`star_data_counts` gives the counts of each fill-in
    (stars without photometry, parallax, position or reddening reference). A warning names
    the number of stars with no observed band (they are kept: the posterior is the prior).
    """
    counts = star_data_counts(catalog)
    if counts["n_no_photometry"]:
        warnings.warn(f"{counts['n_no_photometry']} of {counts['n_stars']} stars have no observed band; "
                      "their posterior is the prior", UserWarning, stacklevel=2)
    obs = catalog.observed
    plx_ok = np.isfinite(catalog.parallax) & np.isfinite(catalog.parallax_err) & (catalog.parallax_err > 0)
    n = catalog.n_stars
    if catalog.l is None:
        l = b = np.zeros(n)
        pos = np.zeros(n, bool)
    else:
        pos = np.isfinite(catalog.l) & np.isfinite(catalog.b)
        l, b = np.where(pos, catalog.l, 0.0), np.where(pos, catalog.b, 0.0)
    E_ref = E_ref_err = None
    if catalog.E_prior is not None:
        ok = np.isfinite(catalog.E_prior) & np.isfinite(catalog.E_prior_err)
        E_ref = jnp.asarray(np.where(ok, catalog.E_prior, 0.0), dtype=jnp.float32)
        E_ref_err = jnp.asarray(np.where(ok, catalog.E_prior_err, 1e3), dtype=jnp.float32)
    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)  # noqa: E731
    floor = catalog.mag_err_floor
    return StarData(
        mag=f32(np.where(obs, catalog.mag, 0.0)), mag_err=f32(np.where(obs, catalog.mag_err, 1.0)),
        observed=jnp.asarray(obs), parallax=f32(np.where(plx_ok, catalog.parallax, 0.0)),
        parallax_err=f32(np.where(plx_ok, catalog.parallax_err, MISSING_PARALLAX_ERR)),
        l=f32(l), b=f32(b), has_position=jnp.asarray(pos), E_ref=E_ref, E_ref_err=E_ref_err,
        mag_floor=None if floor is None else f32(np.broadcast_to(floor, obs.shape)),
        positions="all" if pos.all() else ("none" if not pos.any() else "mixed"))


def photometric_variance(star: StarData, config: InferenceConfig):
    """σ² per band of Eq. 19's photometric likelihood: σ_m² + σ_floor², where a floor the
    catalogue already included (``star.mag_floor``) is not added again:
    σ² = σ_cat² + max(σ_floor² − floor_cat², 0)."""
    add = config.sigma_floor ** 2
    if star.mag_floor is not None:
        add = jnp.maximum(add - star.mag_floor ** 2, 0.0)
    return star.mag_err ** 2 + add


def mu_E_normal_equations(w, y, R, w_p=0.0, mu_p=0.0):
    """Eq. 2 at fixed θ is linear in (μ, E): y = m̂ − M(θ) = μ + E R(θ) + noise. The weighted
    least-squares normal equations A [μ, E]ᵀ = b (band weights ``w`` (B,); y, R (K, B); an optional
    Gaussian μ constraint of weight ``w_p`` at ``mu_p``, e.g. a linearised parallax; the weak
    ridge pulls _RIDGE_MU, _RIDGE_E keep A invertible) and their closed-form 2×2 solution.
    Returns dict of (K,) arrays: a00, a01, a11, b0, b1, det, mu, E.

    The determinant and numerators are formed from sums about the weighted band means R̄, ȳ
    (Σw·Σw R² − (Σw R)² = Σw · Σw (R − R̄)², Lagrange's identity), not as differences of
    products: those cancel to float32 round-off when the bands barely constrain E (one band:
    det = −0.3 instead of +0.1, so σ_E = √(a00/det) was NaN and NUTS chains stalled)."""
    S0, S1, S2 = jnp.sum(w), R @ w, (R * R) @ w
    Y, T = y @ w, (y * R) @ w
    inv = 1.0 / jnp.maximum(S0, 1e-30)
    R_bar, y_bar = S1 * inv, Y * inv
    r, e = R - jnp.expand_dims(R_bar, -1), y - jnp.expand_dims(y_bar, -1)
    V_rr, V_er = (r * r) @ w, (e * r) @ w
    p, c = w_p + _RIDGE_MU, w_p * mu_p + _RIDGE_MU * _MU0  # all μ pulls: weight and weighted mean
    a00, a01, a11, b0, b1 = S0 + p, S1, S2 + _RIDGE_E, Y + c, T
    det = S0 * V_rr + p * a11 + _RIDGE_E * S0                 # = a00 a11 − a01²
    mu_num = S0 * (y_bar * V_rr - R_bar * V_er) + S2 * c + _RIDGE_E * b0  # = a11 b0 − a01 b1
    E_num = S0 * V_er + p * T - S1 * c                        # = a00 b1 − a01 b0
    return dict(a00=a00, a01=a01, a11=a11, b0=b0, b1=b1, det=det, mu=mu_num / det, E=E_num / det)


def conditional_mu_E(M, R, star: StarData, emulator, config: InferenceConfig) -> dict:
    """The photometric likelihood of Eq. 19 at fixed θ as a Gaussian in (μ, E) (Eq. 2 is linear
    in μ and E): :func:`mu_E_normal_equations` for one star's model M(θ), R(θ) (B,), with the
    observed bands' weights 1/σ² (:func:`photometric_variance`)."""
    w = jnp.where(star.observed, 1.0 / photometric_variance(star, config), 0.0)
    return mu_E_normal_equations(w, star.mag - M - config.offsets(emulator.n_bands), R)


def _whitening(ne: dict):
    """(σ_E, E ↦ μ's conditional mean given E) of the Gaussian ``ne`` (:func:`conditional_mu_E`)."""
    return jnp.sqrt(ne["a00"] / ne["det"]), lambda E: (ne["b0"] - ne["a01"] * E) / ne["a00"]


def whitened_to_mu_E(z_mu, z_E, ne: dict):
    """(μ, E, log|∂(μ, E)/∂(z_μ, z_E)|) of the whitened parameterisation.

    With the conditional Gaussian ``ne`` (:func:`conditional_mu_E`): E's mean and σ with μ
    marginalised, Ê = ne["E"], σ_E = √(a00/det), and μ's given E, (b0 − a01 E)/a00 and 1/√a00:
        t = Ê/σ_E + z_E,  E = σ_E softplus(t)  (≈ Ê + σ_E z_E when Ê ≫ σ_E; always > 0),
        μ = (b0 − a01 E)/a00 + z_μ/√a00.
    The Jacobian is triangular: log|J| = log σ_E + log sigmoid(t) − ½ log a00.
    """
    s_E, mu_given_E = _whitening(ne)
    t = ne["E"] / s_E + z_E
    E = s_E * jax.nn.softplus(t)
    mu = mu_given_E(E) + z_mu * jax.lax.rsqrt(ne["a00"])
    return mu, E, jnp.log(s_E) + jax.nn.log_sigmoid(t) - 0.5 * jnp.log(ne["a00"])


def mu_E_to_whitened(mu, E, ne: dict):
    """Inverse of :func:`whitened_to_mu_E`: (z_μ, z_E) of (μ, E > 0)."""
    s_E, mu_given_E = _whitening(ne)
    u = E / s_E
    t = u + jnp.log(-jnp.expm1(-u))  # softplus⁻¹(u), stable for small and large u
    return (mu - mu_given_E(E)) * jnp.sqrt(ne["a00"]), t - ne["E"] / s_E


def unconstrained_init(params: dict, star: StarData, emulator, config: InferenceConfig) -> dict:
    """Chain starts {"x": (..., 3), "mu": (...), "E": (...) = log E} (the direct unconstrained
    coordinates, e.g. :func:`dds_infer.modes.initial_params`) → the unconstrained sites of
    :func:`star_model` under ``config.parameterization``; leading axes (e.g. chains) allowed."""
    if config.parameterization == "direct":
        return dict(params)

    def one(x, mu, logE):
        M, R = emulator.mags_and_reddening_x(x)
        z_mu, z_E = mu_E_to_whitened(mu, jnp.exp(logE), conditional_mu_E(M, R, star, emulator, config))
        return {"x": x, "z_mu": z_mu, "z_E": z_E}

    x, mu, logE = params["x"], params["mu"], params["E"]
    fn = one
    for _ in range(jnp.ndim(mu)):
        fn = jax.vmap(fn)
    return fn(x, mu, logE)


def direct_log_density(log_prob, samples: dict):
    """The log density of the direct coordinates (x, μ, log E) from the sampled space's
    ``log_prob`` (= −potential energy): subtracts the deterministic ``"reparam_log_jac"``
    = log|∂(μ, log E)/∂(z_μ, z_E)| when the model recorded it (whitened), else unchanged.
    Mode masses (Gelfand–Dey) are computed in the direct coordinates."""
    if "reparam_log_jac" not in samples:
        return log_prob
    return log_prob - np.asarray(samples["reparam_log_jac"])


def parallax_model_mas(mu):
    """ϖ(μ) = 10^((10 − μ)/5) mas."""
    return 10.0 ** ((10.0 - mu) / 5.0)


def log_likelihood(x, mu, E, star: StarData, emulator, config: InferenceConfig):
    """(photometric, parallax) log-likelihood terms of Eq. 19 at normalised θ x, with constants."""
    M, R = emulator.mags_and_reddening_x(x)
    return _log_likelihood(M, R, mu, E, star, emulator, config)


def photometric_prediction(M, R, mu, E, emulator, config: InferenceConfig):
    """Model magnitudes m = M(θ) + μ + E R(θ) + offset per band (Eq. 2, with the configured per-band
    zero-point offsets)."""
    return M + E * R + mu + config.offsets(emulator.n_bands)


def photometric_residuals(M, R, mu, E, star: StarData, emulator, config: InferenceConfig):
    """(r², σ²) per band of Eq. 19's photometric likelihood: r = m̂ − :func:`photometric_prediction`,
    σ² = :func:`photometric_variance`. Unobserved bands are the caller's to mask."""
    return (star.mag - photometric_prediction(M, R, mu, E, emulator, config)) ** 2, photometric_variance(star, config)


def parallax_residual(mu, star: StarData, config: InferenceConfig):
    """(z, s) of Eq. 19's parallax likelihood: z = (ϖ̂ − ϖ_zp − ϖ(μ)) / s with s = f σ_ϖ.
    Stars without a parallax (``star.has_parallax``) are the caller's to mask."""
    s = config.parallax_inflation * star.parallax_err
    return (star.parallax - config.zero_point_mas - parallax_model_mas(mu)) / s, s


def _log_likelihood(M, R, mu, E, star: StarData, emulator, config: InferenceConfig):
    r2, sig2 = photometric_residuals(M, R, mu, E, star, emulator, config)
    lp = -0.5 * r2 / sig2 - 0.5 * jnp.log(2.0 * math.pi * sig2)
    phot = jnp.sum(jnp.where(star.observed, lp, 0.0), axis=-1)
    if not config.use_parallax:
        return phot, jnp.zeros_like(phot)
    z, s = parallax_residual(mu, star, config)
    lpp = -0.5 * z ** 2 - jnp.log(s) - 0.5 * math.log(2.0 * math.pi)
    return phot, jnp.where(star.has_parallax, lpp, 0.0)


def star_model(star: StarData, emulator, prior: Prior, config: InferenceConfig) -> None:
    """NumPyro model for ONE star (Eq. 19); see the module docstring for the sites."""
    if star.mag.shape[-1] != emulator.n_bands:
        raise ValueError(f"star has {star.mag.shape[-1]} bands, the emulator {emulator.n_bands} "
                         f"({', '.join(emulator.bands.names)})")
    x = numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (3,)))
    M, R = emulator.mags_and_reddening_x(x)
    if config.parameterization == "whitened":
        z_mu = numpyro.sample("z_mu", dist.ImproperUniform(constraints.real, (), ()))
        z_E = numpyro.sample("z_E", dist.ImproperUniform(constraints.real, (), ()))
        mu, E, log_jac_w = whitened_to_mu_E(z_mu, z_E, conditional_mu_E(M, R, star, emulator, config))
        numpyro.deterministic("mu", mu)
        numpyro.deterministic("E", E)
        numpyro.factor("reparam_jacobian", log_jac_w)
        numpyro.deterministic("reparam_log_jac", log_jac_w - jnp.log(E))
    else:
        mu = numpyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
        E = numpyro.sample("E", dist.ImproperUniform(constraints.positive, (), ()))
    theta = emulator.denormalize(x)
    numpyro.deterministic("teff", theta[0])
    numpyro.deterministic("logg", theta[1])
    numpyro.deterministic("feh", theta[2])
    phot, plx = _log_likelihood(M, R, mu, E, star, emulator, config)
    numpyro.factor("photometry", phot)
    numpyro.factor("parallax", plx)
    log_jac = jnp.sum(jnp.log(emulator.theta_std))
    numpyro.factor("log_prior", log_prior(theta, mu, E, star, prior) + log_jac)
