"""Likelihood pieces (Eqs. 4-6, 8-9, 11-14, 18) against independent numpy references,
and the paper's §4 test-set figures on real stars."""

import jax.numpy as jnp
import numpy as np
import pytest

from dds_infer.catalog_io import read_green2020_h5
from dds_infer.evaluate import evaluate_catalog, prepare_photometry, star_terms
from dds_infer.keras_import import import_keras_model
from dds_infer.likelihood import (
    apply_colour_transform,
    chi2_colours,
    colour_covariance,
    colour_transform_matrix,
    distance_modulus_from_parallax,
    distance_modulus_linearized,
    magnitude_covariance,
    modelled_entries,
    whitening_matrix,
    z_scores,
)

from reference import _reference_forward, reference_jacobian


@pytest.fixture(scope="module")
def published(anchor_dir):
    return import_keras_model(anchor_dir / "green2020_nn_model.h5",
                              anchor_dir / "green2020_theta_normalization.json")


@pytest.fixture(scope="module")
def real(anchor_dir):
    return read_green2020_h5(anchor_dir / "green2020_test_data_small.h5")


def test_colour_transform_matrix():
    B = np.asarray(colour_transform_matrix(4))
    m = np.array([10.0, 11.0, 9.5, 12.0])
    np.testing.assert_allclose(B @ m, [10.0, 1.0, -0.5, 2.0])
    np.testing.assert_allclose(np.asarray(apply_colour_transform(jnp.asarray(m))), B @ m)
    # B 1 = e_0: a common offset (distance modulus) only moves c_0
    np.testing.assert_allclose(B @ np.ones(4), [1, 0, 0, 0])


def test_parallax_to_distance_modulus():
    mu, sig, good = distance_modulus_from_parallax(
        jnp.array([1.0, 10.0, 0.5, -0.2, np.nan]), jnp.array([0.1, 0.1, 0.2, 0.1, 0.1]))
    mu, sig, good = map(np.asarray, (mu, sig, good))
    assert good.tolist() == [True, True, False, False, False]
    np.testing.assert_allclose(mu[:2], [10.0, 5.0], atol=1e-6)
    np.testing.assert_allclose(sig[:2], 5 / np.log(10) * np.array([0.1, 0.01]), rtol=1e-6)
    assert np.all(mu[2:] == 0) and np.all(sig[2:] == 0)
    # zero-point is subtracted before the S/N cut
    mu_zp, _, good_zp = distance_modulus_from_parallax(jnp.array([1.029]), jnp.array([0.1]), zero_point=0.029)
    assert bool(good_zp[0]) and abs(float(mu_zp[0]) - 10.0) < 1e-5


def test_linearized_parallax_is_unbiased_at_low_snr_where_the_inverted_one_is_not():
    """ϖ̂ ~ N(ϖ, σ_ϖ) at S/N 3 with a reference μ scattering 0.3 mag about the truth: μ̃ is unbiased;
    dropping its second-order term biases it by -(ln 10/10)·0.09; the inverted μ̂ after the S/N cut is biased."""
    rng = np.random.default_rng(0)
    n, mu_true = 400_000, 11.0
    plx_true = 10 ** ((10 - mu_true) / 5)
    err = np.full(n, plx_true / 3)
    plx = plx_true + err * rng.normal(size=n)
    mu_ref = mu_true + 0.3 * rng.normal(size=n)
    mu, sig, ok = map(np.asarray, distance_modulus_linearized(plx, err, mu_ref, np.full(n, 0.09)))
    assert ok.all() and np.all(np.isfinite(mu)) and (plx < 0).any()  # defined for ϖ̂ ≤ 0 too
    w = 1 / sig**2
    assert abs(np.mean(mu) - mu_true) < 0.006 and abs(np.sum(w * mu) / np.sum(w) - mu_true) < 0.006
    mu0 = np.asarray(distance_modulus_linearized(plx, err, mu_ref, np.zeros(n))[0])
    assert np.mean(mu0) - mu_true == pytest.approx(-np.log(10) / 10 * 0.09, abs=0.006)
    mu_inv, _, good = map(np.asarray, distance_modulus_from_parallax(plx, err))
    assert np.mean(mu_inv[good]) - mu_true < -0.05
    # at μ_ref = μ: σ_μ̃ is the first-order σ_μ, and μ̃ = μ for ϖ̂ = ϖ; zero-point subtracted; bad input flagged
    mu1, sig1, ok1 = map(np.asarray, distance_modulus_linearized(
        np.array([plx_true + 0.029, 1.0, np.nan, 1.0]), np.array([0.1, 0.1, 0.1, -1.0]),
        np.array([mu_true, np.nan, 10.0, 10.0]), np.zeros(4), zero_point=0.029))
    assert ok1.tolist() == [True, False, False, False] and np.all(mu1[1:] == 0) and np.all(sig1[1:] == 0)
    assert mu1[0] == pytest.approx(mu_true, abs=1e-5)
    assert sig1[0] == pytest.approx(5 / np.log(10) * 0.1 / plx_true, rel=1e-5)


