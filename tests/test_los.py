"""Line-of-sight dust model: recovery of a mock cloud, likelihood, outliers, determinism, validation, CLI."""

import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dds_infer import los
from dds_infer.simulate import simulate_sightline_images

TRUE_MU, TRUE_D = 8.0103, 400.0  # 400 pc


@pytest.fixture(scope="module")
def sightline():
    return simulate_sightline_images(150, seed=1)


def _fit(pdf, mu, E, **kw):
    kw = {"num_warmup": 250, "num_samples": 250, "num_chains": 4, "seed": 0, **kw}
    return los.fit_los(pdf, mu, E, 1, **kw)


@pytest.fixture(scope="module")
def fit150(sightline):
    pdf, mu, E, _ = sightline
    return _fit(pdf, mu, E)


def _gauss_image(mu, E, mu0, E0, s_mu=0.2, s_E=0.05):
    img = np.exp(-0.5 * ((mu[:, None] - mu0) / s_mu) ** 2 - 0.5 * ((E[None, :] - E0) / s_E) ** 2)
    return (img / img.sum()).astype(np.float32)


def test_fit_recovers_single_cloud(fit150, sightline):
    s = fit150.summary()
    c = s["clouds"][0]
    assert abs(c["distance_pc"]["median"] - TRUE_D) / TRUE_D < 0.10
    assert c["distance_pc"]["q16"] <= TRUE_D <= c["distance_pc"]["q84"]
    assert c["mu"]["q16"] <= TRUE_MU <= c["mu"]["q84"]
    assert abs(c["delta_E"]["median"] - 0.5) < 0.1
    assert c["r_hat"] < 1.05 and c["ess"] > 100
    assert abs(s["E_fg"]["median"] - 0.05) < 0.03
    assert s["f_out"]["median"] < 0.1  # no outliers were simulated
    # distance is the transform of the sampled modulus; samples are (chain, draw, cloud)
    assert fit150.samples["mu"].shape == (4, 250, 1)
    np.testing.assert_allclose(fit150.samples["distance_pc"], 10 ** (fit150.samples["mu"] / 5 + 1), rtol=1e-6)
    assert s["n_stars"] == 150 and s["num_divergent"] == 0


@pytest.mark.parametrize("step", ["logistic", "pixel"])
def test_likelihood_prefers_true_profile(sightline, step):
    pdf, mu, E, _ = sightline

    def ll(E_fg=0.05, cm=TRUE_MU, dE=0.5, f=0.05):
        return float(los.los_log_likelihood(E_fg, cm, dE, f, pdf, mu, E, step=step))

    best = ll()
    for shifted in (ll(cm=TRUE_MU - 0.5), ll(cm=TRUE_MU + 0.5), ll(dE=0.3), ll(dE=0.7), ll(E_fg=0.15)):
        assert shifted < best - 10
    # per-star values sum to the total
    per_star = los.star_log_likelihood(0.05, TRUE_MU, 0.5, 0.05, pdf, mu, E, step=step)
    assert per_star.shape == (150,) and np.isclose(float(per_star.sum()), best, rtol=1e-5)
    # the stars-last layout fit_los samples with: the same values and gradients, two clouds too
    pdf_t, l_out = np.moveaxis(pdf, 0, -1), los.outlier_likelihood(pdf, E)
    cm2, dE2 = jnp.asarray([TRUE_MU - 0.3, TRUE_MU + 0.2]), jnp.asarray([0.3, 0.2])
    for images, axis in ((pdf, 0), (pdf_t, -1)):
        one = los.star_log_likelihood(0.05, cm2, dE2, 0.05, images, mu, E, step=step, l_out=l_out, star_axis=axis)
        g = jax.grad(lambda c, images=images, axis=axis: los.los_log_likelihood(
            0.05, c, dE2, 0.05, images, mu, E, step=step, l_out=l_out, star_axis=axis))(cm2)
        if axis == 0:
            ref, g_ref = one, g
    np.testing.assert_allclose(np.asarray(one), np.asarray(ref), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-4, atol=1e-3)
    assert np.all(np.abs(np.asarray(g_ref)) > 1.0)  # a gradient worth comparing
    with pytest.raises(ValueError, match="l_out"):
        los.star_log_likelihood(0.05, TRUE_MU, 0.5, 0.05, pdf_t, mu, E, step=step, star_axis=-1)
    # 2 names the same (n_mu, n_E, n) layout as -1; any other axis is refused with both layouts named
    two = los.line_integral(pdf_t, mu, E, 0.05, cm2, dE2, step=step, star_axis=2)
    np.testing.assert_array_equal(np.asarray(two), np.asarray(los.line_integral(pdf_t, mu, E, 0.05, cm2, dE2,
                                                                                step=step, star_axis=-1)))
    with pytest.raises(ValueError, match=r"star_axis must be 0 .* or -1 / 2 .*got 1"):
        los.line_integral(pdf_t, mu, E, 0.05, cm2, dE2, step=step, star_axis=1)


