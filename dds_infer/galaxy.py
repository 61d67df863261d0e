"""Galactic stellar number density and [Fe/H] model: the shared source of distance priors and mocks.

Three components in Galactocentric cylindrical coordinates (R, Z), following
Jurić et al. (2008, ApJ 673, 864; "J08"), whose form Bayestar (Green et al. 2014,
ApJ 783, 114) and brutus (Speagle et al. 2024) adopt:

* thin disc   n₁ = exp(-(R̃ - R̃₀)/L₁ - |Z|/H₁)
* thick disc  n₂ = f₂ exp(-(R̃ - R̃₀)/L₂ - |Z|/H₂)
* halo        n₃ = f_h [(R₀² + ε_h²) / (R² + (Z/q)² + ε_h²)]^(n_h/2), steepening to
              index n_out beyond r_br (Sesar et al. 2011, as in Bayestar)

with R̃ = sqrt(R² + ε_d²) (Bayestar's smoothing of the disc cusp at R = 0) and the
halo core ε_h (Bayestar's R_ε) removing the central singularity. The densities are
relative to the thin disc in the midplane at the Solar circle, (R, Z) = (R₀, 0): so
f₂ and f_h are J08's local thick-disc and halo normalisations.

The line-of-sight prior on the distance modulus μ carries the volume Jacobian,
dV ∝ d² dd and dd/dμ = d ln10/5, so p(μ | l, b) ∝ n(R, Z) d³. [Fe/H] is a mixture
of per-component Gaussians weighted by each component's share of n at that point.

Geometry is astropy's ``Galactocentric`` frame with its defaults (astropy ≥ 4.0):
Sgr A* direction (Reid & Brunthaler 2004), galcen_distance = 8.122 kpc (GRAVITY
Collaboration 2018), z_sun = 20.8 pc (Bennett & Bovy 2019), roll = 0. The Sun then
sits at (x, y, z) = (-R₀, 0, Z₀) with R₀ = sqrt(8.122² - 0.0208²) kpc.

Conventions: l, b in degrees (Galactic), d in kpc, μ = 5 log10(d / 10 pc). Passing
``l = b = None`` gives the sky-averaged prior: the mean over a fixed equal-area set
of ``N_SKY`` directions (a Fibonacci sphere), i.e. the all-sky distribution.
All functions are pure jax, jit-compiled (``l = b = None`` is an empty pytree,
so it needs no static argument), vmap/grad-safe, and broadcast over leading axes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.special import logsumexp

__all__ = [
    "GalaxyModel",
    "DEFAULT_GALAXY",
    "COMPONENTS",
    "N_SKY",
    "MU_RANGE",
    "sky_directions",
    "distance_modulus_to_kpc",
    "kpc_to_distance_modulus",
    "galactocentric_xyz",
    "galactocentric_RZ",
    "log_component_densities",
    "component_densities",
    "log_distance_prior",
    "component_weights",
    "feh_component_moments",
    "log_feh_prior",
    "distance_prior_grid",
    "sample_distances",
    "sample_components_and_feh",
]

COMPONENTS = ("thin", "thick", "halo")
MU_RANGE = (4.0, 19.0)  # default distance-modulus range [mag]: 63 pc to 63 kpc
N_SKY = 64  # directions of the sky average used when l = b = None
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

# Galactic Cartesian (x→(l,b)=(0,0), z→NGP) to astropy's Galactocentric axes before the
# translation and tilt: R_gc @ M_icrs←gal, with R_gc = mat0 @ mat1 @ mat2 of
# astropy.coordinates.builtin_frames.galactocentric.get_matrix_vectors for the
# default galcen_coord and roll = 0. Differs from identity by ~1.5e-6 rad because
# Sgr A* is not exactly at (l, b) = (0, 0). Checked against astropy in the tests.
_GAL_TO_GC_ROT = np.array([
    [9.9999999999854261e-01, 9.3020438049039005e-07, -1.4313272767949790e-06],
    [-9.3020648303970183e-07, 9.9999999999848832e-01, -1.4688441510337970e-06],
    [1.4313259102993420e-06, 1.4688454835265298e-06, 9.9999999999789579e-01],
])

_ASTROPY_GALCEN_DISTANCE = 8.122  # kpc, astropy Galactocentric default (GRAVITY 2018)
_ASTROPY_Z_SUN = 0.0208  # kpc, astropy Galactocentric default (Bennett & Bovy 2019)


@struct.dataclass
class GalaxyModel:
    """Parameters of the Galactic model (lengths in kpc). All fields are pytree leaves.

    Solar position (astropy ``Galactocentric`` defaults, see module docstring):
      R0 = sqrt(8.122² - 0.0208²) = 8.12197 kpc, Z0 = 0.0208 kpc.
    Thin and thick disc, J08 Table 10 bias-corrected joint fit (as used by brutus,
    Speagle et al. 2024, for the thin disc):
      thin_L = 2.6, thin_H = 0.3; thick_f = 0.12, thick_L = 3.6, thick_H = 0.9.
      disc_eps = 0.5: radial smoothing R̃ = sqrt(R² + ε²) (Bayestar's L_ε = 500 pc).
    Halo: oblate broken power law in r_q² = R² + (Z/q)² + ε_h², index n_h inside
    r_q = r_br and n_out beyond (continuous at the break), as in Bayestar:
      halo_f = 0.0051 (J08 Table 10, local halo/thin-disc ratio);
      halo_q = 0.70, halo_n = 2.62, halo_r_break = 27.8, halo_n_outer = 3.8
      (Sesar, Jurić & Ivezić 2011, ApJ 731, 4). J08's single power law
      (q = 0.64, n_h = 2.77) has n_h < 3, so n d³ ∝ d^0.23 grows without bound
      and p(μ) would pile up at the far edge of any μ grid; the outer break fixes it.
      halo_eps = 0.5: core radius (Bayestar's R_ε = 500 pc).
    [Fe/H] per component, Gaussian mean/σ of brutus (Speagle et al. 2024; after
    Bland-Hawthorn & Gerhard 2016): thin -0.2/0.3, thick -0.7/0.4, halo -1.6/0.5;
    the halo agrees with Ivezić et al. 2008 (ApJ 684, 287), -1.46/0.30, within 0.15 dex.
      feh_thin_dR: optional radial gradient of the thin-disc mean [dex/kpc], mean =
      feh_thin + feh_thin_dR (R - R0); 0 by default as in brutus (APOGEE finds a
      negative midplane gradient, Hayden et al. 2014).
    """

    R0: float = math.sqrt(_ASTROPY_GALCEN_DISTANCE**2 - _ASTROPY_Z_SUN**2)
    Z0: float = _ASTROPY_Z_SUN
    thin_L: float = 2.6
    thin_H: float = 0.3
    thick_f: float = 0.12
    thick_L: float = 3.6
    thick_H: float = 0.9
    disc_eps: float = 0.5
    halo_f: float = 0.0051
    halo_q: float = 0.70
    halo_n: float = 2.62
    halo_r_break: float = 27.8
    halo_n_outer: float = 3.8
    halo_eps: float = 0.5
    feh_thin: float = -0.2
    feh_thin_sigma: float = 0.3
    feh_thin_dR: float = 0.0
    feh_thick: float = -0.7
    feh_thick_sigma: float = 0.4
    feh_halo: float = -1.6
    feh_halo_sigma: float = 0.5

    @property
    def galcen_distance(self):
        """Sun-Galactic-centre distance sqrt(R0² + Z0²), astropy's ``galcen_distance``."""
        return (self.R0**2 + self.Z0**2) ** 0.5

    @property
    def feh_sigma(self):
        """(3,) [Fe/H] dispersions of thin disc, thick disc, halo."""
        return jnp.stack([jnp.asarray(s, dtype=float) for s in
                          (self.feh_thin_sigma, self.feh_thick_sigma, self.feh_halo_sigma)])


DEFAULT_GALAXY = GalaxyModel()


# --- geometry ------------------------------------------------------------------

def sky_directions(n: int = N_SKY):
    """(l, b) in degrees of ``n`` equal-area directions (Fibonacci sphere), numpy float64."""
    i = np.arange(n) + 0.5
    sinb = 1.0 - 2.0 * i / n
    lon = np.mod(i * math.pi * (3.0 - math.sqrt(5.0)), 2.0 * math.pi)
    return np.degrees(lon), np.degrees(np.arcsin(sinb))


_SKY_L, _SKY_B = sky_directions(N_SKY)


def distance_modulus_to_kpc(mu):
    """d [kpc] = 10^(μ/5 - 2)."""
    return 10.0 ** (0.2 * jnp.asarray(mu) - 2.0)


def kpc_to_distance_modulus(d_kpc):
    """μ = 5 log10(d / 10 pc) with d in kpc."""
    return 5.0 * jnp.log10(jnp.asarray(d_kpc)) + 10.0


@jax.jit
def galactocentric_xyz(l, b, d_kpc, model: GalaxyModel = DEFAULT_GALAXY):
    """Galactocentric Cartesian (x, y, z) [kpc], shape (..., 3), as astropy's ``Galactocentric``.

    r = H(θ) (A r_gal - D x̂) with A the fixed rotation ``_GAL_TO_GC_ROT``,
    D = sqrt(R0² + Z0²) and H the rotation about y by sin θ = Z0 / D that lifts
    the Sun to z = Z0 (astropy's ``get_matrix_vectors``).
    """
    l, b, d = jnp.broadcast_arrays(*(jnp.asarray(v, dtype=float) for v in (l, b, d_kpc)))
    lr, br = jnp.deg2rad(l), jnp.deg2rad(b)
    cb = jnp.cos(br)
    r_gal = jnp.stack([d * cb * jnp.cos(lr), d * cb * jnp.sin(lr), d * jnp.sin(br)], axis=-1)
    A = _GAL_TO_GC_ROT.tolist()  # python floats: 9 multiply-adds, no dot kernel
    xp = [A[i][0] * r_gal[..., 0] + A[i][1] * r_gal[..., 1] + A[i][2] * r_gal[..., 2] for i in range(3)]
    dist = model.galcen_distance
    sin_t = model.Z0 / dist
    cos_t = model.R0 / dist  # = sqrt(1 - sin²θ)
    x1 = xp[0] - dist
    x = cos_t * x1 + sin_t * xp[2]
    z = cos_t * xp[2] - sin_t * x1
    return jnp.stack([x, xp[1], z], axis=-1)


@jax.jit
def galactocentric_RZ(l, b, d_kpc, model: GalaxyModel = DEFAULT_GALAXY):
    """Cylindrical (R, Z) [kpc] of Galactic (l, b) [deg] at distance d [kpc]."""
    xyz = galactocentric_xyz(l, b, d_kpc, model)
    return jnp.sqrt(xyz[..., 0] ** 2 + xyz[..., 1] ** 2), xyz[..., 2]


# --- densities -----------------------------------------------------------------

def _log_densities_R2(R2, Z, model: GalaxyModel):
    """log n_c for c = thin, thick, halo from R² (grad-safe at R = 0), shape (..., 3)."""
    R2, Z = jnp.broadcast_arrays(jnp.asarray(R2, dtype=float), jnp.asarray(Z, dtype=float))
    eps2 = model.disc_eps**2
    dR = jnp.sqrt(R2 + eps2) - jnp.sqrt(model.R0**2 + eps2)
    absZ = jnp.abs(Z)
    thin = -dR / model.thin_L - absZ / model.thin_H
    thick = jnp.log(model.thick_f) - dR / model.thick_L - absZ / model.thick_H
    h2 = model.halo_eps**2
    log_r2 = jnp.log(R2 + (Z / model.halo_q) ** 2 + h2)
    halo = (jnp.log(model.halo_f) - 0.5 * model.halo_n * (log_r2 - jnp.log(model.R0**2 + h2))
            - 0.5 * (model.halo_n_outer - model.halo_n)
            * jnp.maximum(log_r2 - 2.0 * jnp.log(model.halo_r_break), 0.0))
    return jnp.stack([thin, thick, halo], axis=-1)


@jax.jit
def log_component_densities(R, Z, model: GalaxyModel = DEFAULT_GALAXY):
    """log of :func:`component_densities`, shape (..., 3)."""
    R = jnp.asarray(R, dtype=float)
    return _log_densities_R2(R * R, Z, model)


@jax.jit
def component_densities(R, Z, model: GalaxyModel = DEFAULT_GALAXY):
    """Number densities (thin, thick, halo) at (R, Z), relative to the thin disc at (R0, 0)."""
    return jnp.exp(log_component_densities(R, Z, model))


def _los_terms(mu, l, b, model: GalaxyModel):
    """Per-(direction, component) log n_c d³ and [Fe/H] means, each (..., K, 3).

    K = 1 for a given sightline; for l = b = None, K = N_SKY fixed directions,
    each term carrying -log K so that a sum over K is the sky mean.
    """
    mu = jnp.asarray(mu, dtype=float)
    if l is None or b is None:
        if not (l is None and b is None):
            raise ValueError("give both l and b, or neither (sky average)")
        l = jnp.asarray(_SKY_L, dtype=mu.dtype)
        b = jnp.asarray(_SKY_B, dtype=mu.dtype)
        mu = mu[..., None]
        offset = -math.log(N_SKY)
    else:
        l, b, mu = jnp.broadcast_arrays(jnp.asarray(l, dtype=float), jnp.asarray(b, dtype=float), mu)
        l, b, mu = l[..., None], b[..., None], mu[..., None]
        offset = 0.0
    d = distance_modulus_to_kpc(mu)
    xyz = galactocentric_xyz(l, b, d, model)
    R2 = xyz[..., 0] ** 2 + xyz[..., 1] ** 2
    log_t = _log_densities_R2(R2, xyz[..., 2], model) + (3.0 * jnp.log(d))[..., None] + offset
    feh_thin = model.feh_thin + model.feh_thin_dR * (jnp.sqrt(jnp.maximum(R2, 1e-12)) - model.R0)
    means = jnp.stack([feh_thin, jnp.full_like(feh_thin, model.feh_thick),
                       jnp.full_like(feh_thin, model.feh_halo)], axis=-1)
    return log_t, means


@jax.jit
def log_distance_prior(mu, l=None, b=None, model: GalaxyModel = DEFAULT_GALAXY):
    """Unnormalised log p(μ | l, b) = log[n(d) d³] (+ const); sky mean if l = b = None.

    Exactly log n + 3 log(d / kpc), n the total density relative to the thin disc
    at (R0, 0): the omitted constant log(ln10/5) is the same for every μ, l, b, so
    values compare across sightlines.
    """
    log_t, _ = _los_terms(mu, l, b, model)
    return logsumexp(log_t, axis=(-2, -1))


@jax.jit
def component_weights(mu, l=None, b=None, model: GalaxyModel = DEFAULT_GALAXY):
    """Fraction of stars in (thin, thick, halo) at distance modulus μ along (l, b), (..., 3)."""
    log_t, _ = _los_terms(mu, l, b, model)
    w = jnp.exp(log_t - logsumexp(log_t, axis=(-2, -1), keepdims=True))
    return jnp.sum(w, axis=-2)


@jax.jit
def feh_component_moments(mu, l=None, b=None, model: GalaxyModel = DEFAULT_GALAXY):
    """(weights, means, sigmas) of the [Fe/H] mixture at μ along (l, b), each (..., 3).

    For a sky average the thin-disc mean is the weight-averaged one (exact when
    ``feh_thin_dR`` = 0; use :func:`log_feh_prior` for the exact mixture).
    """
    log_t, means = _los_terms(mu, l, b, model)
    w = jnp.exp(log_t - logsumexp(log_t, axis=(-2, -1), keepdims=True))
    wc = jnp.sum(w, axis=-2)
    mc = jnp.sum(w * means, axis=-2) / jnp.maximum(wc, 1e-30)
    return wc, mc, jnp.broadcast_to(model.feh_sigma, wc.shape)


@jax.jit
def log_feh_prior(feh, mu, l=None, b=None, model: GalaxyModel = DEFAULT_GALAXY):
    """Normalised log p([Fe/H] | μ, l, b): Gaussians per component, weighted by their density share."""
    log_t, means = _los_terms(mu, l, b, model)
    feh = jnp.asarray(feh, dtype=float)[..., None, None]
    sig = model.feh_sigma
    log_gauss = -0.5 * ((feh - means) / sig) ** 2 - jnp.log(sig) - _LOG_SQRT_2PI
    log_w = log_t - logsumexp(log_t, axis=(-2, -1), keepdims=True)
    return logsumexp(log_w + log_gauss, axis=(-2, -1))


# --- grids and sampling ------------------------------------------------------------

def _prep_sightlines(l, b):
    if l is None and b is None:
        return None, None, ()
    l, b = jnp.broadcast_arrays(jnp.asarray(l, dtype=float), jnp.asarray(b, dtype=float))
    return l[..., None], b[..., None], l.shape


@jax.jit
def distance_prior_grid(l=None, b=None, mu_grid=None, model: GalaxyModel = DEFAULT_GALAXY):
    """p(μ | l, b) on ``mu_grid`` (default 301 points over 4-19 mag), normalised so ∫ p dμ = 1.

    Vectorised over sightlines: l, b of shape S give an (S..., G) array; l = b = None
    gives the sky-averaged (all-sky) p(μ), shape (G,). Normalisation is the
    trapezoid rule on the grid.
    """
    if mu_grid is None:
        mu_grid = jnp.linspace(MU_RANGE[0], MU_RANGE[1], 301)
    mu_grid = jnp.asarray(mu_grid, dtype=float)
    lq, bq, _ = _prep_sightlines(l, b)
    lp = log_distance_prior(mu_grid, lq, bq, model)
    p = jnp.exp(lp - jnp.max(lp, axis=-1, keepdims=True))
    return p / jnp.trapezoid(p, mu_grid, axis=-1)[..., None]


def _inverse_cdf(grid, p, u):
    """Exact inverse of the CDF of the piecewise-linear density p on grid at u ∈ [0, 1), u of shape (n,)."""
    dx = jnp.diff(grid)
    cdf = jnp.concatenate([jnp.zeros(1, p.dtype), jnp.cumsum(0.5 * (p[1:] + p[:-1]) * dx)])
    target = u * cdf[-1]
    i = jnp.clip(jnp.searchsorted(cdf, target, side="right") - 1, 0, grid.shape[0] - 2)
    p0, dxi = p[i], dx[i]
    slope = (p[i + 1] - p0) / dxi
    du = jnp.maximum(target - cdf[i], 0.0)
    # p0 t + slope t²/2 = du  ->  t = 2 du / (p0 + sqrt(p0² + 2 slope du)), stable for slope → 0
    t = 2.0 * du / (p0 + jnp.sqrt(jnp.maximum(p0**2 + 2.0 * slope * du, 0.0)) + 1e-30)
    return grid[i] + jnp.clip(t, 0.0, dxi)


def sample_distances(key, l=None, b=None, n: int = 1, model: GalaxyModel = DEFAULT_GALAXY,
                     mu_range=MU_RANGE, n_grid: int = 4096):
    """Draw distance moduli from p(μ | l, b) truncated to ``mu_range``, shape (S..., n).

    Inverse CDF of the density tabulated on ``n_grid`` points (piecewise linear,
    inverted exactly per cell). l, b of shape S give n draws per sightline; for one
    star per sightline pass arrays of shape (N,) and n = 1. l = b = None draws
    from the sky-averaged p(μ) (directions not returned).
    """
    return _sample_distances(key, l, b, model, int(n), (float(mu_range[0]), float(mu_range[1])), int(n_grid))


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _sample_distances(key, l, b, model, n, mu_range, n_grid):
    grid = jnp.linspace(mu_range[0], mu_range[1], n_grid)
    p = distance_prior_grid(l, b, grid, model)
    batch = p.shape[:-1]
    p2 = p.reshape((-1, n_grid))
    u = jax.random.uniform(key, (p2.shape[0], n), dtype=p.dtype)
    out = jax.vmap(_inverse_cdf, in_axes=(None, 0, 0))(grid, p2, u)
    return out.reshape(batch + (n,))


@jax.jit
def sample_components_and_feh(key, mu, l=None, b=None, model: GalaxyModel = DEFAULT_GALAXY):
    """Draw each star's component (0 thin, 1 thick, 2 halo) and [Fe/H] given μ (and l, b).

    The component is drawn from :func:`component_weights` at the star's position,
    [Fe/H] from that component's Gaussian (thin-disc mean at the star's R). With
    l = b = None a sky direction is drawn jointly with the component. Returns
    (component int32, feh), each of μ's broadcast shape.
    """
    log_t, means = _los_terms(mu, l, b, model)
    shape = log_t.shape[:-2]
    flat = log_t.reshape(shape + (-1,))
    k_comp, k_feh = jax.random.split(key)
    idx = jax.random.categorical(k_comp, flat, axis=-1)
    comp = (idx % 3).astype(jnp.int32)
    mean = jnp.take_along_axis(means.reshape(shape + (-1,)), idx[..., None], axis=-1)[..., 0]
    sigma = model.feh_sigma[comp]
    feh = mean + sigma * jax.random.normal(k_feh, shape, dtype=mean.dtype)
    return comp, feh
