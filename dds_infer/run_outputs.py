"""The outputs of a catalogue run, assembled without holding every star's draws in memory.

A run (:func:`dds_infer.runner.infer_catalog`) writes its draws chunk by chunk to
``out_dir/chunks/chunk_NNNNN.nc`` and each chunk's summary rows beside it
(:func:`write_chunk_summary`). At the end, :func:`assemble_run` writes

* ``summary.parquet``: one row per star, streamed from the chunks' summaries (one Parquet row
  group per chunk; a chunk without one is summarised from its draws), so its memory does not
  grow with the catalogue;
* ``posterior.nc``: all draws in one NetCDF file, only when they fit comfortably in memory
  (``combine="auto"``: at most :data:`COMBINE_MAX_DRAWS` star-draws, i.e. 10,000 stars at
  4 × 500 draws). Combining grows the process by ~0.14 MB per star at 4 × 500 draws
  (2.7 GB at 16,384 stars, ``bench/outputs_bench.py``; ~14 GB at 10⁵), so a larger run keeps
  its draws in the chunks;
* ``outputs.json``: the chunk files in catalogue order with their row ranges, and whether
  ``posterior.nc`` was written.

:class:`ChunkedPosterior` reads such a run back: star ids and the summary table from the
Parquet file, the draws one chunk at a time (:meth:`ChunkedPosterior.chunks`), as
:func:`dds_infer.dustmap_io.write_dustmap` does. :func:`open_run` opens an output folder, and
:func:`join_runs` several (the shards of one catalogue, ``dds-infer infer --shard K/N``) as one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .posterior import Posterior, StarRows, concat
from .posterior_draws import read_draws

__all__ = ["COMBINE_MAX_DRAWS", "COMBINE_CHOICES", "ChunkedPosterior", "ChunkWriter", "JoinedPosterior", "assemble_run",
           "join_runs", "open_run", "posterior_parts", "should_combine", "stars_of", "write_chunk", "write_chunk_summary", "chunk_summary_path"]

COMBINE_MAX_DRAWS = 2 * 10**7  # star x chain x draw: 10,000 stars at 4 x 500 draws
COMBINE_CHOICES = ("auto", "always", "never")
OUTPUTS = "outputs.json"
SUMMARY = "summary.parquet"
COMBINED = "posterior.nc"
RUN_OUTPUTS = (OUTPUTS, SUMMARY, COMBINED)  # what assemble_run writes into a run folder
_SHAPE_KEY = b"dds_infer_shape"


def should_combine(combine: str, n_star_draws: int) -> bool:
    """Whether to write the combined ``posterior.nc`` for a run of ``n_star_draws`` star-draws."""
    if combine not in COMBINE_CHOICES:
        raise ValueError(f"combine must be one of {COMBINE_CHOICES}, got {combine!r}")
    return combine == "always" or (combine == "auto" and int(n_star_draws) <= COMBINE_MAX_DRAWS)


def _atomic_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def chunk_summary_path(chunk_path) -> Path:
    """Where a chunk's summary rows are kept: ``chunk_NNNNN.summary.parquet`` beside ``chunk_NNNNN.nc``."""
    p = Path(chunk_path)
    return p.with_name(p.stem + ".summary.parquet")


def _summary_table(post: Posterior, summary_kw: dict):
    """The chunk's summary as an Arrow table, its (stars, chains, draws) in the schema metadata."""
    import pyarrow as pa

    table = pa.Table.from_pandas(post.summary(**summary_kw), preserve_index=False)
    shape = json.dumps([post.n_stars, post.n_chains, post.n_draws]).encode()
    return table.replace_schema_metadata({**(table.schema.metadata or {}), _SHAPE_KEY: shape})


def write_chunk_summary(post: Posterior, chunk_path) -> Path:
    """Write ``post``'s summary rows beside its chunk file (atomic), so that assembling the run
    reads them instead of loading the chunk's draws again."""
    import pyarrow.parquet as pq

    out = chunk_summary_path(chunk_path)
    with atomic_path(out) as tmp:
        pq.write_table(_summary_table(post, {}), tmp)
    return out


def write_chunk(post: Posterior, chunk_path) -> Path:
    """Write a finished chunk: its draws (``chunk_path``, atomic), then its summary rows beside it."""
    return write_chunk_summary(post, post.save(chunk_path))


