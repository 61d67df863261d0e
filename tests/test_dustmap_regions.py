"""A dust-map input in one file per coarse sky region (dds_infer.dustmap_regions, dustmap
--split-nside/--region): each region file holds exactly the whole file's pixels of that region,
a rerun writes only missing files, job-array regions split the work, and a region reads only
the chunks that hold its stars."""

import dataclasses
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from dds_infer import run_outputs
from dds_infer.dustmap_io import ImageGrid, healpix_index, list_pixels, read_pixel, write_dustmap
from dds_infer.dustmap_regions import INDEX, region_of, write_dustmap_regions

sys.path.insert(0, str(Path(__file__).parent))
from test_dustmap_io import _posterior  # noqa: E402  (random draws, unequal chain weights)

N, NSIDE, SPLIT = 48, 4, 1
GRID = ImageGrid(E_max=2.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """48 stars in sky order (by their nside-1 region) saved as chunks of 16, assembled as a run."""
    rng = np.random.default_rng(5)
    l, b = rng.uniform(0, 360, N), np.degrees(np.arcsin(rng.uniform(-0.9, 0.9, N)))
    order = np.argsort(region_of(healpix_index(l, b, NSIDE), NSIDE, SPLIT), kind="stable")
    l, b = l[order], b[order]
    post = _posterior(n=N, seed=9)
    root = tmp_path_factory.mktemp("run")
    (root / "chunks").mkdir()
    paths = [post.take(np.arange(a, a + 16)).save(root / "chunks" / f"chunk_{k:05d}.nc")
             for k, a in enumerate(range(0, N, 16))]
    chunked = run_outputs.assemble_run(root, paths, attrs={"config_hash": "h"}, combine="never")
    whole = write_dustmap(root / "whole.h5", chunked, l, b, nside=NSIDE, grid=GRID, n_samples=40)
    return post, chunked, l, b, whole


def _same_pixel(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_region_files_hold_the_whole_files_pixels_and_a_rerun_writes_only_what_is_missing(run, tmp_path):
    post, chunked, l, b, whole = run
    out = tmp_path / "regions"
    res = write_dustmap_regions(out, chunked, l, b, split_nside=SPLIT, nside=NSIDE, grid=GRID, n_samples=40)
    cells = np.unique(region_of(healpix_index(l, b, NSIDE), NSIDE, SPLIT))
    assert res["n_regions"] == cells.size > 2 and len(res["written"]) == cells.size and res["skipped"] == []
    index = json.loads((out / INDEX).read_text())
    assert index["regions"] == {str(c): int(np.sum(region_of(healpix_index(l, b, NSIDE), NSIDE, SPLIT) == c))
                                for c in cells}
    seen = []
    for c in cells:
        f = out / f"dustmap_{SPLIT}_{c}.h5"
        for p in list_pixels(f):
            assert region_of(p, NSIDE, SPLIT) == c
            _same_pixel(read_pixel(f, p), read_pixel(whole, p))
            seen.append(int(p))
    assert sorted(seen) == list(list_pixels(whole))
    # a rerun after losing one file writes that file only, the same as before
    lost = out / f"dustmap_{SPLIT}_{cells[1]}.h5"
    before = {p: read_pixel(lost, p) for p in list_pixels(lost)}
    lost.unlink()
    mtimes = {f: f.stat().st_mtime_ns for f in out.glob("dustmap_*.h5")}
    res = write_dustmap_regions(out, chunked, l, b, split_nside=SPLIT, nside=NSIDE, grid=GRID, n_samples=40)
    assert res["written"] == [str(lost)] and len(res["skipped"]) == cells.size - 1
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())
    for p, d in before.items():
        _same_pixel(read_pixel(lost, p), d)
    with pytest.raises(ValueError, match="exists from another dustmap run"):  # other settings, same folder
        write_dustmap_regions(out, chunked, l, b, split_nside=SPLIT, nside=NSIDE, grid=GRID, n_samples=20)


def test_job_array_regions_split_the_work_and_read_only_their_chunks(run, tmp_path, monkeypatch):
    post, chunked, l, b, _ = run
    reads = []
    real = run_outputs.read_draws
    monkeypatch.setattr(run_outputs, "read_draws", lambda path, v: reads.append(Path(path).name) or real(path, v))
    done, n_chunks_read = [], []
    for k in range(3):
        reads.clear()
        res = write_dustmap_regions(tmp_path, chunked, l, b, split_nside=SPLIT, nside=NSIDE, grid=GRID,
                                    n_samples=40, region=(k, 3))
        done += res["written"]
        n_chunks_read.append(len(reads))
    cells = np.unique(region_of(healpix_index(l, b, NSIDE), NSIDE, SPLIT))
    assert sorted(done) == sorted(str(tmp_path / f"dustmap_{SPLIT}_{c}.h5") for c in cells)  # each once
    # the stars are in region order, so the 3 chunks are read about once in all (a chunk that
    # straddles two regions is read by both), not once per region
    assert sum(n_chunks_read) <= 3 + cells.size - 1 < 3 * cells.size
    with pytest.raises(ValueError, match="0 <= K < N"):
        write_dustmap_regions(tmp_path, chunked, l, b, split_nside=SPLIT, nside=NSIDE, region=(3, 3))
    with pytest.raises(ValueError, match="must not exceed nside"):
        region_of([0], 2, 4)


def test_an_in_memory_posterior_and_the_cli(run, tmp_path, capsys):
    from dds_infer.catalog_io import write_astropy_table
    from dds_infer.cli import main
    from astropy.table import Table

    post, chunked, l, b, whole = run
    res = write_dustmap_regions(tmp_path / "mem", post, l, b, split_nside=SPLIT, nside=NSIDE, grid=GRID,
                                n_samples=40)
    f = res["written"][0]
    for p in list_pixels(f):
        _same_pixel(read_pixel(f, p), read_pixel(whole, p))
    cat = Table({"id": post.star_id, "l": l, "b": b})
    write_astropy_table(cat, tmp_path / "pos.parquet")
    base = ["dustmap", "--posterior", str(Path(chunked.paths[0]).parents[1]), "--catalog", str(tmp_path / "pos.parquet"),
            "--nside", str(NSIDE), "--E-step", "0.01", "--n-samples", "40", "--no-progress", "--json"]
    assert main(base + ["--out", str(tmp_path / "cli"), "--split-nside", "2", "--region", "0/2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split_nside"] == 2 and out["n_written"] == out["regions_here"] > 0 and out["n_skipped"] == 0
    assert out["n_regions"] > out["regions_here"] and 0 < out["n_stars_here"] < N
    assert main(base + ["--out", str(tmp_path / "cli"), "--split-nside", "2", "--region", "0/2"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["n_written"] == 0 and again["n_skipped"] == out["n_written"]
    assert main(base + ["--out", str(tmp_path / "x.h5"), "--region", "0/2"]) == 2
    assert "--region needs --split-nside" in capsys.readouterr().err


def test_the_shards_of_a_catalogue_joined(run, tmp_path):
    """Two runs (shards) joined: each region's stars taken from the run that holds them."""
    post, chunked, l, b, whole = run
    runs = []
    for name, paths in (("a", chunked.paths[:1]), ("b", chunked.paths[1:])):
        (tmp_path / name).mkdir()
        runs.append(run_outputs.assemble_run(tmp_path / name, paths, attrs={"config_hash": "h"}, combine="never"))
    joined = run_outputs.join_runs(runs, ["a", "b"])
    res = write_dustmap_regions(tmp_path / "out", joined, l, b, split_nside=SPLIT, nside=NSIDE, grid=GRID, n_samples=40)
    n = 0
    for f in res["written"]:
        for p in list_pixels(f):
            _same_pixel(read_pixel(f, p), read_pixel(whole, p))
            n += 1
    assert n == len(list_pixels(whole))
