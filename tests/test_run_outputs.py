"""A catalogue run's outputs at any size: the summary streamed chunk by chunk, the combined
posterior.nc only when it fits (dds_infer.run_outputs), and the dust-map file written from the
chunks one at a time (dds_infer.dustmap_io.write_dustmap)."""

import dataclasses
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dds_infer import run_outputs
from dds_infer.posterior import Posterior, weighted_quantiles

sys.path.insert(0, str(Path(__file__).parent))
from test_dustmap_io import _posterior  # noqa: E402  (random draws, unequal chain weights)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """10 stars in chunk files of 4 + 4 + 2 (a few with equal chain weights, the others not),
    assembled without and with the combined posterior.nc."""
    post = _posterior(n=10, seed=4)
    post.chain_weights[[0, 5, 8, 9]] = 0.5  # the last chunk all even: its summary alone uses no weights
    root = tmp_path_factory.mktemp("runs")
    (root / "chunks").mkdir()
    paths = []
    for k, (a, b) in enumerate([(0, 4), (4, 8), (8, 10)]):
        part = dataclasses.replace(
            post, **{name: {key: v[a:b] for key, v in getattr(post, name).items()}
                     for name in ("samples", "sample_stats", "chain_stats")},
            **{name: getattr(post, name)[a:b]
               for name in ("star_id", "chain_weights", "n_modes", "mode_flag", "in_domain_frac")},
            attrs={**post.attrs, "rows": [a, b]})
        paths.append(part.save(root / "chunks" / f"chunk_{k:05d}.nc"))
    chunked = run_outputs.assemble_run(root, paths, attrs={"config_hash": "h"}, combine="never")
    (root / "always").mkdir()
    full = run_outputs.assemble_run(root / "always", paths, attrs={"config_hash": "h"}, combine="always")
    return post, chunked, full, root


def test_a_run_too_large_to_combine_keeps_its_draws_in_the_chunks(runs):
    post, chunked, full, root = runs
    assert isinstance(chunked, run_outputs.ChunkedPosterior) and isinstance(full, Posterior)
    assert not (root / "posterior.nc").exists() and (root / "always" / "posterior.nc").exists()
    assert chunked.n_stars == 10 and list(map(str, chunked.star_id)) == list(map(str, post.star_id))
    assert len(chunked.paths) == 3  # 4 + 4 + 2 stars
    assert pq.ParquetFile(root / "summary.parquet").num_row_groups == 3  # one per chunk
    loaded = chunked.load()
    for k in post.samples:
        np.testing.assert_array_equal(loaded.samples[k], post.samples[k])
        np.testing.assert_array_equal(full.samples[k], post.samples[k])
    assert loaded.attrs["config_hash"] == full.attrs["config_hash"] == "h" and "rows" not in full.attrs
    # the streamed summary is the whole posterior's summary, row for row
    pd.testing.assert_frame_equal(chunked.summary(), post.summary(), check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_parquet(root / "always" / "summary.parquet"), full.summary(),
                                  check_dtype=False)
    # reopened from the folder (dds_infer.open_run, the package-level name)
    import dds_infer

    back = dds_infer.open_run(root)
    assert back.n_stars == 10 and [str(p) for p in back.paths] == [str(p) for p in chunked.paths]
    parts = list(back.parts())
    assert [p.n_stars for p, _ in parts] == [4, 4, 2]
    pd.testing.assert_frame_equal(pd.concat([s for _, s in parts], ignore_index=True), full.summary(),
                                  check_dtype=False)


def test_chunk_summaries_written_with_the_chunks_are_what_assembly_reads(runs, tmp_path):
    """The runner writes each chunk's summary rows beside it; assembling then reads them (not the
    draws) and writes the same summary.parquet as from the draws."""
    post, chunked, _, root = runs
    import shutil

    paths = []
    for p in chunked.paths:
        q = Path(shutil.copy(p, tmp_path / Path(p).name))
        run_outputs.write_chunk_summary(Posterior.load(q), q)
        paths.append(q)
    assert run_outputs.chunk_summary_path(paths[0]).name == "chunk_00000.summary.parquet"
    out = tmp_path / "run"
    out.mkdir()
    back = run_outputs.assemble_run(out, paths, attrs={}, combine="never")
    pd.testing.assert_frame_equal(back.summary(), pd.read_parquet(root / "summary.parquet"))
    # proof that they are read: a marked summary file comes through
    t = pq.read_table(run_outputs.chunk_summary_path(paths[1]))
    marked = t.set_column(t.schema.get_field_index("flag"), "flag", pa.array(np.full(t.num_rows, 99)))
    pq.write_table(marked, run_outputs.chunk_summary_path(paths[1]))
    again = run_outputs.assemble_run(out, paths, attrs={}, combine="never").summary()
    assert (again["flag"].to_numpy()[4:8] == 99).all() and (again["flag"].to_numpy()[:4] != 99).all()


def test_auto_combines_only_below_the_limit(monkeypatch, runs, tmp_path):
    assert run_outputs.should_combine("auto", run_outputs.COMBINE_MAX_DRAWS)
    assert not run_outputs.should_combine("auto", run_outputs.COMBINE_MAX_DRAWS + 1)
    assert run_outputs.should_combine("always", 10**12) and not run_outputs.should_combine("never", 1)
    with pytest.raises(ValueError, match="combine"):
        run_outputs.should_combine("sometimes", 1)
    _, chunked, full, _ = runs
    n_star_draws = 10 * full.n_chains * full.n_draws
    monkeypatch.setattr(run_outputs, "COMBINE_MAX_DRAWS", n_star_draws - 1)  # one star-draw short
    post = run_outputs.assemble_run(tmp_path, chunked.paths, attrs={"x": 1})
    assert isinstance(post, run_outputs.ChunkedPosterior) and not (tmp_path / "posterior.nc").exists()
    monkeypatch.setattr(run_outputs, "COMBINE_MAX_DRAWS", n_star_draws)
    post = run_outputs.assemble_run(tmp_path, chunked.paths, attrs={"x": 1})
    assert isinstance(post, Posterior) and post.attrs["x"] == 1
    np.testing.assert_array_equal(Posterior.load(tmp_path / "posterior.nc").samples["E"], full.samples["E"])


def test_open_run_says_what_is_missing(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished run"):
        run_outputs.open_run(tmp_path)
    _, chunked, _, _ = runs
    run_outputs.assemble_run(tmp_path, chunked.paths, attrs={}, combine="never")
    (tmp_path / "gone.nc").write_bytes(Path(chunked.paths[1]).read_bytes())
    rec = (tmp_path / "outputs.json").read_text().replace(str(chunked.paths[1]), str(tmp_path / "gone.nc"))
    (tmp_path / "outputs.json").write_text(rec)
    (tmp_path / "gone.nc").unlink()
    with pytest.raises(FileNotFoundError, match="gone.nc"):
        run_outputs.open_run(tmp_path)


def test_dustmap_from_the_chunks_equals_dustmap_from_the_whole_posterior(runs, tmp_path):
    from dds_infer.dustmap_io import stored_coverage, write_dustmap

    _, chunked, full, _ = runs
    rng = np.random.default_rng(3)
    l, b = rng.uniform(0, 360, 10), rng.uniform(-60, 60, 10)
    written = []  # progress: the stars of each chunk as it is written
    a = write_dustmap(tmp_path / "a.h5", chunked, l, b, nside=1, n_samples=50, on_stars=written.append)
    assert written == [4, 4, 2]
    w = write_dustmap(tmp_path / "b.h5", full, l, b, nside=1, n_samples=50)
    with h5py.File(a) as fa, h5py.File(w) as fb:
        groups = [k for k in fb if k.startswith("pixel_1_")]
        assert len(groups) > 1 and sorted(groups) == sorted(k for k in fa if k.startswith("pixel_1_"))
        assert any(fb[g]["star_id"].shape[0] > 1 for g in groups)  # pixels gather stars of several chunks
        assert fa.attrs["diagnostic_columns"] == fb.attrs["diagnostic_columns"]
        for g in groups:
            assert set(fa[g]) == set(fb[g])
            for d in fb[g]:
                x, y = fa[g][d][()], fb[g][d][()]
                for c in x.dtype.names or [None]:  # the diagnostics table field by field (NaN == NaN)
                    np.testing.assert_array_equal(x if c is None else x[c], y if c is None else y[c],
                                                  err_msg=f"{g}/{d}/{c}")
    assert stored_coverage(a).shape == (10,)


def test_quantiles_of_a_star_do_not_depend_on_the_other_stars():
    """Summaries are streamed chunk by chunk, so a star's quantiles must not depend on whether
    another star in the same table has unequal chain weights."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 25))
    even = np.full((1, 4), 0.25)
    uneven = np.array([[0.7, 0.1, 0.1, 0.1]])
    together = weighted_quantiles(x[:2], (0.16, 0.5, 0.84), np.concatenate([even, uneven]))
    alone = weighted_quantiles(x[:1], (0.16, 0.5, 0.84), even)
    np.testing.assert_array_equal(together[:, 0], alone[:, 0])
    np.testing.assert_array_equal(alone[:, 0], np.quantile(x[0].ravel(), (0.16, 0.5, 0.84)))
    assert not np.allclose(together[:, 1], np.quantile(x[1].ravel(), (0.16, 0.5, 0.84)))


