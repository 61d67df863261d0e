"""Per-star Gaia (E)DR3 parallax zero-points (Lindegren et al. 2021) and `dds-infer infer --zp dr3-l21`."""

import json
from pathlib import Path

import numpy as np
import pytest

from dds_infer.catalog import CatalogError
from dds_infer.cli import main
from dds_infer.parallax_zp import (DR3_GLOBAL_ZP, L21_COLUMNS, check_not_corrected_twice, correct_parallax,
                                   lindegren2021_zero_point)

zpt = pytest.importorskip("zero_point.zpt", reason="needs the [gaia] extra (gaiadr3-zeropoint)")
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "mock13-v1"


def _gaia_inputs():
    """Rows: 5p ×3, 6p ×2 inside the recipe's range; then 2p, G > 21, ν_eff outside, missing ν_eff."""
    g = np.array([12.0, 15.5, 17.0, 14.0, 18.5, 16.0, 21.5, 16.0, 16.0])
    nu = np.array([1.55, 1.48, 1.60, np.nan, np.nan, 1.5, 1.5, 2.05, np.nan])
    pc = np.array([np.nan, np.nan, np.nan, 1.50, 1.45, np.nan, np.nan, np.nan, np.nan])
    beta = np.array([0.0, 35.0, -70.0, 10.0, -20.0, 0.0, 5.0, 5.0, 5.0])
    sol = np.array([31, 31, 31, 95, 95, 3, 31, 31, 31])
    return g, nu, pc, beta, sol


def test_l21_matches_the_reference_code_and_counts_every_fallback():
    g, nu, pc, beta, sol = _gaia_inputs()
    zp, rep = lindegren2021_zero_point(g, nu, pc, beta, sol)
    zpt.load_tables()
    ref = zpt.get_zpt(g[:5], nu[:5], pc[:5], beta[:5], sol[:5])
    np.testing.assert_allclose(zp[:5], ref, rtol=0, atol=1e-12)
    # Lindegren et al. (2021, Figs. 20-21): zero-points of a few tens of µas, negative, at these G
    assert np.all((zp[:5] > -0.07) & (zp[:5] < 0.0))
    np.testing.assert_array_equal(zp[5:], DR3_GLOBAL_ZP)
    assert rep["n_stars"] == 9 and rep["n_recipe"] == 5 and rep["n_fallback"] == 4
    assert rep["fallback_reasons"] == {"two_parameter_or_unknown": 1, "missing_input": 1, "outside_validity": 2}
    with pytest.raises(ValueError, match="ecl_lat has shape"):
        lindegren2021_zero_point(g, nu, pc, beta[:3], sol)


def test_correct_parallax_records_it_and_refuses_a_second_correction():
    from dds_infer.catalog import StarCatalog

    n = 4
    cat = StarCatalog.from_arrays(np.full((n, 13), 15.0), np.full((n, 13), 0.02), np.array([1.0, 0.5, 2.0, 0.1]),
                                  np.full(n, 0.05))
    zp = np.array([-0.02, -0.03, -0.01, -0.04])
    fixed = correct_parallax(cat, zp, {"recipe": "lindegren2021"})
    np.testing.assert_allclose(fixed.parallax, cat.parallax - zp)
    assert fixed.meta["parallax_zero_point"]["recipe"] == "lindegren2021"
    np.testing.assert_array_equal(cat.parallax, [1.0, 0.5, 2.0, 0.1])  # the input is not modified
    with pytest.raises(CatalogError, match="already corrected"):
        correct_parallax(fixed, zp)
    with pytest.raises(ValueError, match="zp='none'"):
        check_not_corrected_twice(fixed, -0.029)
    check_not_corrected_twice(fixed, 0.0)
    with pytest.raises(CatalogError, match="not finite in 1 rows"):
        correct_parallax(cat, np.array([0.0, np.nan, 0.0, 0.0]))


