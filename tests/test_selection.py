"""Selection volume of a magnitude-limited training set (dds_infer.selection) and the corrected θ prior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dds_infer import galaxy
from dds_infer.selection import log_visible_fraction


def test_visible_fraction_is_the_selected_fraction_of_a_simulated_galaxy():
    """Draw (μ, [Fe/H]) from the sky-averaged Galactic model, M uniformly, keep M + μ < limit:
    in every (M, [Fe/H]) cell the kept fraction is the mean of V(M, [Fe/H]) over the cell's stars."""
    n, limit = 200_000, 15.0
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    mu = np.asarray(galaxy.sample_distances(k1, None, None, n=n), dtype=np.float64)[..., :n].reshape(-1)
    _, feh = galaxy.sample_components_and_feh(k2, jnp.asarray(mu))
    feh = np.asarray(feh, dtype=np.float64)
    M = np.asarray(jax.random.uniform(k3, (n,), minval=-1.0, maxval=9.0), dtype=np.float64)
    kept = M + mu < limit
    V = np.exp(log_visible_fraction(M, np.round(feh, 1), limit))  # [Fe/H] rounded: 0.1-dex CDF table
    m_bin = np.digitize(M, np.arange(0.0, 9.0, 1.0))
    f_bin = np.digitize(feh, [-1.2, -0.5])  # halo-, thick- and thin-disc-dominated
    checked = 0
    for i in np.unique(m_bin):
        for j in range(3):
            cell = (m_bin == i) & (f_bin == j)
            if cell.sum() < 2000:
                continue
            se = np.sqrt(V[cell].mean() * (1 - V[cell].mean()) / cell.sum())
            assert kept[cell].mean() == pytest.approx(V[cell].mean(), abs=4 * se + 0.01), (i, j)
            checked += 1
    assert checked >= 15
    # the [Fe/H] conditioning matters: metal-poor (halo) stars are mostly far away
    assert kept[f_bin == 0].mean() < 0.7 * kept[f_bin == 2].mean()


def test_visible_fraction_falls_with_absolute_magnitude_and_rejects_bad_input():
    M = np.linspace(-2.0, 12.0, 57)
    for feh in (-1.5, -0.2):
        lv = log_visible_fraction(M, feh, 16.0)
        assert np.all(np.diff(lv) <= 1e-12) and lv[0] > -0.1 and lv[-1] < -5.0
    # the same star is visible in more of the Galaxy to a fainter limit
    assert np.all(log_visible_fraction(M, -0.2, 17.0) >= log_visible_fraction(M, -0.2, 16.0) - 1e-12)
    with pytest.raises(ValueError, match="finite magnitude"):
        log_visible_fraction(M, 0.0, np.inf)
    with pytest.raises(ValueError, match="finite"):
        log_visible_fraction(np.array([1.0, np.nan]), 0.0, 16.0)


SHIPPED = __import__("pathlib").Path(__file__).resolve().parents[1] / "models" / "mock13-v1"


@pytest.fixture(scope="module")
def shipped():
    from dds_infer import load_bundle

    return load_bundle(SHIPPED)


def _slice_integral(prior, feh, n=301):
    from dds_infer.priors import log_hr_prior

    lo, hi = np.asarray(prior.grid_lo, float), np.asarray(prior.grid_hi, float)
    T, g = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    TT, gg = np.meshgrid(T, g, indexing="ij")
    p = np.exp(np.asarray(log_hr_prior(jnp.asarray(np.stack([TT, gg, np.full_like(TT, feh)], -1)), prior), float))
    return np.trapezoid(np.trapezoid(p, g, axis=1), T)


