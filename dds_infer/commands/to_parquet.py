"""``dds-infer to-parquet``: a catalogue table (FITS, VOTable, CSV, ECSV, HDF5, Parquet) rewritten as
Parquet in row groups of a chosen size (:mod:`dds_infer.catalog_convert`)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "to-parquet",
        help="rewrite a catalogue table as Parquet (what shards and sort-sky read best), block by block",
        description="Write a table file as Parquet in row groups of --row-group-rows rows, keeping its columns, "
        "units, masks (as nulls) and metadata. FITS is read through a memory map --block-rows rows at a time "
        "(memory bounded by a block), Parquet row group by row group (to change the row-group size); other "
        "formats are read whole. The output appears only when complete.",
    )
    p.add_argument("--catalog", required=True, help="input table file")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument("--row-group-rows", type=int, default=None,
                   help="rows per Parquet row group (default 262144: a shard decodes only the groups it overlaps)")
    p.add_argument("--block-rows", type=int, default=None, help="FITS: rows read at a time (default 10^6)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    import time
    from pathlib import Path

    from ..catalog_convert import DEFAULT_BLOCK_ROWS, DEFAULT_ROW_GROUP_ROWS, to_parquet
    from ..cli import emit_json
    from ._common import catalog_n_rows, progress_bar

    def total():
        try:
            return catalog_n_rows(Path(args.catalog))
        except Exception:  # (not counted: the bar counts the rows as they are written)
            return None

    t0 = time.perf_counter()
    with progress_bar(args, total, "to-parquet") as bar:
        res = to_parquet(args.catalog, args.out, row_group_rows=args.row_group_rows or DEFAULT_ROW_GROUP_ROWS,
                         block_rows=args.block_rows or DEFAULT_BLOCK_ROWS,
                         on_rows=None if bar is None else bar.update)
    res = {**res, "out": str(args.out), "seconds": time.perf_counter() - t0}
    if args.json:
        emit_json(res)
        return 0
    print(f"{args.out}: {res['n_rows']} rows in {res['n_row_groups']} row group(s), {len(res['columns'])} columns, "
          f"from {res['format']}{' (read whole)' if res['read_whole'] else ''}, {res['seconds']:.1f} s")
    return 0
