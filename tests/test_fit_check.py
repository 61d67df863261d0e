"""Goodness of fit per star (dds_infer.fit_check): the χ² discrepancy, its p-value, the flag."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dds_infer import load_bundle
from dds_infer.fit_check import fit_statistics, realised_chi2
from dds_infer.inference import InferenceConfig, log_likelihood, star_data_from_catalog
from dds_infer.posterior import FLAGS
from dds_infer.priors import default_prior
from dds_infer.simulate import draw_from_prior, simulate_observations

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "mock13-v1"
VARS = ("teff", "logg", "feh", "mu", "E")


@pytest.fixture(scope="module")
def mock():
    """Stars observed through the likelihood at known parameters (the prior's draws)."""
    emu = load_bundle(SHIPPED)
    prior = default_prior(emu, reddening="halfnormal", E_scale=0.3)
    config = InferenceConfig(zp=-0.03, parallax_inflation=1.2, sigma_floor=0.03)
    draws = draw_from_prior(prior, 500, seed=5)
    cat, keep = simulate_observations(emu, draws, config, seed=5)
    truth = {v: np.asarray(draws[v])[keep] for v in VARS}
    return emu, config, cat, truth


def test_chi2_is_minus_twice_the_log_likelihood_without_its_constants(mock):
    emu, config, cat, truth = mock
    stars = star_data_from_catalog(cat)
    idx = np.arange(5)
    st = jax.tree_util.tree_map(lambda a: a[idx], stars)
    off = dict(teff=100.0, logg=-0.1, feh=0.1, mu=0.05, E=0.02)  # the truth and a point off it
    draw = {v: jnp.asarray(np.stack([truth[v][idx], truth[v][idx] + off[v]], axis=1), jnp.float32) for v in VARS}
    chi2, n = realised_chi2(emu, st, draw["teff"], draw["logg"], draw["feh"], draw["mu"], draw["E"], config=config)
    for i in idx:
        one = jax.tree_util.tree_map(lambda a: a[i], stars)
        sig2 = np.asarray(one.mag_err) ** 2 + config.sigma_floor ** 2
        obs = np.asarray(one.observed)
        const = np.sum(np.log(2 * math.pi * sig2[obs]))
        s = config.parallax_inflation * float(one.parallax_err)
        if bool(one.has_parallax):
            const += 2 * math.log(s) + math.log(2 * math.pi)
        for d in range(2):
            th = jnp.asarray([draw[v][i, d] for v in ("teff", "logg", "feh")])
            ph, plx = log_likelihood(emu.normalize(th), draw["mu"][i, d], draw["E"][i, d], one, emu, config)
            assert float(chi2[i, d]) == pytest.approx(-2 * float(ph + plx) - const, rel=1e-4, abs=1e-3)
        assert int(n[i]) == obs.sum() + bool(one.has_parallax)


def test_p_value_uniform_at_the_true_parameters_and_small_for_a_bad_band(mock):
    """At the parameters that generated the data D ~ χ²(n), so P(χ²_n ≥ D) is uniform; a band
    shifted by 0.5 mag is flagged."""
    emu, config, cat, truth = mock
    stars = star_data_from_catalog(cat)
    samples = {v: truth[v][:, None, None] for v in VARS}  # one "draw" per star: the truth
    fit = fit_statistics(emu, stars, samples, config)
    assert len(fit["fit_p"]) == cat.n_stars > 300
    assert stats.kstest(fit["fit_p"], "uniform").pvalue > 1e-3
    assert np.all(fit["n_data"] == np.asarray(stars.observed).sum(axis=1) + np.asarray(stars.has_parallax))
    bad = cat.subset(np.arange(cat.n_stars))
    g = bad.bands.names.index("gaia_g")
    bad.mag[:, g] += 0.5
    fit_bad = fit_statistics(emu, star_data_from_catalog(bad), samples, config)
    observed_g = np.asarray(stars.observed)[:, g]
    assert np.mean(fit_bad["fit_p"][observed_g] < 1e-3) > 0.95  # (faint stars: σ_G up to ~0.1 mag)
    assert np.mean(fit_bad["chi2_median"][observed_g] > fit["chi2_median"][observed_g]) > 0.95
    np.testing.assert_array_equal(fit_bad["fit_p"][~observed_g], fit["fit_p"][~observed_g])


def test_chain_weights_and_padding(mock):
    """The p-value averages the χ² survival over draws with the chain weights; results do not
    depend on how the stars are batched (259 stars: one call of 256 and a padded one of 3)."""
    emu, config, cat, truth = mock
    n = 259
    stars = star_data_from_catalog(cat.subset(np.arange(n)))
    good = {v: truth[v][:n] for v in VARS}
    bad = dict(good, mu=good["mu"] + 3.0)  # a chain 3 mag off
    samples = {v: np.stack([np.repeat(good[v][:, None], 10, 1), np.repeat(bad[v][:, None], 10, 1)], axis=1)
               for v in VARS}
    only_good = fit_statistics(emu, stars, samples, config, chain_weights=np.tile([1.0, 0.0], (n, 1)))
    ref = fit_statistics(emu, stars, {v: good[v][:, None, None] for v in VARS}, config)
    np.testing.assert_allclose(only_good["fit_p"], ref["fit_p"], rtol=1e-5)
    ref_bad = fit_statistics(emu, stars, {v: bad[v][:, None, None] for v in VARS}, config)
    half = fit_statistics(emu, stars, samples, config)  # equal weights: half the mass far off
    np.testing.assert_allclose(half["fit_p"], 0.5 * (ref["fit_p"] + ref_bad["fit_p"]), rtol=1e-4, atol=1e-7)
    assert np.median(ref_bad["fit_p"]) < 1e-6 < np.median(ref["fit_p"])
    last = fit_statistics(emu, jax.tree_util.tree_map(lambda a: a[256:], stars),
                          {v: samples[v][256:] for v in VARS}, config)
    np.testing.assert_allclose(last["fit_p"], half["fit_p"][256:], rtol=1e-6)
    thinned = fit_statistics(emu, stars, samples, config, max_draws=4)  # 2 of each chain's 10 draws
    np.testing.assert_allclose(thinned["fit_p"], half["fit_p"], rtol=1e-5)


def test_runs_flag_a_star_whose_photometry_no_model_fits(mock, tmp_path):
    """A catalogue run (grid path) records chi2_median, n_data, fit_p and sets flag bit
    poor_fit on the corrupted star only; the NetCDF round trip keeps them."""
    from dds_infer.gridpath import GridSettings
    from dds_infer.pipeline import infer
    from dds_infer.posterior import Posterior

    emu, config, cat, truth = mock
    cat = cat.subset(np.arange(8))
    obs = np.isfinite(cat.mag[3])
    cat.mag[3, np.flatnonzero(obs)[::2]] += 0.4  # every other observed band 0.4 mag fainter
    prior = default_prior(emu, reddening="halfnormal", E_scale=0.3)
    fast = GridSettings(n_theta=128, n_refine=64, n_rounds=4, n_draws=200)
    post = infer(cat, emu, tmp_path / "run", prior=prior, config=config, batch_size=8, seed=0, progress=False,
                 method="grid", grid_settings=fast)
    s = post.summary()
    assert {"chi2_median", "n_data", "fit_p"} <= set(s.columns)
    poor = (s["flag"] & FLAGS["poor_fit"]) > 0
    assert poor[3] and poor.sum() == 1, s[["chi2_median", "n_data", "fit_p", "flag"]]
    back = Posterior.load(tmp_path / "run" / "posterior.nc")
    np.testing.assert_array_equal(back.star_stats["fit_p"], post.star_stats["fit_p"])
    np.testing.assert_array_equal(back.summary()["flag"], s["flag"])