class ChunkWriter:
    """Writes finished chunks (:func:`write_chunk`) on one background thread, so that the next
    chunk's sampling overlaps this one's compression and disk writes (HDF5's zlib holds the GIL,
    but XLA releases it while it computes). At most one chunk waits to be written: :meth:`submit`
    first waits for the previous one, so memory stays at two chunks. A failed write raises at the
    next :meth:`submit` or at :meth:`close`; leaving the ``with`` block waits for the pending
    write either way (each file is atomic, so an interrupted run resumes from whole chunks).
    ``background=False`` writes in the calling thread."""

    def __init__(self, background: bool = True):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dds-chunk-writer") if background else None
        self._pending = None

    def submit(self, post: Posterior, chunk_path) -> None:
        self.wait()
        if self._pool is None:
            write_chunk(post, chunk_path)
        else:
            self._pending = self._pool.submit(write_chunk, post, chunk_path)

    def wait(self) -> None:
        """Block until the pending write (if any) is on disk; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def __enter__(self) -> "ChunkWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the original error wins; the pending chunk still lands whole (or not at all)
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def _chunk_summary(path: Path, summary_kw: dict):
    """(summary table, (stars, chains, draws)) of one chunk: its summary file when there is one
    (default settings), else computed from the chunk's draws."""
    import pyarrow.parquet as pq

    sp = chunk_summary_path(path)
    if not summary_kw and sp.exists():
        table = pq.read_table(sp)
        shape = (table.schema.metadata or {}).get(_SHAPE_KEY)
        if shape is not None:
            return table, tuple(json.loads(shape))
    post = Posterior.load(path)
    return _summary_table(post, summary_kw), (post.n_stars, post.n_chains, post.n_draws)


def _write_summary(paths, out: Path, summary_kw: dict) -> tuple[np.ndarray, list]:
    """Stream the chunks' summaries into one Parquet file (a row group per chunk); atomic.
    Returns the star ids and each chunk's (n_stars, n_chains, n_draws)."""
    import pyarrow.parquet as pq

    writer, ids, shapes = None, [], []
    with atomic_path(out) as tmp:
        try:
            for p in paths:
                table, shape = _chunk_summary(p, summary_kw)
                table = table.replace_schema_metadata({k: v for k, v in (table.schema.metadata or {}).items()
                                                       if k != _SHAPE_KEY})
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table.cast(writer.schema), row_group_size=max(len(table), 1))
                ids.append(table.column("star_id").to_numpy(zero_copy_only=False))
                shapes.append(shape)
        finally:
            if writer is not None:
                writer.close()
    return np.concatenate(ids), shapes


def _concat_chunks(paths, attrs: dict, held: dict | None = None) -> Posterior:
    """The chunks' posteriors in one, with the run's provenance ``attrs`` instead of a chunk's row range.
    held: {path: Posterior} of chunks already in memory (as written), read from disk otherwise."""
    held = held or {}
    full = concat([held[p] if p in held else Posterior.load(p) for p in paths])
    full.attrs = {**{k: v for k, v in full.attrs.items() if k != "rows"}, **attrs}
    return full


def assemble_run(out_dir, chunk_paths, *, attrs: dict, combine: str = "auto",
                 summary_kw: dict | None = None, held: dict | None = None) -> "Posterior | ChunkedPosterior":
    """Write ``summary.parquet``, ``outputs.json`` and (see :func:`should_combine`) the combined
    ``posterior.nc`` of a finished run whose chunks are ``chunk_paths`` in catalogue order.

    attrs: provenance of the run, stored in ``outputs.json`` and in the combined file. held:
    {chunk path: the Posterior written there} for chunks still in memory (the combined file then
    does not read them back). Returns the combined :class:`Posterior`, or a
    :class:`ChunkedPosterior` over the chunks.
    """
    out_dir = Path(out_dir)
    paths = [Path(p) for p in chunk_paths]
    if not paths:
        raise ValueError("a run needs at least one chunk")
    summary_kw = dict(summary_kw or {})
    ids, shapes = _write_summary(paths, out_dir / SUMMARY, summary_kw)
    n_star_draws = sum(n * c * s for n, c, s in shapes)
    combined = should_combine(combine, n_star_draws)
    full = None
    if combined:
        full = _concat_chunks(paths, attrs, {Path(p): v for p, v in (held or {}).items()})
        full.save(out_dir / COMBINED)
    bounds = np.concatenate([[0], np.cumsum([n for n, _, _ in shapes])])
    _atomic_json(out_dir / OUTPUTS, {
        "n_stars": int(bounds[-1]), "combined": combined, "combine": combine,
        "chunks": [str(p.relative_to(out_dir)) if p.is_relative_to(out_dir) else str(p) for p in paths],
        "rows": [[int(a), int(b)] for a, b in zip(bounds[:-1], bounds[1:])],
        "summary_kw": summary_kw, "attrs": attrs})
    if full is not None:
        return full
    return ChunkedPosterior(paths=paths, star_id=ids, attrs=dict(attrs), summary_path=out_dir / SUMMARY,
                            summary_kw=summary_kw)


