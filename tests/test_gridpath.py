"""The grid path (dds_infer.gridpath): closed forms against brute-force quadrature, calibration on
stars drawn from the prior, determinism, the Posterior it returns, resumable runs and the CLI."""

import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from dds_infer import gridpath as gp
from dds_infer import theta_mass as tm
from dds_infer.engine import star_keys
from dds_infer.inference import InferenceConfig, log_likelihood, star_data_from_catalog
from dds_infer.priors import default_prior, log_prior
from dds_infer.simulate import draw_from_prior, simulate_observations

sys.path.insert(0, str(Path(__file__).parent))
from _posterior_checks import same_posterior  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "mock13-v1"
VARS = ("teff", "logg", "feh", "mu", "E")
# 4 kernel rounds, not 8: each round adds ~2.6 s to the compilation (the estimate stays unbiased:
# every draw is weighted against the mixture of all the proposals made)
FAST = gp.GridSettings(n_theta=128, n_refine=64, n_rounds=4, n_draws=400)


@pytest.fixture(scope="module")
def emu():
    from dds_infer import load_bundle

    return load_bundle(SHIPPED)


@pytest.fixture(scope="module")
def sbc_stars(emu):
    """Stars drawn from exactly the prior of the grid path, observed through its likelihood."""
    prior = default_prior(emu, reddening="halfnormal", E_scale=0.3)
    config = InferenceConfig()
    draws = draw_from_prior(prior, 420, seed=11)
    cat, keep = simulate_observations(emu, draws, config, seed=11)
    truth = np.column_stack([np.asarray(draws[v])[keep] for v in VARS])
    return cat, truth, prior, config


@pytest.mark.parametrize("kind", ["flat", "halfnormal", "dustmap"])
def test_reddening_integral_matches_quadrature(emu, kind):
    prior = default_prior(emu, reddening=kind, E_scale=0.4, E_tol_abs=0.07)
    star = type("S", (), {"E_ref": jnp.float32(0.3), "E_ref_err": jnp.float32(0.05)})()
    from dds_infer.priors import log_reddening_prior

    for m, a in [(0.2, 400.0), (-0.05, 900.0), (1.3, 25.0), (0.0, 4.0)]:
        log_i, _, _, _ = tm.reddening_integral(jnp.float32(m), jnp.float32(a), star, prior)
        f = lambda E: math.exp(-0.5 * a * (E - m) ** 2 + float(log_reddening_prior(E, star, prior)))  # noqa: E731
        ref, _ = quad(f, 0.0, prior.E_max, points=[max(m, 0.0)], limit=200)
        assert float(log_i) == pytest.approx(math.log(ref), abs=2e-3), (kind, m, a)


@pytest.mark.parametrize("a,b", [(-np.inf, np.inf), (-0.5, np.inf), (0.0, 0.3), (2.0, np.inf), (4.5, 6.0),
                                 (-np.inf, -3.0), (8.0, np.inf), (30.0, np.inf), (-12.0, -10.0)])
def test_truncated_normal_draws_exact_in_the_tails(a, b):
    """E | μ is a truncated normal whose interval can lie far in a tail (E ≥ 0 with the mean many σ
    below 0): the draws stay inside [a, b], finite, with scipy's distribution (inside 5σ: a
    Kolmogorov–Smirnov test; beyond: the excess over the bound, whose relative bias is ≲ 1/a²)."""
    from scipy import stats

    n = 20000
    z = np.asarray(tm.truncated_std_normal(jax.random.key(5), jnp.full(n, a, jnp.float32), jnp.float32(b)),
                   np.float64)
    assert np.all(np.isfinite(z)) and np.all((z >= a) & (z <= b))
    ref = stats.truncnorm(a, b)
    edge = min(abs(a), abs(b))
    if edge <= 5.0 or a < 0 < b:
        assert stats.kstest(z, ref.cdf).pvalue > 1e-3
    else:
        excess = np.abs(z - (a if a > 0 else b))
        want = abs(ref.mean() - (a if a > 0 else b))
        assert abs(excess.mean() / want - 1.0) < 1.5 / edge ** 2 + 4.0 / np.sqrt(n), (excess.mean(), want)


def _brute_force(emu, st, th, mu, E, prior, config):
    """(log ∫∫ p dμ dE, mean and σ of μ) by a Riemann sum of the NUTS model's own log density
    (inference.log_likelihood + priors.log_prior) at θ ``th`` on the grid ``mu`` × ``E``."""
    MU, EE = (jnp.asarray(a.ravel(), jnp.float32) for a in np.meshgrid(mu, E, indexing="ij"))
    x = emu.normalize(th)

    def logp(m, e):
        ph, plx = log_likelihood(x, m, e, st, emu, config)
        return ph + plx + log_prior(th, m, e, st, prior)

    logf = np.asarray(jax.jit(jax.vmap(logp))(MU, EE), dtype=np.float64).reshape(len(mu), len(E))
    log_mass = logf.max() + math.log(np.exp(logf - logf.max()).sum() * (mu[1] - mu[0]) * (E[1] - E[0]))
    w = np.exp(logf - logf.max()).sum(axis=1)
    mean = np.sum(w * mu) / w.sum()
    return log_mass, mean, math.sqrt(np.sum(w * (mu - mean) ** 2) / w.sum())


