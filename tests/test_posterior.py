"""Posterior container: arviz conversion, summary table, diagnostics, weighted quantiles, I/O."""

import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from dds_infer import init_emulator
from dds_infer.engine import BatchResult
from dds_infer.posterior import (FLAGS, VARIABLES, Posterior, concat, flag_counts, rank_diagnostics,
                                 rank_rhat_ess_bulk)

N, C, S = 5, 3, 200


def _fake_batch(seed=0, n=N):
    """A BatchResult-like set of draws: AR(1) chains around star-specific means."""
    rng = np.random.default_rng(seed)
    def ar(loc, scale):
        e = rng.normal(size=(n, C, S))
        x = np.zeros_like(e)
        for t in range(S):
            x[..., t] = 0.5 * (x[..., t - 1] if t else 0) + e[..., t]
        return (loc[:, None, None] + scale * x).astype(np.float32)
    samples = {"teff": ar(rng.uniform(4500, 6500, n), 50.0), "logg": ar(rng.uniform(3, 4.6, n), 0.05),
               "feh": ar(rng.uniform(-1, 0.2, n), 0.05), "mu": ar(rng.uniform(6, 12, n), 0.05),
               "E": np.abs(ar(rng.uniform(0.1, 1, n), 0.02)), "x": rng.normal(size=(n, C, S, 3))}
    div = np.zeros((n, C, S), bool)
    div[1, 0, 5] = True
    samples["mu"][min(2, n - 1), 0] += 1.0  # chain 0 of star 2 disagrees: R-hat flag
    return BatchResult(samples=samples, potential_energy=rng.normal(size=(n, C, S)).astype(np.float32),
                       diverging=div, num_steps=rng.integers(1, 64, (n, C, S)),
                       accept_prob=rng.uniform(0.7, 0.9, (n, C)).astype(np.float32),
                       step_size=rng.uniform(0.1, 0.5, (n, C)).astype(np.float32),
                       inverse_mass_matrix=np.ones((n, C, 5), np.float32), init_valid=np.ones((n, C), bool))


@pytest.fixture(scope="module")
def emu():
    return init_emulator(jax.random.key(0))


@pytest.fixture(scope="module")
def post(emu):
    return Posterior.from_batch(_fake_batch(), np.array([f"star{i}" for i in range(N)]), emu)


def test_derived_variables(post, emu):
    s = post.samples
    assert set(VARIABLES) <= set(s) and "x" not in s
    np.testing.assert_allclose(s["distance_pc"], 10 ** (s["mu"] / 5 + 1), rtol=1e-6)
    theta = jnp.stack([s["teff"][0, 0, :3], s["logg"][0, 0, :3], s["feh"][0, 0, :3]], -1)
    e = jnp.asarray(s["E"][0, 0, :3])
    a_g = emu.predict(theta, e)[:, 0] - emu.predict(theta, jnp.zeros(3))[:, 0]  # extinction in G
    np.testing.assert_allclose(s["A_G"][0, 0, :3], a_g, rtol=1e-4)
    np.testing.assert_allclose(post.in_domain_frac, 1.0)  # no domain attached: everything inside


def test_inference_data_dims_and_coords(post):
    idata = post.to_inference_data()
    assert set(idata.groups()) >= {"posterior", "sample_stats"}
    for k in VARIABLES:
        assert idata.posterior[k].dims == ("star", "chain", "draw")
    assert list(idata.posterior["star"].values) == list(post.star_id)
    assert idata.posterior.sizes == {"star": N, "chain": C, "draw": S}
    assert idata.sample_stats["diverging"].dims == ("star", "chain", "draw")
    assert idata.sample_stats["step_size"].dims == ("star", "chain")


def test_summary_quantiles_and_flags(post):
    df = post.summary()
    assert len(df) == N and list(df["star_id"]) == list(post.star_id)
    for col in ("teff_median", "teff_q16", "teff_q84", "mu_r_hat", "mu_ess_bulk", "n_divergent", "n_modes",
                "flag", "A_G_median", "distance_pc_q84"):
        assert col in df.columns
    for k in VARIABLES:
        flat = post.samples[k].reshape(N, -1)
        np.testing.assert_allclose(df[f"{k}_median"], np.median(flat, axis=1), rtol=1e-6)
        np.testing.assert_allclose(df[f"{k}_q16"], np.percentile(flat, 16, axis=1), rtol=1e-6)
        np.testing.assert_allclose(df[f"{k}_q84"], np.percentile(flat, 84, axis=1), rtol=1e-6)
    assert df["n_divergent"].tolist() == [0, 1, 0, 0, 0]
    assert df["flag"][1] & FLAGS["divergent"] and not df["flag"][0] & FLAGS["divergent"]
    assert df["mu_r_hat"][2] > 1.1 and df["flag"][2] & FLAGS["r_hat"]
    assert df["mu_r_hat"][0] < 1.05
    counts = flag_counts(df["flag"])
    assert counts["any"] == int((df["flag"] != 0).sum()) and counts["divergent"] == 1 and counts["r_hat"] >= 1
    assert set(counts) == {"any", *FLAGS}


