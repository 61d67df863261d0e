"""The per-star NumPyro model of Green et al. (2021), Eq. 19.

    p(θ, μ, E | m̂, ϖ̂) ∝ Π_{b observed} N(m̂_b | M_b(θ) + μ + E R_b(θ) + δ_b, σ_b² + σ_floor²)
                       × N(ϖ̂ − ϖ_zp | 10^((10 − μ)/5) mas, (f σ_ϖ)²)
                       × p(θ) p(μ) p(E)                             (:mod:`dds_infer.priors`)

Sample sites (the engine samples them in NumPyro's unconstrained space):

* ``"x"`` (3,): normalised θ, x = (θ − theta_med)/theta_std (the emulator's input);
  improper flat site, the prior enters through the ``"log_prior"`` factor. The factor
  includes log|dθ/dx| = Σ log theta_std, so the model density is the density of x.
* ``"mu"``: distance modulus, improper flat site on ℝ.
* ``"E"``: reddening, ``constraints.positive`` (NumPyro maps it with exp: u = log E,
  and adds the log-Jacobian u itself).
* deterministic ``"teff"``, ``"logg"``, ``"feh"``.

The parallax zero-point ϖ_zp is subtracted from the measured parallax (ϖ̂ − ϖ_zp; DR2:
ϖ_zp = −0.029 mas, Lindegren et al. 2018, A&A 616, A2; DR3: −0.017 mas, Lindegren et al.
2021, A&A 649, A4). Missing bands and parallaxes contribute exactly zero.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from flax import struct
from numpyro.distributions import constraints

from .priors import Prior, log_prior

__all__ = ["InferenceConfig", "StarData", "star_data_from_catalog", "star_data_counts",
           "photometric_variance",
           "star_model", "log_likelihood", "ZERO_POINTS", "MISSING_PARALLAX_ERR"]

ZERO_POINTS = {"dr2": -0.029, "dr3": -0.017, "none": 0.0}  # mas
MISSING_PARALLAX_ERR = 1e6  # mas: parallax_err at or above MISSING_PARALLAX_ERR / 10 means "no parallax"


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
    """

    sigma_floor: float = 0.02
    zp: str | float = "dr2"
    parallax_inflation: float = 1.0
    band_offsets: tuple | None = None
    use_parallax: bool = True

    def __post_init__(self):
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
        mag_floor=None if floor is None else f32(np.broadcast_to(floor, obs.shape)))


def photometric_variance(star: StarData, config: InferenceConfig):
    """σ² per band of Eq. 19's photometric likelihood: σ_m² + σ_floor², where a floor the
    catalogue already included (``star.mag_floor``) is not added again:
    σ² = σ_cat² + max(σ_floor² − floor_cat², 0)."""
    add = config.sigma_floor ** 2
    if star.mag_floor is not None:
        add = jnp.maximum(add - star.mag_floor ** 2, 0.0)
    return star.mag_err ** 2 + add


def parallax_model_mas(mu):
    """ϖ(μ) = 10^((10 − μ)/5) mas."""
    return 10.0 ** ((10.0 - mu) / 5.0)


def log_likelihood(x, mu, E, star: StarData, emulator, config: InferenceConfig):
    """(photometric, parallax) log-likelihood terms of Eq. 19 at normalised θ x, with constants."""
    pred = emulator.predict_x(x, E) + mu + config.offsets(emulator.n_bands)
    sig2 = photometric_variance(star, config)
    lp = -0.5 * (star.mag - pred) ** 2 / sig2 - 0.5 * jnp.log(2.0 * math.pi * sig2)
    phot = jnp.sum(jnp.where(star.observed, lp, 0.0), axis=-1)
    if not config.use_parallax:
        return phot, jnp.zeros_like(phot)
    s = config.parallax_inflation * star.parallax_err
    corrected = star.parallax - config.zero_point_mas
    lpp = -0.5 * ((corrected - parallax_model_mas(mu)) / s) ** 2 - jnp.log(s) - 0.5 * math.log(2.0 * math.pi)
    return phot, jnp.where(star.has_parallax, lpp, 0.0)


def star_model(star: StarData, emulator, prior: Prior, config: InferenceConfig) -> None:
    """NumPyro model for ONE star (Eq. 19); see the module docstring for the sites."""
    if star.mag.shape[-1] != emulator.n_bands:
        raise ValueError(f"star has {star.mag.shape[-1]} bands, the emulator {emulator.n_bands} "
                         f"({', '.join(emulator.bands.names)})")
    x = numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (3,)))
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
    E = numpyro.sample("E", dist.ImproperUniform(constraints.positive, (), ()))
    theta = emulator.denormalize(x)
    numpyro.deterministic("teff", theta[0])
    numpyro.deterministic("logg", theta[1])
    numpyro.deterministic("feh", theta[2])
    phot, plx = log_likelihood(x, mu, E, star, emulator, config)
    numpyro.factor("photometry", phot)
    numpyro.factor("parallax", plx)
    log_jac = jnp.sum(jnp.log(emulator.theta_std))
    numpyro.factor("log_prior", log_prior(theta, mu, E, star, prior) + log_jac)