def test_corrected_theta_prior_is_the_density_over_the_volume(shipped):
    """log p_corrected = log p − log V + a constant per [Fe/H] slice, on the supported nodes;
    still normalised per slice; a giant loses against a dwarf by their volume ratio."""
    from dds_infer.priors import default_prior, log_hr_prior
    from dds_infer.selection import selection_log_volume

    base, corr = default_prior(shipped), default_prior(shipped, selection_limit=16.0)
    support = np.asarray(shipped.domain.density)[0] >= 0.01
    log_v = selection_log_volume(shipped, 16.0)
    resid = np.asarray(corr.log_hr, float) - np.asarray(base.log_hr, float) + log_v
    for k in range(support.shape[2]):
        if support[:, :, k].sum() > 10:
            r = resid[:, :, k][support[:, :, k]]
            assert np.ptp(r) < 1e-4, k
    feh0 = float(np.median(np.asarray(shipped.domain.feh)))
    assert _slice_integral(corr, feh0) == pytest.approx(_slice_integral(base, feh0), rel=0.03)
    giant, dwarf = jnp.array([4750.0, 2.4, feh0]), jnp.array([5200.0, 4.5, feh0])
    assert float(shipped.domain.density_at(giant)) > 0.01 and float(shipped.domain.density_at(dwarf)) > 0.01
    M = np.asarray(shipped.absolute_mags(jnp.stack([giant, dwarf])))[:, 0]
    assert M[1] - M[0] > 3.0  # the dwarf is > 3 mag fainter: visible in a much smaller volume
    shift = (float(log_hr_prior(giant, corr)) - float(log_hr_prior(dwarf, corr))
             - float(log_hr_prior(giant, base)) + float(log_hr_prior(dwarf, base)))
    assert shift < -2.0
    # a limit no star reaches (V = 1 everywhere) is no correction; the flat θ prior has nothing to correct
    far = default_prior(shipped, selection_limit=60.0)
    np.testing.assert_allclose(np.asarray(far.log_hr), np.asarray(base.log_hr), atol=1e-5)
    with pytest.raises(ValueError, match="selection_limit"):
        default_prior(shipped, theta="flat", selection_limit=16.0)


def test_cli_selection_limit_reaches_the_prior(tmp_path, capsys, monkeypatch):
    import json

    from conftest import record_pipeline_infer
    from dds_infer import load_bundle
    from dds_infer.catalog_io import catalog_to_table, write_astropy_table
    from dds_infer.cli import main
    from dds_infer.mock import MockConfig, make_mock
    from dds_infer.priors import default_prior

    calls = record_pipeline_infer(monkeypatch)
    emu = load_bundle(SHIPPED)
    cat = write_astropy_table(catalog_to_table(make_mock(emu, MockConfig(n=4, seed=1, labels=False)).catalog),
                              tmp_path / "c.parquet")
    common = ["infer", "--model", str(SHIPPED), "--catalog", str(cat), "--no-progress", "--json"]
    assert main([*common, "--out", str(tmp_path / "a"), "--selection-limit", "16.5"]) == 0
    assert json.loads(capsys.readouterr().out)["selection_limit"] == 16.5
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    assert json.loads(capsys.readouterr().out)["selection_limit"] is None
    priors = [c["prior"] for c in calls]
    np.testing.assert_allclose(np.asarray(priors[0].log_hr), np.asarray(default_prior(emu, selection_limit=16.5).log_hr))
    np.testing.assert_allclose(np.asarray(priors[1].log_hr), np.asarray(default_prior(emu).log_hr))
    # 'bundle': the shipped mock model records none -> a clear error, before any inference
    assert main([*common, "--out", str(tmp_path / "c"), "--selection-limit", "bundle"]) != 0
    assert "records no training selection limit" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "d"), "--selection-limit", "faint"]) != 0
    assert "--selection-limit must be" in capsys.readouterr().err
    assert len(calls) == 2


