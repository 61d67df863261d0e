"""Priors of the per-star posterior (Green et al. 2021, Eq. 19): small, composable, replaceable.

    log p(θ, μ, E) = log p(T_eff, log g | [Fe/H])      (HR-diagram density, :func:`log_hr_prior`)
                   + log p([Fe/H] | μ, l, b)            (Galactic components, :func:`log_metallicity_prior`)
                   + log p(μ | l, b)                    (n(d) d³, :func:`log_distance_prior`)
                   + log p(E)                           (:func:`log_reddening_prior`)

* Distance: p(μ | l, b) ∝ n(d) d³ with the thin/thick disc + halo model of
  :mod:`dds_infer.galaxy` (Jurić et al. 2008; Sesar et al. 2011); the sky average
  when the star has no position (``StarData.has_position`` False).
* Metallicity: Gaussians per Galactic component weighted by each component's
  density at (μ, l, b) (:func:`dds_infer.galaxy.log_feh_prior`).
* HR diagram: p(T_eff, log g | [Fe/H]) = ρ(θ) / ∫ρ dT_eff dlog g from the emulator's
  training-density grid (:class:`~dds_infer.domain.TrainingDomain`, entry 0 = the
  parallax/absolute-magnitude map by default: the domain where M(θ) is trained,
  Green et al. 2021 §4-5). The table is log(ρ + floor), lightly Gaussian-smoothed, times
  a soft cut sigmoid((log ρ - log ρ_min)/w) below ρ_min = 0.01, renormalised on every
  [Fe/H] slice and interpolated trilinearly; outside the grid a quadratic penalty keeps
  the gradient finite and pointing back in. It is built from the published training
  split, never from the stars being scored. ``default_prior(selection_limit=m)`` divides ρ
  by the volume V(θ) in which a star of type θ is brighter than m (:mod:`dds_infer.selection`):
  the population density, for a magnitude-limited training set.
* Reddening (E ≥ 0 enforced by the sample site): "flat" (soft wall beyond E_max),
  "halfnormal" (scale), "dustmap" (Gaussian around a per-star value, e.g. SFD or
  Bayestar along the sightline, σ² = σ_ref² + (f E_ref)² + σ_abs²).

Each term may instead be a user callable ``fn(theta, mu, E, star, prior) -> scalar``
(static field of :class:`Prior`). All functions are pure jax and vmap/grad-safe.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.ndimage import map_coordinates
from jax.scipy.special import logsumexp

from . import galaxy
from .galaxy import DEFAULT_GALAXY, GalaxyModel
from .hr_table import hr_density_table, hr_slice_mass  # noqa: F401  (re-exported)
from .selection import resolve_selection_limit, selection_log_volume

__all__ = [
    "Prior",
    "default_prior",
    "hr_density_table",
    "hr_slice_mass",
    "log_hr_prior",
    "log_distance_prior",
    "log_metallicity_prior",
    "log_reddening_prior",
    "log_prior",
    "sky_average_tables",
    "lerp_uniform",
    "by_position",
    "DISTANCE_KINDS",
    "FEH_KINDS",
    "THETA_KINDS",
    "REDDENING_KINDS",
]

DISTANCE_KINDS = ("galactic", "flat")
FEH_KINDS = ("galactic", "flat")
THETA_KINDS = ("density", "flat")
REDDENING_KINDS = ("flat", "halfnormal", "dustmap")


@struct.dataclass
class Prior:
    """The prior configuration (pytree; the ``*_kind`` fields and callables are static).

    log_hr: (nT, ng, nf) log p(T_eff, log g | [Fe/H]) on the grid (see :func:`hr_density_table`).
    grid_lo, grid_step, grid_hi: (3,) grid origin, spacing and end, θ order (T_eff, log g, [Fe/H]).
    edge_scale: (3,) length scale of the quadratic penalty outside the grid.
    galaxy: :class:`~dds_infer.galaxy.GalaxyModel` for the distance and [Fe/H] priors.
    mu_range: (2,) support of the "flat" distance prior (soft walls of width ``wall``).
    E_max: upper end of the "flat" reddening prior; E_scale: half-normal scale;
    E_tol_abs, E_tol_frac: tolerance of the "dustmap" prior around ``star.E_ref``.
    sky_mu, sky_log_dist, sky_log_w: optional tables of the sky-averaged log p(μ) and log
    component weights on a μ grid (see :func:`sky_average_tables`): the all-sky terms are
    then interpolated instead of summed over 64 directions per evaluation (None: exact sums).
    wall: width [mag] of the quadratic soft walls of the flat priors.
    distance_kind, feh_kind, theta_kind, reddening_kind: a name from ``*_KINDS`` or a
    callable ``fn(theta, mu, E, star, prior) -> scalar`` (static).
    """

    log_hr: jnp.ndarray
    grid_lo: jnp.ndarray
    grid_step: jnp.ndarray
    grid_hi: jnp.ndarray
    edge_scale: jnp.ndarray
    galaxy: GalaxyModel = DEFAULT_GALAXY
    mu_range: jnp.ndarray = struct.field(default_factory=lambda: jnp.asarray(galaxy.MU_RANGE))
    E_max: float = 5.0
    E_scale: float = 1.0
    E_tol_abs: float = 0.05
    E_tol_frac: float = 0.1
    wall: float = 0.1
    sky_mu: jnp.ndarray | None = None
    sky_log_dist: jnp.ndarray | None = None
    sky_log_w: jnp.ndarray | None = None
    distance_kind: Any = struct.field(pytree_node=False, default="galactic")
    feh_kind: Any = struct.field(pytree_node=False, default="galactic")
    theta_kind: Any = struct.field(pytree_node=False, default="density")
    reddening_kind: Any = struct.field(pytree_node=False, default="flat")


def default_prior(emulator, kind: str = "galactic", reddening="flat", *, theta="density",
                  galaxy_model: GalaxyModel = DEFAULT_GALAXY, E_max: float = 5.0, E_scale: float = 1.0,
                  E_tol_abs: float = 0.05, E_tol_frac: float = 0.1, mu_range=galaxy.MU_RANGE,
                  density_entry: int = 0, threshold: float = 0.01, distance=None, feh=None,
                  sky_tables: bool = True, selection_limit: float | str | None = "auto",
                  selection_band: int = 0) -> Prior:
    """The standard prior for ``emulator`` (needs ``emulator.domain`` unless theta="flat").

    kind: "galactic" (distance and [Fe/H] from the Galactic model) or "flat" (flat in μ over
    ``mu_range``, flat [Fe/H]). ``distance`` / ``feh`` override the two terms separately.
    sky_tables: tabulate the sky-averaged distance and [Fe/H] priors (:func:`sky_average_tables`).
    reddening: one of ``REDDENING_KINDS`` or a callable. theta: "density" or "flat" or a callable.
    selection_limit: the apparent-magnitude limit (in the emulator's band ``selection_band``, G for
    Green2020) of the catalogue the training density comes from. Given, the HR table is the
    population density ρ / V(θ) instead of ρ (:mod:`dds_infer.selection`): a magnitude-limited
    training set over-represents luminous types by the volume they are visible in, which the
    distance prior n(d) d³ already counts. "auto" (default): the limit the bundle records
    (``dds-infer train`` estimates it, ``import-keras --selection-limit`` sets it) or, if it
    records none, no correction; "bundle": the recorded limit, an error without one; None: ρ as
    it is. Mocks (:func:`dds_infer.mock.make_mock`) and prior draws (SBC) follow the same
    choice, so they stay consistent with this prior.
    """
    if kind not in DISTANCE_KINDS:
        raise ValueError(f"kind must be one of {DISTANCE_KINDS}, got {kind!r}")
    distance = kind if distance is None else distance
    feh = kind if feh is None else feh
    for name, val, kinds in (("distance", distance, DISTANCE_KINDS), ("feh", feh, FEH_KINDS),
                             ("theta", theta, THETA_KINDS), ("reddening", reddening, REDDENING_KINDS)):
        if not (callable(val) or val in kinds):
            raise ValueError(f"{name} prior must be one of {kinds} or a callable, got {val!r}")
    if E_max <= 0 or E_scale <= 0 or E_tol_abs < 0 or E_tol_frac < 0:
        raise ValueError("E_max and E_scale must be > 0; E_tol_abs, E_tol_frac >= 0")
    if not mu_range[0] < mu_range[1]:
        raise ValueError(f"mu_range must be increasing, got {mu_range}")
    dom = emulator.domain
    if selection_limit not in (None, "auto") and (dom is None or theta != "density"):
        raise ValueError("selection_limit corrects the training-density θ prior (theta='density' and a domain)")
    if dom is None:
        if theta == "density":
            raise ValueError("emulator has no training domain: the HR-diagram prior needs one "
                             "(load a bundle with domain.h5, or pass theta='flat')")
        lo, hi, n = np.array([2500.0, -2.0, -2.5]), np.array([9000.0, 7.0, 1.0]), np.array([2, 2, 2])
        table = np.full((2, 2, 2), -float(np.log((hi[0] - lo[0]) * (hi[1] - lo[1]))))
    else:
        b = dom.bounds
        lo, hi = b[:, 0], b[:, 1]
        n = np.array([len(dom.teff), len(dom.logg), len(dom.feh)])
        limit = resolve_selection_limit(emulator, selection_limit) if theta == "density" else None
        log_volume = None if limit is None else selection_log_volume(
            emulator, limit, band=selection_band, threshold=threshold, entry=density_entry,
            galaxy_model=galaxy_model, mu_range=mu_range)
        table = hr_density_table(dom, entry=density_entry, threshold=threshold, log_volume=log_volume)
    step = (hi - lo) / (n - 1)
    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)  # noqa: E731
    sky = {}
    if float(galaxy_model.feh_thin_dR) == 0.0 and sky_tables:
        g, ld, lw = sky_average_tables(galaxy_model)
        sky = dict(sky_mu=f32(g), sky_log_dist=f32(ld), sky_log_w=f32(lw))
    return Prior(log_hr=f32(table), grid_lo=f32(lo), grid_step=f32(step), grid_hi=f32(hi),
                 edge_scale=f32(0.5 * step), galaxy=galaxy_model, mu_range=f32(mu_range),
                 E_max=float(E_max), E_scale=float(E_scale), E_tol_abs=float(E_tol_abs),
                 E_tol_frac=float(E_tol_frac), distance_kind=distance, feh_kind=feh,
                 theta_kind=theta, reddening_kind=reddening, **sky)


def sky_average_tables(galaxy_model: GalaxyModel = DEFAULT_GALAXY, mu_lo: float = -5.0,
                       mu_hi: float = 30.0, n: int = 1401):
    """(μ grid, log p(μ) sky average, log component weights (G, 3)) for the all-sky priors.

    Exact at the grid points (the same 64-direction mean as :mod:`dds_infer.galaxy`), linear
    in between (0.025 mag spacing: interpolation error < 1e-3 in log p). Beyond the grid the
    values are held constant. The [Fe/H] mixture built from the weights is exact when the
    thin-disc mean has no radial gradient (``feh_thin_dR`` = 0); otherwise the exact sum is used.
    """
    grid = np.linspace(mu_lo, mu_hi, n)
    log_d = np.asarray(galaxy.log_distance_prior(jnp.asarray(grid), None, None, galaxy_model), dtype=np.float64)
    w = np.asarray(galaxy.component_weights(jnp.asarray(grid), None, None, galaxy_model), dtype=np.float64)
    return grid, log_d, np.log(np.maximum(w, 1e-300))


# --- the terms -----------------------------------------------------------------------

def _soft_box(v, lo, hi, wall):
    """0 inside [lo, hi], -½((excess)/wall)² outside: a flat prior with finite gradients."""
    ex = jnp.maximum(lo - v, 0.0) + jnp.maximum(v - hi, 0.0)
    return -0.5 * (ex / wall) ** 2


def log_hr_prior(theta, prior: Prior):
    """log p(T_eff, log g | [Fe/H]) at physical θ (..., 3): trilinear in the table + edge penalty."""
    theta = jnp.asarray(theta)
    frac = (theta - prior.grid_lo) / prior.grid_step
    upper = jnp.asarray(prior.log_hr.shape, dtype=frac.dtype) - 1.0
    fc = jnp.clip(frac, 0.0, upper)
    shape = theta.shape[:-1]
    coords = [fc[..., k].reshape(-1) for k in range(3)]
    val = map_coordinates(prior.log_hr, coords, order=1, mode="nearest").reshape(shape)
    ex = jnp.maximum(prior.grid_lo - theta, 0.0) + jnp.maximum(theta - prior.grid_hi, 0.0)
    return val - 0.5 * jnp.sum((ex / prior.edge_scale) ** 2, axis=-1)


def lerp_uniform(table, x, lo, step):
    """Linear interpolation of ``table`` (n, ...) given on the uniform grid lo + k·step, held
    constant beyond its ends (as ``jnp.interp``, but an index computation instead of a search)."""
    n = table.shape[0]
    f = jnp.clip((x - lo) / step, 0.0, n - 1.0)
    i = jnp.minimum(jnp.floor(f).astype(jnp.int32), n - 2)
    t = f - i
    if table.ndim > 1:
        t = t[..., None]
    return table[i] * (1.0 - t) + table[i + 1] * t


def _sky_lerp(table, mu, prior: Prior):
    """A sky-average table (on ``prior.sky_mu``, uniform) at μ."""
    g = prior.sky_mu
    return lerp_uniform(table, mu, g[0], (g[-1] - g[0]) / (g.shape[0] - 1))  # end to end: float32-exact


def _sightline(star):
    return star.l, star.b, star.has_position


def by_position(star, on_sky, all_sky):
    """``on_sky()`` where the star has a position, else ``all_sky()``; evaluates one branch only
    when the batch is uniform (``StarData.positions`` "all" / "none")."""
    mode = getattr(star, "positions", "mixed")
    if mode == "all":
        return on_sky()
    if mode == "none":
        return all_sky()
    return jnp.where(star.has_position, on_sky(), all_sky())


def log_distance_prior(mu, star, prior: Prior):
    """log p(μ | l, b) ∝ log[n(d) d³] (Galactic model), sky-averaged where the star has no position."""
    kind = prior.distance_kind
    if callable(kind):
        raise TypeError("callable priors are evaluated through log_prior")
    if kind == "flat":
        lo, hi = prior.mu_range[0], prior.mu_range[1]
        return _soft_box(mu, lo, hi, prior.wall) - jnp.log(hi - lo)
    l, b, _ = _sightline(star)

    def all_sky():
        if prior.sky_mu is None:
            return galaxy.log_distance_prior(mu, None, None, prior.galaxy)
        return _sky_lerp(prior.sky_log_dist, mu, prior)

    return by_position(star, lambda: galaxy.log_distance_prior(mu, l, b, prior.galaxy), all_sky)


def log_metallicity_prior(feh, mu, star, prior: Prior):
    """log p([Fe/H] | μ, l, b): per-component Gaussians weighted by density share (or flat: 0)."""
    kind = prior.feh_kind
    if callable(kind):
        raise TypeError("callable priors are evaluated through log_prior")
    if kind == "flat":
        return jnp.zeros_like(jnp.asarray(feh, dtype=jnp.float32) + mu)
    l, b, _ = _sightline(star)

    def all_sky():
        if prior.sky_mu is None:
            return galaxy.log_feh_prior(feh, mu, None, None, prior.galaxy)
        g = prior.galaxy
        log_w = _sky_lerp(prior.sky_log_w, mu, prior)  # (..., 3)
        means = jnp.stack([jnp.asarray(g.feh_thin, dtype=jnp.float32), jnp.asarray(g.feh_thick, dtype=jnp.float32),
                           jnp.asarray(g.feh_halo, dtype=jnp.float32)])
        sig = g.feh_sigma
        z = (jnp.asarray(feh)[..., None] - means) / sig
        return logsumexp(log_w - 0.5 * z**2 - jnp.log(sig) - 0.5 * math.log(2 * math.pi), axis=-1)

    return by_position(star, lambda: galaxy.log_feh_prior(feh, mu, l, b, prior.galaxy), all_sky)


def log_reddening_prior(E, star, prior: Prior):
    """log p(E) for E ≥ 0 (the support is the sample site's job), up to a per-star constant.

    flat: 0 on [0, E_max], quadratic wall beyond. halfnormal: -½(E/E_scale)².
    dustmap: -½((E - E_ref)/σ)², σ² = E_ref_err² + (E_tol_frac E_ref)² + E_tol_abs².
    """
    kind = prior.reddening_kind
    if callable(kind):
        raise TypeError("callable priors are evaluated through log_prior")
    if kind == "flat":
        return _soft_box(E, 0.0, prior.E_max, prior.wall) - jnp.log(prior.E_max)
    if kind == "halfnormal":
        s = prior.E_scale
        return -0.5 * (E / s) ** 2 - jnp.log(s) + 0.5 * math.log(2.0 / math.pi)
    if getattr(star, "E_ref", None) is None:
        raise ValueError("reddening='dustmap' needs StarData.E_ref / E_ref_err "
                         "(star_data_from_catalog fills them from StarCatalog.E_prior)")
    ref = star.E_ref
    var = star.E_ref_err ** 2 + (prior.E_tol_frac * ref) ** 2 + prior.E_tol_abs ** 2
    return -0.5 * (E - ref) ** 2 / var - 0.5 * jnp.log(2.0 * math.pi * var)


def _term(kind, builtin: Callable, theta, mu, E, star, prior):
    return kind(theta, mu, E, star, prior) if callable(kind) else builtin()


def log_prior(theta, mu, E, star, prior: Prior):
    """Sum of the four terms at physical θ = (T_eff, log g, [Fe/H]) (Eq. 19's p(θ) p(μ) p(E))."""
    theta = jnp.asarray(theta)
    hr = _term(prior.theta_kind,
               lambda: log_hr_prior(theta, prior) if prior.theta_kind == "density"
               else _flat_theta(theta, prior), theta, mu, E, star, prior)
    fe = _term(prior.feh_kind, lambda: log_metallicity_prior(theta[..., 2], mu, star, prior),
               theta, mu, E, star, prior)
    di = _term(prior.distance_kind, lambda: log_distance_prior(mu, star, prior), theta, mu, E, star, prior)
    re = _term(prior.reddening_kind, lambda: log_reddening_prior(E, star, prior), theta, mu, E, star, prior)
    return hr + fe + di + re


def _flat_theta(theta, prior: Prior):
    """Flat over the grid box in (T_eff, log g), quadratic walls outside (all three axes)."""
    ex = jnp.maximum(prior.grid_lo - theta, 0.0) + jnp.maximum(theta - prior.grid_hi, 0.0)
    area = (prior.grid_hi[0] - prior.grid_lo[0]) * (prior.grid_hi[1] - prior.grid_lo[1])
    return -0.5 * jnp.sum((ex / prior.edge_scale) ** 2, axis=-1) - jnp.log(area)
