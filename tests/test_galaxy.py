"""Galactic model (dds_infer.galaxy): geometry vs astropy, densities, priors, sampling."""

import math

import astropy.units as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.coordinates import Galactocentric, SkyCoord
from scipy import stats

from dds_infer import galaxy as gx

M = gx.DEFAULT_GALAXY
_trapz = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def _mu(d_kpc):
    """Distance modulus in numpy (keeps tests from compiling tiny eager kernels)."""
    return 5.0 * np.log10(np.asarray(d_kpc, dtype=float)) + 10.0


def _random_points(n, seed=0):
    rng = np.random.default_rng(seed)
    l = rng.uniform(0.0, 360.0, n)
    b = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    d = 10.0 ** rng.uniform(-2.0, math.log10(60.0), n)  # 10 pc .. 60 kpc
    return l, b, d


def _median(mu, p):
    c = np.cumsum(np.asarray(p), axis=-1)
    return np.asarray(mu)[np.argmax(c / c[..., -1:] > 0.5, axis=-1)]


# --- geometry --------------------------------------------------------------------

def test_solar_position_matches_astropy_defaults():
    gc = Galactocentric()
    assert float(M.galcen_distance) == pytest.approx(gc.galcen_distance.to_value(u.kpc), rel=1e-12)
    assert M.Z0 == pytest.approx(gc.z_sun.to_value(u.kpc), rel=1e-12)
    sun = SkyCoord(l=0 * u.deg, b=0 * u.deg, distance=1e-9 * u.kpc, frame="galactic").transform_to(gc)
    with jax.enable_x64(True):
        xyz = np.asarray(gx.galactocentric_xyz(0.0, 0.0, 0.0, M))
    np.testing.assert_allclose(xyz, [-M.R0, 0.0, M.Z0], atol=1e-12)
    np.testing.assert_allclose(xyz, [sun.x.to_value(u.kpc), sun.y.to_value(u.kpc), sun.z.to_value(u.kpc)],
                               atol=1e-8)


def test_galactocentric_RZ_equals_astropy():
    l, b, d = _random_points(500)
    c = SkyCoord(l=l * u.deg, b=b * u.deg, distance=d * u.kpc, frame="galactic").transform_to(Galactocentric())
    x, y, z = (c.cartesian.xyz.to_value(u.kpc))
    R_ref = np.hypot(x, y)
    with jax.enable_x64(True):
        R, Z = gx.galactocentric_RZ(l, b, d, M)
        xyz = gx.galactocentric_xyz(l, b, d, M)
    np.testing.assert_allclose(np.asarray(R), R_ref, rtol=1e-6)
    # Z crosses zero: relative to the point's Galactocentric radius
    scale = np.sqrt(x**2 + y**2 + z**2)
    assert np.max(np.abs(np.asarray(Z) - z) / scale) < 1e-6
    np.testing.assert_allclose(np.asarray(xyz), np.stack([x, y, z], -1), rtol=0, atol=1e-6 * scale.max())
    # default float32 path stays close too
    R32, Z32 = gx.galactocentric_RZ(l, b, d, M)
    np.testing.assert_allclose(np.asarray(R32), R_ref, rtol=2e-6, atol=2e-6)
    assert np.max(np.abs(np.asarray(Z32) - z) / scale) < 2e-6


# --- densities -------------------------------------------------------------------

def test_normalisations_at_solar_circle():
    n = np.asarray(gx.component_densities(M.R0, 0.0, M))
    np.testing.assert_allclose(n, [1.0, M.thick_f, M.halo_f], rtol=1e-6)
    # at the Sun itself (Z = Z0) the disc ratio picks up the different scale heights
    n_sun = np.asarray(gx.component_densities(M.R0, M.Z0, M))
    np.testing.assert_allclose(n_sun[1] / n_sun[0], M.thick_f * math.exp(M.Z0 / M.thin_H - M.Z0 / M.thick_H),
                               rtol=1e-5)
    assert n_sun[0] > 5 * n_sun[1] > 5 * n_sun[2]