def test_chunk_writer_writes_on_its_own_thread_one_chunk_at_a_time(monkeypatch, tmp_path):
    """ChunkWriter writes each chunk (draws and summary rows) on a background thread, never more
    than one at a time (submit waits for the pending one: memory stays at two chunks), and close
    leaves every submitted chunk on disk."""
    import threading
    import time

    post = _posterior(n=3, seed=1)
    real_write, log, busy = run_outputs.write_chunk, [], []

    def slow_write(p, path):
        busy.append(path)
        assert len(busy) == 1, "two chunks written at once"
        time.sleep(0.05)
        log.append((threading.current_thread().name, Path(path).name))
        out = real_write(p, path)
        busy.remove(path)
        return out

    monkeypatch.setattr(run_outputs, "write_chunk", slow_write)
    paths = [tmp_path / f"chunk_{k:05d}.nc" for k in range(3)]
    with run_outputs.ChunkWriter() as writer:
        for p in paths:
            writer.submit(post, p)
    assert [name for _, name in log] == [p.name for p in paths]  # in order, all of them
    assert all(t.startswith("dds-chunk-writer") for t, _ in log)
    for p in paths:
        back = Posterior.load(p)
        np.testing.assert_array_equal(back.samples["mu"], post.samples["mu"])
        assert run_outputs.chunk_summary_path(p).exists()
    log.clear()
    with run_outputs.ChunkWriter(background=False) as writer:  # the same, in the calling thread
        writer.submit(post, tmp_path / "inline.nc")
    assert log == [(threading.current_thread().name, "inline.nc")]


