"""StarCatalog validation, readers and writers (dds_infer.catalog / catalog_io)."""

import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.table import MaskedColumn, Table

from dds_infer.catalog import CatalogError, StarCatalog, ValidationReport, validate
from dds_infer.catalog_io import (
    catalog_to_table,
    default_column_map,
    read_green2020_h5,
    read_table,
    table_to_catalog,
    write_table,
)
from dds_infer.passbands import GREEN2020

N, B = 20, len(GREEN2020)


def make_catalog(n=N, seed=0, labels=True, prior=True, pos=True, ids=True, **over) -> StarCatalog:
    rng = np.random.default_rng(seed)
    mag = rng.uniform(10, 16, (n, B))
    mag_err = rng.uniform(0.01, 0.1, (n, B))
    mag[::3, 3] = mag_err[::3, 3] = np.nan  # ps1_g missing for every 3rd star
    mag[:, 11] = mag_err[:, 11] = np.nan  # W1 missing everywhere
    kw = dict(mag=mag, mag_err=mag_err, parallax=rng.uniform(-0.2, 3.0, n),
              parallax_err=rng.uniform(0.02, 0.3, n), bands=GREEN2020)
    if labels:
        kw["theta"] = np.column_stack([rng.uniform(4000, 7000, n), rng.uniform(1, 5, n),
                                       rng.uniform(-2, 0.5, n)])
        sd = np.column_stack([rng.uniform(50, 150, n), rng.uniform(0.05, 0.2, n),
                              rng.uniform(0.03, 0.1, n)])
        corr = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]])
        cov = sd[:, :, None] * corr * sd[:, None, :]
        kw["theta_cov"] = 0.5 * (cov + np.swapaxes(cov, 1, 2))  # exactly symmetric
    if prior:
        kw["E_prior"] = rng.uniform(0, 1, n)
        kw["E_prior_err"] = rng.uniform(0.01, 0.1, n)
    if pos:
        kw["l"] = rng.uniform(0, 360, n)
        kw["b"] = rng.uniform(-90, 90, n)
    if ids:
        kw["ids"] = np.array([f"star{i:03d}" for i in range(n)])
    kw.update(over)
    return StarCatalog(**kw)


def assert_same(a: StarCatalog, b: StarCatalog):
    for k in ("mag", "mag_err", "parallax", "parallax_err", "theta", "theta_cov",
              "E_prior", "E_prior_err", "l", "b", "ids"):
        x, y = getattr(a, k), getattr(b, k)
        if x is None:
            assert y is None, k
            continue
        assert y is not None, k
        if x.dtype.kind == "f":
            assert y.dtype == np.float64, k
            np.testing.assert_array_equal(x, y, err_msg=k)
        else:
            assert list(x) == list(y), k
    assert a.bands == b.bands


def raises(cat, match=None, **kw) -> CatalogError:
    with pytest.raises(CatalogError) as ei:
        validate(cat, **kw)
    if match is not None:
        for m in ([match] if isinstance(match, str) else match):
            assert m in str(ei.value), (m, str(ei.value))
    return ei.value


# --- the real anchor file ------------------------------------------------------------

def test_green2020_anchor_loads_all_stars(anchor_dir):
    path = anchor_dir / "green2020_test_data_small.h5"
    cat = read_green2020_h5(path)
    with h5py.File(path, "r") as f:
        raw = f["data"][:]
        r_fit = f["r_fit"][:]
    assert len(cat) == 10_000 == len(raw)
    assert cat.mag.shape == (10_000, 13) and cat.mag.dtype == np.float64
    assert cat.theta.shape == (10_000, 3) and cat.theta_cov.shape == (10_000, 3, 3)
    # every NaN in the raw file is a masked band; nothing dropped or filled
    assert (~cat.observed).sum() == np.isnan(raw["mag"]).sum() > 0
    np.testing.assert_array_equal(np.isnan(cat.mag), np.isnan(raw["mag"]))
    np.testing.assert_array_equal(cat.mag, raw["mag"].astype(np.float64))
    np.testing.assert_array_equal(cat.E_prior, raw["r"].astype(np.float64))
    np.testing.assert_array_equal(cat.ids, np.arange(10_000))
    assert set(np.unique(cat.meta["atm_source"])) <= {"lamost", "apogee", "galah"}
    assert cat.meta["atm_source"].dtype.kind == "U" and cat.meta["r_source"].dtype.kind == "U"
    np.testing.assert_array_equal(cat.meta["r_fit"], r_fit)
    rows = [5, 2, 9000]  # per-star meta arrays follow a subset's rows; the rest is kept as is
    sub = cat.subset(rows)
    np.testing.assert_array_equal(sub.meta["r_fit"], r_fit[rows])
    np.testing.assert_array_equal(sub.meta["r_source"], raw["r_source"][rows].astype(str))
    np.testing.assert_array_equal(sub.meta["atm_source"], raw["atm_source"][rows].astype(str))
    assert sub.meta["mag_err_floor"] == cat.meta["mag_err_floor"] and sub.meta["source"] == cat.meta["source"]
    assert "r_var" in cat.meta and cat.meta["source"] == str(path)
    v = cat.meta["validation"]
    assert sum(v["n_missing"].values()) == np.isnan(raw["mag"]).sum()
    assert v["n_missing"]["unwise_w1"] == np.isnan(raw["mag"][:, 11]).sum()
    # the release's errors include a 0.02 mag floor: declared so inference does not add it again
    assert np.nanmin(raw["mag_err"]) >= 0.02 - 5e-5
    assert cat.meta["mag_err_floor"] == 0.02


