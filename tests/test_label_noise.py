"""Tweedie shrinkage of noisy training labels (errors-in-variables, dds_infer.label_noise)."""

import numpy as np
import pytest

from dds_infer.label_noise import (centre_label_shifts, grouped_tweedie_label_means, label_density_score,
                                  quantile_groups, tweedie_label_means)


def _gaussian_population(n, seed=0):
    rng = np.random.default_rng(seed)
    mean = np.array([5000.0, 4.0, -0.2])
    tau = np.array([400.0, 0.3, 0.2])  # population spread
    sig = np.array([100.0, 0.15, 0.1])  # label errors
    truth = mean + tau * rng.normal(size=(n, 3))
    labels = truth + sig * rng.normal(size=(n, 3))
    cov = np.broadcast_to(np.diag(sig**2), (n, 3, 3)).copy()
    return truth, labels, cov, mean, tau, sig


def test_tweedie_matches_the_exact_gaussian_posterior_mean():
    """Gaussian population × Gaussian errors: E[θ|θ̂] = m + τ²/(τ²+σ²)(θ̂ − m) exactly."""
    truth, labels, cov, mean, tau, sig = _gaussian_population(200_000)
    shrunk, capped = tweedie_label_means(labels, cov, bandwidth=0.5, bin_width=0.25)
    assert capped.mean() < 1e-3
    exact = mean + tau**2 / (tau**2 + sig**2) * (labels - mean)
    central = np.all(np.abs(labels - mean) < 2 * np.sqrt(tau**2 + sig**2), axis=1)
    shift_exact = (exact - labels)[central]
    shift = (shrunk - labels)[central]
    # the regression slope of the applied shift on the exact one is ~1 (the smoothing adds a few %)
    slope = np.sum(shift * shift_exact, axis=0) / np.sum(shift_exact**2, axis=0)
    assert np.all(np.abs(slope - 1) < 0.1), slope
    mse_raw = np.mean((labels - truth) ** 2, axis=0)
    mse = np.mean((shrunk - truth) ** 2, axis=0)
    mse_exact = np.mean((exact - truth) ** 2, axis=0)
    assert np.all(mse < mse_raw) and np.all(mse < 1.1 * mse_exact), (mse_raw, mse, mse_exact)
    assert mse[1] < 0.85 * mse_raw[1]  # log g: τ/σ = 2, a large gain


def test_score_of_a_gaussian_and_input_checks():
    truth, labels, cov, mean, tau, sig = _gaussian_population(100_000, seed=1)
    probe = mean + np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]]) * np.sqrt(tau**2 + sig**2)
    h, bw = 0.5, 0.25
    score = label_density_score(probe, labels, sig, bandwidth=h, bin_width=bw)
    # d log N(m, τ² + σ² + smoothing²): the label density seen through the kernel and the bins
    expected = -(probe - mean) / (tau**2 + sig**2 + (h**2 + bw**2 / 12) * sig**2)
    np.testing.assert_allclose(score[1], expected[1], rtol=0.2)  # a 10^5-star histogram in 3-D is noisy
    assert np.all(np.abs(score[0] * sig) < 0.1)  # at the mode the shift σ² ∇log p is < 0.1 σ
    with pytest.raises(ValueError, match="finite"):
        label_density_score(np.array([[np.nan, 4.0, 0.0]]), labels, sig)
    # a label in the far tail of the population: the shift is capped at max_shift (its own Mahalanobis metric)
    tail = (mean + np.array([0.0, 6.0, 0.0]) * np.sqrt(tau**2 + sig**2))[None]
    shrunk, capped = tweedie_label_means(tail, np.diag(sig**2)[None], reference=labels, max_shift=3.0)
    d = (shrunk[0] - tail[0]) / sig
    assert capped[0] and np.sqrt(d @ d) == pytest.approx(3.0, rel=1e-6)
    assert d[1] < 0  # towards the population
    with pytest.raises(ValueError, match="positive"):
        tweedie_label_means(labels[:10], np.zeros((10, 3, 3)))


