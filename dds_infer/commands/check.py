"""``dds-infer check``: validate a catalogue block by block before a long run
(:mod:`dds_infer.catalog_scan`); exit status 1 when it has problems."""

from __future__ import annotations

from ._model_args import add_columns_args


def register(sub) -> None:
    p = sub.add_parser(
        "check",
        help="validate a catalogue (any size) before a run: every problem, with its file rows",
        description="Read the catalogue in blocks of rows (memory bounded by the block) with the reader and checks "
        "that 'dds-infer infer' uses, and report every problem of every block with its file rows, ids given to "
        "more than one row anywhere in the file (which shards would not see), and the counts of missing "
        "bands, parallaxes, labels and positions. Exit status: 0 valid, 1 problems found, 2 the file or "
        "its columns could not be read.",
    )
    p.add_argument("--catalog", required=True, help="catalogue file (Green2020 HDF5 or a table: Parquet, FITS, ...)")
    add_columns_args(p)
    p.add_argument("--rows", default=None, metavar="START:STOP", help="check only these file rows (as infer --rows)")
    p.add_argument("--shard", default=None, metavar="K/N", help="check only shard K of N (as infer --shard)")
    p.add_argument("--block-rows", type=int, default=None,
                   help="rows read at a time (default 10^6, ~1 GB; Parquet blocks end on row-group bounds)")
    p.add_argument("--require-labels", action="store_true",
                   help="spectroscopic labels required (as for train and evaluate)")
    p.add_argument("--require-reddening-prior", action="store_true",
                   help="prior reddening required (as for train and evaluate)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    from ..catalog_io import _format_for
    from ..catalog_rows import check_rows, parquet_row_groups, shard_read_notes
    from ..catalog_scan import DEFAULT_BLOCK_ROWS, scan_catalog
    from ..cli import emit_json
    from ._common import catalog_n_rows, is_green2020_h5, read_catalog, row_range

    t0 = time.perf_counter()
    path = Path(args.catalog)
    if not path.exists():
        raise FileNotFoundError(f"catalogue {path} not found")
    cmap = None if args.columns is None else json.loads(Path(args.columns).read_text())
    n_rows = catalog_n_rows(path, cmap)
    rows = row_range(args)  # (a range beyond the file is an error naming its length, as for infer)
    start, stop = (0, n_rows) if rows is None else check_rows(rows, n_rows, repr(str(path)))
    green = cmap is None and is_green2020_h5(path)
    form = None if green else _format_for(path, None)

    def read_block(r):
        return read_catalog(path, cmap, rows=r, parallax_unit=args.parallax_unit,
                            require_labels=args.require_labels,
                            require_reddening_prior=args.require_reddening_prior)

    def read_ids(r):  # a block that fails: its ids still count against the other blocks'
        from ..catalog_io import read_ids

        return None if green else read_ids(path, cmap, rows=r)

    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop - start, unit="row", desc="check")
    try:
        res = scan_catalog(read_block, start, stop, block_rows=args.block_rows or DEFAULT_BLOCK_ROWS,
                           edges=parquet_row_groups(path) if form == "parquet" else None, read_ids=read_ids,
                           on_rows=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    notes = [] if green else shard_read_notes(path, form, n_rows)
    out = {"catalog": str(path), **res.to_dict(), "shard_notes": notes, "seconds": time.perf_counter() - t0}
    if args.json:
        emit_json(out)
    else:
        print(f"{path}: rows {start}:{stop} in {res.n_blocks} block(s)"
              + (f", {res.n_blocks_read} read" if res.stopped_early else "") + f", {out['seconds']:.1f} s")
        if res.report is not None:
            print(res.report.summary() if res.valid else "counts of the valid blocks:\n" + res.report.summary())
        print("\n".join(f"note (shards): {m}" for m in notes) if notes else "", end="\n" if notes else "")
        if res.valid:
            print("no problems found")
        else:
            print(f"{len(res.problems)} problem(s):")
            print("\n".join(f"  - {m}" for m in res.problems))
    return 0 if res.valid else 1
