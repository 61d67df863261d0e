"""Where a catalogue's runs stand (dds_infer.run_status, dds-infer status): finished, partial and
absent shards of a job array, the rows no run covers, overlapping runs, and the finished stars'
diagnostics summed from their chunks."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dds_infer.run_status import RunStatus, coverage, run_status, star_figures, summary_columns

sys.path.insert(0, str(Path(__file__).parent))
from test_gridpath import FAST, emu, sbc_stars  # noqa: E402,F401  (module fixtures)


def _status(path, rows, state="finished"):
    return RunStatus(path, state, n_stars=rows[1] - rows[0], rows=list(rows), n_chunks=1,
                     chunks_done=int(state == "finished"), stars_done=(rows[1] - rows[0]) * (state == "finished"))


def test_coverage_finds_gaps_overlaps_and_the_shards_to_resubmit():
    runs = [_status("a", (0, 25)), _status("b", (25, 50), "partial"), _status("c", (40, 60)),
            _status("whole", (0, 100)), _status("d", (75, 100))]
    cov = coverage(runs, n_rows=120, n_shards=4)  # shards 0:30, 30:60, 60:90, 90:120: none of these runs
    assert cov["uncovered"] == [[100, 120]]
    assert sorted(map(tuple, (o["rows"] for o in cov["overlaps"]))) == [(0, 25), (25, 50), (40, 60), (75, 100)]  # each against the
    # earlier run that reaches furthest (c: 'whole')
    assert cov["missing_shards"] == [0, 1, 2, 3] and len(cov["other_runs"]) == 5
    cov = coverage([_status("s0", (0, 30)), _status("s1", (30, 60), "partial"), _status("s3", (90, 120))],
                   n_rows=120, n_shards=4)
    assert cov["missing_shards"] == [2] and cov["unfinished_shards"] == [1] and cov["other_runs"] == []
    assert cov["uncovered"] == [[60, 90]] and cov["overlaps"] == [] and cov["rows_finished"] == 60
    with pytest.raises(ValueError, match="row count"):
        coverage([], n_shards=4)


def _fake_run(root, n, settings, done):
    """A run folder as the runner leaves it: its manifest and the chunk files ``done``."""
    (root / "chunks").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"config_hash": "h", "catalog": {"n_stars": n},
                                                    "description": {"settings": settings}}))
    for k in done:
        (root / "chunks" / f"chunk_{k:05d}.nc").write_bytes(b"")
    return run_status(root)


def test_chunk_layouts_of_nuts_and_grid_runs(tmp_path):
    from dds_infer.runner import chunk_size

    # NUTS, balanced chunks recorded: 300 stars at batch 256 -> 2 chunks of 150
    s = _fake_run(tmp_path / "a", 300, {"batch_size": 256, "chunk": chunk_size(300, 256), "batch_fn": None}, [1])
    assert (s.state, s.n_chunks, s.chunks_done, s.stars_done, s.method) == ("partial", 2, 1, 150, "nuts")
    # NUTS from before the balancing (no "chunk"): chunks of batch_size, the last one short
    s = _fake_run(tmp_path / "b", 300, {"batch_size": 256, "batch_fn": None}, [1])
    assert (s.n_chunks, s.stars_done) == (2, 44)
    # the grid path: chunks of batch_size
    s = _fake_run(tmp_path / "c", 2500, {"batch_size": 1024, "batch_fn": "grid_batch_fn(...)"}, [0, 1, 2])
    assert (s.state, s.n_chunks, s.stars_done, s.method) == ("partial", 3, 2500, "grid")  # no outputs.json yet
    (tmp_path / "c" / "outputs.json").write_text("{}")
    assert run_status(tmp_path / "c").state == "finished"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text("{not json")
    assert run_status(tmp_path / "d").state == "not a run"


def test_a_job_array_of_shards_from_absent_to_complete(emu, sbc_stars, tmp_path, capsys):  # noqa: F811
    from dds_infer.catalog_io import catalog_to_table, read_table, write_astropy_table
    from dds_infer.cli import main
    from dds_infer.gridpath import grid_batch_fn
    from dds_infer.inference import star_data_from_catalog, star_model
    from dds_infer.posterior import Posterior
    from dds_infer.runner import infer_catalog

    cat, _, prior, config = sbc_stars
    path = write_astropy_table(catalog_to_table(cat.subset(np.arange(10))), tmp_path / "cat.parquet")
    fn = grid_batch_fn(emu, prior, config, FAST, pad_to=2)  # one program for every shard (as infer --method grid)
    runs = [tmp_path / f"run{k}" for k in range(3)]  # shards 0:3, 3:6, 6:10 of 10 rows

    def shard(k, **more):
        return infer_catalog(read_table(path, rows=[(0, 3), (3, 6), (6, 10)][k]), emu, prior, config, runs[k],
                             batch_size=2, seed=1, model=star_model, star_data_fn=star_data_from_catalog,
                             batch_fn=fn, progress=False, **more)

    shard(0)
    assert shard(1, stop_after_chunks=1) is None  # interrupted after its first chunk of 2 stars
    st = [run_status(r) for r in runs]
    assert [s.state for s in st] == ["finished", "partial", "not started"]
    assert (st[1].chunks_done, st[1].n_chunks, st[1].stars_done, st[1].rows) == (1, 2, 2, [3, 6])
    assert st[0].method == "grid" and st[0].config_hash == st[1].config_hash

    fig = star_figures(st)  # the finished run's 3 stars and the partial run's first 2
    done = [runs[0] / "chunks" / "chunk_00000.nc", runs[0] / "chunks" / "chunk_00001.nc",
            runs[1] / "chunks" / "chunk_00000.nc"]
    summ = [Posterior.load(p).summary() for p in done]  # from the draws, not the summary files
    flags, ess = (np.concatenate([s[c] for s in summ]) for c in ("flag", "ess_bulk_min"))
    assert fig["n_stars"] == 5 and fig["n_flagged"] == np.count_nonzero(flags)
    assert fig["flag_counts"]["any"] == fig["n_flagged"]
    assert fig["median_ess"] == pytest.approx(np.nanmedian(ess), rel=1e-6)
    assert fig["frac_rhat_lt_1_01"] is None  # the grid path has no chains to compare

    rc = main(["status", "--posterior", *map(str, runs), "--catalog", str(path), "--shards", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and not out["complete"] and out["coverage"]["missing_shards"] == [2]
    assert out["coverage"]["unfinished_shards"] == [1] and out["coverage"]["uncovered"] == [[6, 10]]
    assert out["stars_finished"] == 5 and out["runs_by_state"] == {
        "finished": 1, "partial": 1, "not started": 1, "not a run": 0}
    main(["status", "--posterior", *map(str, runs), "--catalog", str(path), "--shards", "3"])
    assert "(re)submit 1-2" in capsys.readouterr().out

    shard(1), shard(2)  # the job array resubmitted: the partial run resumes
    rc = main(["status", "--posterior", *map(str, runs), "--catalog", str(path), "--shards", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["complete"] and out["stars_finished"] == 10 and len(out["config_hashes"]) == 1
    assert run_status(tmp_path).state == "not a run"
    assert main(["status", "--posterior", str(runs[0]), str(tmp_path), "--no-figures"]) == 1
    png = tmp_path / "overview.png"
    assert main(["status", "--posterior", *map(str, runs), "--plot", str(png), "--no-figures"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    cols = summary_columns([run_status(r) for r in runs], ["flag", "weight_ess", "r_hat_max", "no_such_column"])
    assert len(cols) == 10 and cols["weight_ess"].notna().all() and cols["no_such_column"].isna().all()


def test_overview_of_nuts_and_grid_summaries():
    from dds_infer.run_plots import OVERVIEW_COLUMNS, plot_run_overview

    rng = np.random.default_rng(0)
    n = 500
    summ = {c: rng.normal(size=n) for c in OVERVIEW_COLUMNS}
    summ.update(teff_median=rng.uniform(4000, 7000, n), logg_median=rng.uniform(1, 5, n),
                mu_q16=rng.uniform(8, 12, n), E_q16=rng.uniform(0, 0.2, n),
                distance_pc_median=rng.uniform(100, 5000, n), flag=rng.choice([0, 0, 0, 1, 8, 9], n))
    summ["mu_q84"], summ["E_q84"] = summ["mu_q16"] + 0.3, summ["E_q16"] + 0.05
    nuts = dict(summ, r_hat_max=1 + rng.exponential(0.004, n), weight_ess=np.full(n, np.nan))
    grid = dict(summ, r_hat_max=np.full(n, np.nan), weight_ess=rng.uniform(50, 500, n))
    for table, diag in ((nuts, "R-hat < 1.01"), (grid, "weight ESS")):
        fig = plot_run_overview(table)
        titles = [ax.get_title() for ax in fig.axes]
        assert any(diag in t for t in titles), titles
        flagged = int(np.count_nonzero(table["flag"]))
        assert f"flagged: {flagged} of {n}" in titles
        bars = [ax for ax in fig.axes if ax.get_title().startswith("flagged")][0].patches
        assert [int(p.get_width()) for p in bars][:4] == [int(np.count_nonzero(table["flag"] & b)) for b in (1, 2, 4, 8)]


def test_many_runs_list_the_unfinished_ones(tmp_path, capsys):
    from dds_infer.cli import main

    paths = []
    for k in range(40):
        settings = {"batch_size": 10, "batch_fn": "grid"}
        _fake_run(tmp_path / f"r{k:02d}", 20, settings, [0, 1] if k != 7 else [0])
        if k != 7:
            (tmp_path / f"r{k:02d}" / "outputs.json").write_text("{}")
        paths.append(str(tmp_path / f"r{k:02d}"))
    assert main(["status", "--posterior", *paths, "--no-figures"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:1]] == ["partial"] and "r07" in out[0]
    assert "(1 of 40 runs listed" in out[1] and "39 finished, 1 partial" in out[2]
