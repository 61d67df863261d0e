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
    p.add_argument("--posterior", required=True,
                   help="posterior NetCDF file, or a 'dds-infer infer' output directory (read chunk by chunk, so any "
                   "catalogue size fits in memory)")
    p.add_argument("--catalog", required=True, help="the catalogue the posterior was computed for")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def _positions(cat, star_id):
    """(l, b) of the posterior's stars, matched to the catalogue by id (compared as strings)."""
    import numpy as np

    if cat.l is None or cat.b is None:
        raise ValueError("the catalogue has no sky positions: it needs l, b columns (or ra, dec mapped "
                         "through --columns)")
    ids = [str(s) for s in cat.star_ids()]
    row = {}
    dup = set()
    for i, s in enumerate(ids):
        if s in row:
            dup.add(s)
        row[s] = i
    want = [str(s) for s in star_id]
    missing = [s for s in want if s not in row]
    if missing:
        raise ValueError(f"{len(missing)} posterior star_id(s) not in the catalogue: {missing[:10]}")
    amb = sorted(dup & set(want))
    if amb:
        raise ValueError(f"star_id(s) {amb[:10]} appear more than once in the catalogue")
    rows = np.array([row[s] for s in want], dtype=np.int64)
    return cat.l[rows], cat.b[rows]


def run(args) -> int:
    import time
    from pathlib import Path

    import numpy as np

    from ..cli import emit_json
    from ..dustmap_io import ImageGrid, list_pixels, stored_coverage, write_dustmap, write_summary_table
    from ..posterior import Posterior
    from ..run_outputs import open_run
    from ._common import read_catalog

    t0 = time.perf_counter()
    src = Path(args.posterior)
    post = open_run(src) if src.is_dir() else Posterior.load(src)  # a folder: read chunk by chunk
    cat = read_catalog(args.catalog, args.columns, require_labels=False)
    l, b = _positions(cat, post.star_id)
    grid = ImageGrid(**{k: getattr(args, k) for k in ("mu_step", "E_step", "smooth_mu", "smooth_E")
                        if getattr(args, k) is not None})
    bar = None
    if not args.no_progress:  # a run folder is read and binned chunk by chunk: minutes at 10^5+ stars
        from tqdm.auto import tqdm

        bar = tqdm(total=int(post.n_stars), unit="star", desc="dust-map images")
    try:
        out = write_dustmap(args.out, post, l, b, nside=args.nside, grid=grid, n_samples=args.n_samples,
                            attrs={"posterior_source": str(src), "catalog_source": str(args.catalog)},
                            on_stars=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    if args.summary:
        write_summary_table(args.summary, post, l, b, nside=args.nside)
    cov = stored_coverage(out)
    figures = {"n_stars": int(post.n_stars), "n_pixels": int(len(list_pixels(out))), "nside": int(args.nside),
               "out": str(out), "seconds": time.perf_counter() - t0, "mean_coverage": float(np.mean(cov))}
    if args.json:
        emit_json(figures)
        return 0
    print(f"stars: {figures['n_stars']} in {figures['n_pixels']} pixels (nside {figures['nside']}), "
          f"mean coverage {figures['mean_coverage']:.3f}, {figures['seconds']:.1f} s")
    print(f"dust-map input: {out}" + (f"\nsummary: {args.summary}" if args.summary else ""))
    return 0
