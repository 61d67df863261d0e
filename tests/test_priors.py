"""Priors of Eq. 19: HR-diagram density (normalisation, edges, gradients), Galactic terms, reddening."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dds_infer import galaxy, init_emulator
from dds_infer.domain import density_from_samples
from dds_infer.inference import StarData
from dds_infer.priors import (default_prior, log_distance_prior, log_hr_prior, log_metallicity_prior,
                              log_prior, log_reddening_prior)


def _synthetic_domain():
    """A dwarf sequence and a giant clump in (Teff, logg), [Fe/H] ~ N(-0.2, 0.3)."""
    rng = np.random.default_rng(1)
    n = 20000
    dwarf = np.c_[rng.uniform(4000, 6500, n), np.zeros(n), rng.normal(-0.2, 0.3, n)]
    dwarf[:, 1] = 4.6 - (dwarf[:, 0] - 4000) / 2500 * 0.5 + rng.normal(0, 0.1, n)
    giant = np.c_[rng.normal(4700, 150, n // 2), rng.normal(2.5, 0.3, n // 2), rng.normal(-0.2, 0.3, n // 2)]
    return density_from_samples(np.r_[dwarf, giant], bins=(40, 40, 16),
                                ranges=((3000.0, 7500.0), (0.0, 6.0), (-1.5, 0.9)))


@pytest.fixture(scope="module")
def emu():
    return init_emulator(jax.random.PRNGKey(0)).with_domain(_synthetic_domain())


@pytest.fixture(scope="module")
def prior(emu):
    return default_prior(emu)


def _star(has_position=False, l=30.0, b=10.0, E_ref=None):
    return StarData(mag=jnp.zeros(13), mag_err=jnp.ones(13), observed=jnp.zeros(13, bool),
                    parallax=jnp.array(0.0), parallax_err=jnp.array(1e6), l=jnp.array(l), b=jnp.array(b),
                    has_position=jnp.array(has_position),
                    E_ref=None if E_ref is None else jnp.array(E_ref[0]),
                    E_ref_err=None if E_ref is None else jnp.array(E_ref[1]))


def _integral_over_teff_logg(prior, feh, n=241):
    T = np.linspace(3000.0, 7500.0, n)
    g = np.linspace(0.0, 6.0, n)
    TT, gg = np.meshgrid(T, g, indexing="ij")
    th = jnp.asarray(np.stack([TT, gg, np.full_like(TT, feh)], -1))
    p = np.exp(np.asarray(log_hr_prior(th, prior), dtype=np.float64))
    return np.trapezoid(np.trapezoid(p, g, axis=1), T)


@pytest.mark.parametrize("feh", [-0.2, 0.06, 0.3])
def test_hr_prior_is_normalised_per_metallicity(prior, feh):
    """∫∫ p(Teff, logg | feh) = 1, by an independent fine-mesh quadrature, on and between grid slices."""
    assert _integral_over_teff_logg(prior, feh) == pytest.approx(1.0, abs=0.03)


def test_hr_prior_suppresses_empty_metallicity_slices(prior):
    """Where the training set has no stars in [Fe/H], the slice is not blown up to unit mass."""
    assert _integral_over_teff_logg(prior, 0.88) < 0.05


def test_hr_prior_follows_training_density(prior, emu):
    dom = emu.domain
    on_ms, giant, empty = [jnp.array(t) for t in ([5000.0, 4.4, -0.2], [4700.0, 2.5, -0.2], [6500.0, 1.0, -0.2])]
    for inside in (on_ms, giant):
        assert float(dom.density_at(inside)) > 0.1
        assert float(log_hr_prior(inside, prior)) - float(log_hr_prior(empty, prior)) > 8.0
    assert float(dom.density_at(empty)) < 1e-3


@pytest.mark.parametrize("theta", [[3000.0, 4.0, -0.2], [7500.0, 6.0, 0.9], [2000.0, -3.0, -4.0],
                                   [9000.0, 8.0, 2.0], [5000.0, 4.4, -0.2]])
def test_hr_prior_gradient_finite_at_and_beyond_edges(prior, theta):
    th = jnp.array(theta)
    val, grad = jax.value_and_grad(lambda t: log_hr_prior(t, prior))(th)
    assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(grad)))
    lo, hi = np.asarray(prior.grid_lo), np.asarray(prior.grid_hi)
    out = (np.asarray(th) < lo) | (np.asarray(th) > hi)
    # outside the grid the gradient points back in along every offending axis
    g = np.asarray(grad)
    assert np.all(np.sign(g[out]) == np.sign((0.5 * (lo + hi) - np.asarray(th))[out]))


def test_log_prior_gradient_finite_everywhere(prior):
    """The whole prior (Galactic terms, E near 0) stays differentiable over a wide box."""
    rng = np.random.default_rng(2)
    th = np.c_[rng.uniform(1500, 12000, 30), rng.uniform(-4, 9, 30), rng.uniform(-5, 3, 30)]
    mu = rng.uniform(-5, 30, 30)
    E = rng.uniform(0.0, 8.0, 30)
    star = _star(True)
    f = jax.vmap(jax.grad(lambda t, m, e: log_prior(t, m, e, star, prior), argnums=(0, 1, 2)))
    for g in f(jnp.asarray(th), jnp.asarray(mu), jnp.asarray(E)):
        assert np.all(np.isfinite(np.asarray(g)))


def test_distance_and_metallicity_terms_use_the_galactic_model(prior):
    mu = jnp.linspace(6.0, 16.0, 5)
    on = _star(True, 30.0, 10.0)
    off = _star(False)
    np.testing.assert_allclose(log_distance_prior(mu, on, prior), galaxy.log_distance_prior(mu, 30.0, 10.0),
                               rtol=1e-5)
    np.testing.assert_allclose(log_distance_prior(mu, off, prior), galaxy.log_distance_prior(mu), rtol=1e-5)
    np.testing.assert_allclose(log_metallicity_prior(-1.0, mu, on, prior),
                               galaxy.log_feh_prior(-1.0, mu, 30.0, 10.0), rtol=1e-5)
    np.testing.assert_allclose(log_metallicity_prior(-1.0, mu, off, prior), galaxy.log_feh_prior(-1.0, mu),
                               rtol=1e-5)


def test_flat_distance_prior(emu):
    pr = default_prior(emu, kind="flat")
    star = _star()
    inside = np.asarray(log_distance_prior(jnp.array([5.0, 12.0, 18.0]), star, pr))
    np.testing.assert_allclose(inside, -math.log(15.0), rtol=1e-6)
    assert float(log_distance_prior(jnp.array(20.0), star, pr)) < -math.log(15.0) - 10


def test_reddening_priors(emu):
    E = np.linspace(0.0, 6.0, 6001)
    star = _star(E_ref=(0.5, 0.03))
    hn = default_prior(emu, reddening="halfnormal", E_scale=0.7)
    p = np.exp(np.asarray(log_reddening_prior(jnp.asarray(E), star, hn), dtype=np.float64))
    assert np.trapezoid(p, E) == pytest.approx(1.0, abs=1e-3)
    flat = default_prior(emu, reddening="flat", E_max=2.0)
    lf = np.asarray(log_reddening_prior(jnp.asarray(E), star, flat))
    np.testing.assert_allclose(lf[E <= 2.0], -math.log(2.0), rtol=1e-6)
    assert lf[-1] < -100
    dm = default_prior(emu, reddening="dustmap", E_tol_abs=0.0, E_tol_frac=0.0)
    ld = np.asarray(log_reddening_prior(jnp.asarray(E), star, dm))
    assert E[np.argmax(ld)] == pytest.approx(0.5, abs=1e-3)
    # σ = E_ref_err when the tolerances are zero: one σ away costs exactly 1/2
    assert float(ld.max() - log_reddening_prior(jnp.array(0.53), star, dm)) == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(ValueError, match="E_ref"):
        log_reddening_prior(jnp.array(0.1), _star(), dm)


def test_user_callable_replaces_one_term(emu, prior):
    def my_distance(theta, mu, E, star, prior):
        return -0.5 * (mu - 10.0) ** 2

    custom = default_prior(emu, distance=my_distance)
    star = _star()
    th = jnp.array([5000.0, 4.4, -0.2])
    diff = log_prior(th, 12.0, 0.1, star, custom) - log_prior(th, 12.0, 0.1, star, prior)
    expected = -2.0 - float(log_distance_prior(jnp.array(12.0), star, prior))
    assert float(diff) == pytest.approx(expected, rel=1e-5)


def test_default_prior_rejects_bad_input(emu):
    with pytest.raises(ValueError, match="kind"):
        default_prior(emu, kind="uniform")
    with pytest.raises(ValueError, match="reddening"):
        default_prior(emu, reddening="sfd")
    with pytest.raises(ValueError, match="training domain"):
        default_prior(emu.with_domain(None))


def test_sky_tables_match_exact_all_sky_priors():
    """The tabulated sky-averaged distance and [Fe/H] priors equal the exact 64-direction sums."""
    import jax.numpy as jnp
    import numpy as np

    from dds_infer.inference import StarData
    from dds_infer.priors import Prior, log_distance_prior, log_metallicity_prior, sky_average_tables

    g, ld, lw = sky_average_tables()
    base = Prior(log_hr=jnp.zeros((2, 2, 2)), grid_lo=jnp.zeros(3), grid_step=jnp.ones(3),
                 grid_hi=jnp.ones(3), edge_scale=jnp.ones(3))
    tab = base.replace(sky_mu=jnp.asarray(g), sky_log_dist=jnp.asarray(ld), sky_log_w=jnp.asarray(lw))
    star = StarData(mag=jnp.zeros(13), mag_err=jnp.ones(13), observed=jnp.ones(13, bool),
                    parallax=jnp.asarray(1.0), parallax_err=jnp.asarray(0.1), l=jnp.asarray(0.0),
                    b=jnp.asarray(0.0), has_position=jnp.asarray(False))
    rng = np.random.default_rng(0)
    mu = jnp.asarray(rng.uniform(4, 19, 200))
    feh = jnp.asarray(rng.uniform(-2.5, 0.5, 200))
    d_exact = log_distance_prior(mu, star, base)
    d_tab = log_distance_prior(mu, star, tab)
    assert float(jnp.max(jnp.abs(d_exact - d_tab))) < 2e-3
    f_exact = log_metallicity_prior(feh, mu, star, base)
    f_tab = log_metallicity_prior(feh, mu, star, tab)
    assert float(jnp.max(jnp.abs(f_exact - f_tab))) < 2e-3


def test_lerp_uniform_matches_np_interp_and_holds_the_ends():
    from dds_infer.priors import lerp_uniform

    grid = np.linspace(-5.0, 30.0, 1401)
    table = np.sin(grid / 3.0) + 0.1 * grid
    x = np.r_[np.random.default_rng(2).uniform(-8.0, 33.0, 500), grid[[0, 1, 700, -2, -1]]]
    got = lerp_uniform(jnp.asarray(table), jnp.asarray(x), -5.0, 0.025)
    np.testing.assert_allclose(np.asarray(got), np.interp(x, grid, table), atol=2e-5)
    cols = np.stack([table, -table], axis=-1)  # (n, 2): one index for several tables
    np.testing.assert_allclose(np.asarray(lerp_uniform(jnp.asarray(cols), jnp.asarray(x), -5.0, 0.025))[:, 1],
                               -np.interp(x, grid, table), atol=2e-5)


@pytest.mark.parametrize("mode", ["none", "all"])
def test_uniform_position_batches_give_the_mixed_result(prior, mode):
    """StarData.positions "none"/"all" evaluates one branch only: same values and gradients as
    the general ("mixed") jnp.where over both, for batches where the mode is true."""
    n = 6
    has = mode == "all"
    rng = np.random.default_rng(3)
    mixed = StarData(mag=jnp.zeros((n, 13)), mag_err=jnp.ones((n, 13)), observed=jnp.zeros((n, 13), bool),
                     parallax=jnp.zeros(n), parallax_err=jnp.full(n, 1e6),
                     l=jnp.asarray(rng.uniform(0, 360, n)), b=jnp.asarray(rng.uniform(-60, 60, n)),
                     has_position=jnp.full(n, has))
    uniform = mixed.replace(positions=mode)
    th = jnp.asarray(np.c_[rng.uniform(4000, 6500, n), rng.uniform(1, 5, n), rng.uniform(-1.5, 0.3, n)])
    mu, E = jnp.asarray(rng.uniform(6, 16, n)), jnp.asarray(rng.uniform(0, 1, n))

    def total(star):
        f = jax.vmap(jax.value_and_grad(lambda t, m, e, s: log_prior(t, m, e, s, prior), argnums=(0, 1, 2)))
        return f(th, mu, E, star)

    (v_mixed, g_mixed), (v_uni, g_uni) = total(mixed), total(uniform)
    np.testing.assert_allclose(np.asarray(v_uni), np.asarray(v_mixed), rtol=1e-6)
    for a, b in zip(g_uni, g_mixed):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # and the mode matters: the sightline and the sky average differ
    other = mixed.replace(has_position=jnp.full(n, not has), positions="all" if mode == "none" else "none")
    assert not np.allclose(np.asarray(total(other)[0]), np.asarray(v_mixed))
