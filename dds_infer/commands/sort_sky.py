"""``dds-infer sort-sky``: a Parquet catalogue rewritten in nested HEALPix order
(:mod:`dds_infer.catalog_sort`), so that chunks, shards and dust-map regions cover small patches
of sky."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "sort-sky",
        help="rewrite a Parquet catalogue in sky order (nested HEALPix), in bounded memory",
        description="Order the rows of a Parquet catalogue by nested HEALPix pixel (then file row) and write them "
        "to a new Parquet file, through bucket files of at most ~--bucket-rows rows, so memory stays bounded. "
        "A table without an id column gets one (the input file row), so stars keep their ids. Chunks and shards "
        "of the sorted catalogue cover small patches of sky: dust-map files write faster and "
        "'dustmap --split-nside' reads each chunk about once.",
    )
    p.add_argument("--catalog", required=True, help="input Parquet catalogue")
    p.add_argument("--out", required=True, help="output Parquet file (written atomically)")
    p.add_argument("--columns", default=None, help="JSON column map (the id and position columns are used)")
    p.add_argument("--nside", type=int, default=32, help="HEALPix nside of the order (default 32)")
    p.add_argument("--bucket-rows", type=int, default=None, help="rows per bucket on average (default 10^6)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    from ..catalog_sort import DEFAULT_BUCKET_ROWS, sky_sort
    from ..cli import emit_json
    from ._common import catalog_n_rows, progress_bar

    t0 = time.perf_counter()
    if not Path(args.catalog).exists():
        raise FileNotFoundError(f"catalogue {args.catalog} not found")
    cmap = None if args.columns is None else json.loads(Path(args.columns).read_text())
    with progress_bar(args, lambda: 2 * catalog_n_rows(args.catalog, cmap), "sort (bucket, write)") as bar:
        res = sky_sort(args.catalog, args.out, nside=args.nside, column_map=cmap,
                       bucket_rows=args.bucket_rows or DEFAULT_BUCKET_ROWS, on_rows=None if bar is None else bar.update)
    res["seconds"] = time.perf_counter() - t0
    if args.json:
        emit_json(res)
    else:
        print(f"{res['n_rows']} rows in nested HEALPix order (nside {res['nside']}, {res['n_buckets']} buckets), "
              f"{res['seconds']:.1f} s" + ("; added an 'id' column: each star's input file row" if res["added_id"] else "")
              + f"\n{res['out']}")
    return 0
