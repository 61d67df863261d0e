"""The per-star NumPyro model (Eq. 19) against an independent numpy computation."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import initialize_model, log_density, potential_energy

from dds_infer import StarCatalog, init_emulator
from dds_infer.domain import density_from_samples
from dds_infer.inference import (InferenceConfig, StarData, log_likelihood, photometric_variance,
                                 star_data_counts, star_data_from_catalog, star_model)
from dds_infer.priors import default_prior


@pytest.fixture(scope="module")
def emu():
    rng = np.random.default_rng(0)
    th = np.c_[rng.normal(5200, 600, 5000), rng.normal(4.0, 0.8, 5000), rng.normal(-0.2, 0.3, 5000)]
    dom = density_from_samples(th, bins=(20, 20, 10))
    return init_emulator(jax.random.PRNGKey(3)).with_domain(dom)


def _numpy_absolute_mags(emu, theta):
    """M(θ) in float64 numpy from the flax parameters: 2 sigmoid layers, B M -> M."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float64), emu.params)
    x = (np.asarray(theta) - np.asarray(emu.theta_med, dtype=np.float64)) / np.asarray(emu.theta_std, np.float64)
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    h = sig(x @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"])
    h = sig(h @ p["hidden_2"]["kernel"] + p["hidden_2"]["bias"])
    bm = h @ p["BM"]["kernel"] + p["BM"]["bias"]
    M = bm.copy()
    M[1:] += bm[0]
    R = np.exp(x @ p["R"]["kernel"] + p["R"]["bias"])
    return M, R


def _star(mag, err, observed, plx=0.0, plx_err=1e6):
    return StarData(mag=jnp.asarray(mag, jnp.float32), mag_err=jnp.asarray(err, jnp.float32),
                    observed=jnp.asarray(observed), parallax=jnp.array(plx, jnp.float32),
                    parallax_err=jnp.array(plx_err, jnp.float32), l=jnp.array(0.0), b=jnp.array(0.0),
                    has_position=jnp.array(False))


def test_log_density_matches_numpy_eq19(emu):
    """Eq. 19 written out in numpy: observed bands only, floor, offsets, DR2 zero-point, flat priors."""
    rng = np.random.default_rng(4)
    theta = np.array([5100.0, 4.3, -0.3])
    mu, E = 10.7, 0.35
    mag = rng.normal(12.0, 1.0, 13)
    err = rng.uniform(0.01, 0.1, 13)
    obs = rng.random(13) > 0.3
    obs[0] = True
    offsets = tuple(rng.normal(0, 0.02, 13))
    plx, plx_err = 0.75, 0.04
    cfg = InferenceConfig(sigma_floor=0.03, zp="dr2", parallax_inflation=1.3, band_offsets=offsets,
                          parameterization="direct")
    prior = default_prior(emu, kind="flat", theta="flat", reddening="halfnormal", E_scale=0.8)
    star = _star(np.where(obs, mag, 0.0), np.where(obs, err, 1.0), obs, plx, plx_err)
    params = {"x": emu.normalize(jnp.asarray(theta)), "mu": jnp.array(mu), "E": jnp.array(E)}
    got, _ = log_density(star_model, (star, emu, prior, cfg), {}, params)

    M, R = _numpy_absolute_mags(emu, theta)
    pred = M + mu + E * R + np.array(offsets)
    s2 = err ** 2 + 0.03 ** 2
    phot = np.sum((-0.5 * (mag - pred) ** 2 / s2 - 0.5 * np.log(2 * np.pi * s2))[obs])
    s = 1.3 * plx_err
    plx_term = -0.5 * ((plx + 0.029 - 10 ** ((10 - mu) / 5)) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    lo, hi = np.asarray(emu.domain.bounds)[:2].T
    log_theta = -np.log((hi[0] - lo[0]) * (hi[1] - lo[1]))
    log_mu = -np.log(19.0 - 4.0)
    log_E = -0.5 * (E / 0.8) ** 2 - np.log(0.8) + 0.5 * np.log(2 / np.pi)
    jac = np.sum(np.log(np.asarray(emu.theta_std, dtype=np.float64)))
    expected = phot + plx_term + log_theta + log_mu + log_E + jac
    assert float(got) == pytest.approx(expected, rel=1e-4, abs=2e-3)  # float32 model


def test_parallax_zero_point_sign(emu):
    """DR2: ϖ_zp = −0.029 mas, so the model matches ϖ̂ + 0.029 (the corrected parallax)."""
    star = _star(np.zeros(13), np.ones(13), np.zeros(13, bool), plx=0.5, plx_err=0.01)
    x = jnp.zeros(3)
    mus = jnp.linspace(10.5, 12.5, 20001)
    for zp, corrected in (("dr2", 0.529), ("dr3", 0.517), ("none", 0.5), (-0.05, 0.55), (0.1, 0.4)):
        cfg = InferenceConfig(zp=zp)
        plx = jax.vmap(lambda m: log_likelihood(x, m, 0.1, star, emu, cfg)[1])(mus)
        best = float(mus[jnp.argmax(plx)])
        assert 10 ** ((10 - best) / 5) == pytest.approx(corrected, abs=2e-4), zp
    assert InferenceConfig(zp="dr2").zero_point_mas == -0.029


def test_unobserved_bands_and_missing_parallax_contribute_nothing(emu):
    rng = np.random.default_rng(5)
    obs = np.array([True] * 6 + [False] * 7)
    base = _star(np.where(obs, rng.normal(12, 1, 13), 0.0), np.where(obs, 0.05, 1.0), obs)
    junk = base.replace(mag=jnp.where(base.observed, base.mag, 55.0), mag_err=jnp.where(base.observed, base.mag_err, 0.001),
                        parallax=jnp.array(-3.0))
    cfg = InferenceConfig()
    x, mu, E = jnp.array([0.1, -0.2, 0.3]), 9.0, 0.2
    f = lambda s: sum(log_likelihood(x, mu, E, s, emu, cfg))  # noqa: E731
    assert float(f(base)) == pytest.approx(float(f(junk)), abs=1e-5)
    assert float(log_likelihood(x, mu, E, junk, emu, cfg)[1]) == 0.0
    # an unobserved band with an absurd value does not touch the gradient either
    g1 = jax.grad(lambda xx: log_likelihood(xx, mu, E, base, emu, cfg)[0])(x)
    g2 = jax.grad(lambda xx: log_likelihood(xx, mu, E, junk, emu, cfg)[0])(x)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-5)
    none = _star(np.zeros(13), np.ones(13), np.zeros(13, bool))
    assert float(f(none)) == 0.0


@pytest.mark.parametrize("param,sites", [("direct", ("mu", "E")), ("whitened", ("z_mu", "z_E"))])
def test_potential_energy_gradient_finite_everywhere_nuts_goes(emu, param, sites):
    """Unconstrained space (x, μ, log E) or (x, z_μ, z_E): finite value and gradient far outside
    the domain too."""
    star = _star(np.full(13, 14.0), np.full(13, 0.02), np.ones(13, bool), 0.3, 0.05)
    prior = default_prior(emu, reddening="halfnormal")
    cfg = InferenceConfig(parameterization=param)
    args = (star, emu, prior, cfg)
    vg = jax.jit(jax.value_and_grad(lambda q: potential_energy(star_model, args, {}, q)))
    for x, mu, u in ((np.zeros(3), 10.0, -1.0), (np.array([8.0, -8.0, 6.0]), 35.0, 3.0),
                     (np.array([-6.0, 9.0, -7.0]), -6.0, -25.0), (np.array([3.0, 0.0, 0.0]), 8.0, 1.5),
                     (np.array([0.5, 0.5, 0.5]), 40.0, -60.0)):
        p = {"x": jnp.asarray(x, jnp.float32), sites[0]: jnp.array(mu), sites[1]: jnp.array(u)}
        v, g = vg(p)
        assert np.isfinite(float(v))
        assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(g))
    info = initialize_model(jax.random.PRNGKey(0), star_model, model_args=args)
    assert set(info.param_info.z) == {"x", *sites}


