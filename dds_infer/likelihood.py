"""Likelihood pieces of Green et al. (2021), vectorised over stars.

Conventions (paper §2):

* Band space: magnitudes m (N, B). Colour space: c = B m (Eq. 5) with
  c_0 = m_ref (absolute after subtracting μ) and c_j = m_j - m_ref.
* Observed colours ĉ = B (m̂ - μ̂): only ĉ_0 depends on the parallax.
* C_m (Eq. 4) = J C_θ Jᵀ + R Rᵀ σ_E² + σ_μ² 1 1ᵀ + diag(σ_m²);
  C_c = B C_m Bᵀ (Eq. 6). Because B 1 = e_0 the parallax term only touches c_0.
* "Modelled" entries: c_j (j>0) where band j and the reference band are
  observed; c_0 where the reference band is observed and ϖ/σ_ϖ > min_snr.
  Unmodelled entries are removed exactly by masking: their rows/columns of C_c
  are replaced by the identity and their residuals by 0, so χ² and the
  whitening matrix equal those of the observed sub-vector.

All functions are pure jax.numpy, jit- and vmap-friendly, with a leading star axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .emulator import apply_colour_transform  # Eq. 5, defined once beside the network output it inverts
from .smallmat import cholesky, solve_lower, solve_lower_vec

__all__ = [
    "colour_transform_matrix",
    "apply_colour_transform",
    "distance_modulus_from_parallax",
    "distance_modulus_linearized",
    "observed_colours",
    "modelled_entries",
    "model_jacobian",
    "magnitude_covariance",
    "colour_covariance",
    "mask_covariance",
    "whitening_matrix",
    "chi2_colours",
    "reddening_update",
    "reddening_variance_floor",
    "label_update",
    "spd_inverse",
    "z_scores",
    "E_VARIANCE_FLOOR_ABS",
    "E_VARIANCE_FLOOR_REL",
]

LN10 = 2.302585092994046
E_VARIANCE_FLOOR_ABS = 0.02  # σ_E floor terms of Eqs. 8-9: (0.02)² + (0.1 E)²
E_VARIANCE_FLOOR_REL = 0.1


def colour_transform_matrix(n_bands: int, dtype=jnp.float32):
    """B of Eq. 5: row 0 = reference magnitude, row j = band j minus reference."""
    b = jnp.eye(n_bands, dtype=dtype)
    return b.at[1:, 0].set(-1.0)


def distance_modulus_from_parallax(parallax, parallax_err, *, min_snr: float = 5.0, zero_point: float = 0.0):
    """μ̂ and σ_μ from a parallax in mas (first-order propagation), and the good-parallax mask.

    μ̂ = 10 - 5 log10(ϖ - ϖ_zp), σ_μ = (5 / ln 10) σ_ϖ / ϖ. Only stars with
    (ϖ - ϖ_zp)/σ_ϖ > ``min_snr`` get ``good = True`` (the paper uses 5); for the
    others μ̂ = σ_μ = 0 and c_0 must not be modelled (§2, Eqs. 3-4).
    """
    plx = jnp.asarray(parallax) - zero_point
    err = jnp.asarray(parallax_err)
    finite = jnp.isfinite(plx) & jnp.isfinite(err) & (err > 0)
    snr = jnp.where(finite, plx / jnp.where(finite, err, 1.0), 0.0)
    good = finite & (snr > min_snr)
    safe = jnp.where(good, plx, 1.0)
    mu = jnp.where(good, 10.0 - 5.0 * jnp.log10(safe), 0.0)
    sigma_mu = jnp.where(good, 5.0 / LN10 * err / safe, 0.0)
    return mu, sigma_mu, good


def distance_modulus_linearized(parallax, parallax_err, mu_ref, var_ref, *, zero_point: float = 0.0):
    """μ̃, σ_μ̃ of the Gaussian parallax likelihood linearised about a reference μ (replaces Eq. 3's μ̂).

    The parallax error is Gaussian in ϖ, not in μ: ϖ̂ - ϖ_zp ~ N(ϖ(μ), σ_ϖ),
    ϖ(μ) = 10^((10 - μ)/5) mas. To first order about μ_ref (ϖ_ref = ϖ(μ_ref)):
    μ ~ N(μ̃, σ_μ̃) with μ̃ = μ_ref + (5/ln 10)(1 - (ϖ̂ - ϖ_zp)/ϖ_ref) and
    σ_μ̃ = (5/ln 10) σ_ϖ / ϖ_ref. If μ_ref scatters about the true μ with
    variance ``var_ref``, the expansion's second-order term biases μ̃ by
    -(ln 10/10) var_ref; that is added back. Unlike μ̂ = 10 - 5 log10 ϖ̂ (biased
    by ≈ +(ln 10/10) σ_μ² and, after a cut on ϖ̂/σ_ϖ, by the selection on the
    noise) μ̃ is unbiased at any S/N and defined for ϖ̂ ≤ 0, so no S/N cut is
    needed (forward-model the parallax: Luri et al. 2018, A&A 616, A9, §4).
    μ_ref must not use the parallax. Returns (μ̃, σ_μ̃, has_parallax);
    μ̃ = σ_μ̃ = 0 where ``has_parallax`` is False.
    """
    plx = jnp.asarray(parallax) - zero_point
    err = jnp.asarray(parallax_err)
    mu_ref = jnp.asarray(mu_ref)
    ok = jnp.isfinite(plx) & jnp.isfinite(err) & (err > 0) & jnp.isfinite(mu_ref) & jnp.isfinite(var_ref)
    ref = jnp.where(ok, mu_ref, 10.0)
    plx_ref = 10.0 ** ((10.0 - ref) / 5.0)
    k = 5.0 / LN10
    mu = ref + k * (1.0 - jnp.where(ok, plx, 0.0) / plx_ref) + jnp.where(ok, var_ref, 0.0) / (2.0 * k)
    sigma = k * jnp.where(ok, err, 0.0) / plx_ref
    return jnp.where(ok, mu, 0.0), jnp.where(ok, sigma, 0.0), ok


def observed_colours(mag, mu):
    """ĉ = B (m̂ - μ̂) (Eq. 5); non-finite entries stay non-finite (use ``modelled_entries``)."""
    return apply_colour_transform(jnp.asarray(mag) - jnp.asarray(mu)[..., None])


def modelled_entries(observed, good_parallax):
    """(N, B) bool: which entries of c are modelled.

    observed: (N, B) band observed; good_parallax: (N,) ϖ/σ_ϖ above threshold.
    """
    ref = observed[..., :1]
    colours = observed[..., 1:] & ref
    c0 = ref & jnp.asarray(good_parallax)[..., None]
    return jnp.concatenate([c0, colours], axis=-1)


def model_jacobian(emulator, theta, E):
    """J = ∂[M(θ) + E R(θ)]/∂θ in physical θ units, shape (N, B, 3) (ingredient of Eq. 4)."""

    def one(t, e):
        return jax.jacfwd(lambda tt: emulator.predict(tt, e))(t)

    return jax.vmap(one)(jnp.asarray(theta), jnp.asarray(E))


def magnitude_covariance(mag_err, *, jac=None, theta_cov=None, R=None, E_err=None, sigma_mu=None):
    """C_m of Eq. 4, shape (N, B, B).

    C_m = J C_θ Jᵀ + R Rᵀ σ_E² + σ_μ² 1 1ᵀ + diag(σ_m²). Each optional term is
    included only if its inputs are given (e.g. iteration 1 of training omits
    the J and R terms). ``mag_err`` must be finite (fill missing bands first).
    """
    mag_err = jnp.asarray(mag_err)
    cov = jax.vmap(jnp.diag)(mag_err**2)
    if jac is not None and theta_cov is not None:
        cov = cov + jnp.einsum("nbi,nij,ncj->nbc", jac, theta_cov, jac)
    if R is not None and E_err is not None:
        cov = cov + (jnp.asarray(E_err) ** 2)[:, None, None] * R[:, :, None] * R[:, None, :]
    if sigma_mu is not None:
        cov = cov + (jnp.asarray(sigma_mu) ** 2)[:, None, None]
    return cov


def colour_covariance(cov_m):
    """C_c = B C_m Bᵀ (Eq. 6), shape (N, B, B)."""
    b = colour_transform_matrix(cov_m.shape[-1], cov_m.dtype)
    return jnp.einsum("ij,njk,lk->nil", b, cov_m, b)


def mask_covariance(cov_c, mask):
    """Replace unmodelled rows/columns by the identity (exact marginalisation over them)."""
    m = mask.astype(cov_c.dtype)
    outer = m[:, :, None] * m[:, None, :]
    eye = jnp.eye(cov_c.shape[-1], dtype=cov_c.dtype)
    return cov_c * outer + eye * (1.0 - m)[:, None, :]


def whitening_matrix(cov_c, mask):
    """W with Wᵀ W = C_c⁻¹ on the modelled entries (the paper's Lᵀ, Eqs. 12-13).

    W = K⁻¹ with K the lower Cholesky factor of the masked C_c, so
    ‖W r‖² = rᵀ C_c⁻¹ r. Rows of unmodelled entries are zero.
    """
    c = mask_covariance(cov_c, mask)
    k = cholesky(c)
    eye = jnp.broadcast_to(jnp.eye(c.shape[-1], dtype=c.dtype), c.shape)
    w = solve_lower(k, eye)
    return w * mask.astype(c.dtype)[:, :, None]


def chi2_colours(resid, cov_c, mask):
    """χ² = rᵀ C_c⁻¹ r over the modelled entries (Eqs. 11-14) and dof = their number.

    resid: (N, B) ĉ - c_model (non-finite entries allowed where unmodelled).
    Returns (chi2, dof), each shape (N,).
    """
    r = jnp.where(mask, resid, 0.0)
    k = cholesky(mask_covariance(cov_c, mask))
    y = solve_lower_vec(k, r)
    return jnp.sum(y**2, axis=-1), jnp.sum(mask, axis=-1)


def reddening_update(resid0, cov_c, mask, R, E_prior, E_prior_err, *, clip: bool = True, floor: bool = True):
    """Per-star reddening given the model (Eqs. 8-9), prior mean held fixed.

    resid0: ĉ - B M(θ) (colour residual at E = 0); cov_c: colour covariance
    *without* the reddening term; R: (N, B) reddening vector in band space.
    Gaussian posterior of E:  σ⁻² = σ_E⁻² + (BR)ᵀ C_c⁻¹ (BR),
    E = σ² [Ê/σ_E² + (BR)ᵀ C_c⁻¹ r₀]. Then E is clipped at ≥ 0 and the variance
    is floored: var = max(σ², (0.02)² + (0.1 E)²). Returns (E, var).

    The floor is a maximum, not a sum: that convention reproduces the published
    model's own updated reddenings (``r_var`` in the Green2020 test file) to
    ~2% at the 1st/99th percentiles (tests/test_likelihood.py).
    """
    br = jnp.where(mask, apply_colour_transform(R), 0.0)
    r0 = jnp.where(mask, resid0, 0.0)
    k = cholesky(mask_covariance(cov_c, mask))
    wbr = solve_lower_vec(k, br)
    wr = solve_lower_vec(k, r0)
    prec = 1.0 / E_prior_err**2 + jnp.sum(wbr * wbr, axis=-1)
    var = 1.0 / prec
    e = var * (E_prior / E_prior_err**2 + jnp.sum(wbr * wr, axis=-1))
    if clip:
        e = jnp.maximum(e, 0.0)
    if floor:
        var = jnp.maximum(var, reddening_variance_floor(e))
    return e, var


def reddening_variance_floor(E):
    """The σ_E² floor of Eqs. 8-9 as the published model applies it: (0.02)² + (0.1 E)²."""
    return E_VARIANCE_FLOOR_ABS**2 + (E_VARIANCE_FLOOR_REL * E) ** 2


def spd_inverse(a):
    """Inverse of small symmetric positive-definite matrices (..., K, K) via :mod:`smallmat`."""
    eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
    li = solve_lower(cholesky(a), eye)  # L⁻¹
    return jnp.einsum("...ki,...kj->...ij", li, li)  # L⁻ᵀ L⁻¹


def label_update(resid, jac, cov_c, mask, dz_prior, prior_prec):
    """Per-star Gaussian update of the labels z = (θ, E) given the colours (Eqs. 8-9 extended to θ).

    Eqs. 8-9 re-estimate E from the photometry with the prior (Ê, σ_E) held
    fixed; this does the same jointly for z = (θ, E), prior N(ẑ, P) with
    P = diag(C_θ, σ_E²) held fixed, linearised at the current estimate z₀
    (one Gauss-Newton step per call):

        Λ = P⁻¹ + Jᵀ C_c⁻¹ J,   z - z₀ = Λ⁻¹ [P⁻¹ (ẑ - z₀) + Jᵀ C_c⁻¹ r],

    with r = ĉ - c(z₀), J = ∂c/∂z at z₀ (colour space), and C_c the colour
    covariance of the photometry and parallax alone (σ_m², σ_μ²: the labels'
    uncertainty is carried by P). Returns (dz, Λ⁻¹), shapes (N, K), (N, K, K).
    resid: (N, B); jac: (N, B, K); mask: (N, B); dz_prior = ẑ - z₀: (N, K); prior_prec = P⁻¹:
    (N, K, K) (:func:`spd_inverse` of P).
    """
    m = mask.astype(resid.dtype)
    k = cholesky(mask_covariance(cov_c, mask))
    wj = solve_lower(k, jac * m[..., None])  # W J
    wr = solve_lower_vec(k, jnp.where(mask, resid, 0.0))
    prec = prior_prec + jnp.einsum("nbi,nbj->nij", wj, wj)
    post_cov = spd_inverse(prec)
    rhs = jnp.einsum("nij,nj->ni", prior_prec, dz_prior) + jnp.einsum("nbi,nb->ni", wj, wr)
    return jnp.einsum("nij,nj->ni", post_cov, rhs), post_cov


def z_scores(resid, cov_c, mask):
    """z_i = (ĉ_i - c_i) / sqrt(C_c,ii) on modelled entries, NaN elsewhere (Eq. 18)."""
    sig = jnp.sqrt(jnp.diagonal(cov_c, axis1=-2, axis2=-1))
    return jnp.where(mask, resid / jnp.where(mask, sig, 1.0), jnp.nan)
