"""Memory and time of reading a catalogue whole against one shard of it (``dds-infer infer --shard K/N``),
in the same run.

A 3D dust map needs 10^8+ stars: read whole, a catalogue's memory grows with it, and a shard's
(:mod:`dds_infer.catalog_rows`) with the shard. The catalogue is a synthetic Parquet file with the
columns of a Gaia + PS1 + 2MASS + unWISE cross-match (13 bands' magnitudes and errors in float64, parallax
and error, l, b, an int64 ``source_id``; 10% of magnitudes missing), written in row groups of
262,144 rows (``--row-group-size``). Each read (:func:`dds_infer.commands._common.read_catalog`, as ``dds-infer
infer`` reads, including validation) runs in its own process, whose peak resident memory
(``ru_maxrss``) is reported with the process's memory after its imports:

* ``whole``: every row;
* ``shard``: shard ``--shard-index`` of ``--n-shards`` (default the middle one of 10);
* ``positions``: every row's id and (l, b) alone (:func:`dds_infer.sky_positions.read_positions`,
  what ``dds-infer dustmap`` reads of a catalogue).

    python bench/shard_bench.py --json [--n-rows 1000000 --n-shards 10 --row-group-size 262144 --work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import peak_rss_mb, report, run_worker


def make_catalog(path: Path, n_rows: int, row_group_size: int, seed: int = 0) -> None:
    """A synthetic cross-match of ``n_rows`` stars in row groups of at most ``row_group_size`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dds_infer.passbands import GREEN2020

    AB_SHIFT = {"unwise_w1": 2.699, "unwise_w2": 3.339}  # the model takes unWISE in AB (Vega + these)
    writer, step = None, max(row_group_size, 1 << 16)
    rng = np.random.default_rng(seed)
    for a in range(0, n_rows, step):
        n = min(step, n_rows - a)
        cols = {"source_id": np.arange(a, a + n, dtype=np.int64) * 7 + 11}
        g = rng.uniform(12, 20, n)
        for i, band in enumerate(GREEN2020.names):
            mag = g - 0.2 * i + AB_SHIFT.get(band, 0.0) + rng.normal(0, 0.1, n)
            mag[rng.random(n) < 0.1] = np.nan  # missing bands
            cols[f"mag_{band}"], cols[f"mag_err_{band}"] = mag, rng.uniform(0.01, 0.1, n)
        cols["parallax"], cols["parallax_err"] = rng.normal(0.5, 0.2, n), rng.uniform(0.02, 0.3, n)
        cols["l"], cols["b"] = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
        table = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=row_group_size)
    writer.close()


def worker(step: str, path: Path, shard: str) -> dict:
    """One read in this process: seconds, peak RSS (MB), the RSS after the imports, stars read."""
    from dds_infer.catalog_rows import parse_shard, shard_rows
    from dds_infer.commands._common import catalog_n_rows, read_catalog

    base = peak_rss_mb()
    t0 = time.perf_counter()
    if step == "positions":
        from dds_infer.sky_positions import read_positions

        pos = read_positions(path, {"id": "source_id", "l": "l", "b": "b"})
        return {"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "rss_mb_after_imports": base,
                "n_stars": int(pos.ids.shape[0])}
    rows = None
    if step == "shard":
        k, n_shards = parse_shard(shard)
        rows = shard_rows(k, n_shards, catalog_n_rows(path))
    cat = read_catalog(path, require_labels=False, **({} if rows is None else {"rows": rows}))
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "rss_mb_after_imports": base,
            "n_stars": int(cat.n_stars)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-rows", type=int, default=1_000_000)
    p.add_argument("--n-shards", type=int, default=10)
    p.add_argument("--shard-index", type=int, default=None, help="which shard to read (default: the middle one)")
    p.add_argument("--row-group-size", type=int, default=1 << 18, help="Parquet rows per row group (default 262144)")
    p.add_argument("--work-dir", default=None, help="keep the synthetic catalogue here (default: a temporary folder)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--_worker", nargs=3, metavar=("STEP", "PATH", "SHARD"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        print(json.dumps(worker(args._worker[0], Path(args._worker[1]), args._worker[2])))
        return 0
    if min(args.n_rows, args.n_shards, args.row_group_size) < 1:
        p.error("--n-rows, --n-shards and --row-group-size must be >= 1")
    k = args.n_shards // 2 if args.shard_index is None else args.shard_index
    if not 0 <= k < args.n_shards:
        p.error("--shard-index must be in [0, --n-shards)")
    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="shard_bench_")
    work = Path(args.work_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"catalog_{args.n_rows}_{args.row_group_size}.parquet"
    t0 = time.perf_counter()
    if not path.exists():
        make_catalog(path, args.n_rows, args.row_group_size)
    import pyarrow.parquet as pq

    figures = {"n_rows": args.n_rows, "n_shards": args.n_shards, "shard_index": k,
               "row_groups": pq.ParquetFile(path).metadata.num_row_groups,
               "file_mb": path.stat().st_size / 2**20, "make_seconds": time.perf_counter() - t0}
    for step in ("whole", "shard", "positions"):
        res = run_worker(__file__, "--_worker", step, path, f"{k}/{args.n_shards}")
        figures.update({f"{step}_{key}": v for key, v in res.items()})
    grow = {s: figures[f"{s}_peak_rss_mb"] - figures[f"{s}_rss_mb_after_imports"] for s in ("whole", "shard")}
    figures["whole_kb_per_star"] = grow["whole"] * 1024 / figures["whole_n_stars"]
    figures["shard_kb_per_star"] = grow["shard"] * 1024 / figures["shard_n_stars"]
    figures["memory_growth_ratio"] = grow["whole"] / max(grow["shard"], 1.0)
    figures["positions_kb_per_star"] = ((figures["positions_peak_rss_mb"] - figures["positions_rss_mb_after_imports"])
                                        * 1024 / figures["positions_n_stars"])
    if tmp is not None:
        tmp.cleanup()
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