def test_thin_disc_dominates_near_sun_halo_far_above():
    mu_near = _mu(0.1)
    for l in (0.0, 90.0, 180.0, 270.0):
        w = np.asarray(gx.component_weights(mu_near, l, 0.0, M))
        assert w[0] > 0.85 and np.argmax(w) == 0
    w_far = np.asarray(gx.component_weights(_mu(20.0), 0.0, 90.0, M))
    assert w_far[2] > 0.999
    # thick disc takes over at a few scale heights above the plane
    w_mid = np.asarray(gx.component_weights(_mu(2.0), 0.0, 90.0, M))
    assert np.argmax(w_mid) == 1
    np.testing.assert_allclose(w_far.sum(), 1.0, rtol=1e-5)


def test_densities_finite_at_galactic_centre_and_far_away():
    R = np.array([0.0, 1e-6, 8.0, 100.0])
    Z = np.array([0.0, 0.0, 5.0, 100.0])
    logn = gx.log_component_densities(R, Z, M)
    assert np.all(np.isfinite(np.asarray(logn)))
    g = jax.grad(lambda r: jnp.sum(gx.log_component_densities(r, 0.0, M)))(0.0)
    assert np.isfinite(float(g))


# --- distance prior ----------------------------------------------------------------

def _reference_log_prior(mu, l, b, m):
    """Independent numpy/astropy evaluation of log[n(d) d³] (J08 form, Sesar+11 halo break)."""
    d = 10.0 ** (0.2 * mu - 2.0)
    c = SkyCoord(l=l * u.deg, b=b * u.deg, distance=d * u.kpc, frame="galactic").transform_to(Galactocentric())
    x, y, z = c.cartesian.xyz.to_value(u.kpc)
    R = np.hypot(x, y)
    Rt, Rt0 = np.sqrt(R**2 + m.disc_eps**2), np.sqrt(m.R0**2 + m.disc_eps**2)
    thin = np.exp(-(Rt - Rt0) / m.thin_L - np.abs(z) / m.thin_H)
    thick = m.thick_f * np.exp(-(Rt - Rt0) / m.thick_L - np.abs(z) / m.thick_H)
    rq = np.sqrt(R**2 + (z / m.halo_q) ** 2 + m.halo_eps**2)
    rq0 = np.sqrt(m.R0**2 + m.halo_eps**2)
    halo = m.halo_f * np.where(rq < m.halo_r_break, (rq / rq0) ** -m.halo_n,
                               (m.halo_r_break / rq0) ** -m.halo_n * (rq / m.halo_r_break) ** -m.halo_n_outer)
    return np.log(thin + thick + halo) + 3.0 * np.log(d)


def test_log_distance_prior_matches_independent_reference():
    l, b, d = _random_points(300, seed=11)
    mu = 5.0 * np.log10(d) + 10.0
    with jax.enable_x64(True):
        got = np.asarray(gx.log_distance_prior(mu, l, b, M))
    np.testing.assert_allclose(got, _reference_log_prior(mu, l, b, M), rtol=0, atol=1e-8)


def test_distance_prior_grid_normalised_and_consistent():
    mu = np.linspace(4.0, 19.0, 601)
    l = np.array([0.0, 90.0, 180.0, 300.0])
    b = np.array([0.0, 45.0, -10.0, 80.0])
    p = np.asarray(gx.distance_prior_grid(l, b, mu, M))
    assert p.shape == (4, 601) and np.all(p >= 0)
    np.testing.assert_allclose(_trapz(p, mu, axis=-1), 1.0, rtol=1e-5)
    p_sky = np.asarray(gx.distance_prior_grid(None, None, mu, M))
    assert p_sky.shape == (601,)
    np.testing.assert_allclose(_trapz(p_sky, mu), 1.0, rtol=1e-5)
    # the grid is the normalised exp of the log prior; the sky average is the mean
    # of n d³ over the fixed direction set
    ls, bs = gx.sky_directions()
    lp = np.asarray(gx.log_distance_prior(mu[:, None], np.r_[ls, 90.0][None, :], np.r_[bs, 45.0][None, :], M))
    ratio = p[1] / np.exp(lp[:, -1] - lp[:, -1].max())
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    sky_ref = np.log(np.mean(np.exp(lp[:, :-1]), axis=-1))
    np.testing.assert_allclose(np.asarray(gx.log_distance_prior(mu, None, None, M)), sky_ref, rtol=1e-5, atol=1e-5)


