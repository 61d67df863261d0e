"""Per-band photometric zero-point offsets (dds_infer.band_offsets, dds-infer calibrate-offsets,
dds-infer infer --band-offsets): the residuals, the robust update, the gauge projection, the file
format and its errors, and the recovery of offsets injected into stars drawn from the prior."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from dds_infer.band_offsets import (BandOffsets, band_residual_report, estimate_offset_update, posterior_mean_residuals, project_out,
                                    read_band_offsets)
from dds_infer.inference import InferenceConfig, star_data_from_catalog
from dds_infer.priors import default_prior
from dds_infer.simulate import draw_from_prior, simulate_observations

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "mock13-v1"
VARS = ("teff", "logg", "feh", "mu", "E")


@pytest.fixture(scope="module")
def emu():
    from dds_infer import load_bundle

    return load_bundle(SHIPPED)


def _prior_stars(emu, n, seed):
    prior = default_prior(emu, reddening="halfnormal", E_scale=0.3)
    draws = draw_from_prior(prior, n, seed=seed)
    cat, keep = simulate_observations(emu, draws, InferenceConfig(), seed=seed)
    return cat, {v: np.asarray(draws[v])[keep] for v in VARS}, prior


def test_posterior_mean_residuals_are_data_minus_model_averaged_with_chain_weights(emu):
    cat, truth, _ = _prior_stars(emu, 60, seed=3)
    n, c, s = cat.n_stars, 2, 3
    rng = np.random.default_rng(0)
    scale = {"teff": 50.0, "logg": 0.05, "feh": 0.05, "mu": 0.05, "E": 0.01}
    samples = {v: truth[v][:, None, None] + scale[v] * rng.standard_normal((n, c, s)) for v in VARS}
    samples["E"] = np.abs(samples["E"])
    weights = np.column_stack([np.full(n, 0.25), np.full(n, 0.75)])
    offsets = tuple(np.linspace(-0.03, 0.03, emu.n_bands))
    cfg = InferenceConfig(band_offsets=offsets)
    got = posterior_mean_residuals(emu, star_data_from_catalog(cat), samples, cfg, weights)
    theta = np.stack([samples[v] for v in ("teff", "logg", "feh")], axis=-1)
    model = np.asarray(emu.predict_apparent(jnp.asarray(theta), jnp.asarray(samples["mu"]),
                                            jnp.asarray(samples["E"]))) + np.asarray(offsets)
    want = np.einsum("nc,ncb->nb", weights, np.mean(cat.mag[:, None, None, :] - model, axis=2))
    observed = np.isfinite(cat.mag)
    assert np.all(np.isnan(got[~observed])) and (~observed).any()
    np.testing.assert_allclose(got[observed], want[observed], atol=2e-4)


def test_offset_update_is_the_median_over_usable_stars_with_its_error():
    rng = np.random.default_rng(1)
    n, shift = 4000, np.array([0.03, -0.02, 0.0, 0.01])
    r = shift + 0.05 * rng.standard_normal((n, 4))
    r[: n // 10] += 5.0  # flagged stars far off: must not pull the update
    usable = np.arange(n) >= n // 10
    r[rng.random((n, 4)) < 0.2] = np.nan  # bands not observed
    r[: n - 10, 3] = np.nan  # band 3: only the last 10 stars, fewer than min_stars
    r[n - 10:, 3] = shift[3]
    est = estimate_offset_update(r, usable, min_stars=20)
    assert np.all(np.abs(est["update"][:3] - shift[:3]) < 4 * est["error"][:3])
    # the median's standard error: 1.2533 σ / √n for Gaussian residuals
    np.testing.assert_allclose(est["error"][:3], 1.2533 * 0.05 / np.sqrt(est["n"][:3]), rtol=0.1)
    assert est["update"][3] == 0.0 and np.isnan(est["error"][3]) and est["n"][3] == 10
    assert np.all(est["n"][:3] < 0.85 * n)


def test_band_residual_report_suggests_calibration_only_for_clear_offsets():
    import pandas as pd

    rng = np.random.default_rng(4)
    n = 500
    flag = np.where(np.arange(n) < 50, 4, 0)
    table = pd.DataFrame({"flag": flag,
                          "resid_a": 0.03 + 0.05 * rng.standard_normal(n),   # clear: 0.03 mag, ~13σ
                          "resid_b": 0.004 + 0.05 * rng.standard_normal(n),  # significant but < 0.01 mag
                          "resid_c": np.where(np.arange(n) < 60, 0.5, np.nan)})  # 10 usable stars
    table.loc[flag != 0, "resid_b"] = 3.0  # flagged stars do not count
    rep = band_residual_report(table, ["a", "b", "c"])
    assert rep["suggest_calibration"] == ["a"]
    assert rep["bands"]["b"]["n"] == n - 50 and abs(rep["bands"]["b"]["median"] - 0.004) < 0.01
    assert rep["bands"]["c"] == {"median": None, "error": None, "n": 10}
    assert band_residual_report(table.drop(columns="resid_c"), ["a", "b", "c"]) == {}


def test_project_out_removes_the_gauge_directions_in_the_weighted_metric():
    rng = np.random.default_rng(2)
    A = np.column_stack([np.ones(6), np.linspace(3.0, 0.1, 6)])
    w = np.array([1.0, 4.0, 2.0, 1.0, 0.5, 0.0])  # last band: no estimate
    v = rng.standard_normal(6)
    u = project_out(v, A, w)
    assert np.allclose(A[:5].T @ (w[:5] * u[:5]), 0.0, atol=1e-12)  # W-orthogonal to span(A)
    assert u[5] == v[5]
    assert np.allclose(project_out(A @ [0.3, -0.2], A, w)[:5], 0.0, atol=1e-12)
    np.testing.assert_array_equal(project_out(v, np.zeros((6, 0)), w), v)


def test_offsets_file_round_trip_and_errors(tmp_path):
    bands = ("g", "r", "i")
    res = BandOffsets(bands=bands, offsets=np.array([0.01, -0.02, 0.0]), errors=np.array([0.001, np.nan, 0.002]),
                      n_stars=np.array([50, 3, 40]))
    path = res.write(tmp_path / "o.json")
    assert read_band_offsets(path, bands) == (0.01, -0.02, 0.0)
    assert json.loads(path.read_text())["errors"]["r"] is None
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"i": 0.05}))
    assert read_band_offsets(plain, bands) == (0.0, 0.0, 0.05)  # unnamed bands get 0
    plain.write_text(json.dumps({"g": 0.01, "W9": 0.1}))
    with pytest.raises(ValueError, match=r"unknown band name\(s\) \['W9'\]"):
        read_band_offsets(plain, bands)
    plain.write_text('{"r": NaN}')
    with pytest.raises(ValueError, match="band 'r' must be a finite number"):
        read_band_offsets(plain, bands)
    plain.write_text("[0.1, 0.2, 0.3]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_band_offsets(plain, bands)
    with pytest.raises(FileNotFoundError, match="band-offsets file"):
        read_band_offsets(tmp_path / "missing.json", bands)


def test_infer_cli_reads_the_offsets_into_its_likelihood(tmp_path):
    from dds_infer.cli import build_parser
    from dds_infer.commands._model_args import build_model_inputs

    cat_path = tmp_path / "cat.parquet"
    from dds_infer import load_bundle
    from dds_infer.catalog_io import catalog_to_table, write_astropy_table

    emu = load_bundle(SHIPPED)
    cat, _, _ = _prior_stars(emu, 20, seed=5)
    write_astropy_table(catalog_to_table(cat), cat_path)
    off = tmp_path / "off.json"
    off.write_text(json.dumps({"ps1_g": 0.04, "2mass_j": -0.03}))
    args = build_parser().parse_args(["infer", "--model", str(SHIPPED), "--catalog", str(cat_path), "--out",
                                      str(tmp_path / "run"), "--band-offsets", str(off),
                                      "--parallax-inflation", "1.2"])
    inputs = build_model_inputs(args)
    expect = np.zeros(emu.n_bands)
    expect[list(emu.bands.names).index("ps1_g")], expect[list(emu.bands.names).index("2mass_j")] = 0.04, -0.03
    np.testing.assert_array_equal(inputs.config.band_offsets, expect)
    assert inputs.config.parallax_inflation == 1.2 and inputs.band_offsets["ps1_g"] == 0.04


@pytest.mark.slow
def test_calibration_recovers_injected_offsets_and_resumes(emu, tmp_path, capsys):
    """Offsets injected into three bands of stars drawn from the prior are recovered, up to the two
    directions the stars cannot fix (a common offset and one along the mean R), within 4σ."""
    from dds_infer.catalog_io import catalog_to_table, write_astropy_table
    from dds_infer.cli import main

    cat, _, _ = _prior_stars(emu, 420, seed=11)
    names = list(emu.bands.names)
    delta = np.zeros(emu.n_bands)
    for band, v in (("ps1_g", 0.05), ("2mass_j", -0.04), ("unwise_w2", 0.03)):
        delta[names.index(band)] = v
    cat.mag[:] = cat.mag + delta  # the catalogue's photometry is off by δ (NaN stays NaN)
    path = write_astropy_table(catalog_to_table(cat), tmp_path / "cat.parquet")
    out = tmp_path / "cal"
    argv = ["calibrate-offsets", "--model", str(SHIPPED), "--catalog", str(path), "--out", str(out),
            "--reddening", "halfnormal", "--iterations", "5", "--n-draws", "300",
            "--no-progress", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    got = np.array([res["band_offsets"][b] for b in names])
    err = np.array([res["errors"][b] for b in names])
    assert res["n_stars"] == cat.n_stars and np.all(np.isfinite(err))
    last = res["history"][-1]
    basis = np.column_stack([np.ones(len(names)), last["mean_R"]])
    target = project_out(delta, basis, 1.0 / err ** 2)  # what the stars can tell
    # the updates never move the gauge directions: δ̂ stays W-orthogonal to them (up to the
    # per-iteration weights)
    assert np.all(np.abs(got - target) < 4 * err + 0.004), (got - target) / err
    before, after = np.sum((target / err) ** 2), np.sum(((got - target) / err) ** 2)
    assert after < 0.1 * before, (before, after)
    assert res["converged"] and (out / "band_offsets.json").exists()
    # only the summaries are read back: no iteration combines its draws into one file
    assert not list(out.glob("iter_*/posterior.nc"))
    # every run's summary has each star's residual per band: the first iteration's (no offsets)
    # asks for a calibration in the band offset most, the last one's in none
    import pandas as pd

    first = band_residual_report(pd.read_parquet(out / "iter_00" / "summary.parquet"), names)
    last_run = band_residual_report(pd.read_parquet(out / f"iter_{len(res['history']) - 1:02d}" / "summary.parquet"),
                                    names)
    assert "ps1_g" in first["suggest_calibration"], first
    assert last_run["suggest_calibration"] == [], last_run
    # a rerun resumes every iteration's run and gives the same offsets
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["band_offsets"] == res["band_offsets"]