def test_theta_mass_matches_brute_force_quadrature(emu, sbc_stars):
    """log ∫∫ p(θ, μ, E | data) dμ dE at fixed θ equals a fine 2-D Riemann sum of the NUTS model's
    own log density (inference.log_likelihood + priors.log_prior)."""
    cat, truth, prior, config = sbc_stars
    stars = star_data_from_catalog(cat)
    for i in (0, 3, 7):
        st = jax.tree_util.tree_map(lambda a: a[i], stars)
        th = jnp.asarray([truth[i, :3], truth[i, :3] + np.array([150.0, 0.1, 0.1])], dtype=jnp.float32)
        tables = tm.mu_prior_tables(st, prior, FAST.mu_table_step)
        lm, aux = tm.theta_log_mass(st, th, emu.absolute_mags(th), emu.reddening_vector(th), prior, config,
                                    jnp.zeros(emu.n_bands), FAST, tables)
        for k in range(2):
            c, sd = float(aux["mu_mean"][k]), float(aux["mu_sd"][k])
            mu = np.linspace(c - 8 * sd, c + 8 * sd, 401)
            g = aux["gauss"]
            e_c = max(float(g["E"][k]), 0.0)
            E = np.linspace(0.0, e_c + 1.0, 801)
            ref, mean, _ = _brute_force(emu, st, th[k], mu, E, prior, config)
            assert float(lm[k]) == pytest.approx(ref, abs=0.03), (i, k)
            assert c == pytest.approx(mean, abs=0.05 * sd + 1e-3)


@pytest.mark.parametrize("n_bands", [1, 2])
def test_theta_mass_with_one_or_two_bands_matches_quadrature(emu, sbc_stars, n_bands):
    """With one band (Gaia G only) the photometric Gaussian in (μ, E) is degenerate up to the weak
    ridge pulls, and a00·a11 − a01² cancels to float32 round-off: the μ and E of the grid path must
    still follow the parallax and the priors (brute-force quadrature of the NUTS model's density)."""
    cat, truth, prior, config = sbc_stars
    stars = star_data_from_catalog(cat)
    plx_snr = np.asarray(stars.parallax / stars.parallax_err)
    i = int(np.argmax(np.where(np.asarray(stars.observed)[:, :n_bands].all(axis=1), plx_snr, -1.0)))
    st = jax.tree_util.tree_map(lambda a: a[i], stars)
    st = st.replace(observed=jnp.arange(emu.n_bands) < n_bands)
    th = jnp.asarray([truth[i, :3], truth[i, :3] + np.array([300.0, -0.3, 0.2])], dtype=jnp.float32)
    tables = tm.mu_prior_tables(st, prior, FAST.mu_table_step)
    lm, aux = tm.theta_log_mass(st, th, emu.absolute_mags(th), emu.reddening_vector(th), prior, config,
                                jnp.zeros(emu.n_bands), FAST, tables)
    mu_plx = 10.0 - 5.0 * math.log10(float(st.parallax) - config.zero_point_mas)
    s_plx = 5.0 / math.log(10.0) * float(st.parallax_err) / float(st.parallax)
    mu = np.linspace(mu_plx - 10 * s_plx, mu_plx + 10 * s_plx, 401)
    E = np.linspace(0.0, 3.0, 1201)
    for k in range(2):
        ref, mean, sd = _brute_force(emu, st, th[k], mu, E, prior, config)
        assert float(lm[k]) == pytest.approx(ref, abs=0.03), (k, float(lm[k]), ref)
        assert float(aux["mu_mean"][k]) == pytest.approx(mean, abs=0.05 * sd), k
        assert float(aux["mu_sd"][k]) == pytest.approx(sd, rel=0.05), k
    assert s_plx < 0.1  # the parallax, not the ridge, sets μ here


@pytest.fixture(scope="module")
def sbc_out(emu, sbc_stars):
    """The grid path on all the prior stars in one batch (seed 0)."""
    cat, _, prior, config = sbc_stars
    return jax.device_get(gp.grid_batch(star_data_from_catalog(cat), star_keys(0, np.arange(cat.n_stars)),
                                        gp.make_cell_grid(emu), emu, prior, config, FAST))