def test_flag_counts_count_every_reason_of_a_star():
    flags = np.array([0, FLAGS["r_hat"] | FLAGS["divergent"], FLAGS["divergent"], FLAGS["bad_init"]])
    assert flag_counts(flags) == {"any": 3, "r_hat": 1, "low_ess": 0, "divergent": 2, "multimodal": 0,
                                  "outside_domain": 0, "bad_init": 1, "nonfinite": 0, "poor_fit": 0}


def test_rhat_ess_match_arviz():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 4, 151)).cumsum(-1) * 0.2 + rng.normal(size=(3, 4, 151))
    x[1, 2] += 0.7
    rhat, ess = rank_rhat_ess_bulk(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_r = [float(az.rhat(x[i])) for i in range(3)]
        ref_e = [float(az.ess(x[i], method="bulk")) for i in range(3)]
    np.testing.assert_allclose(rhat, ref_r, rtol=1e-6)
    # numpyro's ESS estimator differs from arviz's in the autocovariance details
    np.testing.assert_allclose(ess, ref_e, rtol=0.15)
    d = rank_diagnostics(x)  # the two halves of that R̂: location (bulk) and scale (folded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = {k: [float(az.rhat(x[i], method=m)) for i in range(3)]
               for k, m in (("rhat_bulk", "z_scale"), ("rhat_folded", "folded"))}
        ref_ef = [float(az.ess(x[i], method="folded")) for i in range(3)]
    np.testing.assert_allclose(d["rhat_bulk"], ref["rhat_bulk"], rtol=1e-6)
    np.testing.assert_allclose(d["rhat_folded"], ref["rhat_folded"], rtol=1e-6)
    np.testing.assert_array_equal(np.maximum(d["rhat_bulk"], d["rhat_folded"]), rhat)
    np.testing.assert_allclose(d["ess_folded"], ref_ef, rtol=0.15)
    assert np.all(np.isnan(rank_diagnostics(np.ones((1, 4, 20)))["rhat_folded"]))