def test_grouped_tweedie_uses_the_population_at_each_distance():
    """Two distance groups with different log g populations (near: dwarfs, far: brighter stars):
    the pooled density shrinks each group towards the other (biased); the parallax-grouped one does
    not, and matches the exact per-group Gaussian posterior mean."""
    rng = np.random.default_rng(2)
    n = 200_000
    far = rng.random(n) < 0.5
    mean = np.where(far[:, None], [5600.0, 4.0, -0.3], [5200.0, 4.3, -0.1])
    tau, sig = np.array([300.0, 0.1, 0.15]), np.array([100.0, 0.15, 0.1])
    truth = mean + tau * rng.normal(size=(n, 3))
    labels = truth + sig * rng.normal(size=(n, 3))
    cov = np.broadcast_to(np.diag(sig**2), (n, 3, 3)).copy()
    plx = np.where(far, 0.4, 3.0) * np.exp(0.3 * rng.normal(size=n))  # overlapping in between
    plx[:50] = np.nan
    kw = dict(bandwidth=0.5, bin_width=0.25)
    pooled, _ = tweedie_label_means(labels, cov, **kw)
    grouped, capped, group = grouped_tweedie_label_means(labels, cov, plx, n_groups=4, **kw)
    assert capped.mean() < 1e-3 and np.all(group[:50] == -1) and set(np.unique(group[50:])) == {0, 1, 2, 3}
    exact = mean + tau**2 / (tau**2 + sig**2) * (labels - mean)
    clean = np.isfinite(plx) & ((plx < 0.8) | (plx > 1.6))  # groups that are one population
    for sel in (clean & far, clean & ~far):
        bias_pooled = np.mean((pooled - truth)[sel][:, 1])
        bias_grouped = np.mean((grouped - truth)[sel][:, 1])
        print("log g bias pooled %.4f grouped %.4f" % (bias_pooled, bias_grouped))
        assert abs(bias_pooled) > 0.02 and abs(bias_grouped) < 0.005, (bias_pooled, bias_grouped)
        mse = np.mean((grouped - truth)[sel] ** 2, axis=0)
        mse_exact = np.mean((exact - truth)[sel] ** 2, axis=0)
        print("mse ratio", mse / mse_exact)
        assert np.all(mse < 1.15 * mse_exact), mse / mse_exact
    with pytest.raises(ValueError, match="n_groups"):
        grouped_tweedie_label_means(labels, cov, plx, n_groups=0)
    with pytest.raises(ValueError, match="finite"):
        grouped_tweedie_label_means(labels[:5], cov[:5], np.full(5, np.nan))


def test_centring_removes_a_common_drift_but_keeps_exact_posterior_means():
    """Exact posterior means of a Gaussian population average back to the prior means in every group
    (the law of total expectation), so centring barely moves them; a drift common to the stars of a
    group (the joint fit's flat direction) is removed exactly, group by group."""
    truth, labels, cov, mean, tau, sig = _gaussian_population(100_000, seed=4)
    rng = np.random.default_rng(5)
    prior = mean + tau**2 / (tau**2 + sig**2) * (labels - mean)  # E[θ | θ̂]
    # a second, independent measurement of θ: the posterior mean given both is exact
    obs = truth + sig * rng.normal(size=truth.shape)
    v_prior = tau**2 * sig**2 / (tau**2 + sig**2)
    post = prior + v_prior / (v_prior + sig**2) * (obs - prior)
    plx = np.exp(rng.normal(size=len(labels)))
    ref = rng.random(len(labels)) < 0.7
    group = quantile_groups(plx, 4, ref)
    assert set(np.unique(group)) == {0, 1, 2, 3} and abs(np.mean(group[ref] == 0) - 0.25) < 0.01
    centred, shifts = centre_label_shifts(post, prior, group, ref)
    assert shifts.shape == (4, 3)
    assert np.all(np.abs(shifts) < 4 * np.sqrt(v_prior / (len(labels) / 4 * 0.7)))  # sampling noise only
    drift = np.array([[30.0, 0.04, -0.02], [10.0, 0.02, 0.0], [-20.0, 0.0, 0.01], [0.0, -0.03, 0.0]])
    re, shifts2 = centre_label_shifts(post + drift[group], prior, group, ref)
    np.testing.assert_allclose(shifts2 - shifts, drift, atol=1e-9)
    np.testing.assert_allclose(re, centred, atol=1e-9)
    with pytest.raises(ValueError, match="n_groups"):
        quantile_groups(plx, 0, ref)