def test_with_linearized_parallax_models_c0_for_every_star_with_a_parallax(published, real):
    """Exact photometry at true θ, μ, E and a noise-free parallax: ĉ_0 = M_G + E R_G whatever the S/N;
    stars without the reference band or a parallax keep c_0 unmodelled; colours untouched."""
    from dds_infer.evaluate import with_linearized_parallax

    sub = real.subset(np.arange(200))
    ok = np.all(np.isfinite(sub.theta), axis=1) & np.all(np.isfinite(sub.theta_cov), axis=(1, 2))
    th = jnp.asarray(sub.theta[ok], jnp.float32)
    n = th.shape[0]
    E = jnp.full(n, 0.1, jnp.float32)
    mu_true = np.linspace(8.0, 14.0, n)
    bm, R = published.network_outputs(th)
    mag = np.asarray(published.predict(th, E)) + mu_true[:, None]
    plx = 10 ** ((10 - mu_true) / 5)
    err = np.where(np.arange(n) % 2 == 0, 0.02, 2.0) * plx  # S/N 50 and 0.5
    mag_ref = mag[:, 0].copy()
    mag_ref[:3] = np.nan
    plx[3:6] = np.nan
    base = prepare_photometry(sub.subset(np.flatnonzero(ok)))
    out = with_linearized_parallax(published, th, jnp.zeros((n, 3, 3)), E, jnp.zeros(n), base,
                                   mag_ref, plx, err)
    c0 = np.asarray(out.mask[:, 0])
    assert not c0[:6].any() and c0[6:].all()
    want = np.asarray(bm[:, 0] + E * R[:, 0])
    np.testing.assert_allclose(np.asarray(out.c_obs[6:, 0]), want[6:], atol=2e-3)
    np.testing.assert_allclose(np.asarray(out.mu[6:]), mu_true[6:], atol=2e-3)
    np.testing.assert_allclose(np.asarray(out.sigma_mu[6:]), 5 / np.log(10) * err[6:] / plx[6:], rtol=1e-3)
    np.testing.assert_array_equal(np.asarray(out.c_obs[:, 1:]), np.asarray(base.c_obs[:, 1:]))
    np.testing.assert_array_equal(np.asarray(out.mask[:, 1:]), np.asarray(base.mask[:, 1:]))


def test_modelled_entries_rules():
    obs = jnp.array([[True, True, False, True], [False, True, True, True], [True, True, True, True]])
    mask = np.asarray(modelled_entries(obs, jnp.array([True, True, False])))
    assert mask.tolist() == [
        [True, True, False, True],  # missing band -> its colour not modelled
        [False, False, False, False],  # reference band missing -> nothing modelled
        [False, True, True, True],  # poor parallax -> c_0 dropped, colours kept
    ]


