"""A Parquet catalogue rewritten in sky order (dds_infer.catalog_sort, dds-infer sort-sky): the
same rows, in nested HEALPix order, through several buckets; an added id keeps each star's input
file row; units and metadata survive; a sorted run's star equals the unsorted run's."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy import units as u

from dds_infer.catalog import StarCatalog
from dds_infer.catalog_io import catalog_to_table, read_table, write_astropy_table
from dds_infer.catalog_sort import sky_sort
from dds_infer.cli import main
from dds_infer.dustmap_io import healpix_index
from dds_infer.passbands import GREEN2020

N = 300


def _table(with_id: bool):
    rng = np.random.default_rng(2)
    nb = len(GREEN2020.names)
    mag = 14 + 4 * rng.random((N, nb))
    cat = StarCatalog.from_arrays(mag, np.full((N, nb), 0.02), rng.uniform(0.2, 3, N), np.full(N, 0.05), GREEN2020,
                                  l=rng.uniform(0, 360, N), b=np.degrees(np.arcsin(rng.uniform(-1, 1, N))),
                                  ids=np.array([f"g{i}" for i in range(N)]) if with_id else None)
    t = catalog_to_table(cat)
    if not with_id and "id" in t.colnames:
        t.remove_column("id")
    t["parallax"] = (np.asarray(t["parallax"]) * u.mas).to(u.arcsec)  # a unit the reader must still see
    t["parallax_err"] = (np.asarray(t["parallax_err"]) * u.mas).to(u.arcsec)
    return t


@pytest.mark.parametrize("with_id", [False, True])
def test_the_same_rows_in_sky_order(tmp_path, with_id):
    src = tmp_path / "in.parquet"
    write_astropy_table(_table(with_id), src)
    pq.write_table(pq.read_table(src), src, row_group_size=64)  # several row groups
    res = sky_sort(src, tmp_path / "out.parquet", nside=8, bucket_rows=30)
    assert res["n_buckets"] > 4 and res["added_id"] is (not with_id)
    before, after = read_table(src), read_table(tmp_path / "out.parquet")  # (units: arcsec -> mas on both)
    pix = healpix_index(after.l, after.b, 8)
    assert np.all(np.diff(pix) >= 0)  # nested HEALPix order
    rows = (after.ids.astype(int) if not with_id else np.array([int(s[1:]) for s in after.ids]))
    assert sorted(rows) == list(range(N))  # every row once
    if not with_id:  # the added id is the input file row (the input's own ids)
        np.testing.assert_array_equal(after.ids, before.star_ids()[rows])
    for name in ("mag", "mag_err", "parallax", "parallax_err", "l", "b"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name)[rows], err_msg=name)
    within = [np.all(np.diff(rows[pix == p]) > 0) for p in np.unique(pix)]
    assert all(within)  # ties kept in file-row order: deterministic


def test_cli_and_refusals(tmp_path, capsys):
    src = tmp_path / "in.parquet"
    write_astropy_table(_table(False), src)
    assert main(["sort-sky", "--catalog", str(src), "--out", str(tmp_path / "o.parquet"), "--nside", "4",
                 "--bucket-rows", "50", "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_rows"] == N and out["added_id"] and out["n_buckets"] >= 4 and out["seconds"] > 0
    assert main(["sort-sky", "--catalog", str(src), "--out", str(tmp_path / "o.csv"), "--no-progress"]) == 2
    assert "reads and writes Parquet" in capsys.readouterr().err
