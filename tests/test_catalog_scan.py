"""Checking a catalogue block by block before a run (dds_infer.catalog_scan, dds-infer check): the
same problems and counts as reading it whole, problems of every block with their file rows, ids
repeated across blocks, a column problem reported once, and the Green2020 file."""

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from dds_infer.catalog import CatalogError, StarCatalog
from dds_infer.catalog_io import catalog_to_table, read_table, write_astropy_table
from dds_infer.catalog_scan import block_ranges, scan_catalog
from dds_infer.cli import main
from dds_infer.passbands import GREEN2020

N = 40


def _table(ids):
    rng = np.random.default_rng(0)
    nb = len(GREEN2020.names)
    mag = 14 + 4 * rng.random((N, nb))
    mag[rng.random((N, nb)) < 0.2] = np.nan  # missing bands, to be counted
    err = np.where(np.isfinite(mag), 0.02, np.nan)
    plx = rng.uniform(0.2, 3, N)
    plx[[5, 17]] = np.nan  # no parallax
    cat = StarCatalog.from_arrays(mag, err, plx, np.where(np.isfinite(plx), 0.05, np.nan), GREEN2020,
                                  l=rng.uniform(0, 360, N), b=rng.uniform(-60, 60, N), ids=ids)
    return catalog_to_table(cat)


def _parquet(t, path, row_group_size=8):
    write_astropy_table(t, path)
    pq.write_table(pq.read_table(path), path, row_group_size=row_group_size)
    return path


def _check(tmp_path, capsys, path, *args):
    rc = main(["check", "--catalog", str(path), "--no-progress", "--json", *map(str, args)])
    return rc, json.loads(capsys.readouterr().out)


def test_block_ranges_cover_the_rows_once_and_end_on_edges():
    for start, stop, size, edges in [(0, 40, 10, None), (3, 40, 7, None), (0, 40, 10, [8, 16, 24, 32]),
                                     (5, 37, 10, [8, 16, 24, 32]), (0, 40, 3, [8, 16, 24, 32]), (0, 1, 5, None)]:
        blocks = block_ranges(start, stop, size, edges)
        assert np.array_equal(np.concatenate([np.arange(a, b) for a, b in blocks]), np.arange(start, stop))
        if edges is None:
            assert all(b - a <= size for a, b in blocks)
        else:  # every inner bound is an edge, and a block holds at least one piece between edges
            assert all(a in edges for a, _ in blocks[1:])
    assert block_ranges(0, 40, 10, [8, 16, 24, 32]) == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40)]
    assert block_ranges(0, 40, 20, [8, 16, 24, 32]) == [(0, 16), (16, 32), (32, 40)]
    with pytest.raises(ValueError, match="block_rows"):
        block_ranges(0, 10, 0)


def test_a_valid_catalogue_gives_the_whole_files_counts(tmp_path, capsys):
    path = _parquet(_table(np.array([f"s{i}" for i in range(N)])), tmp_path / "ok.parquet")
    whole = read_table(path).meta["validation"]
    rc, out = _check(tmp_path, capsys, path, "--block-rows", 10)
    assert rc == 0 and out["valid"] and out["problems"] == [] and out["n_duplicate_ids"] == 0
    assert out["n_blocks"] == 5 and out["n_blocks_read"] == 5 and out["rows"] == [0, N]  # 8-row groups: 5 blocks
    for k, v in whole.items():
        if k != "warnings":
            assert out["report"][k] == v, k
    assert out["report"]["n_no_parallax"] == 2 and sum(out["report"]["n_missing"].values()) > 0
    rc, out = _check(tmp_path, capsys, path, "--shard", "1/4", "--block-rows", 4)  # rows 10:20, in blocks 10:16:20
    assert rc == 0 and out["rows"] == [10, 20] and out["n_blocks"] == 2 and out["report"]["n_stars"] == 10
    assert main(["check", "--catalog", str(path), "--rows", "30:50", "--no-progress"]) == 2  # beyond the file
    assert "rows 30:50 are not within the 40 rows" in capsys.readouterr().err
    main(["check", "--catalog", str(path), "--no-progress"])  # the text report
    text = capsys.readouterr().out
    assert "no problems found" in text and f"{N} stars, 13 bands" in text