def test_covariance_eq4_and_chi2_match_numpy_reference(published, real, anchor_dir):
    idx = np.arange(0, 10000, 250)  # 40 stars with assorted missing bands
    cat = real.subset(idx)
    phot = prepare_photometry(cat)
    E = cat.E_prior
    c_model, cov_c, R = star_terms(published, cat.theta, cat.theta_cov, E, cat.E_prior_err, phot)
    chi2, n = map(np.asarray, chi2_colours(phot.c_obs - c_model, cov_c, phot.mask))
    z = np.asarray(z_scores(phot.c_obs - c_model, cov_c, phot.mask))
    W = np.asarray(whitening_matrix(cov_c, phot.mask))

    # independent float64 reference: finite-difference J, explicit Eq. 4, explicit sub-matrix inverse
    J = reference_jacobian(anchor_dir / "green2020_nn_model.h5",
                           anchor_dir / "green2020_theta_normalization.json", cat.theta, E)
    Rn = np.asarray(published.reddening_vector(jnp.asarray(cat.theta)), dtype=np.float64)
    B = np.asarray(colour_transform_matrix(13), dtype=np.float64)
    plx_good = cat.parallax / cat.parallax_err > 5
    for i in range(len(idx)):
        obs = np.isfinite(cat.mag[i])
        err = np.where(obs, cat.mag_err[i], 1.0)
        sig_mu = 5 / np.log(10) * cat.parallax_err[i] / cat.parallax[i] if plx_good[i] else 0.0
        Cm = (J[i] @ cat.theta_cov[i] @ J[i].T + np.outer(Rn[i], Rn[i]) * cat.E_prior_err[i] ** 2
              + sig_mu**2 + np.diag(err**2))
        Cc = B @ Cm @ B.T
        mu = 10 - 5 * np.log10(cat.parallax[i]) if plx_good[i] else 0.0
        c_obs = B @ (np.where(obs, cat.mag[i], 0.0) - mu)
        r = c_obs - _reference_forward(anchor_dir / "green2020_nn_model.h5",
                                       anchor_dir / "green2020_theta_normalization.json",
                                       cat.theta[i:i + 1], E[i:i + 1])[0]
        sel = np.concatenate([[obs[0] and plx_good[i]], obs[1:] & obs[0]])
        ref_chi2 = r[sel] @ np.linalg.solve(Cc[np.ix_(sel, sel)], r[sel])
        assert n[i] == sel.sum()
        np.testing.assert_allclose(chi2[i], ref_chi2, rtol=2e-3, atol=1e-3)
        np.testing.assert_allclose(np.asarray(cov_c[i])[np.ix_(sel, sel)], Cc[np.ix_(sel, sel)], rtol=2e-3, atol=5e-6)
        np.testing.assert_allclose(z[i][sel], r[sel] / np.sqrt(np.diag(Cc)[sel]), rtol=2e-3, atol=1e-3)
        assert np.all(np.isnan(z[i][~sel]))
        # whitening matrix: ||W r||^2 = chi^2, zero rows for unmodelled entries
        np.testing.assert_allclose(np.sum((W[i] @ np.where(sel, r, 0.0)) ** 2), ref_chi2, rtol=2e-3, atol=1e-3)
        assert np.all(W[i][~sel] == 0)


def test_parallax_term_only_touches_c0():
    err = jnp.full((1, 5), 0.02)
    base = colour_covariance(magnitude_covariance(err))
    with_mu = colour_covariance(magnitude_covariance(err, sigma_mu=jnp.array([0.3])))
    d = np.array(with_mu - base)[0]
    assert abs(d[0, 0] - 0.09) < 1e-6
    d[0, 0] = 0
    assert np.allclose(d, 0, atol=1e-7)


def test_reddening_update_reproduces_published_r_fit(published, real):
    """Eqs. 8-9 with the published net reproduce the file's r_fit / r_var (the published model's own)."""
    res = evaluate_catalog(published, real, reddening="fit")
    r_fit, r_var = real.meta["r_fit"], real.meta["r_var"]
    dE = np.abs(res.E - r_fit)
    assert np.median(dE) < 1e-3 and np.percentile(dE, 99) < 0.02
    ratio = res.E_err**2 / r_var
    assert abs(np.median(ratio) - 1) < 0.01
    assert np.percentile(ratio, 1) > 0.95 and np.percentile(ratio, 99) < 1.05
    assert np.all(res.E >= 0)  # clipped


def test_paper_test_set_figures(published, real):
    """Paper §4: mean chi2/dof (stars below 5) = 0.87, 2.7% of stars above 5."""
    res = evaluate_catalog(published, real, reddening="prior")
    s = res.summary
    assert s["n_stars"] == 10000
    assert abs(s["chi2_dof_mean"] - 0.87) <= 0.01
    assert abs(s["outlier_frac"] - 0.027) <= 0.003
    # z-scores of a good model: median near 0, robust width near/below 1 for every entry
    for name, z in s["z_scores"].items():
        assert abs(z["median"]) < 0.2, name
        assert 0.4 < z["robust_sigma"] < 1.3, name
    # counting convention: dof = modelled entries - 1 (per-star reddening)
    assert np.array_equal(res.dof, np.maximum(res.n_modelled - 1, 0))
    res0 = evaluate_catalog(published, real.subset(np.arange(2000)), n_fitted=0)
    assert res0.summary["chi2_dof_mean"] < s["chi2_dof_mean"]