def test_green2020_anchor_parquet_round_trip(anchor_dir, tmp_path):
    cat = read_green2020_h5(anchor_dir / "green2020_test_data_small.h5")
    back = read_table(write_table(cat, tmp_path / "g.parquet"))
    assert_same(cat, back)  # incl. the slightly non-symmetric float32 covariances
    assert "cov_logg_teff" in Table.read(tmp_path / "g.parquet").colnames
    np.testing.assert_array_equal(back.meta["mag_err_floor"], np.full(13, 0.02))  # MAGFLOOR table meta


# --- validation --------------------------------------------------------------------

def test_valid_catalogue_report():
    cat = make_catalog()
    rep = validate(cat, require_labels=True, require_reddening_prior=True)
    assert isinstance(rep, ValidationReport)
    assert rep.n_stars == N
    assert rep.n_observed["unwise_w1"] == 0 and rep.n_missing["unwise_w1"] == N
    assert rep.n_missing["ps1_g"] == len(range(0, N, 3))
    assert rep.n_no_parallax == 0 and rep.n_no_photometry == 0 and rep.n_unlabelled == 0
    d = rep.to_dict()
    assert d["n_missing"]["ps1_g"] == 7 and d["bands"][0] == "gaia_g"
    s = rep.summary()
    assert "unwise_w1" in s and f"{N} stars" in s


@pytest.mark.parametrize("value", [-0.05, 0.0])
def test_nonpositive_error_names_band_and_rows(value):
    cat = make_catalog()
    cat.mag_err[[4, 9], 1] = value
    e = raises(cat, ["[gaia_bp]", "<= 0", "2 of 20 rows", "rows [4, 9]", "star004"])
    assert len(e.problems) == 1


def test_nan_error_with_finite_mag():
    cat = make_catalog()
    cat.mag_err[5, 8] = np.nan
    cat.mag_err[6, 8] = np.inf
    raises(cat, ["[2mass_j]", "NaN/inf error where the magnitude is finite", "rows [5, 6]"])


def test_error_without_magnitude_is_missing_and_counted():
    cat = make_catalog()
    cat.mag[2, 9] = np.nan  # error stays finite
    rep = validate(cat)
    assert rep.n_err_without_mag["2mass_h"] == 1
    assert rep.n_missing["2mass_h"] == 1 and len(cat) == N
    assert any("2mass_h" in w for w in rep.warnings)


def test_sentinel_magnitude_rejected():
    cat = make_catalog()
    cat.mag[3, 0] = 99.0
    raises(cat, ["[gaia_g]", "sentinel", "rows [3]"])


def test_labels_required():
    cat = make_catalog()
    cat.theta[7, 1] = np.nan
    raises(cat, ["[logg]", "rows [7]"], require_labels=True)
    rep = validate(cat)  # not required: counted, not an error
    assert rep.n_unlabelled == 1
    raises(make_catalog(labels=False), ["teff", "logg", "feh"], require_labels=True)