@pytest.mark.parametrize("ids", ["text", "int"])
def test_problems_of_every_block_and_ids_repeated_across_blocks(tmp_path, capsys, ids):
    """Bad values in two blocks and an id on two rows of different blocks: all reported, with file
    rows, as reading the whole file reports them (exit status 1)."""
    base = np.array([f"s{i}" for i in range(N)]) if ids == "text" else 4_000_000_000_000_000 + np.arange(N)
    t = _table(base)
    t["id"][30] = t["id"][2]  # rows 2 and 30: different blocks
    t["id"][12] = t["id"][9]  # rows 9 and 12: one block, its own problem (reported once)
    t["mag_err_gaia_g"][3] = -0.01  # block 0:10
    t["parallax_err"][25] = np.nan  # block 20:30 (finite parallax)
    path = _parquet(t, tmp_path / "bad.parquet")
    with pytest.raises(CatalogError) as whole:
        read_table(path)
    rc, out = _check(tmp_path, capsys, path, "--block-rows", 10)  # blocks 0:8, 8:16, ... (row groups of 8)
    assert rc == 1 and not out["valid"] and out["n_duplicate_ids"] == 1
    text = "\n".join(out["problems"])
    assert "[gaia_g]" in text and "rows [3]" in text and "[parallax_err]" in text and "rows [25]" in text
    assert "file rows [2, 30]" in text and "rows [9, 12]" in text and "file rows [9, 12]" not in text
    assert f"file rows [2, 30] (id {str(t['id'][2])!r})" in text  # the repeated id, read back
    def named_rows(msgs):
        return {int(r) for m in msgs for part in re.findall(r"rows \[([\d, ]+)\]", m) for r in part.split(",")}

    assert named_rows(whole.value.problems) == named_rows(out["problems"]) == {2, 3, 9, 12, 25, 30}
    assert out["report"]["n_stars"] == N - 24  # counts of the valid blocks (0:8, 8:16 and 24:32 are not)


def test_a_column_problem_is_reported_once_and_the_scan_stops(tmp_path, capsys):
    t = _table(None)
    t.rename_column("parallax_err", "plx_error")  # the reader finds no parallax error column
    path = _parquet(t, tmp_path / "cols.parquet")
    rc, out = _check(tmp_path, capsys, path, "--block-rows", 8)
    assert rc == 1 and out["stopped_early"] and out["n_blocks_read"] == 2 and out["n_blocks"] == 5
    assert any("parallax" in p and "(in 2 blocks of rows)" in p for p in out["problems"])
    assert out["report"] is None


def test_scan_with_any_reader_counts_and_reports():
    """scan_catalog takes the block reader as a function (library use, other sources)."""
    t = _table(np.array([f"s{i}" for i in range(N)]))
    seen = []

    def read_block(rows):
        seen.append(rows)
        return read_table(t[rows[0]:rows[1]])

    res = scan_catalog(read_block, 0, N, block_rows=16)
    assert res.valid and seen == [(0, 16), (16, 32), (32, 40)] and res.report.n_stars == N
    assert res.to_dict()["n_rows"] == N


def test_the_green2020_file_checks_in_blocks(anchor_dir, capsys):
    from dds_infer.catalog_io import read_green2020_h5

    path = anchor_dir / "green2020_test_data_small.h5"
    rc = main(["check", "--catalog", str(path), "--rows", "100:2100", "--block-rows", "700", "--require-labels",
               "--no-progress", "--json"])
    out = json.loads(capsys.readouterr().out)
    whole = read_green2020_h5(path, rows=(100, 2100)).meta["validation"]
    assert rc == 0 and out["n_blocks"] == 3 and out["report"]["n_stars"] == 2000
    assert out["report"]["n_observed"] == whole["n_observed"] and out["report"]["n_no_parallax"] == whole["n_no_parallax"]


def test_check_says_what_a_shard_of_the_file_will_read(tmp_path, capsys, monkeypatch):
    """shard_notes: Parquet row groups far larger than a shard would be decoded whole by every
    shard; a format read whole for every shard. (The limit lowered here to the test's size.)"""
    from dds_infer import catalog_rows

    t = _table(None)
    monkeypatch.setattr(catalog_rows, "LARGE_ROW_GROUP", 10)
    small = _parquet(t, tmp_path / "small.parquet", row_group_size=8)
    large = _parquet(t, tmp_path / "large.parquet", row_group_size=40)
    write_astropy_table(t, tmp_path / "cat.ecsv")
    write_astropy_table(t, tmp_path / "cat.fits")
    notes = {p.name: _check(tmp_path, capsys, p)[1]["shard_notes"]
             for p in (small, large, tmp_path / "cat.ecsv", tmp_path / "cat.fits")}
    assert notes["small.parquet"] == [] and notes["cat.fits"] == []
    assert len(notes["large.parquet"]) == 1 and "row groups of up to 40 rows" in notes["large.parquet"][0]
    assert len(notes["cat.ecsv"]) == 1 and "read whole for every shard" in notes["cat.ecsv"][0]
    monkeypatch.setattr(catalog_rows, "LARGE_ROW_GROUP", 2_000_000)
    assert _check(tmp_path, capsys, large)[1]["shard_notes"] == []


def test_parallax_unit_flag(tmp_path, capsys):
    t = _table(None)
    for c in ("parallax", "parallax_err"):  # unitless, in arcsec
        t[c] = np.asarray(t[c]) / 1000
        t[c].unit = None
    path = _parquet(t, tmp_path / "as.parquet")
    rc, out = _check(tmp_path, capsys, path)
    assert rc == 1 and any("looks like arcsec" in p and "--parallax-unit arcsec" in p for p in out["problems"])
    rc, out = _check(tmp_path, capsys, path, "--parallax-unit", "arcsec")
    assert rc == 0 and out["report"]["n_no_parallax"] == 2
    with pytest.raises(SystemExit) as exc:  # not an angle: a usage error
        main(["check", "--catalog", str(path), "--parallax-unit", "furlong"])
    assert exc.value.code == 2 and "not an angle unit" in capsys.readouterr().err
