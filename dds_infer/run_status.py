"""Where a catalogue's runs stand: which are finished, which are part done, which rows of the
catalogue no run covers, and the diagnostics of every star finished so far.

A 10⁸-star catalogue runs as many shards (``dds-infer infer --shard K/N``), each in its own output
folder, often as a job array whose tasks can fail or be cut off. :func:`run_status` reads what a
run folder holds without loading draws: its ``manifest.json`` (written before the first chunk:
the catalogue rows, the star count and the settings), the chunk files present (a run resumes
from them) and ``outputs.json`` (written when the run is finished). :func:`coverage` puts the runs
against the catalogue's rows: the rows no run covers, the rows two runs cover, and, for a job
array of ``N`` shards, the shards to (re)submit. :func:`star_figures` sums the per-star summary
rows of the finished chunks (their ``.summary.parquet`` files; only three columns are read) into
the figures ``dds-infer infer --json`` reports. ``dds-infer status`` prints all three.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .catalog_rows import shard_rows
from .posterior import flag_counts
from .run_outputs import OUTPUTS, SUMMARY, chunk_summary_path
from .runner import MANIFEST

__all__ = ["RunStatus", "run_status", "coverage", "star_figures", "summary_columns", "STATES"]

STATES = ("finished", "partial", "not started", "not a run")


@dataclass
class RunStatus:
    """What one run folder holds. ``rows``: the catalogue's file rows [start, stop) it infers (a
    whole-catalogue run: [0, n_stars)); ``chunks_done``/``stars_done``: chunk files written;
    ``state``: one of :data:`STATES`; ``problem``: why a folder is "not a run"."""

    path: str
    state: str
    n_stars: int | None = None
    rows: list | None = None
    n_chunks: int | None = None
    chunks_done: int = 0
    stars_done: int = 0
    method: str | None = None
    config_hash: str | None = None
    keep_bits: int | None = None
    problem: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _chunk_layout(n: int, settings: dict) -> int:
    """Stars per chunk of a run of ``n`` stars with these recorded settings, as
    :func:`dds_infer.runner.infer_catalog` splits it: the grid path in chunks of ``batch_size``;
    NUTS in balanced chunks (:func:`~dds_infer.runner.chunk_size`), recorded as ``chunk`` where they
    differ from min(batch_size, n) (and runs from before the balancing used that)."""
    batch = int(settings["batch_size"])
    if settings.get("batch_fn"):
        return batch
    return max(int(settings.get("chunk", min(batch, n))), 1)


def run_status(path) -> RunStatus:
    """The state of one ``dds-infer infer`` output folder (reads its manifest and lists its chunks)."""
    path = Path(path)
    if not path.is_dir():
        return RunStatus(str(path), "not started", problem=f"no folder {path}")
    manifest = path / MANIFEST
    if not manifest.is_file():
        return RunStatus(str(path), "not a run", problem=f"no {MANIFEST} in {path}: not a 'dds-infer infer' output folder")
    try:
        m = json.loads(manifest.read_text())
        n = int(m["catalog"]["n_stars"])
        settings = m["description"]["settings"]
        per_chunk = _chunk_layout(n, settings)
    except (ValueError, KeyError, TypeError) as exc:
        return RunStatus(str(path), "not a run", problem=f"{manifest} is unreadable: {exc!r}")
    rows = m["catalog"].get("rows") or [0, n]
    n_chunks = -(-n // per_chunk)
    done = [k for k in range(n_chunks) if (path / "chunks" / f"chunk_{k:05d}.nc").is_file()]
    stars = sum(min(per_chunk, n - k * per_chunk) for k in done)
    finished = len(done) == n_chunks and (path / OUTPUTS).is_file()
    return RunStatus(str(path), "finished" if finished else "partial" if done else "not started", n_stars=n,
                     rows=[int(rows[0]), int(rows[1])], n_chunks=n_chunks, chunks_done=len(done), stars_done=stars,
                     method="grid" if settings.get("batch_fn") else "nuts", config_hash=m.get("config_hash"),
                     keep_bits=settings.get("keep_bits"))


def _merge(spans) -> list:
    """Sorted, merged [a, b) spans."""
    out = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def coverage(statuses, n_rows: int | None = None, n_shards: int | None = None) -> dict:
    """The runs against the catalogue's rows: ``uncovered`` [a, b) spans no run infers (needs
    ``n_rows``), ``overlaps`` spans inferred by two runs, ``rows_finished`` (rows of finished
    chunks); with ``n_shards`` (the job array's N), each shard's state, ``missing_shards`` (no run
    has its rows) and ``unfinished_shards`` (its run is partial or not started). A run whose rows
    are not one shard's is listed under ``other_runs``."""
    runs = [s for s in statuses if s.rows is not None]
    spans = sorted((s.rows[0], s.rows[1], s.path) for s in runs)
    overlaps, reach = [], None  # reach: the earlier span that ends last
    for a, b, p in spans:
        if reach is not None and a < reach[1]:
            overlaps.append({"rows": [a, min(b, reach[1])], "runs": [reach[2], p]})
        if reach is None or b > reach[1]:
            reach = (a, b, p)
    out = {"n_rows": n_rows, "overlaps": overlaps, "rows_finished": sum(s.stars_done for s in runs)}
    if n_rows is not None:
        covered = _merge([[a, b] for a, b, _ in spans])
        gaps, at = [], 0
        for a, b in covered:
            if a > at:
                gaps.append([at, min(a, n_rows)])
            at = max(at, b)
        if at < n_rows:
            gaps.append([at, n_rows])
        out["uncovered"] = [g for g in gaps if g[1] > g[0]]
        out["beyond_catalogue"] = [s.path for s in runs if s.rows[1] > n_rows]
    if n_shards is not None:
        if n_rows is None:
            raise ValueError("the shards of a catalogue need its row count (--catalog)")
        by_rows = {tuple(s.rows): s for s in runs}
        shards = [shard_rows(k, n_shards, n_rows) for k in range(n_shards)]
        state = {k: (by_rows[r].state if r in by_rows else "missing") for k, r in enumerate(shards) if r[1] > r[0]}
        out["shards"] = {"n_shards": n_shards, "state": state}
        out["missing_shards"] = [k for k, v in state.items() if v == "missing"]
        out["unfinished_shards"] = [k for k, v in state.items() if v in ("partial", "not started")]
        out["other_runs"] = [s.path for s in runs if tuple(s.rows) not in set(shards)]
    return out


def summary_columns(statuses, columns) -> "pd.DataFrame":
    """The per-star summary ``columns`` of every finished chunk of the runs, in run order: a finished
    run's ``summary.parquet``, a partial run's chunk summaries (computed from the draws where a
    chunk has none). Only these columns are read."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .run_outputs import _chunk_summary

    cols, frames = list(columns), []

    def read(path):  # the columns the file has; the others (e.g. weight_ess of NUTS runs) are NaN
        have = [c for c in cols if c in pq.ParquetFile(path).schema_arrow.names]
        return pq.read_table(path, columns=have)

    for s in statuses:
        if s.n_chunks is None:
            continue
        if s.state == "finished" and (Path(s.path) / SUMMARY).is_file():  # one file for the run
            frames.append(read(Path(s.path) / SUMMARY))
            continue
        for c in (Path(s.path) / "chunks" / f"chunk_{k:05d}.nc" for k in range(s.n_chunks)):
            if c.is_file():
                sp = chunk_summary_path(c)
                if sp.is_file():
                    frames.append(read(sp))
                else:
                    t = _chunk_summary(c, {})[0]
                    frames.append(t.select([n for n in cols if n in t.column_names]))
    frames = [t.to_pandas() for t in frames if isinstance(t, pa.Table)]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for c in cols:
        if c not in out:
            out[c] = np.full(len(out), np.nan)
    return out[cols]


def star_figures(statuses) -> dict:
    """Per-star diagnostics over the finished chunks of the runs (:func:`summary_columns`): as
    ``dds-infer infer --json`` (``n_stars``, ``n_flagged``, ``flag_counts``, ``median_ess``, and
    ``frac_rhat_lt_1_01`` over NUTS runs' stars; None where no star is finished)."""
    import pandas as pd

    parts = [(s.method == "nuts", summary_columns([s], ["flag", "ess_bulk_min", "r_hat_max"])) for s in statuses]
    t = pd.concat([p for _, p in parts], ignore_index=True) if parts else pd.DataFrame()
    if len(t) == 0:
        return {"n_stars": 0, "n_flagged": 0, "flag_counts": None, "median_ess": None, "frac_rhat_lt_1_01": None}
    nuts = np.concatenate([np.full(len(p), is_nuts) for is_nuts, p in parts])  # (the grid path has no R-hat)
    r = t["r_hat_max"].to_numpy(np.float64)[nuts] if nuts.any() else None
    flag = t["flag"].to_numpy()
    return {"n_stars": int(flag.size), "n_flagged": int(np.count_nonzero(flag)), "flag_counts": flag_counts(flag),
            "median_ess": float(np.nanmedian(t["ess_bulk_min"].to_numpy(np.float64))),
            "frac_rhat_lt_1_01": None if r is None or r.size == 0 else float(np.mean(r < 1.01))}
