"""``dds-infer los``: fit the cumulative reddening profile of one HEALPix pixel (Zucker et al. 2019)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "los",
        help="fit foreground reddening + thin dust clouds to one pixel's per-star (mu, E) images",
        description="Line-of-sight fit (dds_infer.los): E(mu) = E_fg + sum_k dE_k S((mu - mu_k)/w) with an "
        "outlier fraction, sampled with NUTS. Reads the pixel's images with dustmap_io.read_pixel.",
    )
    p.add_argument("--in", dest="path", required=True, help="per-star image file (dustmap_io format)")
    p.add_argument("--pixel", type=int, required=True, help="HEALPix pixel index in the file")
    p.add_argument("--clouds", type=int, default=1, help="number of thin clouds (default 1)")
    p.add_argument("--num-warmup", type=int, default=500)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude-flagged", action="store_true", help="drop stars whose flag is not 0")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def _fmt(q, scale=1.0, digits=3):
    return (f"{q['median'] * scale:.{digits}f} "
            f"(+{(q['q84'] - q['median']) * scale:.{digits}f} / -{(q['median'] - q['q16']) * scale:.{digits}f})")


def run(args) -> int:
    import time

    import numpy as np

    from ..cli import emit_json
    from ..dustmap_io import read_pixel
    from ..los import fit_los

    if args.clouds < 1:
        raise ValueError(f"--clouds must be >= 1, got {args.clouds}")
    for name in ("num_warmup", "num_samples", "num_chains"):
        if getattr(args, name) < (0 if name == "num_warmup" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    t0 = time.perf_counter()
    d = read_pixel(args.path, args.pixel)
    pdf = np.asarray(d["pdf"])
    if args.exclude_flagged:
        pdf = pdf[np.asarray(d["flag"]) == 0]
    if pdf.shape[0] == 0:
        raise ValueError(f"pixel {args.pixel} has no stars" + (" with flag 0" if args.exclude_flagged else ""))
    fit = fit_los(pdf, d["mu_centers"], d["E_centers"], args.clouds, num_warmup=args.num_warmup,
                  num_samples=args.num_samples, num_chains=args.num_chains, seed=args.seed,
                  progress=not args.json)
    s = fit.summary()
    out = {"pixel": int(args.pixel), "n_stars": s["n_stars"], "n_clouds": s["n_clouds"], "clouds": s["clouds"],
           "E_fg": s["E_fg"], "f_out": s["f_out"], "num_divergent": s["num_divergent"],
           "seconds": time.perf_counter() - t0}
    if args.json:
        emit_json(out)
        return 0
    print(f"pixel {out['pixel']}: {out['n_stars']} stars, {out['n_clouds']} cloud(s), {out['seconds']:.1f} s")
    for k, c in enumerate(out["clouds"]):
        print(f"cloud {k}: distance {_fmt(c['distance_pc'], digits=0)} pc, mu {_fmt(c['mu'])}, "
              f"dE {_fmt(c['delta_E'])}, r_hat {c['r_hat']:.3f}, ess {c['ess']:.0f}")
    print(f"E_fg {_fmt(out['E_fg'])}, f_out {_fmt(out['f_out'])}, divergences {out['num_divergent']}")
    return 0