def test_logistic_step_gives_gradient_in_cloud_distance(sightline):
    pdf, mu, E, _ = sightline
    mid = 0.5 * (mu[35] + mu[36])  # 8.5: halfway between two pixel centres, 0.5 mag behind the cloud

    def grad(**kw):
        return float(jax.grad(lambda m: los.los_log_likelihood(0.05, m, 0.5, 0.05, pdf, mu, E, **kw))(mid))

    assert abs(grad(width=1e-4)) < 1e-3  # sharp step: flat between pixel centres, nothing for NUTS to follow
    assert grad() < -1.0  # logistic step: the gradient points back towards the cloud
    assert grad(step="pixel") < -1.0


def test_outlier_stars_are_finite_and_barely_move_fit(sightline, fit150):
    pdf, mu, E, _ = sightline
    bad = pdf.copy()
    for k in range(3):  # unreddened stars behind the cloud (e.g. wrong distances): they pull the cloud out
        bad[k] = _gauss_image(mu, E, 9.0 + 0.1 * k, 0.05)
    bad[3] = _gauss_image(mu, E, 7.0, 3.5)  # E = 3.5: far off any plausible profile
    for f_out in (0.0, 0.1):
        assert np.all(np.isfinite(np.asarray(los.star_log_likelihood(0.05, TRUE_MU, 0.5, f_out, bad, mu, E))))
    # with f_out > 0 the far star's likelihood is the outlier term: f_out / n_E for a normalised image
    l3 = float(los.star_log_likelihood(0.05, TRUE_MU, 0.5, 0.1, bad, mu, E)[3])
    assert np.isclose(l3, np.log(0.1 / E.size), atol=1e-3)
    # these stars matter: without the outlier term the best cloud distance moves out by > 0.15 mag
    grid = jnp.arange(7.5, 9.0, 0.01)
    def best_mu(f_out, images):
        ll = jax.vmap(lambda m: los.los_log_likelihood(0.05, m, 0.5, f_out, images, mu, E))(grid)
        return float(grid[jnp.argmax(ll)])

    assert best_mu(0.0, bad) - TRUE_MU > 0.15
    assert abs(best_mu(0.05, bad) - best_mu(0.05, pdf)) < 0.07
    # ... and the fit with the outlier model barely moves
    fit_bad = _fit(bad, mu, E)
    a, b = fit150.summary()["clouds"][0], fit_bad.summary()["clouds"][0]
    sd = 0.5 * (a["mu"]["q84"] - a["mu"]["q16"])
    assert abs(a["mu"]["median"] - b["mu"]["median"]) < 0.3 * sd
    assert abs(a["delta_E"]["median"] - b["delta_E"]["median"]) < 0.01
    assert b["r_hat"] < 1.05 and fit_bad.summary()["f_out"]["median"] > fit150.summary()["f_out"]["median"]


def test_same_seed_same_samples():
    pdf, mu, E, _ = simulate_sightline_images(40, seed=3)
    kw = {"num_warmup": 50, "num_samples": 50, "num_chains": 2}
    a, b = _fit(pdf, mu, E, seed=5, **kw), _fit(pdf, mu, E, seed=5, **kw)
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k])
    c = _fit(pdf, mu, E, seed=6, **kw)
    assert not np.array_equal(a.samples["mu"], c.samples["mu"])


def test_chains_spread_over_devices_sample_the_same_posterior():
    """With 2 devices (conftest) the chains run one lax.map per device (test_same_seed_same_samples:
    deterministic), on 1 device all in one: they draw from the same posterior (their rounding may
    differ)."""
    pdf, mu, E, _ = simulate_sightline_images(60, seed=4)
    kw = {"num_warmup": 120, "num_samples": 120, "num_chains": 4, "seed": 2}
    two, one = (los.fit_los(pdf, mu, E, 1, devices=d, **kw) for d in (2, 1))
    for k in ("mu", "delta_E", "E_fg"):
        a, b = two.samples[k].ravel(), one.samples[k].ravel()
        assert abs(np.median(a) - np.median(b)) < 0.3 * np.std(a), k
    with pytest.raises(ValueError, match="devices"):
        los.fit_los(pdf, mu, E, 1, devices=len(jax.local_devices()) + 1, **kw)


