"""``dds-infer dustmap``: per-star (μ, E) probability images grouped by HEALPix pixel, for 3D dust
mapping (Bayestar-style input, Green et al. 2019; layout in :mod:`dds_infer.dustmap_io`)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "dustmap",
        help="write per-star distance-reddening images grouped by HEALPix pixel (3D dust-map input)",
        description="Bin each star's posterior draws of distance modulus and reddening on a (mu, E) grid, "
        "smooth, normalise, and write them with the samples and diagnostics to one HDF5 file with a "
        "group per nested HEALPix pixel (Galactic frame). Sky positions come from the catalogue "
        "(l, b, or ra, dec through --columns).",
    )
    p.add_argument("--posterior", required=True, nargs="+",
                   help="posterior NetCDF file, or a 'dds-infer infer' output directory (read chunk by chunk, so any "
                   "catalogue size fits in memory); several: the shards of one catalogue (infer --shard K/N), "
                   "written into one file in the order given (a star in two of them is an error)")
    p.add_argument("--catalog", required=True,
                   help="the catalogue the posterior was computed for (of a shard's run, only its rows are read)")
    p.add_argument("--columns", default=None, help="JSON file with the column map for generic tables")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--nside", type=int, default=32, help="HEALPix nside (power of two, nested ordering)")
    p.add_argument("--n-samples", type=int, default=None,
                   help="posterior draws stored per star (evenly thinned; default: all)")
    p.add_argument("--mu-step", type=float, default=None, help="distance-modulus bin width (default 0.125)")
    p.add_argument("--E-step", type=float, default=None, help="reddening bin width (default 0.01)")
    p.add_argument("--smooth-mu", type=float, default=None, help="Gaussian sigma in mu pixels (default 1)")
    p.add_argument("--smooth-E", type=float, default=None, help="Gaussian sigma in E pixels (default 1)")
    p.add_argument("--summary", default=None, help="also write a Parquet summary with l, b and healpix")
    p.add_argument("--split-nside", type=int, default=None, metavar="S",
                   help="write one file per nested HEALPix pixel at this coarser nside into the folder --out "
                   "(dustmap_S_PIXEL.h5 and index.json): files that exist are skipped, so a rerun resumes")
    p.add_argument("--region", default=None, metavar="K/N",
                   help="with --split-nside: write only every N-th region from the K-th (e.g. a job array's task)")
    p.add_argument("--threads", type=int, default=None,
                   help="gzip compression threads (default: one per core the process may use; the file is the same)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def _positions(pos, star_id):
    """(l, b) of the posterior's stars, matched by id to the catalogue's
    :class:`~dds_infer.sky_positions.SkyPositions` (:func:`~dds_infer.sky_positions.match_rows`)."""
    import numpy as np

    from ..sky_positions import match_rows

    rows = match_rows(pos.ids, star_id)
    if (rows < 0).any():
        missing = np.asarray(star_id)[rows < 0]
        raise ValueError(f"{missing.size} posterior star_id(s) not in the catalogue"
                         + ("" if pos.rows is None else f" rows {pos.rows[0]}:{pos.rows[1]}")
                         + f": {[str(s) for s in missing[:10]]}")
    return pos.l[rows], pos.b[rows]


def _source_positions(path, cmap, post, whole):
    """(l, b) of one posterior's stars: from the catalogue rows its run recorded (a shard), else (or
    when its stars are not all there: a catalogue other than the run's, e.g. positions alone in
    another order) from the whole catalogue (``whole``: a one-item cache, read at most once). Only
    the id and position columns are read (:func:`dds_infer.sky_positions.read_positions`)."""
    from ..catalog import CatalogError
    from ..sky_positions import read_positions

    rows = (getattr(post, "attrs", None) or {}).get("catalog_rows")
    if rows is not None:
        try:
            return _positions(read_positions(path, cmap, rows=tuple(rows)), post.star_id)
        except (ValueError, CatalogError):  # (CatalogError: rows beyond a shorter file) the whole file
            pass
    if not whole:
        whole.append(read_positions(path, cmap))
    return _positions(whole[0], post.star_id)


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    import numpy as np

    from ..cli import emit_json
    from ..dustmap_io import ImageGrid, list_pixels, stored_coverage, write_dustmap, write_summary_table
    from ..posterior import Posterior
    from ..catalog import CatalogError
    from ..run_outputs import join_runs, open_run
    from ._common import is_green2020_h5

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    t0 = time.perf_counter()
    cat_path = Path(args.catalog)
    if cat_path.exists() and args.columns is None and is_green2020_h5(cat_path):
        raise CatalogError("the catalogue has no sky positions (the Green2020 test-data file has none): give a table "
                           "with l, b columns (or ra, dec mapped through --columns)")
    cmap = None if args.columns is None else json.loads(Path(args.columns).read_text())
    sources = [Path(p) for p in args.posterior]
    posts = [open_run(src) if src.is_dir() else Posterior.load(src) for src in sources]  # a folder: chunk by chunk
    whole = []
    lb = [_source_positions(cat_path, cmap, p, whole) for p in posts]
    l, b = np.concatenate([x[0] for x in lb]), np.concatenate([x[1] for x in lb])
    post = posts[0] if len(posts) == 1 else join_runs(posts, sources)
    grid = ImageGrid(**{k: getattr(args, k) for k in ("mu_step", "E_step", "smooth_mu", "smooth_E")
                        if getattr(args, k) is not None})
    if args.split_nside is not None:
        return _run_regions(args, post, l, b, grid, posts, sources, t0)
    if args.region is not None:
        raise ValueError("--region needs --split-nside")
    bar = None
    if not args.no_progress:  # a run folder is read and binned chunk by chunk: minutes at 10^5+ stars
        from tqdm.auto import tqdm

        bar = tqdm(total=int(post.n_stars), unit="star", desc="dust-map images")
    try:
        out = write_dustmap(args.out, post, l, b, nside=args.nside, grid=grid, n_samples=args.n_samples,
                            attrs={"posterior_source": ", ".join(map(str, sources)),
                                   "catalog_source": str(args.catalog)},
                            on_stars=None if bar is None else bar.update, threads=args.threads)
    finally:
        if bar is not None:
            bar.close()
    if args.summary:
        write_summary_table(args.summary, post, l, b, nside=args.nside)
    cov = stored_coverage(out)
    figures = {"n_stars": int(post.n_stars), "n_pixels": int(len(list_pixels(out))), "nside": int(args.nside),
               "n_posteriors": len(posts),
               # runs of different settings (config_hash: model, prior, likelihood, sampler) in one file
               "config_hashes": sorted({str((getattr(p, "attrs", None) or {}).get("config_hash")) for p in posts}),
               "out": str(out), "seconds": time.perf_counter() - t0, "mean_coverage": float(np.mean(cov))}
    if args.json:
        emit_json(figures)
        return 0
    print(f"stars: {figures['n_stars']} in {figures['n_pixels']} pixels (nside {figures['nside']}), "
          f"mean coverage {figures['mean_coverage']:.3f}, {figures['seconds']:.1f} s")
    if len(figures["config_hashes"]) > 1:
        print(f"warning: the {len(posts)} posteriors come from {len(figures['config_hashes'])} different run "
              "settings (config_hash); a dust map usually wants one")
    print(f"dust-map input: {out}" + (f"\nsummary: {args.summary}" if args.summary else ""))
    return 0


def _run_regions(args, post, l, b, grid, posts, sources, t0) -> int:
    """--split-nside: one file per coarse region (dds_infer.dustmap_regions), resumable."""
    import time

    import numpy as np

    from ..catalog_rows import parse_shard
    from ..cli import emit_json
    from ..dustmap_io import list_pixels, stored_coverage, write_summary_table
    from ..dustmap_regions import write_dustmap_regions

    if args.summary and args.region is not None:
        raise ValueError("--summary covers the whole catalogue: write it without --region")
    region = None if args.region is None else parse_shard(args.region)
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=None, unit="star", desc="dust-map regions")  # (its total: on_start)

    def on_start(n_here):
        if bar is not None:
            bar.total = n_here
            bar.refresh()

    try:
        res = write_dustmap_regions(args.out, post, l, b, split_nside=args.split_nside, nside=args.nside,
                                    region=region,
                                    grid=grid, n_samples=args.n_samples, threads=args.threads,
                                    attrs={"posterior_source": ", ".join(map(str, sources)),
                                           "catalog_source": str(args.catalog)},
                                    on_start=on_start, on_stars=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    if args.summary:
        write_summary_table(args.summary, post, l, b, nside=args.nside)
    files = res["written"] + res["skipped"]
    cov = np.concatenate([stored_coverage(f) for f in files] or [np.zeros(0)])
    figures = {"n_stars": int(post.n_stars), "n_stars_here": res["n_stars_here"], "nside": int(args.nside),
               "split_nside": int(args.split_nside), "n_regions": res["n_regions"], "regions_here": res["regions_here"],
               "n_written": len(res["written"]), "n_skipped": len(res["skipped"]),
               "n_pixels_here": int(sum(len(list_pixels(f)) for f in files)), "n_posteriors": len(posts),
               "config_hashes": sorted({str((getattr(p, "attrs", None) or {}).get("config_hash")) for p in posts}),
               "out": str(args.out), "seconds": time.perf_counter() - t0,
               "mean_coverage": float(np.mean(cov)) if cov.size else float("nan")}
    if args.json:
        emit_json(figures)
        return 0
    print(f"regions: {figures['n_written']} written, {figures['n_skipped']} already there, of "
          f"{figures['regions_here']} here ({figures['n_regions']} in all, nside {figures['split_nside']}); "
          f"{figures['n_stars_here']} stars in {figures['n_pixels_here']} pixels (nside {figures['nside']}), "
          f"{figures['seconds']:.1f} s\ndust-map input: {args.out}/dustmap_{args.split_nside}_*.h5")
    return 0