def test_import_keras_records_the_selection_limit_for_infer(anchor_dir, tmp_path, capsys, monkeypatch):
    import json

    from conftest import record_pipeline_infer
    from dds_infer import load_bundle
    from dds_infer.cli import main
    from dds_infer.priors import default_prior

    a = anchor_dir
    assert main(["import-keras", str(a / "green2020_nn_model.h5"), "--normalization",
                 str(a / "green2020_theta_normalization.json"), "--density", str(a / "green2020_input_density.h5"),
                 "--out", str(tmp_path / "pub"), "--selection-limit", "17", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["selection_limit"] == 17.0
    emu = load_bundle(tmp_path / "pub")
    assert emu.provenance["training_selection"] == {"band": emu.bands.names[0], "limit": 17.0,
                                                    "estimate": "given to dds-infer import-keras"}
    calls = record_pipeline_infer(monkeypatch)
    from dds_infer.catalog_io import read_green2020_h5, write_table

    cat = write_table(read_green2020_h5(a / "green2020_test_data_small.h5").subset(np.arange(5)), tmp_path / "c.parquet")
    assert main(["infer", "--model", str(tmp_path / "pub"), "--catalog", str(cat), "--out", str(tmp_path / "r"),
                 "--selection-limit", "bundle", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["selection_limit"] == 17.0
    np.testing.assert_array_equal(np.asarray(calls[0]["prior"].log_hr),
                                  np.asarray(default_prior(emu, selection_limit=17.0).log_hr))


def test_domain_draws_follow_density_over_volume():
    """sample_theta_from_domain with log V draws (Teff, log g) ∝ ρ / V within each [Fe/H] slice."""
    from dds_infer.domain import TrainingDomain
    from dds_infer.mock import sample_theta_from_domain

    dens = np.zeros((1, 4, 3, 2))
    dens[0, 1, 1, :] = 1.0  # two equally dense cells per slice
    dens[0, 2, 2, :] = 1.0
    dom = TrainingDomain(density=jnp.asarray(dens), teff=jnp.linspace(4000.0, 7000.0, 4),
                         logg=jnp.linspace(1.0, 5.0, 3), feh=jnp.array([-0.5, 0.0]))
    log_v = np.zeros((4, 3, 2))
    log_v[2, 2, :] = np.log(4.0)  # cell (2, 2) visible in 4x the volume: 4x fewer in the population
    rng = np.random.default_rng(0)
    n = 40_000
    feh = rng.choice([-0.5, 0.0], n)
    th, ok = sample_theta_from_domain(rng, dom, feh, edge_weight=False, log_volume=log_v)
    hot = th[ok, 0] > 5500.0
    assert ok.all() and hot.mean() == pytest.approx(0.2, abs=0.01)
    th0, _ = sample_theta_from_domain(np.random.default_rng(0), dom, feh, edge_weight=False)
    assert (th0[:, 0] > 5500.0).mean() == pytest.approx(0.5, abs=0.01)


def test_mock_population_follows_the_bundles_recorded_selection(shipped):
    """A truth bundle that records its training selection: make_mock draws θ from density / V
    ("auto", as default_prior), so fewer luminous giants than from the density itself."""
    from dataclasses import replace

    from dds_infer.mock import MockConfig, make_mock
    from dds_infer.priors import default_prior
    from dds_infer.selection import SELECTION_KEY

    rec = shipped.with_provenance(**{SELECTION_KEY: {"band": shipped.bands.names[0], "limit": 16.0}})
    cfg = MockConfig(n=1500, seed=2, labels=False)
    auto, raw = make_mock(rec, cfg), make_mock(rec, replace(cfg, selection_limit=None))
    assert auto.report["population_selection_limit"] == 16.0 and raw.report["population_selection_limit"] is None
    assert make_mock(shipped, MockConfig(n=50, seed=2, labels=False)).report["population_selection_limit"] is None
    g_auto, g_raw = (float(np.mean(m.truth["logg"] < 3.5)) for m in (auto, raw))
    assert g_auto < 0.8 * g_raw, (g_auto, g_raw)
    # the inference prior makes the same choice by default
    np.testing.assert_array_equal(np.asarray(default_prior(rec).log_hr),
                                  np.asarray(default_prior(rec, selection_limit=16.0).log_hr))
    np.testing.assert_array_equal(np.asarray(default_prior(shipped).log_hr),
                                  np.asarray(default_prior(shipped, selection_limit=None).log_hr))


def test_mock_cli_draws_the_population_of_the_selection_limit(tmp_path, capsys):
    """dds-infer mock --selection-limit hands the limit to make_mock (same catalogue as the API
    call with that limit, and not the one without); bad combinations are one clear error."""
    import json

    from dds_infer import load_bundle
    import pandas as pd

    from dds_infer.cli import main
    from dds_infer.mock import MockConfig, make_mock

    emu = load_bundle(SHIPPED)
    common = ["mock", "--truth", str(SHIPPED), "--n", "40", "--no-labels", "--no-progress", "--json"]
    assert main([*common, "--out", str(tmp_path / "a.parquet"), "--selection-limit", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["population_selection_limit"] == 16.0
    got = pd.read_parquet(tmp_path / "a.parquet")["true_logg"].to_numpy()
    want = make_mock(emu, MockConfig(n=40, seed=0, labels=False, selection_limit=16.0)).truth["logg"].to_numpy()
    raw = make_mock(emu, MockConfig(n=40, seed=0, labels=False, selection_limit=None)).truth["logg"].to_numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert not np.allclose(got, raw)
    assert main([*common, "--out", str(tmp_path / "b.parquet")]) == 0
    assert json.loads(capsys.readouterr().out)["population_selection_limit"] is None  # mock13-v1 records none
    assert main([*common, "--out", str(tmp_path / "c.parquet"), "--selection-limit", "bundle"]) != 0
    assert "records no training selection limit" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "d.parquet"), "--population", "isochrone",
                 "--selection-limit", "16"]) != 0
    assert "--selection-limit applies to --population domain" in capsys.readouterr().err