def test_input_validation(sightline):
    pdf, mu, E, _ = sightline
    small = pdf[:3]
    with pytest.raises(ValueError, match="shape"):
        los.fit_los(small, mu[:-1], E)
    with pytest.raises(ValueError, match="shape"):
        los.fit_los(small[:, :, :10], mu, E)
    nan = small.copy()
    nan[1, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        los.fit_los(nan, mu, E)
    neg = small.copy()
    neg[2, 0, 0] = -1e-3
    with pytest.raises(ValueError, match="negative"):
        los.fit_los(neg, mu, E)
    zero = small.copy()
    zero[1] = 0.0
    with pytest.raises(ValueError, match=r"star\(s\) \[1\]"):
        los.fit_los(zero, mu, E)
    uneven = mu.copy()
    uneven[5] += 0.05
    with pytest.raises(ValueError, match="mu_centers"):
        los.fit_los(small, uneven, E)
    with pytest.raises(ValueError, match="n_clouds"):
        los.fit_los(small, mu, E, 0)
    with pytest.raises(ValueError, match="step"):
        los.line_integral(small, mu, E, 0.05, 8.0, 0.5, step="box")


def test_simulated_images():
    pdf, mu, E, truth = simulate_sightline_images(30, cloud_mu=[7.0, 9.0], cloud_dE=[0.2, 0.3], seed=2)
    assert pdf.shape == (30, 120, 500) and mu.size == 120 and E.size == 500
    assert np.allclose(pdf.sum(axis=(1, 2)), 1.0, atol=1e-5)
    expect = 0.05 + 0.2 * (truth["mu"] > 7.0) + 0.3 * (truth["mu"] > 9.0)
    np.testing.assert_allclose(truth["E"], expect)
    # the image peaks at the observed (noisy) point
    i = np.argmax(pdf.reshape(30, -1), axis=1)
    assert np.all(np.abs(mu[i // 500] - truth["mu_obs"]) <= 0.0625 + 1e-9)
    # correlated images tilt: positive mu-E covariance for rho > 0
    img = simulate_sightline_images(1, rho=0.8, mu_star_range=(10.0, 10.0))[0][0]
    m, e = img.sum(1) @ mu, img.sum(0) @ E
    assert np.sum(img * (mu[:, None] - m) * (E[None, :] - e)) > 0
    with pytest.raises(ValueError):
        simulate_sightline_images(5, rho=1.0)


@pytest.fixture
def fake_reader(monkeypatch):
    """Stand-in for dds_infer.dustmap_io.read_pixel: 60 mock stars, star 0 flagged with an off image."""
    pdf, mu, E, _ = simulate_sightline_images(60, seed=4)
    pdf[0] = _gauss_image(mu, E, 7.0, 3.5)
    flag = np.zeros(60, dtype=int)
    flag[0] = 1
    mod = types.ModuleType("dds_infer.dustmap_io")
    mod.read_pixel = lambda path, pixel: {"pdf": pdf, "mu_centers": mu, "E_centers": E, "star_id": np.arange(60),
                                          "l": np.zeros(60), "b": np.zeros(60), "flag": flag, "nside": 64,
                                          "pixel": pixel}
    monkeypatch.setitem(sys.modules, "dds_infer.dustmap_io", mod)


def test_cli_json(fake_reader, capsys):
    from dds_infer.cli import main

    rc = main(["los", "--in", "mock.h5", "--pixel", "17", "--clouds", "1", "--num-warmup", "80",
               "--num-samples", "80", "--num-chains", "2", "--exclude-flagged", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pixel"] == 17 and out["n_stars"] == 59 and out["n_clouds"] == 1
    c = out["clouds"][0]
    assert set(c) == {"distance_pc", "mu", "delta_E", "r_hat", "ess"}
    assert c["distance_pc"]["q16"] <= c["distance_pc"]["median"] <= c["distance_pc"]["q84"]
    assert 300 < c["distance_pc"]["median"] < 500
    for key in ("E_fg", "f_out", "seconds"):
        assert key in out
    assert main(["los", "--in", "mock.h5", "--pixel", "1", "--clouds", "0"]) == 2
    assert "--clouds" in capsys.readouterr().err


@pytest.mark.slow
def test_two_clouds_recovered():
    pdf, mu, E, _ = simulate_sightline_images(300, cloud_mu=[7.3856, 10.0], cloud_dE=[0.3, 0.5], seed=0)
    fit = los.fit_los(pdf, mu, E, 2, num_warmup=300, num_samples=300)
    near, far = fit.summary()["clouds"]
    assert abs(near["distance_pc"]["median"] - 300) / 300 < 0.05
    assert abs(far["distance_pc"]["median"] - 1000) / 1000 < 0.05
    assert abs(near["delta_E"]["median"] - 0.3) < 0.05 and abs(far["delta_E"]["median"] - 0.5) < 0.05
    assert np.all(np.diff(fit.samples["mu"], axis=-1) > 0)  # ordered clouds
    assert max(near["r_hat"], far["r_hat"]) < 1.05
