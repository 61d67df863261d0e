"""``dds-infer calibrate-offsets``: per-band photometric zero-point offsets from a catalogue's own stars
(:mod:`dds_infer.band_offsets`), written for ``dds-infer infer --band-offsets``."""

from __future__ import annotations

from ..band_offsets import GAUGE_DIRECTIONS
from ._model_args import add_model_args, build_model_inputs


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate-offsets",
        help="per-band photometric zero-point offsets from the catalogue's own stars (for infer --band-offsets)",
        description="Infer every star (the grid path by default), take each band's median posterior-mean "
        "residual over the stars with flag 0, add it to the band's offset, and repeat until no offset moves "
        "by more than --tol. The updates leave the two directions the stars cannot fix where they start: a "
        "common offset of all bands (degenerate with distance) and one proportional to the mean reddening "
        "vector R (degenerate with E); --free lets either float. Writes <out>/band_offsets.json (read by "
        "dds-infer infer --band-offsets) and one resumable run per iteration in <out>/iter_NN.",
    )
    add_model_args(p)
    p.add_argument("--out", required=True, help="output directory (reused to resume)")
    p.add_argument("--iterations", type=int, default=4, help="at most this many fit-and-update rounds (default 4)")
    p.add_argument("--tol", type=float, default=0.002, help="stop when no offset moves by more [mag] (default 0.002)")
    p.add_argument("--free", action="append", default=[], choices=GAUGE_DIRECTIONS,
                   help="let this direction of the offsets float (repeatable; default: neither)")
    p.add_argument("--max-stars", type=int, default=None,
                   help="use a random subset of at most this many stars (seeded; default all)")
    p.add_argument("--method", default="grid", choices=("grid", "nuts"),
                   help="posterior of each star: grid path (default, ~10^3 stars/s) or NUTS (4 x (500 + 500))")
    p.add_argument("--n-draws", type=int, default=None, help="grid path: posterior draws per star (default 1000)")
    p.add_argument("--batch-size", type=int, default=None, help="stars per chunk (default as dds-infer infer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="discard results of a different run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    import time
    from pathlib import Path

    import numpy as np

    from ..band_offsets import calibrate_band_offsets
    from ..cli import emit_json

    if args.iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
    if args.max_stars is not None and args.max_stars < 1:
        raise ValueError(f"--max-stars must be >= 1, got {args.max_stars}")
    inputs = build_model_inputs(args)
    cat = inputs.catalog
    n_catalog = cat.n_stars
    if args.max_stars is not None and args.max_stars < n_catalog:
        rows = np.sort(np.random.default_rng(args.seed).choice(n_catalog, args.max_stars, replace=False))
        cat = cat.subset(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def report(rec):
        if not args.no_progress:
            print(f"iteration {rec['iteration'] + 1}/{args.iterations}: largest update "
                  f"{rec['max_abs_update']:.4f} mag ({rec['n_usable']} usable stars)", file=sys.stderr, flush=True)

    extra = {} if args.batch_size is None else {"batch_size": args.batch_size}
    if args.n_draws is not None:
        if args.method != "grid":
            raise ValueError("--n-draws is for --method grid")
        from ..gridpath import GridSettings

        extra["grid_settings"] = GridSettings(n_draws=args.n_draws)
    t0 = time.perf_counter()
    res = calibrate_band_offsets(cat, inputs.emulator, out, prior=inputs.prior, config=inputs.config,
                                 iterations=args.iterations, tol=args.tol, free=tuple(args.free),
                                 method=args.method, seed=args.seed, progress=not args.no_progress,
                                 callback=report, overwrite=args.overwrite, **extra)
    res.attrs.update(catalog=str(args.catalog), model=str(args.model), n_catalog_stars=n_catalog,
                     n_stars_used=cat.n_stars, reddening=args.reddening, selection_limit=inputs.selection_limit)
    path = res.write(out / "band_offsets.json")
    figures = {**res.to_dict(), "n_stars": cat.n_stars, "iterations_run": len(res.history),
               "converged": res.attrs["converged"], "seconds": time.perf_counter() - t0, "out": str(path)}
    if args.json:
        emit_json(figures)
        return 0
    print(f"{cat.n_stars} stars, {len(res.history)} iteration(s), "
          f"{'converged' if res.attrs['converged'] else 'NOT converged'} (tol {args.tol} mag)")
    for b, v, e, n in zip(res.bands, res.offsets, res.errors, res.n_stars):
        err = "   n/a" if not np.isfinite(e) else f"{e:.4f}"
        print(f"  {b:>12s}  {v:+.4f} ± {err}  ({n} stars)")
    print(f"offsets: {path}")
    return 0