def write_failing_for(name: str):
    """run_outputs.write_chunk, except that writing the chunk file ``name`` raises OSError."""
    real_write = run_outputs.write_chunk

    def write(post, path):
        if Path(path).name == name:
            raise OSError("disk full (simulated)")
        return real_write(post, path)
    return write


def test_a_failed_background_write_is_raised_not_lost(monkeypatch, tmp_path):
    post = _posterior(n=2, seed=2)
    monkeypatch.setattr(run_outputs, "write_chunk", write_failing_for("bad.nc"))
    writer = run_outputs.ChunkWriter()
    writer.submit(post, tmp_path / "bad.nc")
    with pytest.raises(OSError, match="disk full"):  # at the next submit ...
        writer.submit(post, tmp_path / "good.nc")
    writer.submit(post, tmp_path / "bad.nc")
    with pytest.raises(OSError, match="disk full"):  # ... or at close
        writer.close()
    assert not (tmp_path / "bad.nc").exists()
    # an error in the caller's block wins, and the pending chunk still lands whole
    with pytest.raises(KeyError, match="caller"):
        with run_outputs.ChunkWriter() as w:
            w.submit(post, tmp_path / "late.nc")
            raise KeyError("caller")
    np.testing.assert_array_equal(Posterior.load(tmp_path / "late.nc").samples["E"], post.samples["E"])


