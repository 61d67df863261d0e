"""dds_infer.sky_positions: ids and (l, b) from a catalogue's id and position columns alone, whole or
a shard's rows, for dds-infer dustmap."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from dds_infer.catalog import CatalogError
from dds_infer.sky_positions import read_positions


def _table(n=50, seed=3):
    rng = np.random.default_rng(seed)
    t = Table({"id": np.array([f"s{i:04d}" for i in range(n)]),
               "l": rng.uniform(0, 360, n) * u.deg, "b": np.degrees(np.arcsin(rng.uniform(-1, 1, n))) * u.deg})
    t["mag_gaia_g"] = np.array(["not a magnitude"] * n)  # read_table would refuse it: never read here
    return t


@pytest.mark.parametrize("fmt", ["parquet", "fits", "ascii.ecsv"])
def test_positions_whole_and_shard(tmp_path, fmt):
    t = _table()
    path = tmp_path / f"cat.{fmt.split('.')[-1]}"
    t.write(path, format=fmt)
    if fmt == "parquet":
        pq.write_table(pq.read_table(path), path, row_group_size=8)
    whole = read_positions(path)
    np.testing.assert_array_equal(whole.ids, t["id"])
    np.testing.assert_allclose(whole.l, t["l"]), np.testing.assert_allclose(whole.b, t["b"])
    assert whole.rows is None
    part = read_positions(path, rows=(13, 30))
    np.testing.assert_array_equal(part.ids, t["id"][13:30])
    np.testing.assert_array_equal(part.l, whole.l[13:30])
    assert part.rows == (13, 30)


def test_units_radec_and_row_ids(tmp_path):
    t = _table()
    t["l"] = t["l"].to(u.rad)  # converted back to degrees
    c = SkyCoord(l=t["l"], b=t["b"], frame="galactic").icrs
    t["ra"], t["dec"] = c.ra.deg, c.dec.deg
    path = tmp_path / "cat.parquet"
    t.write(path)
    pos = read_positions(path)
    np.testing.assert_allclose(pos.l, np.degrees(np.asarray(t["l"])), rtol=1e-12)
    radec = read_positions(path, {"ra": "ra", "dec": "dec"}, rows=(5, 20))  # no id in the map: file rows
    np.testing.assert_array_equal(radec.ids, np.arange(5, 20))
    np.testing.assert_allclose(radec.l, pos.l[5:20], atol=1e-8)
    np.testing.assert_allclose(radec.b, pos.b[5:20], atol=1e-8)


def test_clear_errors(tmp_path):
    t = _table()
    path = tmp_path / "cat.parquet"
    t.write(path)
    with pytest.raises(CatalogError, match=r"column map entries not in the table: b -> 'glat'"):
        read_positions(path, {"l": "l", "b": "glat"})
    with pytest.raises(CatalogError, match="names no sky positions"):
        read_positions(path, {"id": "id"})
    t.remove_column("b")
    t.write(path, overwrite=True)
    with pytest.raises(CatalogError, match="has no sky positions"):
        read_positions(path)
    t = _table()
    t["id"][7] = t["id"][3]
    t.write(path, overwrite=True)
    with pytest.raises(CatalogError, match=r"1 id\(s\) given to more than one row: \['s0003'\]"):
        read_positions(path)
    t = _table()
    t["l"] = np.arange(len(t)) * u.s
    t.write(path, overwrite=True)
    with pytest.raises(CatalogError, match="not convertible to deg"):
        read_positions(path)


def test_dustmap_names_what_the_green2020_file_lacks(tmp_path, capsys, anchor_dir):
    import sys
    from pathlib import Path

    from dds_infer.cli import main

    sys.path.insert(0, str(Path(__file__).parent))
    from test_dustmap_io import _posterior

    _posterior(n=3).save(tmp_path / "post.nc")
    assert main(["dustmap", "--posterior", str(tmp_path / "post.nc"), "--catalog",
                 str(anchor_dir / "green2020_test_data_small.h5"), "--out", str(tmp_path / "m.h5")]) != 0
    assert "no sky positions (the Green2020 test-data file has none)" in capsys.readouterr().err


def test_dustmap_takes_a_positions_only_table(tmp_path, capsys):
    """A table of ids and positions is enough for dds-infer dustmap (it used to need photometry)."""
    import sys
    from pathlib import Path

    from dds_infer.cli import main
    from dds_infer.dustmap_io import read_dustmap

    sys.path.insert(0, str(Path(__file__).parent))
    from test_dustmap_io import _posterior, _sky

    post, (l, b) = _posterior(n=6), _sky(n=6)
    post.save(tmp_path / "post.nc")
    pos = Table({"id": np.array([f"star{i:02d}" for i in range(6)])[::-1], "l": l[::-1], "b": b[::-1]})
    pos.write(tmp_path / "pos.parquet")
    assert main(["dustmap", "--posterior", str(tmp_path / "post.nc"), "--catalog", str(tmp_path / "pos.parquet"),
                 "--out", str(tmp_path / "m.h5"), "--nside", "2", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_stars"] == 6
    _, pixels = read_dustmap(tmp_path / "m.h5")
    got = {s: (lv, bv) for d in pixels.values() for s, lv, bv in zip(d["star_id"], d["l"], d["b"])}
    for i in range(6):
        np.testing.assert_allclose(got[f"star{i:02d}"], (l[i], b[i]))
