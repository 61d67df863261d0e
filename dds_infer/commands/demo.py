"""``dds-infer demo``: the main job end to end on the shipped model, with nothing but the install.

1. load the shipped emulator bundle (``models/<name>``, trained on mock stars);
2. draw a few hundred mock stars with it as the truth (Galactic sightlines and
   distances, θ from its training density, dust, Green2020-like survey noise);
3. infer θ, μ, E for every star with the fast grid path (importance sampling in θ,
   (μ, E) by quadrature), and for the first ``--nuts-stars`` of them with the NUTS
   pipeline (grid modes → batched NUTS → mode combination); Galactic priors along each
   star's sightline;
4. write a report folder: ``report.json`` (accuracy, 68% coverage and diagnostics of
   both engines, their agreement, timings), ``recovery.png`` (grid posteriors vs true
   θ, μ, E; NUTS in ``recovery_nuts.png``), the mock catalogue, the posteriors (NetCDF)
   and their per-star summaries (Parquet).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

VARS = ("teff", "logg", "feh", "mu", "E")
UNITS = ("K", "dex", "dex", "mag", "mag")


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on the shipped model (about a minute on 2 cores)")
    p.add_argument("--out", default="dds_demo_output", help="folder for the demo report")
    p.add_argument("--model", default=None, help="bundle to use (default: the shipped model)")
    p.add_argument("--n-stars", type=int, default=300, help="mock stars (all through the grid path)")
    p.add_argument("--nuts-stars", type=int, default=30,
                   help="the first N of them also through NUTS (0: grid path only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-warmup", type=int, default=500)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=None,
                   help="NUTS stars per chunk (default: dds-infer infer's, 1024 with its default engine)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the report summary as JSON")
    p.set_defaults(func=run)


def shipped_models() -> list[Path]:
    """Bundles in the repository's ``models/`` folder (with a manifest)."""
    root = Path(__file__).resolve().parents[2] / "models"
    return sorted(p for p in root.glob("*") if (p / "manifest.json").is_file()) if root.is_dir() else []


def _say(args, msg):
    if not args.json or not args.no_progress:
        import sys

        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)