@pytest.mark.parametrize("ids", [None, np.arange(100, 106)])
def test_read_draws_gives_what_load_gives_for_the_variables_it_names(tmp_path, ids):
    """posterior_draws.read_draws reads some variables straight from the file: the same draws,
    star ids (strings or integers), chain weights, attrs and flat_draws as Posterior.load."""
    from dds_infer.posterior_draws import PosteriorDraws, read_draws

    post = _posterior(n=6, seed=7, ids=ids)
    path = post.save(tmp_path / "p.nc")
    full = Posterior.load(path)
    part = read_draws(path, ("mu", "E", "teff"))
    assert isinstance(part, PosteriorDraws) and set(part.samples) == {"mu", "E", "teff"}
    assert part.n_stars == len(part) == 6 and part.star_id.dtype == full.star_id.dtype
    np.testing.assert_array_equal(part.star_id, full.star_id)
    np.testing.assert_array_equal(part.chain_weights, full.chain_weights)
    assert part.attrs == full.attrs and part.attrs["config_hash"] == "abc"
    for k in part.samples:
        np.testing.assert_array_equal(part.samples[k], full.samples[k])
        for x, y in zip(part.flat_draws(k), full.flat_draws(k)):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(KeyError, match="no posterior variable.*'nope'"):
        read_draws(path, ("mu", "nope"))
    with pytest.raises(FileNotFoundError, match="not found"):
        read_draws(tmp_path / "none.nc", ("mu",))


def test_parts_with_variables_read_only_those_where_the_summary_is_stored(runs, tmp_path):
    """ChunkedPosterior.parts(variables): the chunks' draws of those variables with the stored
    summary rows; where the summary does not match the chunks, full posteriors and computed rows."""
    from dds_infer.posterior_draws import PosteriorDraws

    post, chunked, full, root = runs
    back = run_outputs.open_run(root)
    parts = list(back.parts(("mu", "E")))
    assert all(isinstance(p, PosteriorDraws) and set(p.samples) == {"mu", "E"} for p, _ in parts)
    np.testing.assert_array_equal(np.concatenate([p.samples["E"] for p, _ in parts]), post.samples["E"])
    pd.testing.assert_frame_equal(pd.concat([s for _, s in parts], ignore_index=True), full.summary(),
                                  check_dtype=False)
    stale = dataclasses.replace(back, summary_path=tmp_path / "missing.parquet")  # no stored rows
    parts = list(stale.parts(("mu", "E")))
    assert all(isinstance(p, Posterior) for p, _ in parts)
    pd.testing.assert_frame_equal(pd.concat([s for _, s in parts], ignore_index=True), full.summary(),
                                  check_dtype=False)
    wrong = tmp_path / "wrong.parquet"  # three row groups, but another chunk's ids in the first
    tables = [pq.read_table(root / "summary.parquet").slice(a, b - a) for a, b in [(4, 8), (4, 8), (8, 10)]]
    with pq.ParquetWriter(wrong, tables[0].schema) as w:
        for t in tables:
            w.write_table(t)
    parts = list(dataclasses.replace(back, summary_path=wrong).parts(("mu",)))
    assert isinstance(parts[0][0], Posterior) and isinstance(parts[1][0], PosteriorDraws)
    assert list(parts[0][1]["star_id"].astype(str)) == list(map(str, post.star_id[:4]))


def test_stars_by_id_read_only_their_chunks(runs, monkeypatch):
    post, chunked, full, root = runs
    ids = np.asarray(post.star_id)
    want = [ids[9], ids[2], ids[3]]  # chunks 2 and 0, not in catalogue order
    loads = []
    real_load = Posterior.load
    monkeypatch.setattr(Posterior, "load", classmethod(lambda cls, p: loads.append(Path(p).name) or real_load(p)))
    got = run_outputs.open_run(root).stars(want)
    assert sorted(set(loads)) == ["chunk_00000.nc", "chunk_00002.nc"]  # chunk 1 holds none of them
    assert list(got.star_id) == want
    for k in post.samples:  # each star's draws as in the whole posterior, in the order asked for
        np.testing.assert_array_equal(got.samples[k], post.samples[k][[9, 2, 3]])
    np.testing.assert_array_equal(got.chain_weights, post.chain_weights[[9, 2, 3]])
    assert list(full.stars(want).star_id) == want and list(full.stars(ids[4]).star_id) == [ids[4]]
    joined = run_outputs.join_runs([full.take(np.arange(5)), full.take(np.arange(5, 10))], ["a", "b"])
    got = joined.stars(want)  # shards of one catalogue, read as one
    assert list(got.star_id) == want
    np.testing.assert_array_equal(got.samples["mu"], post.samples["mu"][[9, 2, 3]])
    with pytest.raises(KeyError, match=r"1 of 2 star id\(s\) are not in this posterior: \['nope'\]"):
        chunked.stars(["nope", ids[0]])