@dataclass
class ChunkedPosterior(StarRows):
    """A run's posterior kept in its chunk files: the :class:`Posterior` interface a catalogue
    consumer needs (``n_stars``, ``star_id``, ``attrs``, ``summary()``) without the draws in
    memory, and the draws chunk by chunk (:meth:`chunks`) or all at once (:meth:`load`)."""

    paths: list
    star_id: np.ndarray
    attrs: dict = field(default_factory=dict)
    summary_path: Path | None = None
    summary_kw: dict = field(default_factory=dict)

    def chunks(self):
        """Yield each chunk's :class:`Posterior` in catalogue order (one in memory at a time)."""
        for p in self.paths:
            yield Posterior.load(p)

    def parts(self, variables=None, select=None):
        """Yield (chunk :class:`Posterior`, its summary rows) in catalogue order: the rows are read
        from ``summary.parquet`` (one row group per chunk) when it matches, else computed.
        variables: names of posterior variables; where the summary rows are read, each chunk is then
        only those variables' draws (:func:`dds_infer.posterior_draws.read_draws`, ~7x faster).
        select: boolean mask over the run's stars: only those stars, and chunks without any of them
        are not read (where the summary gives the chunks' sizes)."""
        import pyarrow.parquet as pq

        groups = None
        if self.summary_path is not None and Path(self.summary_path).exists():
            f = pq.ParquetFile(self.summary_path)
            if f.num_row_groups == len(self.paths):
                groups = f
        at = 0  # the chunk's first star in the run
        for k, path in enumerate(self.paths):
            if select is not None and groups is not None:
                n = groups.metadata.row_group(k).num_rows
                at, rows = at + n, np.flatnonzero(select[at:at + n])
                if rows.size == 0:
                    continue
            summ = None if groups is None else groups.read_row_group(k).to_pandas()
            post = Posterior.load(path) if summ is None or variables is None else read_draws(path, variables)
            if summ is None or len(summ) != post.n_stars or not np.array_equal(
                    summ["star_id"].astype(str).to_numpy(), np.asarray(post.star_id).astype(str)):
                post = post if isinstance(post, Posterior) else Posterior.load(path)
                summ = post.summary(**self.summary_kw)
            if select is not None:
                if groups is None:
                    at, rows = at + post.n_stars, np.flatnonzero(select[at:at + post.n_stars])
                if rows.size == 0:
                    continue
                post, summ = post.take(rows), summ.iloc[rows].reset_index(drop=True)
            yield post, summ

    def summary(self, **summary_kw):
        """The per-star summary table (:meth:`Posterior.summary`): read from ``summary.parquet``
        when it was written with these settings, else computed chunk by chunk."""
        import pandas as pd

        if self.summary_path is not None and Path(self.summary_path).exists() and summary_kw in ({}, self.summary_kw):
            return pd.read_parquet(self.summary_path)
        return pd.concat([c.summary(**summary_kw) for c in self.chunks()], ignore_index=True)

    def load(self) -> Posterior:
        """Every chunk concatenated into one in-memory :class:`Posterior` (mind the size)."""
        return _concat_chunks(self.paths, self.attrs)

    def stars(self, ids) -> Posterior:
        """The stars ``ids`` in one :class:`Posterior`, reading only their chunks (:func:`stars_of`)."""
        return stars_of(self, ids)


def open_run(out_dir) -> "Posterior | ChunkedPosterior":
    """The posterior of a finished ``dds-infer infer`` output folder: a :class:`ChunkedPosterior`
    over its chunks (recorded in ``outputs.json``), or, for a folder written before
    ``outputs.json`` existed, its ``posterior.nc``."""
    out_dir = Path(out_dir)
    rec_path = out_dir / OUTPUTS
    if not rec_path.exists():
        if (out_dir / COMBINED).exists():
            return Posterior.load(out_dir / COMBINED)
        raise FileNotFoundError(f"{out_dir} holds no finished run ({OUTPUTS} and {COMBINED} are missing): "
                                "rerun the same 'dds-infer infer' command to finish it")
    rec = json.loads(rec_path.read_text())
    paths = [Path(p) if Path(p).is_absolute() else out_dir / p for p in rec["chunks"]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} chunk file(s) of {out_dir} are missing: {missing[:5]}")
    import pandas as pd

    ids = pd.read_parquet(out_dir / SUMMARY, columns=["star_id"])["star_id"].to_numpy()
    if ids.shape[0] != rec["n_stars"]:
        raise ValueError(f"{out_dir / SUMMARY} has {ids.shape[0]} rows, {OUTPUTS} records {rec['n_stars']} stars")
    return ChunkedPosterior(paths=paths, star_id=ids, attrs=rec.get("attrs", {}), summary_path=out_dir / SUMMARY,
                            summary_kw=rec.get("summary_kw", {}))