def test_single_chain_gets_split_rhat_and_ess_but_iid_grid_draws_do_not(emu):
    """One NUTS chain: split-R̂ of its two halves and its ESS (as arviz), so a drifting chain is flagged;
    the grid path's i.i.d. draws (method "grid") keep NaN R̂ and are judged by their weight ESS."""
    b = _fake_batch()
    one = jax.tree_util.tree_map(lambda a: a[:, :1], b)  # chain 0 of every array (B, C, ...)
    one.samples["teff"][3, 0, S // 2:] += 200.0  # star 3's chain jumps half-way: not stationary
    ids = np.array([f"star{i}" for i in range(N)])
    summ = Posterior.from_batch(one, ids, emu).summary()
    with warnings.catch_warnings():  # (arviz computes no R̂ for one chain, but its ESS)
        warnings.simplefilter("ignore")
        ref = [float(az.ess(np.asarray(one.samples["logg"][i], np.float64), method="bulk")) for i in range(N)]
    np.testing.assert_allclose(summ["logg_ess_bulk"], ref, rtol=0.15)
    assert np.all(np.isfinite(summ["r_hat_max"])) and np.all(summ["ess_bulk_min"] > 0)
    assert summ["teff_r_hat"][3] > 1.5 and summ["flag"][3] & FLAGS["r_hat"]
    assert np.all(summ["teff_r_hat"].drop(3) < 1.05)  # stationary AR(1) chains: their halves agree
    grid = Posterior.from_batch(one, ids, emu, attrs={"method": "grid"}).summary()
    assert grid["r_hat_max"].isna().all() and not (grid["flag"] & FLAGS["r_hat"]).any()


def test_weighted_quantiles_respect_chain_weights(emu):
    batch = _fake_batch(seed=4)
    weights = np.tile([0.5, 0.25, 0.25], (N, 1))
    weights[0] = [1.0, 0.0, 0.0]

    class Mode:
        def __init__(self, w):
            self.chain_weights, self.n_modes, self.flag = w, 2, 0

    p = Posterior.from_batch(batch, np.arange(N), emu, [Mode(w) for w in weights])
    df = p.summary()
    mu = p.samples["mu"]
    # star 0: only chain 0 counts
    np.testing.assert_allclose(df["mu_median"][0], np.quantile(mu[0, 0], 0.5, method="inverted_cdf"))
    # weights (2, 1, 1)/4 == chain 0 drawn twice
    for i in range(1, N):
        rep = np.concatenate([mu[i, 0], mu[i, 0], mu[i, 1], mu[i, 2]])
        for q, col in ((0.16, "q16"), (0.5, "median"), (0.84, "q84")):
            np.testing.assert_allclose(df[f"mu_{col}"][i], np.quantile(rep, q, method="inverted_cdf"))
    assert np.all(df["flag"] & FLAGS["multimodal"]) and np.all(df["n_modes"] == 2)


def test_broken_chain_is_flagged_and_left_out_of_the_quantiles(emu):
    """A chain whose μ and E draws are NaN (seen on one of 10,000 real stars: stuck at an invalid
    point): the mode combination gives it weight 0 and the quantiles come from the other chains;
    the star is flagged ``nonfinite`` whatever its R-hat."""
    from dds_infer.modes import FLAG_UNRESOLVED, combine_chain_modes

    batch = _fake_batch(seed=6)
    for k in ("mu", "E"):
        batch.samples[k][3, 1] = np.nan
    modes = [combine_chain_modes({k: v[i] for k, v in batch.samples.items()}, -batch.potential_energy[i])
             for i in range(N)]
    assert modes[3].chain_weights[1] == 0 and modes[3].mode_of_chain[1] == -1 and modes[3].flag == FLAG_UNRESOLVED
    p = Posterior.from_batch(batch, np.arange(N), emu, modes)
    df = p.summary()
    assert df["flag"][3] & FLAGS["nonfinite"] and not np.any(df["flag"].drop(3) & FLAGS["nonfinite"])
    good = np.delete(p.samples["mu"][3], 1, axis=0).reshape(-1)
    for q, col in ((0.16, "q16"), (0.5, "median"), (0.84, "q84")):
        assert np.isfinite(df[f"mu_{col}"][3])
        np.testing.assert_allclose(df[f"mu_{col}"][3], np.quantile(good, q, method="inverted_cdf"))
    assert flag_counts(df["flag"])["nonfinite"] == 1


def test_save_load_round_trip_exact(post, tmp_path):
    path = post.save(tmp_path / "p.nc")
    back = Posterior.load(path)
    assert list(back.star_id) == list(post.star_id)
    for name in ("samples", "sample_stats", "chain_stats"):
        a, b = getattr(post, name), getattr(back, name)
        assert set(a) == set(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (name, k)
    for name in ("chain_weights", "n_modes", "mode_flag", "in_domain_frac"):
        assert np.array_equal(getattr(post, name), getattr(back, name)), name
    pd.testing.assert_frame_equal(post.summary(), back.summary())
    pq = post.write_summary_parquet(tmp_path / "s.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(pq), post.summary())
    with pytest.raises(FileNotFoundError, match="not found"):
        Posterior.load(tmp_path / "missing.nc")


def test_concat(post, emu):
    other = Posterior.from_batch(_fake_batch(seed=9, n=2), np.array(["a", "b"]), emu)
    both = concat([post, other])
    assert both.n_stars == N + 2 and list(both.star_id[-2:]) == ["a", "b"]
    assert np.array_equal(both.samples["teff"][:N], post.samples["teff"])
    assert np.array_equal(both.sample_stats["diverging"][N:], other.sample_stats["diverging"])
    short = Posterior.from_batch(jax.tree_util.tree_map(lambda a: a[..., :10] if a.ndim >= 3 else a,
                                                        _fake_batch(n=2)), np.arange(2), emu)
    with pytest.raises(ValueError, match="different chains/draws"):
        concat([post, short])


def test_rhat_pass_rate_reference_predicts_converged_chains():
    """Chains with no convergence problem (stationary AR(1), φ = 0.4): the reference built from
    their *measured* ESS predicts their measured R-hat pass rate, and it rises with the ESS."""
    from dds_infer.posterior import FITTED, rank_rhat_ess_bulk, rhat_pass_rate_reference

    rng = np.random.default_rng(7)
    n, v, c, s, phi = 600, len(FITTED), 4, 500, 0.4
    eps = rng.standard_normal((n, v, c, s))
    x = np.empty_like(eps)
    x[..., 0] = eps[..., 0]
    for t in range(1, s):
        x[..., t] = phi * x[..., t - 1] + np.sqrt(1 - phi ** 2) * eps[..., t]
    rh, ess = zip(*(rank_rhat_ess_bulk(x[:, k]) for k in range(v)))
    measured = np.mean(np.max(rh, axis=0) < 1.01)
    predicted = np.mean(rhat_pass_rate_reference(np.stack(ess, 1), c, s, seed=1))
    assert 0.6 < measured < 0.99  # the regime where the reference matters
    assert abs(predicted - measured) < 0.05, (predicted, measured)
    rates = [np.mean(rhat_pass_rate_reference(np.full((400, v), e), c, s)) for e in (400.0, 800.0, 2000.0)]
    assert rates[0] < rates[1] < rates[2] and rates[2] > 0.99, rates
