"""Scoring helpers: coverage and SBC ranks behave as the definitions say."""

import numpy as np

from dds_infer.recovery import accuracy, interval_coverage, sbc_ranks


def _calibrated(rng, n=3000, s=400, scale=1.0):
    # truth ~ N(mean, 1); posterior N(mean, 1) -> calibrated; scale != 1 -> miscalibrated
    mean = rng.normal(size=n)
    truth = mean + rng.normal(size=n)
    draws = mean[:, None] + scale * rng.normal(size=(n, s))
    return draws, truth


def test_coverage_of_calibrated_posterior_is_nominal():
    draws, truth = _calibrated(np.random.default_rng(0))
    assert abs(interval_coverage(draws, truth, 0.68) - 0.68) < 0.03
    assert abs(interval_coverage(draws, truth, 0.95) - 0.95) < 0.015


def test_overconfident_posterior_undercovers():
    draws, truth = _calibrated(np.random.default_rng(1), scale=0.5)
    assert interval_coverage(draws, truth, 0.68) < 0.45


def test_weighted_coverage_uses_weights():
    rng = np.random.default_rng(2)
    n = 2000
    truth = rng.normal(size=n)
    # half the draws from the right posterior, half from a far-away wrong mode with zero weight
    good = truth[:, None] + rng.normal(size=(n, 200)) + rng.normal(size=(n, 1))
    bad = good + 10.0
    draws = np.concatenate([good, bad], axis=1)
    w = np.concatenate([np.ones((n, 200)), np.zeros((n, 200))], axis=1)
    assert abs(interval_coverage(draws, truth, 0.68, weights=w) - 0.68) < 0.04
    # ranks: weighted ones are centred; unweighted, all the wrong-mode draws lie above the truth
    assert abs(np.mean(sbc_ranks(draws, truth, weights=w)) - 0.5) < 0.03
    assert abs(np.mean(sbc_ranks(draws, truth)) - 0.25) < 0.03


def test_ranks_uniform_when_calibrated():
    draws, truth = _calibrated(np.random.default_rng(3))
    r = sbc_ranks(draws, truth)
    hist, _ = np.histogram(r, bins=10, range=(0, 1))
    assert hist.min() > 0.75 * hist.mean() and hist.max() < 1.25 * hist.mean()


def test_accuracy_recovers_known_bias_and_scatter():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=5000)
    med = truth + 0.3 + 0.5 * rng.normal(size=5000)
    a = accuracy(med, med - 0.5, med + 0.5, truth)
    assert abs(a["bias"] - 0.3) < 0.03 and abs(a["sigma"] - 0.5) < 0.03
    assert abs(a["z_sigma"] - 1.0) < 0.06