@dataclass
class JoinedPosterior(StarRows):
    """Several runs' posteriors (e.g. the shards of a catalogue) read as one, in the given order:
    the interface of :class:`ChunkedPosterior` (``n_stars``, ``star_id``, ``attrs``, ``parts()``,
    ``summary()``), one chunk in memory at a time. ``attrs["runs"]``: each run's source and attrs."""

    posteriors: list
    star_id: np.ndarray
    attrs: dict = field(default_factory=dict)

    def parts(self, variables=None, select=None):
        """(Posterior, summary rows) pieces of every run in turn (``variables``, ``select``: as
        :meth:`ChunkedPosterior.parts`)."""
        at = 0
        for post in self.posteriors:
            yield from posterior_parts(post, variables, None if select is None else select[at:at + post.n_stars])
            at += post.n_stars

    def summary(self, **summary_kw):
        import pandas as pd

        return pd.concat([p.summary(**summary_kw) for p in self.posteriors], ignore_index=True)

    def stars(self, ids) -> Posterior:
        """The stars ``ids`` in one :class:`Posterior`, reading only their chunks (:func:`stars_of`)."""
        return stars_of(self, ids)


def posterior_parts(post, variables=None, select=None):
    """(Posterior, summary rows) pieces of any posterior: a run's (:meth:`ChunkedPosterior.parts`,
    :meth:`JoinedPosterior.parts`, chunk by chunk) or an in-memory :class:`Posterior` as one piece;
    ``select`` (boolean mask over its stars): only those stars (no piece when none)."""
    if hasattr(post, "parts"):
        yield from post.parts(variables, select)
    elif select is None:
        yield post, post.summary()
    elif np.any(select):
        idx = np.flatnonzero(select)
        yield post.take(idx), post.summary().iloc[idx].reset_index(drop=True)


def stars_of(post, ids) -> Posterior:
    """The posterior of the stars ``ids`` (in that order) of any posterior: in memory, a run's chunks
    or joined runs, whose chunks without any of them are not read. Ids match as the run stores
    them, or as text when one side is numbers and the other text; an id not in ``post`` is a
    KeyError naming it."""
    want, have = np.atleast_1d(np.asarray(ids)), np.asarray(post.star_id)
    if want.dtype.kind != have.dtype.kind:
        want, have = want.astype(str), have.astype(str)
    missing = want[~np.isin(want, have)]
    if missing.size:
        raise KeyError(f"{missing.size} of {want.size} star id(s) are not in this posterior: {missing[:10].tolist()}")
    found = concat([p for p, _ in posterior_parts(post, None, np.isin(have, want))])
    got = np.asarray(found.star_id)
    got = got.astype(str) if got.dtype.kind != want.dtype.kind else got
    order = np.argsort(got, kind="stable")
    return found.take(order[np.searchsorted(got, want, sorter=order)])


def join_runs(posteriors, sources) -> "JoinedPosterior":
    """Join the posteriors of several runs (:class:`Posterior` or :class:`ChunkedPosterior`, named by
    ``sources`` in messages) into one :class:`JoinedPosterior`. A star in more than one run (shards
    that overlap, or one run given twice) is an error naming it and its runs: a dust map must not
    count a star twice."""
    posteriors, sources = list(posteriors), [str(s) for s in sources]
    if len(posteriors) != len(sources) or not posteriors:
        raise ValueError("join_runs needs one source name per posterior, and at least one posterior")
    ids = [np.asarray(p.star_id) for p in posteriors]
    key = np.concatenate([i.astype(str) for i in ids])
    uniq, counts = np.unique(key, return_counts=True)
    if (counts > 1).any():
        run_of = np.repeat(np.arange(len(ids)), [i.shape[0] for i in ids])
        dup = uniq[counts > 1]
        where = {str(s): [sources[r] for r in np.unique(run_of[key == s])] for s in dup[:5]}
        raise ValueError(f"{dup.size} star id(s) appear in more than one posterior (overlapping shards?): "
                         + "; ".join(f"{s!r} in {w}" for s, w in where.items()))
    attrs = {"runs": [{"source": s, "attrs": dict(getattr(p, "attrs", {}) or {})}
                      for s, p in zip(sources, posteriors)]}
    return JoinedPosterior(posteriors=posteriors, star_id=np.concatenate(ids) if len({i.dtype.kind for i in ids}) == 1
                           else key.astype(object), attrs=attrs)