def _real_ish_star(emu, rng, theta, mu, E, n_obs=13):
    M, R = _numpy_absolute_mags(emu, theta)
    err = rng.uniform(0.02, 0.05, 13)
    obs = np.zeros(13, bool)
    obs[rng.permutation(13)[:n_obs]] = True
    mag = M + mu + E * R + rng.normal(0, err)
    return _star(np.where(obs, mag, 0.0), np.where(obs, err, 1.0), obs, 10 ** ((10 - mu) / 5) + 0.01, 0.05)


@pytest.mark.parametrize("n_obs", [13, 4, 1])
def test_whitened_parameterization_is_an_exact_change_of_variables(emu, n_obs):
    """−PE_whitened(x, z) − reparam_log_jac = −PE_direct(x, μ, log E) at the mapped point (the
    same posterior), the recorded log-Jacobian equals autodiff's, and the inverse map round-trips;
    with 1 observed band too (the ridge keeps the 2×2 system invertible)."""
    from numpyro.handlers import substitute, trace

    from dds_infer.inference import (conditional_mu_E, direct_log_density, mu_E_to_whitened,
                                     unconstrained_init, whitened_to_mu_E)

    rng = np.random.default_rng(10 + n_obs)
    star = _real_ish_star(emu, rng, np.array([5300.0, 4.2, -0.2]), 9.5, 0.3, n_obs)
    prior = default_prior(emu, reddening="halfnormal", E_scale=0.5)
    cw, cd = InferenceConfig(), InferenceConfig(parameterization="direct")
    for _ in range(6):
        x = jnp.asarray(rng.normal(0, 0.5, 3), jnp.float32)
        z = {"x": x, "z_mu": jnp.array(rng.normal(0, 2.0)), "z_E": jnp.array(rng.normal(0, 3.0))}
        tr = trace(substitute(lambda: star_model(star, emu, prior, cw), z)).get_trace()
        assert {"mu", "E", "reparam_log_jac"} <= set(tr)
        mu, E = tr["mu"]["value"], tr["E"]["value"]
        assert float(E) > 0
        pe_w = potential_energy(star_model, (star, emu, prior, cw), {}, z)
        pe_d = potential_energy(star_model, (star, emu, prior, cd), {}, {"x": x, "mu": mu, "E": jnp.log(E)})
        lp_direct = direct_log_density(-np.asarray(pe_w), {"reparam_log_jac": np.asarray(tr["reparam_log_jac"]["value"])})
        assert float(lp_direct) == pytest.approx(-float(pe_d), abs=2e-3, rel=1e-5)

        M, R = emu.mags_and_reddening_x(x)
        ne = conditional_mu_E(M, R, star, emu, cw)
        jac = jax.jacfwd(lambda v: jnp.stack(whitened_to_mu_E(v[0], v[1], ne)[:2]))(jnp.stack([z["z_mu"], z["z_E"]]))
        _, _, log_jac = whitened_to_mu_E(z["z_mu"], z["z_E"], ne)
        assert float(log_jac) == pytest.approx(float(jnp.log(jnp.abs(jnp.linalg.det(jac)))), abs=1e-3)
        back = mu_E_to_whitened(mu, E, ne)
        np.testing.assert_allclose([float(back[0]), float(back[1])], [float(z["z_mu"]), float(z["z_E"])],
                                   atol=2e-3 * (1 + abs(float(z["z_E"]))))
        init = unconstrained_init({"x": x[None], "mu": mu[None], "E": jnp.log(E)[None]}, star, emu, cw)
        assert float(init["z_E"][0]) == pytest.approx(float(back[1]), abs=2e-3)
        assert unconstrained_init({"x": x, "mu": mu, "E": E}, star, emu, cd)["mu"] is mu