def test_theta_cov_not_positive_definite_or_nan():
    cat = make_catalog()
    cat.theta_cov[11] = np.diag([-1.0, 0.01, 0.01])
    cat.theta_cov[12, 0, 0] = np.nan
    e = raises(cat, ["[theta_cov]", "positive definite", "rows [11]", "NaN/inf", "rows [12]"],
               require_labels=True)
    assert len(e.problems) == 2
    cat = make_catalog()
    cat.theta_cov[1, 0, 1] += 50.0
    raises(cat, ["[theta_cov] not symmetric", "rows [1]"])


def test_teff_in_wrong_unit():
    cat = make_catalog()
    cat.theta[:, 0] = np.log10(cat.theta[:, 0])
    raises(cat, ["[teff]", "Kelvin"])


@pytest.mark.parametrize("bad", [0.0, -0.1, np.nan])
def test_parallax_err_invalid(bad):
    cat = make_catalog()
    cat.parallax_err[13] = bad
    raises(cat, ["[parallax_err]", "rows [13]", "1 of 20 rows"])


def test_parallax_missing_is_fine():
    cat = make_catalog()
    cat.parallax[[0, 1]] = np.nan
    cat.parallax_err[0] = np.nan
    assert validate(cat).n_no_parallax == 2


def test_arcsec_parallax_detected():
    cat = make_catalog()
    cat = StarCatalog(**{**cat.__dict__, "parallax": cat.parallax / 1000,
                         "parallax_err": cat.parallax_err / 1000})
    raises(cat, ["[parallax]", "arcsec", "parallax_unit='arcsec'"])
    # a single distant star with a tiny parallax but a realistic error is fine
    cat = make_catalog()
    cat.parallax[:] = 0.001
    validate(cat)


def test_reddening_prior_and_positions():
    cat = make_catalog()
    cat.E_prior_err[3] = -0.01
    cat.l[4] = 400.0
    cat.b[5] = -95.0
    e = raises(cat, ["[E_prior_err] negative", "rows [3]", "[l]", "rows [4]", "[b]", "rows [5]"])
    assert len(e.problems) == 3
    raises(make_catalog(prior=False), "[E_prior]", require_reddening_prior=True)


def test_shape_mismatch():
    cat = make_catalog()
    bad = StarCatalog(**{**cat.__dict__, "parallax": cat.parallax[:-1],
                         "mag_err": cat.mag_err[:, :5]})
    raises(bad, ["[parallax] shape (19,)", "[mag_err] shape (20, 5)"])


def test_all_problems_in_one_error_and_row_list_truncated():
    cat = make_catalog(n=30)
    cat.mag_err[:, 0] = -1.0
    cat.parallax_err[2] = 0.0
    e = raises(cat, ["[gaia_g]", "30 of 30 rows", "...", "[parallax_err]"])
    assert "rows [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]" in str(e)
    assert len(e.problems) == 2


def test_star_without_photometry_kept_and_warned():
    cat = make_catalog()
    cat.mag[6] = np.nan
    cat.mag_err[6] = np.nan
    with pytest.warns(UserWarning, match="no observed band"):
        rep = validate(cat)
    assert rep.n_no_photometry == 1 and rep.n_stars == N


def test_single_band_star_kept_counted_and_warned():
    """A star with one observed band has no colour: kept, counted, warned with its row."""
    cat = make_catalog()
    cat.mag[4, 1:] = np.nan
    cat.mag_err[4, 1:] = np.nan
    with pytest.warns(UserWarning, match=r"single observed band.*1 of 20 rows: rows \[4\]"):
        rep = validate(cat)
    assert rep.n_one_band == 1 and rep.n_no_photometry == 0 and rep.n_stars == N
    assert "single observed band (no colour): 1" in rep.summary()
    assert rep.to_dict()["n_one_band"] == 1
    cat.mag[4, 5] = 14.0  # a second band: a colour, no warning
    cat.mag_err[4, 5] = 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate(cat).n_one_band == 0


