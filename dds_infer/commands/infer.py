"""``dds-infer infer``: per-star NUTS posteriors of θ, μ and E for a catalogue (Green et al. 2021, Eq. 19)."""

from __future__ import annotations

from ..runner import DEFAULT_ENGINE, ENGINES, default_batch_size
from ._model_args import add_model_args, build_model_inputs


def register(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="sample the posterior of (Teff, logg, [Fe/H], distance modulus, reddening) for every star",
        description="NUTS for every star and chain (one compiled program per chunk, per-chain adaptation; the queue "
        "engine by default, no lockstep), or with --method grid "
        "importance sampling in θ with (μ, E) in closed form (dds_infer.gridpath), over a catalogue, "
        "in resumable chunks: <out>/chunks/*.nc (arviz NetCDF, dims star x chain x draw), <out>/posterior.nc "
        "(all of them in one file, see --combine) and <out>/summary.parquet (one row per star; flag bits: 1 r_hat, "
        "2 low ESS, "
        "4 divergences, 8 multimodal, 16 outside emulator domain, 32 bad initial point, 64 non-finite draws, "
        "128 poor fit: posterior predictive p-value of the photometry and parallax below 1e-3).",
    )
    add_model_args(p)
    p.add_argument("--out", required=True, help="output directory (reused to resume an interrupted run)")
    p.add_argument("--num-warmup", type=int, default=500)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=None,
                   help="stars per compiled batch (= chunk); default 1024 (grid; nuts with the queue engine, "
                   "whose chains refill their slots only within a chunk), 64 (nuts --engine batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tree-depth", type=int, default=8,
                   help="NUTS tree-depth cap (default 8: twice the ESS per second of NumPyro's 10 here)")
    p.add_argument("--warmup-max-tree-depth", type=int, default=None,
                   help="NUTS tree-depth cap during warmup only (default: the pipeline's 4, at most 15 leapfrog "
                   "steps per warmup draw; warmup draws are discarded, so the posterior is the same and the "
                   "warmup costs about half as much; pass the --max-tree-depth value to turn it off)")
    p.add_argument("--target-accept", type=float, default=None,
                   help="NUTS target acceptance probability (default: the pipeline's 0.95, fewer divergences "
                   "than NumPyro's 0.8)")
    p.add_argument("--parameterization", default="whitened", choices=("whitened", "direct"),
                   help="NUTS sample sites for (mu, E): whitened on their conditional Gaussian at each theta "
                   "(default, ~10x fewer leapfrog steps) or direct (mu, log E); the posterior is the same")
    p.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINES,
                   help="NUTS engine: queue (default; each chain advances on its own and finished chains are "
                   "refilled: 1.3x faster end to end on 1,000 real stars) or batch (vmapped NumPyro NUTS, "
                   "chains in lockstep; the default before 2026-12-01: resume such runs with --engine batch)")
    p.add_argument("--init-mass", default="identity", choices=("identity", "laplace"),
                   help="mass matrix each chain's warmup starts from: NumPyro's identity (default) or the "
                   "curvature at the mode nearest its start (~22%% fewer leapfrog steps per chain, 12%% fewer "
                   "iterations with --engine queue; no clear wall-clock gain measured)")
    p.add_argument("--n-slots", type=int, default=None,
                   help="--engine queue: chains advanced together, in all devices (default min(64 per device, "
                   "batch size x chains))")
    p.add_argument("--method", default="nuts", choices=("nuts", "grid"),
                   help="nuts: batched NUTS chains; grid: importance sampling in θ with (μ, E) by closed form and "
                   "quadrature (~10^3 stars/s, one chain of i.i.d. draws, flag 2 = low weight ESS)")
    p.add_argument("--n-draws", type=int, default=None, help="grid path: posterior draws per star (default 1000)")
    p.add_argument("--no-multimodal", action="store_true",
                   help="skip the grid-mode chain starts and the mode combination")
    p.add_argument("--combine", default="auto", choices=("auto", "always", "never"),
                   help="also write all draws to <out>/posterior.nc: 'auto' (default) when they fit comfortably "
                   "in memory (at most 2e7 star-draws, 10,000 stars at 4 x 500); otherwise they stay in "
                   "<out>/chunks, which 'dds-infer dustmap --posterior <out>' and "
                   "dds_infer.run_outputs.open_run read chunk by chunk")
    p.add_argument("--keep-bits", type=_keep_bits, default=None, metavar="N",
                   help="store the draws bit-rounded to N float32 mantissa bits (1-23; relative error at most "
                   "2^-(N+1)): at 12 (1.2e-4: under 1 K in Teff, 0.002 mag in mu) the chunk files are about half "
                   "the size, for runs of 10^7+ stars; default: exact float32")
    p.add_argument("--rows", default=None, metavar="START:STOP",
                   help="infer only these rows of the catalogue file (0-based, STOP excluded; 'START:' to the end): "
                   "a shard of a catalogue too large for memory, read on its own (Parquet by row group, FITS "
                   "memory-mapped). Star ids stay file rows (without an id column) and draws equal an unsharded "
                   "run's; give each shard its own --out, then 'dds-infer dustmap --posterior OUT1 OUT2 ...'")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="infer shard K (0-based) of N near-equal contiguous row ranges of the catalogue, e.g. a job "
                   "array's task id: --shard $SLURM_ARRAY_TASK_ID/100 (as --rows)")
    p.add_argument("--overwrite", action="store_true", help="discard results of a different run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def _keep_bits(text: str) -> int:
    import argparse

    from ..draw_precision import check_keep_bits

    try:
        return check_keep_bits(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args) -> int:
    import time
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from ..band_offsets import band_residual_report
    from ..cli import emit_json
    from ..devices import n_devices
    from ..pipeline import TARGET_ACCEPT, WARMUP_MAX_TREE_DEPTH, infer
    from ..posterior import flag_counts
    from ..run_outputs import ChunkedPosterior

    if args.target_accept is None:
        args.target_accept = TARGET_ACCEPT
    if args.batch_size is None:
        args.batch_size = default_batch_size(args.method, args.engine)
    for name in ("num_warmup", "num_samples", "num_chains", "batch_size"):
        if getattr(args, name) < (0 if name == "num_warmup" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    inputs = build_model_inputs(args)
    emu, cat, config, prior = inputs.emulator, inputs.catalog, inputs.config, inputs.prior
    zp_report, selection_limit = inputs.zp_report, inputs.selection_limit
    grid_settings = None
    if args.method == "grid":
        import dataclasses

        from ..gridpath import GridSettings

        grid_settings = GridSettings()
        if args.n_draws is not None:
            grid_settings = dataclasses.replace(grid_settings, n_draws=args.n_draws)
    t0 = time.perf_counter()
    post = infer(cat, emu, args.out, prior=prior, config=config, batch_size=args.batch_size,
                 method=args.method, grid_settings=grid_settings,
                 num_chains=args.num_chains, num_warmup=args.num_warmup, num_samples=args.num_samples,
                 seed=args.seed, progress=not args.no_progress, overwrite=args.overwrite,
                 multimodal=not args.no_multimodal, max_tree_depth=args.max_tree_depth,
                 target_accept_prob=args.target_accept, combine=args.combine, keep_bits=args.keep_bits,
                 **({"warmup_max_tree_depth": args.warmup_max_tree_depth}
                    if args.warmup_max_tree_depth is not None else {}),
                 **({"engine": args.engine, "n_slots": args.n_slots, "init_mass": args.init_mass}
                    if args.method == "nuts" else {}))
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    written = out / "summary.parquet"  # what the run just wrote: not recomputed from the draws
    summ = pd.read_parquet(written) if written.exists() else post.summary()
    combined = not isinstance(post, ChunkedPosterior)
    figures = {
        "n_stars": int(post.n_stars), "seconds": seconds, "stars_per_s": post.n_stars / seconds,
        "frac_rhat_lt_1_01": (float(np.mean(summ["r_hat_max"] < 1.01)) if args.method == "nuts" else None),
        "median_ess": float(np.nanmedian(summ["ess_bulk_min"])),
        "n_flagged": int((summ["flag"] != 0).sum()), "flag_counts": flag_counts(summ["flag"]),
        "method": args.method,
        "sigma_floor": args.sigma_floor,  # NUTS-only settings are None for the grid path
        "parameterization": args.parameterization if args.method == "nuts" else None,
        "target_accept": args.target_accept if args.method == "nuts" else None,
        "engine": args.engine if args.method == "nuts" else None,
        "devices": n_devices(),
        "init_mass": args.init_mass if args.method == "nuts" else None,
        "warmup_max_tree_depth": (None if args.method != "nuts" else WARMUP_MAX_TREE_DEPTH
                                  if args.warmup_max_tree_depth is None else args.warmup_max_tree_depth),
        "catalog_err_floor": None if cat.mag_err_floor is None else cat.mag_err_floor.tolist(),
        "zp": args.zp, "parallax_zero_point": zp_report, "parallax_inflation": config.parallax_inflation,
        "band_offsets": inputs.band_offsets, "selection_limit": selection_limit,
        # per band: median posterior mean residual of the flag-0 stars (dds_infer.band_offsets)
        "band_residuals": band_residual_report(summ, emu.bands.names),
        "combined": combined, "keep_bits": args.keep_bits,
        "catalog_rows": cat.meta.get("rows"),  # the shard's file rows [start, stop), or None (all)
        # the input's missing-data counts and warnings (catalog_checks.validate): every star is kept
        "catalog_checks": cat.meta.get("validation"),
        "out": {"posterior": str(out / "posterior.nc") if combined else None,
                "summary": str(out / "summary.parquet"), "chunks": str(out / "chunks")},
    }
    if args.json:
        emit_json(figures)
        return 0
    rows = figures["catalog_rows"]
    print(f"stars: {figures['n_stars']}" + ("" if rows is None else f" (catalogue rows {rows[0]}:{rows[1]})")
          + f" in {seconds:.1f} s ({figures['stars_per_s']:.2f} stars/s on {figures['devices']} device(s))")
    if args.method == "nuts":
        print(f"r_hat < 1.01: {figures['frac_rhat_lt_1_01']:.3f}, median bulk ESS: {figures['median_ess']:.0f}, "
              f"flagged: {figures['n_flagged']}")
    else:
        print(f"median weight ESS: {figures['median_ess']:.0f}, flagged: {figures['n_flagged']}")
    for w in (figures["catalog_checks"] or {}).get("warnings", []):
        print(f"catalogue warning: {w}")
    if figures["n_flagged"]:
        print("flagged for: " + ", ".join(f"{k} {v}" for k, v in figures["flag_counts"].items() if k != "any" and v))
    off = (figures["band_residuals"] or {}).get("suggest_calibration")
    if off:
        print("median residual above 0.01 mag and 3 standard errors in " + ", ".join(
            f"{b} ({figures['band_residuals']['bands'][b]['median']:+.3f})" for b in off)
            + ": the model misses these bands' zero-points; see dds-infer calibrate-offsets")
    if zp_report is not None:
        print(f"parallax zero-point (Lindegren+2021): median {zp_report['median_mas']:.4f} mas; "
              f"{zp_report['n_fallback']} of {zp_report['n_stars']} stars at {zp_report['fallback_mas']} mas "
              f"({zp_report['fallback_reasons']})")
    print(f"posterior: {figures['out']['posterior'] or figures['out']['chunks'] + ' (not combined: --combine)'}"
          f"\nsummary: {figures['out']['summary']}")
    return 0

