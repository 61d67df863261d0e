"""Any table rewritten as Parquet block by block (dds_infer.catalog_convert, dds-infer to-parquet):
the same stars as the source for FITS (memory-mapped blocks), Parquet (re-blocked), CSV (read
whole) and the Green2020 HDF5 layout; row groups as asked; units, masks and ids kept."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.table import Table

from dds_infer.catalog import StarCatalog
from dds_infer.catalog_convert import to_parquet
from dds_infer.catalog_io import catalog_to_table, read_table
from dds_infer.cli import main
from dds_infer.passbands import GREEN2020

N = 50
FIELDS = ("mag", "mag_err", "parallax", "parallax_err", "l", "b")


def _source(tmp_path):
    rng = np.random.default_rng(2)
    nb = len(GREEN2020.names)
    mag = 14 + 3 * rng.random((N, nb))
    mag[:, -2:] += (2.7, 3.3)
    cat = StarCatalog.from_arrays(mag, np.full((N, nb), 0.02), rng.uniform(0.2, 3, N), np.full(N, 0.05), GREEN2020,
                                  l=rng.uniform(0, 360, N), b=rng.uniform(-60, 60, N),
                                  ids=np.array([f"s{i:03d}" for i in range(N)]))
    t = Table(catalog_to_table(cat), masked=True)
    t["mag_ps1_g"].mask[[3, 7]] = True  # FITS nulls: missing bands
    for c in ("parallax", "parallax_err"):  # in arcsec with the unit: the reader converts
        t[c] = (np.asarray(t[c]) * u.mas).to(u.arcsec)
    path = tmp_path / "cat.fits"
    t.write(path)
    return read_table(path), path


def _same(a, b):
    assert list(map(str, a.ids)) == list(map(str, b.ids))
    for k in FIELDS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def test_fits_in_blocks_parquet_reblocked_and_csv(tmp_path):
    cat, fits = _source(tmp_path)
    assert np.isnan(cat.mag[[3, 7], GREEN2020.names.index("ps1_g")]).all()
    res = to_parquet(fits, tmp_path / "a.parquet", row_group_rows=8, block_rows=20)  # blocks of 16 rows
    assert (res["n_rows"], res["n_row_groups"], res["format"], res["read_whole"]) == (N, 7, "fits", False)
    _same(cat, read_table(tmp_path / "a.parquet"))
    assert Table.read(tmp_path / "a.parquet")["parallax"].unit == u.arcsec  # units kept
    assert [pq.ParquetFile(tmp_path / "a.parquet").metadata.row_group(g).num_rows for g in range(7)] == [8] * 6 + [2]

    res = to_parquet(tmp_path / "a.parquet", tmp_path / "b.parquet", row_group_rows=32)  # re-blocked
    assert (res["n_row_groups"], res["format"]) == (2, "parquet")
    _same(cat, read_table(tmp_path / "b.parquet"))
    assert Table.read(tmp_path / "b.parquet")["parallax"].unit == u.arcsec

    plain = Table.read(fits)
    for c in ("parallax", "parallax_err"):
        plain[c] = plain[c].to(u.mas)  # CSV keeps no units: write mas, the default
    plain.write(tmp_path / "c.csv")
    res = to_parquet(tmp_path / "c.csv", tmp_path / "c.parquet", row_group_rows=1000)
    assert (res["n_row_groups"], res["format"], res["read_whole"]) == (1, "ascii.csv", True)
    _same(cat, read_table(tmp_path / "c.parquet"))


def test_refusals_and_the_cli(tmp_path, capsys):
    _, fits = _source(tmp_path)
    with pytest.raises(ValueError, match="must be a .parquet file"):
        to_parquet(fits, tmp_path / "out.fits")
    with pytest.raises(FileNotFoundError):
        to_parquet(tmp_path / "nope.fits", tmp_path / "out.parquet")
    to_parquet(fits, tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="another file"):
        to_parquet(tmp_path / "x.parquet", tmp_path / "x.parquet")
    assert main(["to-parquet", "--catalog", str(fits), "--out", str(tmp_path / "y.parquet"), "--row-group-rows",
                 "16", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_rows"] == N and out["n_row_groups"] == 4 and "mag_gaia_g" in out["columns"]
    assert not list(tmp_path.glob(".tmp-*"))  # nothing left over


def test_green2020_layout(anchor_dir, tmp_path):
    from dds_infer.catalog_io import read_green2020_h5

    src = anchor_dir / "green2020_test_data_small.h5"
    res = to_parquet(src, tmp_path / "g.parquet")
    assert res["n_rows"] == 10000 and res["read_whole"]
    a, b = read_green2020_h5(src), read_table(tmp_path / "g.parquet", require_labels=True, require_reddening_prior=True)
    for k in FIELDS[:4] + ("theta", "theta_cov", "E_prior", "E_prior_err"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
