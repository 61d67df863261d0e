"""Catalogues larger than memory, run as shards (dds_infer.catalog_rows; infer --rows/--shard;
dustmap over several runs): a shard reads only its rows, keeps file-row ids and error rows, and a
sharded run plus its dust map equal the whole catalogue's."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy import units as u

from dds_infer import catalog_rows as cr
from dds_infer.catalog import CatalogError
from dds_infer.catalog_io import catalog_to_table, read_table, write_astropy_table

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "mock13-v1"
ARRAYS = ("mag", "mag_err", "parallax", "parallax_err", "l", "b")


@pytest.fixture(scope="module")
def emu():
    from dds_infer import load_bundle

    return load_bundle(SHIPPED)


@pytest.fixture(scope="module")
def table(emu):
    """A 40-star simulated catalogue as a table without an id column, with sky positions."""
    from dds_infer.inference import InferenceConfig
    from dds_infer.priors import default_prior
    from dds_infer.simulate import draw_from_prior, simulate_observations

    prior = default_prior(emu, reddening="halfnormal", E_scale=0.3)
    cat, _ = simulate_observations(emu, draw_from_prior(prior, 150, seed=5), InferenceConfig(), seed=5)
    t = catalog_to_table(cat.subset(np.arange(40)))
    t.remove_column("id") if "id" in t.colnames else None
    rng = np.random.default_rng(1)
    t["l"], t["b"] = rng.uniform(0, 360, len(t)), np.degrees(np.arcsin(rng.uniform(-1, 1, len(t))))
    return t


def _parquet(t, path, row_group_size):
    write_astropy_table(t, path)
    pq.write_table(pq.read_table(path), path, row_group_size=row_group_size)  # several row groups
    return path


@pytest.mark.parametrize("fmt", ["parquet", "fits", "ascii.ecsv"])
def test_a_shard_is_the_whole_tables_rows_with_file_row_ids(table, tmp_path, fmt):
    """Parquet by row group (shards inside and across groups), FITS memory-mapped, ECSV read whole."""
    t = table.copy()
    for c in ("parallax", "parallax_err"):  # a unit the reader must still see in a shard
        t[c] = (np.asarray(table[c]) * u.Unit(table[c].unit or "mas")).to(u.arcsec)
    path = tmp_path / f"cat.{fmt.split('.')[-1]}"
    if fmt == "parquet":
        _parquet(t, path, row_group_size=7)
        assert pq.ParquetFile(path).metadata.num_row_groups == 6
    else:
        t.write(path, format=fmt)
    whole = read_table(path)
    assert cr.count_rows(path, fmt) == len(t)
    for rows in [(0, 3), (5, 16), (13, 14), (33, None), (0, 40)]:
        shard = read_table(path, rows=rows)
        a, b = rows[0], 40 if rows[1] is None else rows[1]
        assert shard.n_stars == b - a and shard.meta["rows"] == [a, b] and shard.meta["first_row"] == a
        np.testing.assert_array_equal(shard.star_ids(), np.arange(a, b))  # file rows: unique over shards
        for k in ARRAYS:
            np.testing.assert_array_equal(getattr(shard, k), getattr(whole, k)[a:b], err_msg=k)
    np.testing.assert_allclose(whole.parallax, (np.asarray(table["parallax"]) * u.Unit(table["parallax"].unit or "mas"))
                               .to_value(u.mas), rtol=1e-12)  # arcsec column read as mas
    assert "rows" not in whole.meta and whole.ids is None


def test_shard_ranges_and_bad_requests(table, tmp_path):
    for n in (0, 1, 7, 40, 1001):
        for n_shards in (1, 2, 3, 8):
            parts = [cr.shard_rows(k, n_shards, n) for k in range(n_shards)]
            assert np.array_equal(np.concatenate([np.arange(a, b) for a, b in parts] + [np.arange(0)]), np.arange(n))
            sizes = [b - a for a, b in parts]
            assert max(sizes) - min(sizes) <= 1
    assert cr.parse_rows("10:20") == (10, 20) and cr.parse_rows("7:") == (7, None)
    for bad in ("20:10", "5:5", "a:b", "-1:4", "3"):
        with pytest.raises(ValueError, match="--rows"):
            cr.parse_rows(bad)
    assert cr.parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "1/0", "x/2", "2"):
        with pytest.raises(ValueError, match="--shard"):
            cr.parse_shard(bad)
    path = _parquet(table, tmp_path / "cat.parquet", 16)
    with pytest.raises(CatalogError, match=r"rows 30:50 are not within the 40 rows \(0:40\) of .*cat.parquet"):
        read_table(path, rows=(30, 50))


def test_a_shards_problems_name_file_rows(table, tmp_path):
    t = table.copy()
    t["mag_err_gaia_g"][37] = -0.01
    path = _parquet(t, tmp_path / "cat.parquet", 16)
    with pytest.raises(CatalogError) as exc:
        read_table(path, rows=(30, 40))
    msg = str(exc.value)
    assert "[mag_err gaia_g]" in msg or "gaia_g" in msg
    assert "1 of 10 rows (file rows 30:40): rows [37] (ids [37])" in msg
    read_table(path, rows=(0, 30))  # the other rows are fine


def test_sharded_grid_run_and_its_dust_map_equal_the_whole_catalogues(emu, table, tmp_path, capsys):
    """Shards not aligned with the chunks, run through the CLI: the same summaries bit for bit
    (each star's draws come from its file row's key) and the same dust-map file contents."""
    from dds_infer.cli import main
    from dds_infer.dustmap_io import read_dustmap

    path = _parquet(table[:12], tmp_path / "cat.parquet", 5)
    common = ["--model", str(SHIPPED), "--catalog", str(path), "--method", "grid", "--n-draws", "200",
              "--batch-size", "4", "--no-progress", "--json"]
    runs = {"whole": [], "a": ["--rows", "0:5"], "b": ["--shard", "1/2"], "c": ["--rows", "5:6"]}
    res = {}
    for name, extra in runs.items():
        assert main(["infer", *common, "--out", str(tmp_path / name), *extra]) == 0
        res[name] = json.loads(capsys.readouterr().out)
    assert res["whole"]["catalog_rows"] is None and res["a"]["catalog_rows"] == [0, 5]
    assert res["b"]["catalog_rows"] == [6, 12] and res["c"]["n_stars"] == 1
    import pandas as pd

    whole = pd.read_parquet(tmp_path / "whole" / "summary.parquet")
    parts = pd.concat([pd.read_parquet(tmp_path / n / "summary.parquet") for n in "acb"], ignore_index=True)
    pd.testing.assert_frame_equal(whole, parts)
    maps = {}
    for name, posts in {"whole": ["whole"], "shards": ["a", "c", "b"]}.items():
        h5 = tmp_path / f"{name}.h5"
        assert main(["dustmap", "--posterior", *[str(tmp_path / p) for p in posts], "--catalog", str(path),
                     "--out", str(h5), "--nside", "2", "--summary", str(tmp_path / f"{name}.parquet"),
                     "--no-progress", "--json"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["n_stars"] == 12 and rep["n_posteriors"] == len(posts) and len(rep["config_hashes"]) == 1
        maps[name] = read_dustmap(h5)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "whole.parquet"),
                                  pd.read_parquet(tmp_path / "shards.parquet"))
    # positions from another table (ids, l, b only, rows reversed): the shards' rows do not hold
    # their stars there, so the whole table is read and matched by id
    pos = table[:12]["l", "b"][::-1]
    pos["id"] = np.arange(12)[::-1]
    pos.write(tmp_path / "pos.parquet")
    assert main(["dustmap", "--posterior", *[str(tmp_path / p) for p in "acb"], "--catalog",
                 str(tmp_path / "pos.parquet"), "--out", str(tmp_path / "pos.h5"), "--nside", "2", "--no-progress",
                 "--json"]) == 0
    capsys.readouterr()
    _, c = read_dustmap(tmp_path / "pos.h5")
    for p in c:
        np.testing.assert_array_equal(c[p]["l"], maps["whole"][1][p]["l"])
    (_, a), (attrs, b) = maps["whole"], maps["shards"]
    assert a.keys() == b.keys() and len(a) > 1
    for p in a:
        assert a[p].keys() == b[p].keys()
        for k in a[p]:
            np.testing.assert_array_equal(np.asarray(a[p][k]), np.asarray(b[p][k]), err_msg=f"{p} {k}")
    runs_attr = json.loads(attrs["posterior_attrs"])["runs"]
    assert [r["attrs"]["catalog_rows"] for r in runs_attr] == [[0, 5], [5, 6], [6, 12]]
    assert main(["dustmap", "--posterior", str(tmp_path / "a"), str(tmp_path / "whole"), "--catalog", str(path),
                 "--out", str(tmp_path / "x.h5"), "--no-progress"]) != 0  # overlapping runs: a star twice
    err = capsys.readouterr().err
    assert "5 star id(s) appear in more than one posterior" in err and f"'0' in ['{tmp_path / 'a'}', " in err
    assert not (tmp_path / "x.h5").exists()
    # runs of different settings (here another seed) join, with a warning in the text output
    assert main(["infer", *common, "--out", str(tmp_path / "c1"), "--rows", "5:6", "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["dustmap", "--posterior", *[str(tmp_path / p) for p in ("a", "c1", "b")], "--catalog", str(path),
                 "--out", str(tmp_path / "y.h5"), "--no-progress"]) == 0
    assert "the 3 posteriors come from 2 different run settings" in capsys.readouterr().out


def test_a_shard_of_the_green2020_file(anchor_dir):
    """The real test-data HDF5 (dds-infer infer --rows on it): a shard's stars, labels, per-star
    metadata and ids are the whole file's rows."""
    from dds_infer.commands._common import catalog_n_rows, read_catalog

    path = anchor_dir / "green2020_test_data_small.h5"
    whole = read_catalog(path)
    assert catalog_n_rows(path) == whole.n_stars
    shard = read_catalog(path, rows=(4321, 4400))
    sub = whole.subset(np.arange(4321, 4400))
    np.testing.assert_array_equal(shard.star_ids(), np.arange(4321, 4400))
    for k in ("mag", "mag_err", "parallax", "parallax_err", "theta", "theta_cov", "E_prior", "E_prior_err"):
        np.testing.assert_array_equal(getattr(shard, k), getattr(sub, k), err_msg=k)
    for k in whole.meta.get("per_star_keys", ()):
        np.testing.assert_array_equal(shard.meta[k], sub.meta[k], err_msg=k)
    assert shard.meta["rows"] == [4321, 4400] and "rows" not in sub.meta
    with pytest.raises(CatalogError, match=f"not within the {whole.n_stars} rows"):
        read_catalog(path, rows=(0, whole.n_stars + 1))