def test_cli_zp_dr3_l21_equals_inference_on_corrected_parallaxes(tmp_path, capsys, monkeypatch):
    """--zp dr3-l21 hands pipeline.infer exactly what --zp none does on a table whose parallaxes
    were corrected by the reference code (so the posteriors are those of that run: inference on
    a given catalogue is tested elsewhere); the report counts the fallbacks."""
    from conftest import record_pipeline_infer
    from dds_infer.catalog_io import catalog_to_table, write_astropy_table
    from dds_infer.mock import MockConfig, make_mock
    from dds_infer import load_bundle

    recorded = record_pipeline_infer(monkeypatch)
    mock = make_mock(load_bundle(SHIPPED), MockConfig(n=9, seed=5, labels=False))
    table = catalog_to_table(mock.catalog)
    for name, col in zip(L21_COLUMNS, _gaia_inputs()):
        table[name] = col
    raw = write_astropy_table(table, tmp_path / "raw.parquet")
    zpt.load_tables()
    g, nu, pc, beta, sol = _gaia_inputs()
    ref_zp = np.r_[zpt.get_zpt(g[:5], nu[:5], pc[:5], beta[:5], sol[:5]), np.full(4, DR3_GLOBAL_ZP)]
    pre = table.copy()
    pre["parallax"] = np.asarray(table["parallax"]) - ref_zp
    fixed = write_astropy_table(pre, tmp_path / "fixed.parquet")
    common = ["--model", str(SHIPPED), "--method", "grid", "--no-progress", "--json"]
    assert main(["infer", "--catalog", str(raw), "--out", str(tmp_path / "a"), "--zp", "dr3-l21", *common]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["zp"] == "dr3-l21" and res["parallax_zero_point"]["n_fallback"] == 4
    assert res["parallax_zero_point"]["fallback_reasons"]["outside_validity"] == 2
    assert main(["infer", "--catalog", str(fixed), "--out", str(tmp_path / "b"), "--zp", "none", *common]) == 0
    capsys.readouterr()
    calls = [{"parallax": c["catalog"].parallax, "parallax_err": c["catalog"].parallax_err, "zp": c["config"].zp,
              "mag": c["catalog"].mag} for c in recorded]
    a, b = calls
    assert a["zp"] == b["zp"] == "none"  # corrected once, in the catalogue
    np.testing.assert_allclose(a["parallax"], b["parallax"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(a["parallax"], np.asarray(table["parallax"]) - ref_zp, rtol=0, atol=1e-12)
    assert not np.allclose(a["parallax"], np.asarray(table["parallax"]))
    np.testing.assert_array_equal(a["parallax_err"], b["parallax_err"])
    np.testing.assert_array_equal(a["mag"], b["mag"])
    # a shard (infer --rows) corrects its own rows with their own Gaia columns
    assert main(["infer", "--catalog", str(raw), "--out", str(tmp_path / "s"), "--zp", "dr3-l21", "--rows", "3:8",
                 *common]) == 0
    assert json.loads(capsys.readouterr().out)["parallax_zero_point"]["n_fallback"] == 3
    np.testing.assert_allclose(recorded[2]["catalog"].parallax, a["parallax"][3:8], rtol=0, atol=1e-12)
    # without the Gaia columns: a clear error naming them, before any inference
    bare = write_astropy_table(catalog_to_table(mock.catalog), tmp_path / "bare.parquet")
    assert main(["infer", "--catalog", str(bare), "--out", str(tmp_path / "c"), "--zp", "dr3-l21", *common]) != 0
    assert "nu_eff_used_in_astrometry" in capsys.readouterr().err
    assert len(recorded) == 3


def test_read_columns_names_missing_columns(tmp_path):
    from astropy.table import Table

    from dds_infer.catalog_io import read_columns

    t = Table({"phot_g_mean_mag": [15.0, 16.0], "ecl_lat": [1.0, 2.0]})
    got = read_columns(t, ["ecl_lat"])
    np.testing.assert_array_equal(got["ecl_lat"], [1.0, 2.0])
    with pytest.raises(CatalogError, match="pseudocolour"):
        read_columns(t, L21_COLUMNS)