def test_distance_prior_mode_moves_outward_toward_galactic_centre():
    mu = np.linspace(4.0, 19.0, 3001)
    bs = np.array([0.0, 5.0, 10.0])
    p = np.asarray(gx.distance_prior_grid(np.stack([np.zeros(3), np.full(3, 180.0)]), np.stack([bs, bs]), mu, M))
    med_gc, med_anti = _median(mu, p)  # (3,) each
    assert np.all(med_gc > med_anti + 0.3), (med_gc, med_anti)
    mode_gc, mode_anti = mu[np.argmax(p[:, 1], axis=-1)]  # b = 5 deg
    assert mode_gc > mode_anti + 0.5
    # toward the centre in the plane the mode sits near the centre's distance modulus
    assert abs(mu[np.argmax(p[0, 0])] - (5 * np.log10(M.R0) + 10)) < 0.2


def test_sampled_distances_match_grid():
    key = jax.random.PRNGKey(7)
    fine = np.linspace(4.0, 19.0, 4096)
    ls, bs = np.array([30.0, 0.0, 180.0]), np.array([20.0, 5.0, 5.0])
    cases = [(ls, bs), (None, None)]
    for l, b in cases:
        s = np.asarray(gx.sample_distances(key, l, b, 20000, M)).reshape(-1, 20000)
        assert s.min() >= 4.0 and s.max() <= 19.0
        p = np.asarray(gx.distance_prior_grid(l, b, fine, M)).reshape(-1, 4096)
        for row, pr in zip(s, p):
            cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pr[1:] + pr[:-1]) * np.diff(np.asarray(fine)))])
            res = stats.kstest(row, lambda x: np.interp(x, np.asarray(fine), cdf / cdf[-1]))
            assert res.pvalue > 1e-3, (l, b, res)
        if l is not None:
            assert s.shape == (3, 20000)
            assert np.median(s[1]) > np.median(s[2]) + 0.3  # toward the centre vs anticentre


# --- metallicity ---------------------------------------------------------------------

def test_feh_prior_normalised_and_metal_poor_with_height():
    feh = np.linspace(-4.0, 1.5, 1101)
    heights = np.array([0.1, 0.5, 1.0, 2.0, 5.0, 20.0])
    mu = _mu(heights)
    lp = gx.log_feh_prior(feh[None, :], mu[:, None], 0.0, 90.0, M)
    p = np.exp(np.asarray(lp))
    np.testing.assert_allclose(_trapz(p, np.asarray(feh), axis=-1), 1.0, rtol=1e-3)
    mean = _trapz(p * np.asarray(feh), np.asarray(feh), axis=-1)
    assert np.all(np.diff(mean) < 0)
    assert mean[0] > -0.35 and mean[-1] < -1.5
    w, m, s = gx.feh_component_moments(mu, 0.0, 90.0, M)
    np.testing.assert_allclose(np.sum(np.asarray(w * m), -1), mean, atol=2e-3)
    # sky-averaged prior is a proper density too
    p_sky = np.exp(np.asarray(gx.log_feh_prior(feh, 13.0, None, None, M)))
    np.testing.assert_allclose(_trapz(p_sky, np.asarray(feh)), 1.0, rtol=1e-3)