@pytest.mark.slow
def test_calibrated_on_stars_from_the_prior(sbc_stars, sbc_out):
    """68% / 95% central intervals cover the truth at the nominal rate (±3σ binomial at n ≈ 260)."""
    cat, truth, _, _ = sbc_stars
    n, out = cat.n_stars, sbc_out
    assert n >= 200
    for j, v in enumerate(VARS):
        lo, hi = np.quantile(out[v], [0.16, 0.84], axis=1)
        cov68 = np.mean((truth[:, j] >= lo) & (truth[:, j] <= hi))
        lo, hi = np.quantile(out[v], [0.025, 0.975], axis=1)
        cov95 = np.mean((truth[:, j] >= lo) & (truth[:, j] <= hi))
        tol68, tol95 = 3 * math.sqrt(0.68 * 0.32 / n), 3 * math.sqrt(0.95 * 0.05 / n)
        assert abs(cov68 - 0.68) < tol68, (v, cov68)
        assert abs(cov95 - 0.95) < tol95, (v, cov95)
    assert np.median(out["weight_ess"]) > 40
    assert np.all(np.isfinite(out["log_evidence"]))
    assert np.all(np.isfinite(out["E"])) and np.all(out["E"] >= 0) and out["E"].max() < 5.0


def test_deterministic_and_nearly_independent_of_batching(emu, sbc_stars, sbc_out):
    """Six stars in a batch of their own: the same draws twice; nearly the draws they got in the
    batch of all the prior stars (:func:`sbc_out`); other draws with another seed."""
    cat, _, prior, config = sbc_stars
    stars = jax.tree_util.tree_map(lambda a: a[:6], star_data_from_catalog(cat))
    grid = gp.make_cell_grid(emu)
    keys = star_keys(0, np.arange(6))
    a = gp.grid_batch(stars, keys, grid, emu, prior, config, FAST)
    b = gp.grid_batch(stars, keys, grid, emu, prior, config, FAST)
    same_star = np.ones(6, bool)
    for v in VARS:
        np.testing.assert_array_equal(np.asarray(a[v]), np.asarray(b[v]))
        x, y = np.asarray(a[v]), sbc_out[v][:6]
        same_star &= np.isclose(x, y, rtol=1e-5, atol=1e-4).all(axis=1)
        assert np.all(np.abs(np.median(x, axis=1) - np.median(y, axis=1)) < 0.05 * np.std(x, axis=1)), v
    # another batch size changes float32 round-off in the batched sums, which can flip a rare
    # resampling index; the later kernel rounds then differ for that star: its draws change, not
    # its distribution (the medians above). Most stars keep every draw.
    assert same_star.sum() >= 4, same_star
    d = gp.grid_batch(stars, star_keys(4, np.arange(6)), grid, emu, prior, config, FAST)
    assert not np.array_equal(np.asarray(a["mu"]), np.asarray(d["mu"]))


def test_neighbour_max_is_a_3x3x3_max_pool_over_the_nodes(emu):
    """The gathered neighbour table equals a dense-box maximum filter (cells without a node: −inf)."""
    from scipy.ndimage import maximum_filter

    grid = gp.make_cell_grid(emu)
    lp = np.random.default_rng(0).normal(size=grid.ijk.shape[0]).astype(np.float32)
    lp[::7] = -np.inf  # nodes with zero mass must not leak into their neighbours' maxima
    box = np.full(grid.index.shape, -np.inf, np.float32)
    ijk = tuple(np.asarray(grid.ijk).T)
    box[ijk] = lp
    ref = maximum_filter(box, size=3, mode="constant", cval=-np.inf)[ijk]
    np.testing.assert_array_equal(np.asarray(gp.neighbour_max(jnp.asarray(lp), grid)), ref)


def test_grid_settings_validation():
    with pytest.raises(ValueError, match="n_theta"):
        gp.GridSettings(n_theta=1)
    with pytest.raises(ValueError, match="temper"):
        gp.GridSettings(temper=0.0)


def test_callable_prior_refused(emu):
    prior = default_prior(emu, reddening=lambda th, mu, E, star, p: -E)
    with pytest.raises(NotImplementedError, match="nuts"):
        gp.grid_batch_fn(emu, prior, InferenceConfig())