def test_infer_cli_json_reports_the_catalogue_checks(tmp_path, monkeypatch, capsys):
    """dds-infer infer --json carries the input's missing-data counts and warnings."""
    import json

    from conftest import REPO_ROOT, record_pipeline_infer

    from dds_infer.cli import main

    calls = record_pipeline_infer(monkeypatch)
    cat = make_catalog(labels=False, prior=False)
    cat.mag[7, 1:] = cat.mag_err[7, 1:] = np.nan
    path = tmp_path / "c.parquet"
    write_table(cat, path)
    model = REPO_ROOT / "models" / "mock13-v1"
    with pytest.warns(UserWarning, match="single observed band"):
        assert main(["infer", "--model", str(model), "--catalog", str(path), "--out", str(tmp_path / "o"),
                     "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    checks = out["catalog_checks"]
    assert len(calls) == 1 and checks["n_stars"] == N
    assert checks["n_one_band"] == 1 and checks["n_no_photometry"] == 0
    assert checks["n_missing"]["unwise_w1"] == N
    assert any("rows [7]" in w for w in checks["warnings"])


def test_from_arrays_coerces_and_validates():
    cat = make_catalog(ids=False)
    c2 = StarCatalog.from_arrays(cat.mag.astype(np.float32), cat.mag_err, list(cat.parallax),
                                 cat.parallax_err, theta=cat.theta, theta_cov=cat.theta_cov)
    assert c2.mag.dtype == np.float64 and c2.parallax.dtype == np.float64
    assert c2.meta["validation"]["n_stars"] == N
    with pytest.raises(CatalogError, match="parallax_err"):
        StarCatalog.from_arrays(cat.mag, cat.mag_err, cat.parallax, -cat.parallax_err)


# --- generic tables ----------------------------------------------------------------

def _gaia_like(n=8):
    rng = np.random.default_rng(1)
    return pd.DataFrame({
        "source_id": np.arange(100, 100 + n),
        "phot_g_mean_mag": rng.uniform(10, 15, n), "g_err": np.full(n, 0.01),
        "bp": rng.uniform(10, 15, n), "bp_err": np.full(n, 0.02),
        "j_m": rng.uniform(9, 13, n), "j_msigcom": np.full(n, 0.03),
        "parallax": rng.uniform(0.5, 2, n), "parallax_error": np.full(n, 0.05),
        "l": rng.uniform(0, 360, n), "b": rng.uniform(-60, 60, n),
    })


MAP = {"mag": {"G": "phot_g_mean_mag", "BP": "bp", "J": "j_m"},
       "mag_err": {"G": "g_err", "BP": "bp_err", "J": "j_msigcom"},
       "parallax": "parallax", "parallax_err": "parallax_error", "l": "l", "b": "b",
       "id": "source_id"}


def test_inference_only_table_with_missing_bands():
    df = _gaia_like()
    df.loc[2, "j_m"] = np.nan
    df.loc[2, "j_msigcom"] = np.nan
    cat = read_table(df, MAP)
    assert len(cat) == len(df)
    assert cat.theta is None and cat.theta_cov is None and cat.E_prior is None
    assert cat.ids.tolist() == df.source_id.tolist()
    i_j = GREEN2020.index("J")
    np.testing.assert_array_equal(cat.mag[:, 0], df.phot_g_mean_mag)
    assert np.isnan(cat.mag[2, i_j]) and cat.observed[:, i_j].sum() == len(df) - 1
    other = [i for i in range(B) if i not in (0, 1, i_j)]
    assert np.isnan(cat.mag[:, other]).all() and np.isnan(cat.mag_err[:, other]).all()
    np.testing.assert_array_equal(cat.l, df.l)
    rep = cat.meta["validation"]
    assert rep["n_missing"]["2mass_j"] == 1 and rep["n_missing"]["ps1_g"] == len(df)


def test_masked_values_become_nan(tmp_path):
    t = Table.from_pandas(_gaia_like())
    t["bp"] = MaskedColumn(t["bp"], mask=[False, True] + [False] * 6)
    t["bp_err"] = MaskedColumn(t["bp_err"], mask=[False, True] + [False] * 6)
    t["parallax"] = MaskedColumn(t["parallax"], mask=[True] + [False] * 7)
    for src in (t, write_table_raw(t, tmp_path / "m.fits"), write_table_raw(t, tmp_path / "m.csv")):
        cat = read_table(src, MAP)
        assert np.isnan(cat.mag[1, 1]) and np.isnan(cat.mag_err[1, 1]) and np.isnan(cat.parallax[0])
        assert len(cat) == 8 and cat.meta["validation"]["n_no_parallax"] == 1


def write_table_raw(t, path):
    t.write(path, overwrite=True)
    return path


def test_pandas_nullable_columns():
    df = _gaia_like()
    df["j_m"] = df["j_m"].astype("Float64")
    df.loc[3, "j_m"] = pd.NA
    cat = read_table(df, MAP)
    assert np.isnan(cat.mag[3, GREEN2020.index("J")])


def test_unknown_band_named():
    cmap = {**MAP, "mag": {**MAP["mag"], "Z_foo": "j_m", "Q": "bp"},
            "mag_err": {**MAP["mag_err"], "Z_foo": "j_msigcom", "Q": "bp_err"}}
    with pytest.raises(CatalogError) as ei:
        read_table(_gaia_like(), cmap)
    assert "'Z_foo'" in str(ei.value) and "'Q'" in str(ei.value) and "gaia_g" in str(ei.value)


def test_default_names_refuse_photometry_they_would_not_read():
    """With the default column names (no column_map) no photometry column is left out silently: an error
    column without its magnitude, an alias instead of the band name and an unknown band are all named."""
    t = catalog_to_table(StarCatalog.from_arrays(
        np.full((4, B), 14.0), np.full((4, B), 0.02), np.full(4, 1.0), np.full(4, 0.05), GREEN2020))
    assert len(read_table(t)) == 4  # as written: every band read
    orphan = t.copy()
    orphan.remove_column("mag_gaia_g")  # (e.g. renamed by hand): gaia_g would vanish
    with pytest.raises(CatalogError, match=r"error column given but no magnitude column for band gaia_g"):
        read_table(orphan)
    odd = t.copy()
    odd.rename_column("mag_2mass_j", "mag_J")
    odd.rename_column("mag_err_2mass_j", "mag_err_J")
    odd["mag_sdss_u"] = 15.0
    with pytest.raises(CatalogError) as ei:
        read_table(odd)
    msg = str(ei.value)
    assert "[mag_J] 'J' is an alias of band '2mass_j': name the column mag_2mass_j" in msg
    assert "[mag_err_J]" in msg and "[mag_sdss_u]" in msg and "'sdss_u' is no band" in msg
    assert len(ei.value.problems) == 3
    # a column_map reads any names: the alias columns through it, the unknown one left out
    cmap = default_column_map(GREEN2020, odd.colnames)
    cmap["mag"]["2mass_j"], cmap["mag_err"]["2mass_j"] = "mag_J", "mag_err_J"
    assert np.all(read_table(odd, cmap).observed)


def test_empty_unreadable_and_duplicate_id_tables_refused(tmp_path):
    t = catalog_to_table(StarCatalog.from_arrays(
        np.full((3, B), 14.0), np.full((3, B), 0.02), np.full(3, 1.0), np.full(3, 0.05), GREEN2020,
        ids=np.array(["a", "b", "c"])))
    for ext in ("parquet", "fits", "csv"):  # no rows: said, whatever the format (and with a string column)
        path = tmp_path / f"empty.{ext}"
        write_table(StarCatalog.from_arrays(np.zeros((0, B)), np.zeros((0, B)), np.zeros(0), np.zeros(0),
                                            GREEN2020, ids=np.array([], dtype=str)), path)
        with pytest.raises(CatalogError, match=r"has no rows \(columns: .*mag_gaia_g"):
            read_table(path)
    with pytest.raises(CatalogError, match="has no rows"):
        read_table(t[:0])
    bad = tmp_path / "bad.parquet"
    bad.write_text("not a table")
    with pytest.raises(CatalogError, match=r"could not be read as a parquet table: ArrowInvalid"):
        read_table(bad)
    t["id"][2] = "a"
    with pytest.raises(CatalogError) as ei:
        read_table(t)
    assert "[id] 1 id(s) given to more than one row" in str(ei.value) and "rows [0, 2]" in str(ei.value)
    del t["id"]  # without ids, rows are numbered: accepted
    assert len(read_table(t)) == 3


def test_default_names_read_label_errors_and_refuse_bad_ones():
    rng = np.random.default_rng(3)
    theta = np.column_stack([rng.uniform(4500, 6000, 5), rng.uniform(2, 4.5, 5), rng.uniform(-1, 0.3, 5)])
    sig = np.array([80.0, 0.1, 0.05])
    cat = StarCatalog.from_arrays(np.full((5, B), 14.0), np.full((5, B), 0.02), np.full(5, 1.0), np.full(5, 0.05),
                                  GREEN2020, theta=theta, theta_cov=np.broadcast_to(np.diag(sig ** 2), (5, 3, 3)),
                                  E_prior=np.full(5, 0.1), E_prior_err=np.full(5, 0.02))
    t = catalog_to_table(cat)
    only_err = t.copy()
    only_err.remove_columns([c for c in t.colnames if c.startswith("cov_")])
    back = read_table(only_err, require_labels=True)  # <label>_err alone: the diagonal of the covariance
    np.testing.assert_allclose(back.theta_cov, cat.theta_cov)
    only_err["logg_err"][3] = -0.1
    with pytest.raises(CatalogError, match=r"\[logg_err\] negative label error: 1 of 5 rows: rows \[3\]"):
        read_table(only_err)
    no_teff = t.copy()
    no_teff.remove_column("teff")
    with pytest.raises(CatalogError, match=r"labels required: no column 'teff' in the table \(columns: "):
        read_table(no_teff, require_labels=True)
    assert read_table(no_teff).theta is None  # inference reads it without labels


def test_missing_column_named_with_available_columns():
    cmap = {**MAP, "parallax_err": "plx_error_typo", "mag": {**MAP["mag"], "J": "jmag"}}
    with pytest.raises(CatalogError) as ei:
        read_table(_gaia_like(), cmap)
    msg = str(ei.value)
    assert "'plx_error_typo'" in msg and "'jmag'" in msg and "[parallax_err]" in msg
    assert "available columns" in msg and "phot_g_mean_mag" in msg


def test_column_map_structure_errors():
    cmap = {k: v for k, v in MAP.items() if k != "parallax"}
    cmap["mag_err"] = {"G": "g_err"}
    cmap["paralax"] = "parallax"
    with pytest.raises(CatalogError) as ei:
        read_table(_gaia_like(), cmap)
    msg = str(ei.value)
    assert "no error column for band gaia_bp" in msg and "'paralax'" in msg
    assert "'parallax'" in msg and "[parallax]" in msg
    with pytest.raises(CatalogError, match=r"\[teff\].*labels required"):
        read_table(_gaia_like(), MAP, require_labels=True)


def test_table_value_errors_name_column_and_rows():
    df = _gaia_like()
    df.loc[[1, 4], "j_msigcom"] = -0.2
    with pytest.raises(CatalogError, match=r"\[2mass_j\].*rows \[1, 4\] \(ids \[101, 104\]\)"):
        read_table(df, MAP)


def test_parallax_units():
    df = _gaia_like()
    df_as = df.assign(parallax=df.parallax / 1000, parallax_error=df.parallax_error / 1000)
    with pytest.raises(CatalogError, match="parallax looks like arcsec"):
        read_table(df_as, MAP)
    cat = read_table(df_as, MAP, parallax_unit="arcsec")
    np.testing.assert_allclose(cat.parallax, df.parallax, rtol=1e-12)
    t = Table.from_pandas(df_as)
    t["parallax"].unit = u.arcsec
    t["parallax_error"].unit = u.arcsec
    cat = read_table(t, MAP)  # astropy units win over the default parallax_unit
    np.testing.assert_allclose(cat.parallax_err, df.parallax_error, rtol=1e-12)
    assert cat.meta["parallax_unit"] == "mas"
    df_uas = df.assign(parallax=df.parallax * 1000, parallax_error=df.parallax_error * 1000)
    with pytest.raises(CatalogError, match=r"parallax looks like micro-arcsec.*--parallax-unit uas"):
        read_table(df_uas, MAP)
    cat = read_table(df_uas, MAP, parallax_unit="uas")
    np.testing.assert_allclose(cat.parallax, df.parallax, rtol=1e-12)
    # mas with errors of a poor survey, or far stars with Gaia's faint-end errors: not flagged
    read_table(df.assign(parallax_error=20.0), MAP)
    read_table(df.assign(parallax=df.parallax * 0.05, parallax_error=1.3), MAP)


def test_labels_from_errors_and_cov_columns():
    df = _gaia_like().assign(teff=5000.0, logg=4.0, feh=-0.2, teff_err=100.0, logg_err=0.1,
                             feh_err=0.05, c_tl=3.0, ebv=0.1, ebv_err=0.02)
    cmap = {**MAP, "teff": "teff", "logg": "logg", "feh": "feh", "teff_err": "teff_err",
            "logg_err": "logg_err", "feh_err": "feh_err", "cov": {"teff_logg": "c_tl"},
            "E_prior": "ebv", "E_prior_err": "ebv_err"}
    cat = read_table(df, cmap, require_labels=True, require_reddening_prior=True)
    np.testing.assert_allclose(cat.theta_cov[0], [[1e4, 3.0, 0], [3.0, 0.01, 0], [0, 0, 0.0025]])
    np.testing.assert_array_equal(cat.E_prior, 0.1)


def test_radec_to_galactic():
    df = _gaia_like(3).drop(columns=["l", "b"])
    df["ra"] = [266.40498829, 192.85948, np.nan]  # Galactic centre, north Galactic pole
    df["dec"] = [-28.93617776, 27.12825, np.nan]
    cmap = {k: v for k, v in MAP.items() if k not in ("l", "b")}
    cat = read_table(df, {**cmap, "ra": "ra", "dec": "dec"})
    assert abs(((cat.l[0] + 180) % 360) - 180) < 1e-3 and abs(cat.b[0]) < 1e-3
    assert abs(cat.b[1] - 90) < 1e-3
    assert np.isnan(cat.l[2]) and cat.meta["validation"]["n_no_position"] == 1


# --- writing / round trips ----------------------------------------------------------

@pytest.mark.parametrize("ext", ["parquet", "fits", "csv", "h5", "ecsv"])
def test_round_trip(tmp_path, ext):
    cat = make_catalog()
    path = write_table(cat, tmp_path / f"cat.{ext}")
    assert path.exists()
    assert_same(cat, read_table(path))
    assert_same(cat, read_table(path, default_column_map(GREEN2020)))


@pytest.mark.parametrize("ext", ["parquet", "fits", "csv", "h5"])
def test_round_trip_inference_only(tmp_path, ext):
    cat = make_catalog(labels=False, prior=False, ids=False)
    back = read_table(write_table(cat, tmp_path / f"cat.{ext}"))
    assert back.theta is None and back.E_prior is None and back.ids is None
    assert_same(cat, back)


def test_catalog_table_helpers():
    cat = make_catalog()
    t = catalog_to_table(cat)
    assert "mag_gaia_g" in t.colnames and "mag_err_unwise_w2" in t.colnames
    assert t["parallax"].unit == u.mas and t["teff_err"].unit == u.K
    assert_same(cat, table_to_catalog(t))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(cat, table_to_catalog(t.to_pandas()))


def test_unknown_extension(tmp_path):
    with pytest.raises(CatalogError, match="format"):
        write_table(make_catalog(), tmp_path / "cat.xyz")


def test_write_is_atomic_and_respects_overwrite(tmp_path, monkeypatch):
    path = write_table(make_catalog(seed=1), tmp_path / "cat.fits.gz")
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # the temporary file kept the extension, so it was gzipped
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_table(make_catalog(seed=2), path, overwrite=False)

    def fail_midway(self, target, **kw):  # writes part of a file, then dies
        with open(target, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Table, "write", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_table(make_catalog(seed=2), path)
    assert path.read_bytes() == before  # the old catalogue is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.fits.gz"]  # no temporary left behind
    monkeypatch.undo()
    assert_same(make_catalog(seed=2), read_table(write_table(make_catalog(seed=2), path)))


def test_unwise_given_in_vega_is_warned_about():
    """The model takes unWISE in AB (Vega + 2.699 / 3.339 mag): W1, W2 in Vega sit on the Ks locus."""
    rng = np.random.default_rng(3)
    cat = make_catalog()
    ks, w1, w2 = (GREEN2020.names.index(b) for b in ("2mass_ks", "unwise_w1", "unwise_w2"))
    cat.mag[:, w1] = cat.mag[:, ks] + 2.65 + rng.normal(0, 0.05, N)  # AB, as the real test stars
    cat.mag[:, w2] = cat.mag[:, ks] + 3.30 + rng.normal(0, 0.05, N)
    cat.mag_err[:, w1] = cat.mag_err[:, w2] = 0.03
    doubts = lambda c: [w for w in validate(c).warnings if "looks like Vega" in w]  # noqa: E731
    assert doubts(cat) == []
    cat.mag[:, w1] -= 2.699  # Vega
    with pytest.warns(UserWarning, match=r"\[unwise_w1\] looks like Vega magnitudes.*add 2.699 mag"):
        assert len(doubts(cat)) == 1  # W2 still AB
    cat.mag[:, w2] -= 3.339
    with pytest.warns(UserWarning, match=r"\[unwise_w2\] looks like Vega"):
        assert len(doubts(cat)) == 2
    cat.mag[9:, w1] = np.nan  # too few stars with both bands to tell: no verdict on W1
    with pytest.warns(UserWarning):
        assert len(doubts(cat)) == 1