def test_thin_disc_radial_gradient():
    model = M.replace(feh_thin_dR=-0.07)
    mu = _mu(4.0)
    _, m_in, _ = gx.feh_component_moments(mu, 0.0, 0.0, model)  # R ≈ 4 kpc
    _, m_out, _ = gx.feh_component_moments(mu, 180.0, 0.0, model)  # R ≈ 12 kpc
    np.testing.assert_allclose(float(m_in[0] - m_out[0]), 0.07 * 8.0, atol=0.01)


def test_sample_components_and_feh():
    n = 20000
    mu = np.full(n, float(_mu(1.5)))
    comp, feh = gx.sample_components_and_feh(jax.random.PRNGKey(3), mu, 0.0, 60.0, M)
    assert comp.shape == (n,) and feh.shape == (n,) and comp.dtype == jnp.int32
    w = np.asarray(gx.component_weights(float(mu[0]), 0.0, 60.0, M))
    frac = np.bincount(np.asarray(comp), minlength=3) / n
    np.testing.assert_allclose(frac, w, atol=0.015)
    for c, (m, s) in enumerate(((M.feh_thin, M.feh_thin_sigma), (M.feh_thick, M.feh_thick_sigma))):
        sel = np.asarray(feh)[np.asarray(comp) == c]
        assert abs(sel.mean() - m) < 4 * s / math.sqrt(len(sel)) + 1e-3
        assert abs(sel.std() - s) < 0.02
    comp_sky, feh_sky = gx.sample_components_and_feh(jax.random.PRNGKey(4), mu[:100], None, None, M)
    assert comp_sky.shape == (100,) and np.all(np.isfinite(np.asarray(feh_sky)))


# --- autodiff and transformations ----------------------------------------------------------

def test_grad_finite_everywhere_on_sightline():
    mus = np.array([-2.0, 4.0, float(_mu(M.galcen_distance)), 14.0, 17.0, 22.0])

    def both(m, l, b):
        return gx.log_distance_prior(m, l, b, M) + gx.log_feh_prior(-0.5, m, l, b, M)

    grad = jax.jit(jax.vmap(jax.grad(both), in_axes=(0, None, None)))
    for l, b in ((0.0, 0.0), (180.0, 0.0), (45.0, -30.0), (None, None)):
        g = grad(mus, l, b)
        assert np.all(np.isfinite(np.asarray(g))), (l, b, g)
    # and with respect to the model parameters (e.g. for hierarchical fits)
    gm = jax.grad(lambda mod: gx.log_distance_prior(12.0, 30.0, 10.0, mod))(M)
    assert all(np.isfinite(float(v)) for v in jax.tree_util.tree_leaves(gm))


def test_jit_and_vmap_agree_with_eager():
    l, b, d = _random_points(64, seed=3)
    mu = np.asarray(_mu(d))
    feh = np.linspace(-2.0, 0.3, 64)
    batched = gx.log_distance_prior(mu, l, b, M)
    vmapped = jax.vmap(gx.log_distance_prior, in_axes=(0, 0, 0, None))(mu, l, b, M)
    np.testing.assert_allclose(np.asarray(vmapped), np.asarray(batched), rtol=1e-5, atol=1e-5)
    f_eager = gx.log_feh_prior(feh, mu, l, b, M)
    f_vmap = jax.jit(jax.vmap(gx.log_feh_prior, in_axes=(0, 0, 0, 0, None)))(feh, mu, l, b, M)
    np.testing.assert_allclose(np.asarray(f_vmap), np.asarray(f_eager), rtol=1e-5, atol=1e-5)
    # several sightlines at once, truncated range (any sequence), coarser grid
    s = np.asarray(gx.sample_distances(jax.random.PRNGKey(0), l[:5], b[:5], 1000, M,
                                       mu_range=[8.0, 12.0], n_grid=512))
    assert s.shape == (5, 1000) and s.min() >= 8.0 and s.max() <= 12.0
    assert np.all(np.std(s, axis=-1) > 0.5)


def test_half_given_sightline_is_an_error():
    with pytest.raises(ValueError):
        gx.log_distance_prior(10.0, 30.0, None, M)