def test_label_update_is_the_dense_gaussian_posterior():
    """label_update = the exact Gaussian posterior of a linear model on the modelled entries (numpy reference)."""
    from dds_infer.likelihood import label_update

    rng = np.random.default_rng(5)
    n, nb, k = 6, 7, 4
    jac = rng.normal(size=(n, nb, k))
    a = rng.normal(size=(n, nb, nb))
    cov = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(nb)
    p = rng.normal(size=(n, k, k))
    prior = p @ np.swapaxes(p, 1, 2) + 0.3 * np.eye(k)
    resid, dzp = rng.normal(size=(n, nb)), rng.normal(size=(n, k))
    mask = rng.random((n, nb)) > 0.3
    mask[:, 0] = True
    resid[~mask] = np.nan  # unmodelled entries may be anything
    dz, post = label_update(jnp.asarray(resid), jnp.asarray(jac), jnp.asarray(cov), jnp.asarray(mask),
                            jnp.asarray(dzp), jnp.asarray(np.linalg.inv(prior)))
    for i in range(n):
        m = mask[i]
        ci = np.linalg.inv(cov[i][np.ix_(m, m)])
        ji = jac[i][m]
        pi = np.linalg.inv(prior[i])
        lam = pi + ji.T @ ci @ ji
        np.testing.assert_allclose(post[i], np.linalg.inv(lam), rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(dz[i], np.linalg.solve(lam, pi @ dzp[i] + ji.T @ ci @ resid[i][m]),
                                   rtol=2e-4, atol=1e-5)


def test_fit_labels_pulls_noisy_labels_to_what_the_photometry_says(published, real):
    """Exact colours + parallax from the published net at true θ: a few Gauss-Newton steps of
    fit_labels move noisy labels towards the truth (logg, Teff); with useless photometry they stay put."""
    from dds_infer.evaluate import PreparedPhotometry, fit_labels

    sub = real.subset(np.arange(400))
    ok = np.all(np.isfinite(sub.theta), axis=1) & np.all(np.isfinite(sub.theta_cov), axis=(1, 2))
    th_true = sub.theta[ok].astype(np.float32)
    cov = sub.theta_cov[ok].astype(np.float32)
    E_true = np.clip(np.nan_to_num(sub.E_prior[ok]), 0.0, None).astype(np.float32)
    n = th_true.shape[0]
    rng = np.random.default_rng(0)
    th_hat = (th_true + np.einsum("nij,nj->ni", np.linalg.cholesky(cov), rng.normal(size=(n, 3)))).astype(np.float32)
    E_err = np.full(n, 0.05, np.float32)
    bm, R = published.network_outputs(jnp.asarray(th_true))

    def phot(mag_err, sigma_mu):
        return PreparedPhotometry(c_obs=bm + E_true[:, None] * apply_colour_transform(R),
                                  mag_err=jnp.full((n, 13), mag_err, jnp.float32), mask=jnp.ones((n, 13), bool),
                                  mu=jnp.zeros(n), sigma_mu=jnp.full(n, sigma_mu, jnp.float32),
                                  good_parallax=jnp.ones(n, bool))

    def iterate(ph, steps=6):
        th, E = jnp.asarray(th_hat), jnp.asarray(E_true)
        for _ in range(steps):
            th, post, E, var, capped = fit_labels(published, th, E, th_hat, cov, E_true, E_err, ph)
            assert np.mean(np.asarray(capped)) < 0.01  # the truth is within 5σ of the labels
        return np.asarray(th), np.asarray(post)

    th, post = iterate(phot(0.01, 0.03))
    err_prior = np.sqrt(np.median((th_hat - th_true) ** 2, axis=0))
    err_post = np.sqrt(np.median((th - th_true) ** 2, axis=0))
    assert np.all(np.isfinite(th))
    print("label error prior / after:", err_prior, err_post)
    assert err_post[0] < 0.7 * err_prior[0] and err_post[1] < 0.5 * err_prior[1], (err_prior, err_post)
    var_ratio = np.diagonal(post, axis1=1, axis2=2) / np.diagonal(cov, axis1=1, axis2=2)
    assert np.all(var_ratio <= 1 + 1e-3) and np.median(var_ratio[:, 1]) < 0.5
    th0, post0 = iterate(phot(30.0, 30.0), steps=2)
    assert np.all(np.abs(th0 - th_hat).max(axis=0) < [2.0, 2e-3, 2e-3]), np.abs(th0 - th_hat).max(axis=0)
    np.testing.assert_allclose(np.diagonal(post0, axis1=1, axis2=2), np.diagonal(cov, axis1=1, axis2=2), rtol=1e-2)