def run(args) -> int:
    import numpy as np

    from ..atomic import atomic_path
    from ..cli import emit_json
    from ..devices import n_devices
    from ..mock import MockConfig, make_mock, write_mock
    from ..pipeline import infer
    from ..recovery import median_agreement, plot_recovery
    from ._common import read_model

    t_start = time.perf_counter()
    if args.model is None:
        models = shipped_models()
        if not models:
            raise FileNotFoundError("no shipped model found in models/ (is this a source checkout?); "
                                    "pass --model DIR")
        model_dir = models[0]
    else:
        model_dir = Path(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    emu = read_model(model_dir)
    _say(args, f"[1/4] model {model_dir.name}: drawing {args.n_stars} mock stars ...")
    t0 = time.perf_counter()
    mock = make_mock(emu, MockConfig(n=args.n_stars, seed=args.seed, population="domain", labels=False))
    write_mock(mock, out / "mock_catalog.parquet")
    t_mock = time.perf_counter() - t0
    n_nuts = max(0, min(args.nuts_stars, args.n_stars))
    _say(args, f"[2/4] grid path: {args.n_stars} stars ...")
    t0 = time.perf_counter()
    grid = infer(mock.catalog, emu, out / "posterior", method="grid", seed=args.seed,
                 progress=not args.no_progress, overwrite=True, combine="always")  # scored below
    t_grid = time.perf_counter() - t0
    nuts, t_nuts = None, 0.0
    if n_nuts:
        _say(args, f"[3/4] NUTS on the first {n_nuts} stars: {args.num_chains} chains x "
                   f"({args.num_warmup} warm-up + {args.num_samples} draws) per star ...")
        t0 = time.perf_counter()
        nuts = infer(mock.catalog.subset(np.arange(n_nuts)), emu, out / "posterior_nuts",
                     num_chains=args.num_chains, num_warmup=args.num_warmup, num_samples=args.num_samples,
                     batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress, overwrite=True,
                     combine="always")
        t_nuts = time.perf_counter() - t0
    _say(args, "[4/4] scoring against the truth ...")
    res, arrays = _score(grid, mock.truth)
    report = {
        "model": str(model_dir), "n_stars": int(grid.n_stars), "seed": args.seed, "method": "grid",
        "devices": n_devices(), **res,
        "median_weight_ess": float(np.median(grid.star_stats["weight_ess"])),
        "nuts": None,
        "seconds": {"mock": round(t_mock, 1), "grid": round(t_grid, 1), "nuts": round(t_nuts, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "stars_per_s": float(grid.n_stars / t_grid),  # including the one-time set-up and compilation
        "files": {"report": str(out / "report.json"), "figure": str(out / "recovery.png"),
                  "catalog": str(out / "mock_catalog.parquet"),
                  "posterior": str(out / "posterior" / "posterior.nc"),
                  "summary": str(out / "posterior" / "summary.parquet")},
    }
    fig = plot_recovery(*arrays, VARS, UNITS)
    fig.suptitle(f"dds-infer demo: grid path, {grid.n_stars} mock stars, model {model_dir.name}")
    fig.savefig(out / "recovery.png", dpi=110)
    if nuts is not None:
        res_n, arrays_n = _score(nuts, mock.truth)
        summ = nuts.summary()
        # grid vs NUTS on the same stars: all five posterior medians within 0.25 NUTS sigma
        agree = median_agreement(arrays[0][:n_nuts], *arrays_n[:3]).all(axis=1)
        report["nuts"] = {**res_n, "n_stars": int(nuts.n_stars),
                          "frac_rhat_lt_1_01": float(np.mean(summ["r_hat_max"] < 1.01)),
                          "median_ess": float(np.nanmedian(summ["ess_bulk_min"])),
                          "stars_per_s": float(nuts.n_stars / t_nuts),
                          "frac_agree_with_grid": float(np.mean(agree))}
        report["files"].update({"figure_nuts": str(out / "recovery_nuts.png"),
                                "posterior_nuts": str(out / "posterior_nuts" / "posterior.nc")})
        fig = plot_recovery(*arrays_n, VARS, UNITS)
        fig.suptitle(f"dds-infer demo: NUTS, {nuts.n_stars} mock stars, model {model_dir.name}")
        fig.savefig(out / "recovery_nuts.png", dpi=110)
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    if args.json:
        emit_json(report)
        return 0
    print(f"\n{grid.n_stars} stars in {report['seconds']['total']} s "
          f"(grid path {report['seconds']['grid']} s including its one-time set-up and compilation)")
    for v in VARS:
        a = report["accuracy"][v]
        print(f"  {v:>5}: bias {a['bias']:+.3g}, scatter {a['sigma']:.3g}, "
              f"68% coverage {report['coverage68'][v]:.2f}")
    print(f"  median weight ESS {report['median_weight_ess']:.0f}; flagged: {report['frac_flagged']:.1%}")
    if report["nuts"]:
        r = report["nuts"]
        print(f"NUTS on {r['n_stars']} of them ({r['stars_per_s']:.2f} stars/s): R-hat < 1.01 "
              f"{r['frac_rhat_lt_1_01']:.0%}, flagged {r['frac_flagged']:.0%}; medians agree with the grid "
              f"path (all five within 0.25 sigma) for {r['frac_agree_with_grid']:.0%}")
    print(f"report: {out / 'report.json'}\nfigures: {out / 'recovery.png'}"
          + (f", {out / 'recovery_nuts.png'}" if report["nuts"] else ""))
    return 0


def _score(post, truth_table):
    """Accuracy, 68% coverage and flags of one posterior against the mock truth; and the
    (median, q16, q84, truth) arrays (N, 5) for the recovery figure."""
    import numpy as np

    from ..posterior import flag_counts
    from ..recovery import accuracy, interval_coverage

    summ = post.summary()
    truth = truth_table.set_index("id").loc[summ["star_id"].astype(str)]
    med, q16, q84 = (np.column_stack([summ[f"{v}_{q}"] for v in VARS]) for q in ("median", "q16", "q84"))
    tru = np.column_stack([truth[v].to_numpy() for v in VARS])
    cover = {}
    for j, v in enumerate(VARS):
        draws, weights = post.flat_draws(v)
        cover[v] = interval_coverage(draws, tru[:, j], 0.68, weights)
    res = {"accuracy": {v: accuracy(med[:, j], q16[:, j], q84[:, j], tru[:, j]) for j, v in enumerate(VARS)},
           "coverage68": cover, "frac_flagged": float(np.mean(summ["flag"] != 0)),
           "flag_counts": flag_counts(summ["flag"]),
           "frac_multimodal": float(np.mean(summ["n_modes"] > 1))}
    return res, (med, q16, q84, tru)
