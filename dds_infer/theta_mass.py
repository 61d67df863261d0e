"""(μ, E) marginalised at fixed θ: the closed forms and quadrature of the grid path (Eq. 2, Eq. 19).

For fixed θ the forward model m = M(θ) + μ + E R(θ) (Green et al. 2021, Eq. 2) is linear in
(μ, E): the photometric likelihood is an exact 2-D Gaussian (:func:`photometric_gaussian`).
:func:`theta_log_mass` integrates p(θ, μ, E | data) (Eq. 19) over E in closed form given μ
(:func:`reddening_integral`: flat, half-normal or dust-map Gaussian prior, E ≥ 0) and over μ
by the trapezoid rule on nodes around the optimum, where the exact parallax likelihood and the
distance / [Fe/H] priors (per-star tables, :func:`mu_prior_tables`) enter.
:func:`coarse_log_mass` is the cheap Laplace version on the shared coarse grid (proposal only).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, logsumexp, ndtr, ndtri

from . import galaxy
from .inference import (_MU0, _RIDGE_E, _RIDGE_MU, InferenceConfig, mu_E_normal_equations,  # the same weak pulls
                        parallax_model_mas, photometric_variance)
from .priors import Prior, by_position, lerp_uniform, log_distance_prior, log_hr_prior, log_metallicity_prior

__all__ = ["photometric_gaussian", "reddening_integral", "truncated_std_normal", "coarse_log_mass", "mu_prior_tables",
           "theta_log_mass"]

_LOG_2PI = math.log(2.0 * math.pi)


def photometric_gaussian(star, M, R, config: InferenceConfig, offsets):
    """Eq. 2 for fixed θ: the photometric likelihood as a Gaussian in (μ, E).

    M, R: (K, B). Returns dict of (K,) arrays: mu, E (optimum), a00, a01, a11 (precision),
    det = a00 a11 − a01² (cancellation-free, :func:`dds_infer.inference.mu_E_normal_equations`:
    use it, never the difference of products, which is float32 round-off with one band),
    log_peak (log-likelihood at the optimum, with normalisation).
    """
    w = jnp.where(star.observed, 1.0 / photometric_variance(star, config), 0.0)
    y = star.mag - offsets - M
    ne = mu_E_normal_equations(w, y, R)
    mu, E, a00, a01, a11 = ne["mu"], ne["E"], ne["a00"], ne["a01"], ne["a11"]
    r = y - mu[:, None] - E[:, None] * R
    chi2 = (r * r) @ w + _RIDGE_MU * (mu - _MU0) ** 2 + _RIDGE_E * E ** 2
    norm = -0.5 * jnp.sum(jnp.where(star.observed, _LOG_2PI - jnp.log(jnp.maximum(w, 1e-30)), 0.0))
    return dict(mu=mu, E=E, a00=jnp.broadcast_to(a00, mu.shape), a01=a01, a11=a11, det=ne["det"],
                log_peak=norm - 0.5 * chi2)


def reddening_integral(m, a, star, prior: Prior):
    """∫_{E≥0} exp(−½ a (E − m)²) p(E) dE in closed form (log), and the conditional of E
    (mean, sd, upper bound) given the prior kind: flat on [0, E_max], half-normal, dust-map Gaussian."""
    kind = prior.reddening_kind
    if kind == "flat":
        s = 1.0 / jnp.sqrt(a)
        lo, hi = log_ndtr(m / s), log_ndtr((m - prior.E_max) / s)
        log_i = (0.5 * (_LOG_2PI - jnp.log(a)) + lo + jnp.log1p(-jnp.exp(jnp.minimum(hi - lo, -1e-7)))
                 - jnp.log(prior.E_max))
        return log_i, m, s, prior.E_max
    if kind == "halfnormal":
        v = prior.E_scale ** 2
        log_c = 0.5 * math.log(2.0 / math.pi) - jnp.log(prior.E_scale)
        ref = 0.0
    elif kind == "dustmap":
        ref = star.E_ref
        v = star.E_ref_err ** 2 + (prior.E_tol_frac * ref) ** 2 + prior.E_tol_abs ** 2
        log_c = -0.5 * jnp.log(2.0 * math.pi * v)
    else:
        raise NotImplementedError(f"the grid path supports the built-in reddening priors, not {kind!r}; "
                                  "use method='nuts' for user callables")
    P = a + 1.0 / v
    mp = (a * m + ref / v) / P
    s = 1.0 / jnp.sqrt(P)
    log_i = log_c - 0.5 * (m - ref) ** 2 / (1.0 / a + v) + 0.5 * (_LOG_2PI - jnp.log(P)) + log_ndtr(mp / s)
    return log_i, mp, s, jnp.inf


def truncated_std_normal(key, lower, upper):
    """Draws of a standard normal truncated to [lower, upper] that stay exact in the far tails.

    ``jax.random.truncated_normal`` maps a uniform through erf, which rounds to ±1 in float32
    beyond ~4.5σ: an interval there (E ≥ 0 when the conditional mean of E lies many σ below 0)
    gives ±inf or far-off draws. Here the interval is mirrored onto the upper side when it lies
    below 0, then: inside the body the inverse CDF, Φ⁻¹(Φ(a) + u (Φ(b) − Φ(a))); in the upper tail
    the inverse of the upper-tail CDF, −Φ⁻¹(Φ(−a) − u (Φ(−a) − Φ(−b))), exact while Φ(−a) is
    representable; beyond a = 5 Marsaglia's (1964) tail form z = √(a² − 2 log(1 − u(1 − e^{−(b²−a²)/2}))),
    the exact inverse CDF of the density ∝ z φ(z), which is φ(z) to within a factor z/a (the
    draws' excess over a is ~1/a, so the relative bias of that excess is ~1/a² < 4%).
    """
    shape = jnp.broadcast_shapes(jnp.shape(lower), jnp.shape(upper))
    u = jax.random.uniform(key, shape, dtype=jnp.result_type(lower, float))
    flip = upper < 0.0
    a, b = jnp.where(flip, -upper, lower), jnp.where(flip, -lower, upper)
    body = ndtri(ndtr(a) + u * (ndtr(b) - ndtr(a)))
    tail_a = jnp.minimum(a, 5.0)  # the branch not taken must stay finite
    tail = -ndtri(ndtr(-tail_a) - u * (ndtr(-tail_a) - ndtr(-jnp.maximum(b, tail_a))))
    far_a = jnp.maximum(a, 5.0)
    far = jnp.sqrt(far_a ** 2 - 2.0 * jnp.log1p(-u * -jnp.expm1(-0.5 * (jnp.maximum(b, far_a) ** 2 - far_a ** 2))))
    z = jnp.where(a <= 0.0, body, jnp.where(a <= 5.0, tail, far))
    z = jnp.clip(z, a, b)
    return jnp.where(flip, -z, z)


def _parallax_gaussian(star, config: InferenceConfig):
    """Linearised parallax as a Gaussian on μ where S/N > 3: (use_plx, corrected ϖ, σ_ϖ, μ_ϖ, weight)."""
    s_plx = config.parallax_inflation * star.parallax_err
    plx_c = star.parallax - config.zero_point_mas
    use_plx = star.has_parallax & config.use_parallax
    linear = use_plx & (plx_c > 3.0 * s_plx)
    plx_pos = jnp.where(linear, plx_c, 1.0)
    w_p = jnp.where(linear, (plx_pos * math.log(10.0) / (5.0 * s_plx)) ** 2, 0.0)
    return use_plx, plx_c, s_plx, 10.0 - 5.0 * jnp.log10(plx_pos), w_p


def coarse_log_mass(star, grid, log_hr_nodes, config: InferenceConfig, offsets):
    """Stage 1: Laplace mass of each coarse node from the photometry, a linearised parallax, E ≥ 0
    and the HR prior (no distance / [Fe/H] prior: this only shapes the proposal). (G,) log mass
    and the node's (μ, E) optimum. Centred sums (matrix products with the per-star weights)."""
    w = jnp.where(star.observed, 1.0 / photometric_variance(star, config), 0.0)
    S0 = jnp.sum(w) + _RIDGE_MU
    c_star = jnp.sum(w * (star.mag - offsets)) / jnp.maximum(jnp.sum(w), 1e-30)
    d = jnp.where(star.observed, star.mag - offsets - c_star, 0.0)  # y = d − M_c − (μ − c_star + c_node)
    R, Mc = grid.nodes.R, grid.M_c
    S1, S2 = R @ w, (R * R) @ w + _RIDGE_E
    sw = jnp.sum(w)
    V_rr = ((R - (S1 / jnp.maximum(sw, 1e-30))[:, None]) ** 2) @ w  # Σw (R − R̄)²: det without cancellation
    T0 = jnp.sum(w * d) - Mc @ w
    T1 = R @ (w * d) - (Mc * R) @ w
    Q = jnp.sum(w * d * d) - 2.0 * (Mc @ (w * d)) + (Mc * Mc) @ w
    use_plx, _, _, mu_p, w_p = _parallax_gaussian(star, config)
    shift = c_star - grid.c_node  # μ = μ' + shift
    a00 = S0 + w_p
    b0 = T0 + w_p * (mu_p - shift) + _RIDGE_MU * (_MU0 - shift)
    det = sw * V_rr + sw * _RIDGE_E + (_RIDGE_MU + w_p) * S2  # = a00 S2 − S1²
    mu_p_ = (S2 * b0 - S1 * T1) / det
    E = (a00 * T1 - S1 * b0) / det
    chi2 = (Q + w_p * (mu_p - shift) ** 2 + _RIDGE_MU * (_MU0 - shift) ** 2
            - (mu_p_ * b0 + E * T1))
    log_mass = (-0.5 * chi2 - 0.5 * jnp.log(det) + log_ndtr(E * jnp.sqrt(det / a00)) + log_hr_nodes)
    return jnp.where(jnp.isfinite(log_mass), log_mass, -jnp.inf), mu_p_ + shift, E


_TABLE_LO, _TABLE_HI = -5.0, 30.0


def mu_prior_tables(star, prior: Prior, step: float):
    """Per-star tables on μ ∈ [−5, 30] (spacing ``step``): log p(μ | l, b) and the [Fe/H] mixture
    (log component weights, means) of :func:`dds_infer.priors.log_metallicity_prior`, for linear
    interpolation (|error| < 3e-3 in log p at 0.1 mag). Sky-averaged for stars without position
    (component means weight-averaged over the sky: exact for no radial [Fe/H] gradient)."""
    mu = jnp.arange(_TABLE_LO, _TABLE_HI + 0.5 * step, step, dtype=jnp.float32)
    log_d = log_distance_prior(mu, star, prior)
    if prior.feh_kind == "flat":
        return log_d, None, None
    g = prior.galaxy
    moments = lambda l, b: jnp.stack(galaxy.feh_component_moments(mu, l, b, g)[:2])  # noqa: E731
    w, means = by_position(star, lambda: moments(star.l, star.b), lambda: moments(None, None))
    return log_d, jnp.log(jnp.maximum(w, 1e-30)), means


def _interp(table, mu, step: float):
    """Linear interpolation of a table on the uniform μ grid (held constant beyond its ends)."""
    return lerp_uniform(table, mu, _TABLE_LO, step)


def _log_mu_priors(theta, mu, star, prior: Prior, tables, step: float):
    """log p(μ | l, b) + log p([Fe/H] | μ, l, b) at θ (K, 3) and μ nodes (K, n) from the tables."""
    log_d, log_w, means = tables
    out = _interp(log_d, mu, step)
    if log_w is None:
        return out
    sig = prior.galaxy.feh_sigma
    z = (theta[:, 2:3, None] - _interp(means, mu, step)) / sig
    return out + logsumexp(_interp(log_w, mu, step) - 0.5 * z * z - jnp.log(sig) - 0.5 * _LOG_2PI, axis=-1)


_NEWTON_STEPS, _NEWTON_MAX_STEP, _MU_SD_MAX = 4, 2.0, 2.0


def _mu_laplace(mu, g, lam, plx, s_plx, star, prior: Prior):
    """Mode and Laplace σ of log f(μ) = −½ λ (μ − μ̂)² + log ∫_{E≥0} N(E; m_E(μ), 1/a11) p(E) dE
    − ½ ((ϖ̂ − ϖ(μ))/σ_ϖ)², the integrand of :func:`theta_log_mass` without the slowly varying
    distance and [Fe/H] priors, by Newton steps from ``mu`` (each capped at ``_NEWTON_MAX_STEP``
    mag; where f'' ≥ 0 a capped gradient step). Needed (1) where E is barely constrained (one
    observed band: λ is the ridge's 1e-4), so that μ follows the parallax along the μ–E degeneracy,
    and (2) where photometry and parallax disagree: the parallax is Gaussian in ϖ, not in μ, and
    a linearised parallax puts the nodes far from the mass. σ (from f'' at the mode) is capped at
    ``_MU_SD_MAX`` mag (nodes span ± ``mu_half_width`` σ; the priors are not in f). No parallax:
    s_plx = inf."""
    def log_f(m):
        m_E = g["E"] - g["a01"] / g["a11"] * (m - g["mu"])
        return (-0.5 * lam * (m - g["mu"]) ** 2 + reddening_integral(m_E, g["a11"], star, prior)[0]
                - 0.5 * ((plx - parallax_model_mas(m)) / s_plx) ** 2)

    d1 = jax.grad(lambda m: jnp.sum(log_f(m)))  # log_f is elementwise: its gradient is f' per entry

    def newton(m):  # (f', min(f'', −1e-6)) from one forward-over-reverse pass
        g1, g2 = jax.jvp(d1, (m,), (jnp.ones_like(m),))
        return g1, jnp.minimum(g2, -1e-6)

    def step(_, m):
        g1, g2 = newton(m)
        return m - jnp.clip(g1 / g2, -_NEWTON_MAX_STEP, _NEWTON_MAX_STEP)

    mu = jax.lax.fori_loop(0, _NEWTON_STEPS, step, mu)  # a loop, not unrolled: keeps compilation short
    return mu, jnp.minimum(1.0 / jnp.sqrt(-newton(mu)[1]), _MU_SD_MAX)


def theta_log_mass(star, theta, M, R, prior: Prior, config: InferenceConfig, offsets, settings,
                   tables=None):
    """log ∫∫ p(θ, μ, E | data) dμ dE at each θ (K, 3), up to a per-star constant (Eq. 19).

    Returns (log_mass (K,), aux) with aux holding the μ nodes (K, n_mu), their log integrands
    (K, n_mu), node spacing (K,) and the photometric Gaussian, for drawing μ and E afterwards.
    """
    g = photometric_gaussian(star, M, R, config, offsets)
    det = g["det"]
    lam = det / g["a11"]  # precision of μ with E free
    use_plx, plx_c, s_plx, mu_p, w_p = _parallax_gaussian(star, config)
    # nodes: between the E-free optimum and the E = 0 one, by the probability that E > 0 ...
    frac = jax.scipy.stats.norm.cdf(g["E"] * jnp.sqrt(det / g["a00"]))
    mu_e0 = g["mu"] + g["a01"] / g["a00"] * g["E"]
    prec_ph = g["a00"] - frac * (g["a00"] - lam)
    mu_ph = frac * g["mu"] + (1.0 - frac) * mu_e0
    centre = (prec_ph * mu_ph + w_p * mu_p) / (prec_ph + w_p)
    # ... then Newton steps to the mode of μ's marginal (E integrated out, linearised parallax)
    centre, sd = _mu_laplace(centre, g, lam, jnp.where(use_plx, plx_c, 0.0), jnp.where(use_plx, s_plx, jnp.inf),
                             star, prior)
    t = jnp.linspace(-settings.mu_half_width, settings.mu_half_width, settings.n_mu)
    h = sd * (t[1] - t[0])
    mu = centre[:, None] + sd[:, None] * t  # (K, n_mu)
    dmu = mu - g["mu"][:, None]
    m_E = g["E"][:, None] - g["a01"][:, None] / g["a11"][:, None] * dmu
    log_e, _, _, _ = reddening_integral(m_E, g["a11"][:, None], star, prior)
    plx = -0.5 * ((plx_c - parallax_model_mas(mu)) / s_plx) ** 2 - jnp.log(s_plx) - 0.5 * _LOG_2PI
    log_f = (g["log_peak"][:, None] - 0.5 * lam[:, None] * dmu ** 2 + log_e
             + jnp.where(use_plx, plx, 0.0)
             + (_log_mu_priors(theta, mu, star, prior, tables, settings.mu_table_step) if tables is not None
                else log_distance_prior(mu, star, prior) + log_metallicity_prior(theta[:, 2:3], mu, star, prior))
             + log_hr_prior(theta, prior)[:, None])
    log_f = jnp.where(jnp.isfinite(log_f), log_f, -jnp.inf)
    trap = jnp.where((jnp.arange(settings.n_mu) == 0) | (jnp.arange(settings.n_mu) == settings.n_mu - 1), 0.5, 1.0)
    log_mass = logsumexp(log_f + jnp.log(trap), axis=1) + jnp.log(h)
    # moments of μ | θ from the same quadrature (for drawing μ: a moment-matched Gaussian)
    pw = jnp.exp(log_f - jnp.max(log_f, axis=1, keepdims=True)) * trap
    pw = pw / jnp.maximum(jnp.sum(pw, axis=1, keepdims=True), 1e-30)
    mu_mean = jnp.sum(pw * mu, axis=1)
    mu_sd = jnp.sqrt(jnp.maximum(jnp.sum(pw * (mu - mu_mean[:, None]) ** 2, axis=1), 0.0))
    return log_mass, dict(mu_mean=mu_mean, mu_sd=mu_sd, gauss=g)
