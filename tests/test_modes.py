"""Grid posterior (closed-form μ, E + Laplace), mode finding, chain starts, chain combination."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from dds_infer import init_emulator
from dds_infer.domain import density_from_samples
from dds_infer.inference import InferenceConfig, StarData
from dds_infer.keras_import import import_keras_model
from dds_infer.modes import (FLAG_MULTIMODAL, FLAG_OK, FLAG_UNRESOLVED, Modes, combine_chain_modes,
                             find_modes, grid_log_posterior, initial_params, make_theta_grid, star_modes)
from dds_infer.priors import default_prior


@pytest.fixture(scope="module")
def emu():
    rng = np.random.default_rng(0)
    th = np.c_[rng.normal(5200, 700, 8000), rng.normal(3.5, 1.0, 8000), rng.normal(-0.2, 0.3, 8000)]
    dom = density_from_samples(th, bins=(16, 16, 6))
    return init_emulator(jax.random.PRNGKey(7)).with_domain(dom)


@pytest.fixture(scope="module")
def grid(emu):
    return make_theta_grid(emu)


def _star(mag, err, obs, plx=0.0, plx_err=1e6):
    return StarData(mag=jnp.asarray(mag, jnp.float32), mag_err=jnp.asarray(err, jnp.float32),
                    observed=jnp.asarray(obs), parallax=jnp.array(plx, jnp.float32),
                    parallax_err=jnp.array(plx_err, jnp.float32), l=jnp.array(0.0), b=jnp.array(0.0),
                    has_position=jnp.array(False))


def _numpy_loglik(M, R, mag, w, obs, mu, E, plx=None, s_plx=None):
    r = (mag - M - mu - E * R)[obs]
    ll = -0.5 * np.sum(w[obs] * r ** 2) - 0.5 * np.sum(np.log(2 * np.pi / w[obs]))
    if plx is not None:
        ll += -0.5 * ((plx - 10 ** ((10 - mu) / 5)) / s_plx) ** 2 - np.log(s_plx) - 0.5 * np.log(2 * np.pi)
    return ll


def _synthetic(emu, theta, mu, E, obs, err=0.03, seed=0):
    rng = np.random.default_rng(seed)
    m = np.asarray(emu.predict_apparent(jnp.asarray(theta), mu, E), dtype=np.float64)
    m = m + rng.normal(0, err, 13)
    return np.where(obs, m, 0.0)


def test_closed_form_mu_E_equal_brute_force_optimum(emu, grid):
    """The 2×2 weighted least squares with E ≥ 0 equals a numerical bounded optimum."""
    obs = np.ones(13, bool)
    obs[[4, 9]] = False
    mag = _synthetic(emu, [5300.0, 4.2, -0.1], 10.0, 0.02, obs)
    star = _star(mag, np.full(13, 0.03), obs)
    cfg = InferenceConfig(sigma_floor=0.02)
    prior = default_prior(emu, kind="flat", theta="flat")
    _, mu_hat, E_hat = grid_log_posterior(star, emu, prior, cfg, grid)
    w = np.where(obs, 1 / (0.03 ** 2 + 0.02 ** 2), 0.0)
    G = grid.theta.shape[0]
    clipped = 0
    for g in np.random.default_rng(1).choice(G, 8, replace=False):
        M, R = np.asarray(grid.M[g], np.float64), np.asarray(grid.R[g], np.float64)
        f = lambda p: -_numpy_loglik(M, R, mag, w, obs, p[0], p[1])  # noqa: E731
        res = minimize(f, [12.0, 0.5], method="L-BFGS-B", bounds=[(-20, 40), (0, None)],
                       options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 2000})
        assert float(mu_hat[g]) == pytest.approx(res.x[0], abs=2e-3)
        assert float(E_hat[g]) == pytest.approx(res.x[1], abs=2e-3)
        clipped += res.x[1] == 0.0
    assert 0 < clipped < 8  # both branches (E > 0 and E clipped at 0) are exercised


def test_grid_mass_equals_numerical_integral(emu, grid):
    """log ∫∫_{E≥0} L dμ dE (+ flat priors): Laplace/closed form vs a fine-mesh integral, with a parallax."""
    obs = np.ones(13, bool)
    mag = _synthetic(emu, [5000.0, 4.5, -0.2], 9.0, 0.05, obs, err=0.05)
    plx, plx_err = 10 ** (1 / 5) + 0.029, 0.06  # S/N 26: linearised branch
    star = _star(mag, np.full(13, 0.05), obs, plx, plx_err)
    cfg = InferenceConfig(sigma_floor=0.0)
    prior = default_prior(emu, kind="flat", theta="flat", E_max=10.0)
    logp, _, _ = grid_log_posterior(star, emu, prior, cfg, grid)
    const = -math.log(15.0) - math.log(10.0) - math.log((9000 - 2500) * (7 - (-2.0)))
    mus = np.linspace(7.0, 11.0, 4001)
    Es = np.linspace(0.0, 0.5, 5001)  # fine: the random emulator's R is large, so σ_E is small
    MU, EE = np.meshgrid(mus, Es, indexing="ij")
    w = 1 / 0.05 ** 2
    for g in (int(np.argmax(np.asarray(logp))), 3, 17):
        M, R = np.asarray(grid.M[g], np.float64), np.asarray(grid.R[g], np.float64)
        y = mag - M  # Σ w (y − μ − E R)² expanded in float64 sums (a 4001 × 5001 × 13 array is too big)
        chi2 = w * (np.sum(y * y) - 2 * MU * y.sum() - 2 * EE * np.sum(y * R) + 13 * MU ** 2
                    + 2 * MU * EE * R.sum() + EE ** 2 * np.sum(R * R))
        ll = (-0.5 * chi2 - 6.5 * np.log(2 * np.pi / w)
              - 0.5 * ((plx + 0.029 - 10 ** ((10 - MU) / 5)) / plx_err) ** 2 - np.log(plx_err) - 0.5 * np.log(2 * np.pi))
        assert ll[[0, -1]].max() < ll.max() - 30 and ll[:, -1].max() < ll.max() - 30  # mesh covers the mass
        mx = ll.max()
        integral = mx + np.log(np.trapezoid(np.trapezoid(np.exp(ll - mx), Es, axis=1), mus))
        assert float(logp[g]) - const == pytest.approx(integral, abs=0.1)  # linearised parallax, float32


def test_find_modes_on_two_bumps(grid):
    """Two well-separated bumps in (Teff, logg): 2 modes at the right places with the right masses."""
    th = np.asarray(grid.theta, np.float64)
    a, b = np.array([4800.0, 2.5]), np.array([5600.0, 4.4])
    sig = np.array([250.0, 0.3])
    la = -0.5 * np.sum(((th[:, :2] - a) / sig) ** 2, 1)
    lb = -0.5 * np.sum(((th[:, :2] - b) / sig) ** 2, 1)
    logp = np.logaddexp(np.log(0.7) + la, np.log(0.3) + lb)
    modes = find_modes(jnp.asarray(logp), jnp.zeros(len(th)), jnp.zeros(len(th)), grid, k_max=4)
    valid = np.asarray(modes.valid)
    assert valid.sum() == 2
    t = np.asarray(modes.theta)[:2, :2]
    assert np.all(np.abs(t[0] - a) < [300, 0.6]) and np.all(np.abs(t[1] - b) < [300, 0.6])
    mass = np.exp(np.asarray(modes.log_mass)[:2])
    # grid sums of each bump, as the expected basin masses
    ea, eb = 0.7 * np.exp(la).sum(), 0.3 * np.exp(lb).sum()
    assert mass[0] / mass[1] == pytest.approx(ea / eb, rel=0.1)
    assert mass.sum() == pytest.approx(1.0, abs=0.02)


def test_star_modes_vmap_equals_loop(emu, grid):
    obs = np.ones(13, bool)
    stars = [_star(_synthetic(emu, t, 11.0, 0.2, obs, seed=i), np.full(13, 0.03), obs)
             for i, t in enumerate(([5000.0, 4.4, -0.2], [4700.0, 2.6, 0.0]))]
    batch = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *stars)
    prior, cfg = default_prior(emu), InferenceConfig()
    vm = jax.jit(jax.vmap(lambda s: star_modes(s, emu, prior, cfg, grid)))(batch)
    for i, s in enumerate(stars):
        one = star_modes(s, emu, prior, cfg, grid)
        np.testing.assert_allclose(np.asarray(vm.theta[i]), np.asarray(one.theta))
        np.testing.assert_allclose(np.asarray(vm.log_mass[i]), np.asarray(one.log_mass), rtol=1e-4, atol=1e-4)


def test_initial_params_one_chain_per_mode_rest_by_mass():
    modes = Modes(theta=jnp.zeros((4, 3)), x=jnp.arange(12.0).reshape(4, 3), mu=jnp.array([10.0, 6.0, 8.0, 9.0]),
                  E=jnp.array([0.3, 0.0, 0.1, 0.1]), log_mass=jnp.log(jnp.array([0.7, 0.25, 0.05, 1e-9])),
                  valid=jnp.array([True, True, True, False]))
    p = initial_params(modes, 8, jax.random.PRNGKey(0), jitter=0.0)
    mode_of = np.asarray(p["mu"]).round().astype(int)
    assert list(mode_of[:3]) == [10, 6, 8]  # one chain in each valid mode first
    rest = list(mode_of[3:])  # 5 chains by mass 0.7 : 0.25 : 0.05 -> mostly mode 0, none in the invalid one
    assert rest.count(10) >= 3 and 9 not in rest
    np.testing.assert_allclose(np.asarray(p["E"])[:3], np.log([0.3, 0.01, 0.1]), rtol=1e-6)
    assert p["x"].shape == (8, 3)


def _two_mode_chains(w1=0.65, seed=0, C=4, S=800):
    """Chains 0..C-2 in mode 1, the last chain in mode 2, of p̃ = w1 N(m1, I/4) + (1-w1) N(m2, I/4)."""
    rng = np.random.default_rng(seed)
    m1, m2 = np.array([0.0, 0.5, 0.0, 11.0, -1.5]), np.array([0.5, -2.5, 0.0, 6.0, -1.0])
    s = 0.5
    z = np.empty((C, S, 5))
    z[:-1] = m1 + s * rng.standard_normal((C - 1, S, 5))
    z[-1] = m2 + s * rng.standard_normal((S, 5))
    def logpdf(m):
        return -0.5 * np.sum(((z - m) / s) ** 2, -1) - 5 * np.log(s) - 2.5 * np.log(2 * np.pi)
    log_prob = np.logaddexp(np.log(w1) + logpdf(m1), np.log(1 - w1) + logpdf(m2)) + 42.0  # unnormalised
    theta_std, theta_med = np.array([900.0, 0.9, 0.37]), np.array([5372.0, 4.07, -0.25])
    th = z[..., :3] * theta_std + theta_med
    samples = {"x": z[..., :3], "mu": z[..., 3], "E": np.exp(z[..., 4]),
               "teff": th[..., 0], "logg": th[..., 1], "feh": th[..., 2]}
    return samples, log_prob, th


def test_combine_chain_modes_two_clusters_mass_weights():
    samples, log_prob, th = _two_mode_chains(w1=0.65)
    res = combine_chain_modes(samples, log_prob)
    assert res.n_modes == 2 and res.flag == FLAG_MULTIMODAL
    assert list(res.mode_of_chain) == [0, 0, 0, 1]
    assert res.chain_weights.sum() == pytest.approx(1.0)
    assert res.chain_weights[:3].sum() == pytest.approx(0.65, abs=0.05)  # mass, not chain counts (0.75)
    np.testing.assert_allclose(res.chain_weights[:3], res.chain_weights[0])


def test_combine_chain_modes_one_cluster_and_unreached_grid_mode():
    samples, log_prob, th = _two_mode_chains()
    one = {k: v[:3] for k, v in samples.items()}
    res = combine_chain_modes(one, log_prob[:3])
    assert res.n_modes == 1 and res.flag == FLAG_OK
    np.testing.assert_allclose(res.chain_weights, 1 / 3)
    # the grid saw a second significant mode (where chain 4 would have gone): flagged unresolved
    grid_modes = Modes(theta=jnp.asarray([th[0].mean(0), th[3].mean(0)]), x=jnp.zeros((2, 3)),
                       mu=jnp.zeros(2), E=jnp.zeros(2), log_mass=jnp.log(jnp.array([0.6, 0.4])),
                       valid=jnp.array([True, True]))
    assert combine_chain_modes(one, log_prob[:3], grid_modes).flag == FLAG_UNRESOLVED
    both = combine_chain_modes(samples, log_prob, grid_modes, weights="grid")
    assert both.flag == FLAG_MULTIMODAL
    assert both.chain_weights[:3].sum() == pytest.approx(0.6, abs=1e-6)
    with pytest.raises(ValueError, match="log_prob"):
        combine_chain_modes(samples, log_prob[:, :10])


def test_combine_chain_modes_leaves_out_broken_chains():
    """Chains with non-finite draws (NaN μ, E) used to crash the clustering; now they get weight 0
    and mode −1, the rest combine as if they were absent, and the star is flagged unresolved."""
    samples, log_prob, _ = _two_mode_chains(w1=0.65, C=5)
    broken = {k: np.array(v, dtype=np.float64) for k, v in samples.items()}
    broken["mu"][1] = np.nan
    broken["E"][1] = np.inf
    res = combine_chain_modes(broken, log_prob)
    ref = combine_chain_modes({k: np.delete(v, 1, axis=0) for k, v in samples.items()}, np.delete(log_prob, 1, axis=0))
    assert res.flag == FLAG_UNRESOLVED and res.n_modes == ref.n_modes == 2
    assert res.mode_of_chain[1] == -1 and res.chain_weights[1] == 0
    np.testing.assert_allclose(np.delete(res.chain_weights, 1), ref.chain_weights)
    assert list(np.delete(res.mode_of_chain, 1)) == list(ref.mode_of_chain)
    for k in ("mu", "E", "x"):
        broken[k][:] = np.nan
    none = combine_chain_modes(broken, log_prob)
    assert none.flag == FLAG_UNRESOLVED and np.all(none.mode_of_chain == -1)
    np.testing.assert_allclose(none.chain_weights, 1 / 5)


@pytest.fixture(scope="module")
def published(anchor_dir):
    return import_keras_model(anchor_dir / "green2020_nn_model.h5",
                              anchor_dir / "green2020_theta_normalization.json",
                              density_path=anchor_dir / "green2020_input_density.h5")


def test_dwarf_giant_degeneracy_gives_two_modes(published):
    """A red giant seen in Gaia + 2MASS only, no parallax, flat distance prior: a dwarf of the same
    colours fits too; the grid finds both (logg > 4 and logg < 3), each with real mass."""
    obs = np.zeros(13, bool)
    obs[[0, 1, 2, 8, 9, 10]] = True
    mag = np.where(obs, np.asarray(published.predict_apparent(jnp.array([4800.0, 2.5, -0.2]), 11.0, 0.1)), 0.0)
    star = _star(mag, np.full(13, 0.03), obs)
    prior = default_prior(published, kind="flat")
    grid = make_theta_grid(published, stride=(1, 1, 2))
    modes = star_modes(star, published, prior, InferenceConfig(), grid)
    valid = np.asarray(modes.valid)
    logg = np.asarray(modes.theta)[valid, 1]
    mass = np.exp(np.asarray(modes.log_mass))[valid]
    assert valid.sum() >= 2
    assert np.any((logg > 4.0) & (mass > 0.01)) and np.any((logg < 3.0) & (mass > 0.01))


@pytest.mark.slow
def test_end_to_end_nuts_on_real_stars(published, anchor_dir):
    """Grid modes -> chain starts -> NUTS (2 chains) -> combine, on 2 real test stars with good parallaxes."""
    import functools

    from numpyro.diagnostics import split_gelman_rubin
    from numpyro.infer import MCMC, NUTS

    from dds_infer.catalog_io import read_green2020_h5
    from dds_infer.inference import direct_log_density, star_data_from_catalog, star_model, unconstrained_init

    cat = read_green2020_h5(anchor_dir / "green2020_test_data_small.h5").subset(np.array([6320, 5435]))
    data = star_data_from_catalog(cat)
    prior, cfg = default_prior(published), InferenceConfig()
    grid = make_theta_grid(published, stride=(1, 1, 2))
    model = functools.partial(star_model, emulator=published, prior=prior, config=cfg)
    mcmc = MCMC(NUTS(model), num_warmup=150, num_samples=150, num_chains=2, chain_method="sequential",
                progress_bar=False, jit_model_args=True)
    for i in range(cat.n_stars):
        star = jax.tree_util.tree_map(lambda a: a[i], data)
        modes = star_modes(star, published, prior, cfg, grid)
        init = unconstrained_init(initial_params(modes, 2, jax.random.PRNGKey(9)), star, published, cfg)
        mcmc.run(jax.random.PRNGKey(i), star, init_params=init, extra_fields=("potential_energy",))
        s = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        logp = direct_log_density(-np.asarray(mcmc.get_extra_fields(group_by_chain=True)["potential_energy"]), s)
        res = combine_chain_modes(s, logp, modes)
        assert res.flag == FLAG_OK
        assert max(float(split_gelman_rubin(s[k])) for k in ("teff", "logg", "mu", "E")) < 1.1
        teff, logg = np.median(s["teff"]), np.median(s["logg"])
        assert abs(teff - cat.theta[i, 0]) < 400 and abs(logg - cat.theta[i, 1]) < 0.4
        assert abs(np.median(s["E"]) - cat.E_prior[i]) < 0.1
