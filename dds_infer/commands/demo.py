"""``dds-infer demo``: the main job end to end on the shipped model, with nothing but the install.

1. load the shipped emulator bundle (``models/<name>``, trained on mock stars);
2. draw a few hundred mock stars with it as the truth (Galactic sightlines and
   distances, θ from its training density, dust, Green2020-like survey noise);
3. infer θ, μ, E for every star with the NUTS pipeline (grid modes → batched NUTS
   → mode combination), Galactic priors along each star's sightline;
4. write a report folder: ``report.json`` (accuracy, 68% coverage, convergence,
   timings), ``recovery.png`` (posterior vs true θ, μ, E), the mock catalogue, the
   posterior (NetCDF) and its per-star summary (Parquet).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

VARS = ("teff", "logg", "feh", "mu", "E")
UNITS = ("K", "dex", "dex", "mag", "mag")


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on the shipped model (a few minutes)")
    p.add_argument("--out", default="dds_demo_output", help="folder for the demo report")
    p.add_argument("--model", default=None, help="bundle to use (default: the shipped model)")
    p.add_argument("--n-stars", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-warmup", type=int, default=500)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=50)
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

    from ..cli import emit_json
    from ..mock import MockConfig, make_mock, write_mock
    from ..pipeline import infer
    from ..recovery import accuracy, interval_coverage, plot_recovery
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
    _say(args, f"[1/3] model {model_dir.name}: drawing {args.n_stars} mock stars ...")
    t0 = time.perf_counter()
    mock = make_mock(emu, MockConfig(n=args.n_stars, seed=args.seed, population="domain", labels=False))
    write_mock(mock, out / "mock_catalog.parquet")
    t_mock = time.perf_counter() - t0
    _say(args, f"[2/3] NUTS: {args.num_chains} chains x ({args.num_warmup} warm-up + "
               f"{args.num_samples} draws) per star ...")
    t0 = time.perf_counter()
    post = infer(mock.catalog, emu, out / "posterior", num_chains=args.num_chains,
                 num_warmup=args.num_warmup, num_samples=args.num_samples,
                 batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
                 overwrite=True)
    t_infer = time.perf_counter() - t0
    _say(args, "[3/3] scoring against the truth ...")
    summ = post.summary()
    truth = mock.truth.set_index("id").loc[summ["star_id"].astype(str)]
    med = np.column_stack([summ[f"{v}_median"] for v in VARS])
    q16 = np.column_stack([summ[f"{v}_q16"] for v in VARS])
    q84 = np.column_stack([summ[f"{v}_q84"] for v in VARS])
    tru = np.column_stack([truth[v].to_numpy() for v in VARS])
    cover = {}
    for j, v in enumerate(VARS):
        draws, weights = post.flat_draws(v)
        cover[v] = interval_coverage(draws, tru[:, j], 0.68, weights)
    report = {
        "model": str(model_dir), "n_stars": int(post.n_stars), "seed": args.seed,
        "accuracy": {v: accuracy(med[:, j], q16[:, j], q84[:, j], tru[:, j]) for j, v in enumerate(VARS)},
        "coverage68": cover,
        "frac_rhat_lt_1_01": float(np.mean(summ["r_hat_max"] < 1.01)),
        "median_ess": float(np.nanmedian(summ["ess_bulk_min"])),
        "frac_flagged": float(np.mean(summ["flag"] != 0)),
        "frac_multimodal": float(np.mean(summ["n_modes"] > 1)),
        "seconds": {"mock": round(t_mock, 1), "inference": round(t_infer, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "stars_per_s": float(post.n_stars / t_infer),
        "files": {"report": str(out / "report.json"), "figure": str(out / "recovery.png"),
                  "catalog": str(out / "mock_catalog.parquet"),
                  "posterior": str(out / "posterior" / "posterior.nc"),
                  "summary": str(out / "posterior" / "summary.parquet")},
    }
    fig = plot_recovery(med, q16, q84, tru, VARS, UNITS)
    fig.suptitle(f"dds-infer demo: {post.n_stars} mock stars, model {model_dir.name}")
    fig.savefig(out / "recovery.png", dpi=110)
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "report.json")
    if args.json:
        emit_json(report)
        return 0
    print(f"\n{post.n_stars} stars in {report['seconds']['total']} s "
          f"(inference {report['stars_per_s']:.1f} stars/s)")
    for v in VARS:
        a = report["accuracy"][v]
        print(f"  {v:>5}: bias {a['bias']:+.3g}, scatter {a['sigma']:.3g}, "
              f"68% coverage {cover[v]:.2f}")
    print(f"  R-hat < 1.01: {report['frac_rhat_lt_1_01']:.1%}; flagged: {report['frac_flagged']:.1%}")
    print(f"report: {out / 'report.json'}\nfigure: {out / 'recovery.png'}")
    return 0