@pytest.mark.parametrize("n_obs", [1, 2, 13])
def test_mu_E_normal_equations_match_float64_without_cancellation(n_obs):
    """The 2×2 system of Eq. 2 in float32 against a float64 solve, at the weights of a real
    star with only Gaia G (one of the 10,000 test stars): there the determinant is the ridge's
    ~0.1 against products of ~10⁶, and forming it as a00 a11 − a01² gave a negative value."""
    from dds_infer.inference import _MU0, _RIDGE_E, _RIDGE_MU, mu_E_normal_equations, whitened_to_mu_E

    rng = np.random.default_rng(n_obs)
    for _ in range(20):
        w = 1.0 / (rng.uniform(0.005, 0.03, n_obs) ** 2 + 0.02 ** 2)
        R = np.sort(rng.uniform(0.05, 3.8, n_obs))[::-1]
        y = rng.uniform(6.0, 17.0) + rng.uniform(0.0, 1.5) * R + rng.normal(0, 0.02, n_obs)
        ne = mu_E_normal_equations(*(jnp.asarray(v, jnp.float32) for v in (w, y, R)))
        A = np.array([[w.sum() + _RIDGE_MU, R @ w], [R @ w, (R * R) @ w + _RIDGE_E]])
        b = np.array([y @ w + _RIDGE_MU * _MU0, (y * R) @ w])
        mu, E = np.linalg.solve(A, b)
        assert float(ne["det"]) > 0
        assert float(ne["det"]) == pytest.approx(np.linalg.det(A), rel=1e-4)
        scale = np.sqrt(np.diag(np.linalg.inv(A)))  # compare in units of the solution's own σ
        assert abs(float(ne["mu"]) - mu) < 1e-3 * scale[0] + 1e-4 and abs(float(ne["E"]) - E) < 1e-3 * scale[1] + 1e-4
        out = whitened_to_mu_E(jnp.float32(0.3), jnp.float32(-0.5), ne)
        assert all(np.isfinite(float(v)) for v in out)