def test_runner_resume_and_posterior_roundtrip(emu, sbc_stars, tmp_path):
    from dds_infer.pipeline import infer
    from dds_infer.posterior import Posterior

    cat, _, prior, config = sbc_stars
    cat = cat.subset(np.arange(10))
    out = tmp_path / "run"
    kw = dict(prior=prior, config=config, batch_size=4, seed=2, progress=False, method="grid", grid_settings=FAST)
    assert infer(cat, emu, out, stop_after_chunks=1, **kw) is None
    assert len(list((out / "chunks").glob("*.nc"))) == 1
    post = infer(cat, emu, out, **kw)
    assert list(post.star_id) == list(cat.star_ids())  # every star exactly once, in order
    assert post.n_chains == 1 and post.n_draws == FAST.n_draws
    loads = []  # an uninterrupted run combines its chunks from memory, reading none back
    real_load = Posterior.load
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Posterior, "load", classmethod(lambda cls, path: loads.append(path) or real_load(path)))
        full = infer(cat, emu, tmp_path / "again", **kw)  # identical draws
    assert loads == []
    np.testing.assert_array_equal(post.samples["mu"], full.samples["mu"])
    same_posterior(full, Posterior.load(tmp_path / "again" / "posterior.nc"))  # as the file holds it
    same_posterior(post, full)  # chunk 0 read back from disk, the rest held: the same
    s = post.summary()
    assert {"weight_ess", "log_evidence"} <= set(s.columns)
    np.testing.assert_array_equal(s["flag"] & 2, (s["weight_ess"] < 100) * 2)
    assert s["r_hat_max"].isna().all()
    back = Posterior.load(out / "posterior.nc")
    np.testing.assert_array_equal(back.star_stats["weight_ess"], post.star_stats["weight_ess"])
    assert back.attrs["method"] == "grid"



def test_a_failed_chunk_write_stops_the_run_and_a_rerun_resumes(emu, sbc_stars, tmp_path, monkeypatch):
    """Chunks are written on a background thread while the next is computed: a write that fails
    (here the second chunk's) stops the run with its error, and a rerun redoes only that chunk
    and what follows, with the draws of an uninterrupted run."""
    import sys

    from dds_infer import run_outputs
    from dds_infer.pipeline import infer

    sys.path.insert(0, str(Path(__file__).parent))
    from test_run_outputs import write_failing_for

    cat, _, prior, config = sbc_stars
    cat = cat.subset(np.arange(10))
    kw = dict(prior=prior, config=config, batch_size=4, seed=2, progress=False, method="grid", grid_settings=FAST)
    real_write = run_outputs.write_chunk
    monkeypatch.setattr(run_outputs, "write_chunk", write_failing_for("chunk_00001.nc"))
    out = tmp_path / "run"
    with pytest.raises(OSError, match="disk full"):
        infer(cat, emu, out, **kw)
    assert (out / "chunks" / "chunk_00000.nc").exists() and not (out / "chunks" / "chunk_00001.nc").exists()
    monkeypatch.setattr(run_outputs, "write_chunk", real_write)
    post = infer(cat, emu, out, **kw)
    assert list(post.star_id) == list(cat.star_ids())
    full = infer(cat, emu, tmp_path / "again", **kw)
    np.testing.assert_array_equal(post.samples["E"], full.samples["E"])

def test_cli_grid_json_and_dustmap(emu, sbc_stars, tmp_path, capsys, monkeypatch):
    from dds_infer.catalog_io import catalog_to_table, write_astropy_table
    from dds_infer.cli import main

    pads, batch_fn = [], gp.grid_batch_fn
    monkeypatch.setattr(gp, "grid_batch_fn", lambda *a, **kw: pads.append(kw["pad_to"]) or batch_fn(*a, **kw))

    cat, _, _, _ = sbc_stars
    sub = cat.subset(np.arange(5))
    table = catalog_to_table(sub)
    table["l"], table["b"] = np.linspace(10, 200, 5), np.linspace(-40, 60, 5)
    path = write_astropy_table(table, tmp_path / "cat.parquet")
    out = tmp_path / "run"
    assert main(["infer", "--model", str(SHIPPED), "--catalog", str(path), "--out", str(out), "--method", "grid",
                 "--n-draws", "300", "--no-progress", "--combine", "never", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_stars"] == 5 and res["method"] == "grid" and res["frac_rhat_lt_1_01"] is None
    assert all(res[k] is None for k in ("engine", "parameterization", "target_accept", "init_mass"))  # NUTS-only
    # the default chunk is 1,024 stars: a 5-star catalogue is padded to the next power of two, not to 1,024
    assert pads == [8]
    # the draws stay in the chunks (as for a catalogue too large to combine); dustmap reads them there
    assert res["combined"] is False and res["out"]["posterior"] is None and not (out / "posterior.nc").exists()
    assert res["median_ess"] > 0 and res["catalog_err_floor"] is None  # simulated: σ_floor is in the noise
    h5 = tmp_path / "map.h5"
    assert main(["dustmap", "--posterior", str(out), "--catalog", str(path), "--out", str(h5), "--nside", "4",
                 "--json"]) == 0
    dm = json.loads(capsys.readouterr().out)
    assert dm["n_stars"] == 5 and dm["n_pixels"] >= 2