def test_whitened_coordinates_are_near_standard_on_the_likelihood(emu):
    """The point of the whitening: on a noise-free star the photometric likelihood's (μ, E) at
    fixed true θ map to z ≈ 0, and one unit of z moves μ and E by about their conditional σ."""
    from dds_infer.inference import conditional_mu_E, mu_E_to_whitened, whitened_to_mu_E

    theta = np.array([5600.0, 4.4, 0.0])
    M, R = _numpy_absolute_mags(emu, theta)
    star = _star(M + 10.0 + 0.4 * R, np.full(13, 0.02), np.ones(13, bool))
    x = emu.normalize(jnp.asarray(theta))
    Mj, Rj = emu.mags_and_reddening_x(x)
    ne = conditional_mu_E(Mj, Rj, star, emu, InferenceConfig(sigma_floor=0.0))
    z_mu, z_E = mu_E_to_whitened(10.0, 0.4, ne)
    assert abs(float(z_mu)) < 0.05 and abs(float(z_E)) < 0.05
    mu1, E1, _ = whitened_to_mu_E(0.0, 1.0, ne)
    s_E = float(jnp.sqrt(ne["a00"] / ne["det"]))
    assert float(E1) - 0.4 == pytest.approx(s_E, rel=0.05)


def test_star_data_from_catalog_fills_missing_values():
    mag = np.full((3, 13), 15.0)
    err = np.full((3, 13), 0.02)
    mag[0, 3:] = np.nan
    mag[2] = np.nan
    with pytest.warns(UserWarning, match=r"no observed band \(kept\): 1 of 3 rows: rows \[2\]"):
        cat = StarCatalog.from_arrays(mag, err, [1.0, np.nan, 0.5], [0.1, np.nan, 0.05],
                                      l=[10.0, np.nan, 200.0], b=[5.0, np.nan, -30.0],
                                      E_prior=[0.1, np.nan, 0.2], E_prior_err=[0.01, np.nan, 0.02])
    with pytest.warns(UserWarning, match="no observed band"):
        d = star_data_from_catalog(cat)
    arrays = [np.asarray(a) for a in jax.tree_util.tree_leaves(d)]
    assert all(np.all(np.isfinite(a)) for a in arrays)
    np.testing.assert_array_equal(np.asarray(d.observed).sum(axis=1), [3, 13, 0])
    np.testing.assert_array_equal(np.asarray(d.has_position), [True, False, True])
    np.testing.assert_array_equal(np.asarray(d.has_parallax), [True, False, True])
    assert float(d.mag[0, 5]) == 0.0 and float(d.mag_err[0, 5]) == 1.0
    counts = star_data_counts(cat)
    assert counts["n_no_photometry"] == 1 and counts["n_no_parallax"] == 1
    assert counts["n_no_position"] == 1 and counts["n_no_E_ref"] == 1
    assert counts["n_bands_observed"]["gaia_g"] == 2 and counts["n_bands_observed"]["ps1_g"] == 1
    assert d.positions == "mixed"
    with pytest.warns(UserWarning, match="no observed band"):
        assert star_data_from_catalog(cat.subset([0, 2])).positions == "all"
    assert star_data_from_catalog(cat.subset([1])).positions == "none"
    assert star_data_from_catalog(StarCatalog.from_arrays(mag[:2], err[:2], [1.0, 1.0], [0.1, 0.1])).positions == "none"
    with pytest.raises(ValueError, match="positions"):
        d.replace(positions="some")


def test_declared_error_floor_is_not_added_twice(emu):
    """A catalogue whose errors already include a floor (meta["mag_err_floor"]) gets only the excess
    of the configured floor: σ² = σ_cat² + max(σ_floor² − floor_cat², 0), per band."""
    rng = np.random.default_rng(8)
    mag = rng.normal(14.0, 0.5, (2, 13))
    err = rng.uniform(0.02, 0.08, (2, 13))
    declared = np.r_[np.full(8, 0.02), np.full(3, 0.03), np.full(2, 0.01)]
    plain = star_data_from_catalog(StarCatalog.from_arrays(mag, err, [1.0, 0.5], [0.1, 0.05]))
    floored = star_data_from_catalog(StarCatalog.from_arrays(mag, err, [1.0, 0.5], [0.1, 0.05],
                                                             meta={"mag_err_floor": declared}))
    assert plain.mag_floor is None and floored.mag_floor.shape == (2, 13)
    cfg = InferenceConfig(sigma_floor=0.02)
    np.testing.assert_allclose(np.asarray(photometric_variance(plain, cfg)), err**2 + 0.02**2, rtol=1e-5)
    want = err**2 + np.maximum(0.02**2 - declared**2, 0.0)  # 0.01-floored bands get 0.02² − 0.01² more
    np.testing.assert_allclose(np.asarray(photometric_variance(floored, cfg)), want, rtol=1e-5)
    # the likelihood uses it: a catalogue declaring a 0.02 floor under sigma_floor=0.02 equals an
    # undeclared one under sigma_floor=0 in every band where the declared floor >= 0.02
    star = jax.tree_util.tree_map(lambda a: a[0], floored)
    star0 = jax.tree_util.tree_map(lambda a: a[0], plain)
    obs = np.r_[np.ones(11, bool), np.zeros(2, bool)]
    star, star0 = star.replace(observed=jnp.asarray(obs)), star0.replace(observed=jnp.asarray(obs))
    x = jnp.array([0.1, -0.2, 0.3])
    a = log_likelihood(x, 10.0, 0.2, star, emu, cfg)
    b = log_likelihood(x, 10.0, 0.2, star0, emu, InferenceConfig(sigma_floor=0.0))
    c = log_likelihood(x, 10.0, 0.2, star0, emu, cfg)
    np.testing.assert_allclose(float(a[0]), float(b[0]), rtol=1e-6)
    assert float(c[0]) != pytest.approx(float(a[0]), rel=1e-3)
    with pytest.raises(ValueError, match="mag_err_floor"):
        star_data_from_catalog(StarCatalog.from_arrays(mag, err, [1.0, 0.5], [0.1, 0.05],
                                                       meta={"mag_err_floor": -0.01}))


def test_config_rejects_bad_values(emu):
    with pytest.raises(ValueError, match="zp"):
        InferenceConfig(zp="dr4")
    with pytest.raises(ValueError, match="parallax_inflation"):
        InferenceConfig(parallax_inflation=0.0)
    with pytest.raises(ValueError, match="band_offsets"):
        InferenceConfig(band_offsets=(0.1, 0.2)).offsets(13)
    assert hash(InferenceConfig(band_offsets=[0.0] * 13)) == hash(InferenceConfig(band_offsets=(0.0,) * 13))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isclose(InferenceConfig(zp=0.01).zero_point_mas, 0.01)
