"""The R-hat pass rate NUTS reaches on an ideal posterior: what issue 5's 99% goal is measured against.

Each of ``--n-stars`` replicas is an independent 5-D Gaussian (one variable per fitted quantity,
scales 0.1-10, a diagonal mass matrix adapts to them exactly) sampled by NumPyro's NUTS with the
pipeline's settings: ``--num-chains`` chains of ``--num-warmup`` + ``--num-samples`` draws, target
acceptance and tree depths as ``dds_infer.pipeline`` (each chain adapts its own step size and mass,
as the engine's do). Every replica is scored as the engine scores a star
(:func:`dds_infer.posterior.worst_rank_diagnostics`: rank-normalised split-R̂, the larger of bulk and
folded, maximum over the 5 variables). Reports the fraction below 1.01 and which half fails.

    python bench/rhat_ceiling.py [--n-stars 1000] [--target-accept 0.95] [--num-samples 500] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _common import report

SCALES = (1.0, 3.0, 0.3, 10.0, 0.1)


def main(argv=None) -> int:
    from dds_infer.pipeline import TARGET_ACCEPT, WARMUP_MAX_TREE_DEPTH

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-stars", type=int, default=1000, help="independent replicas (each scored as one star)")
    ap.add_argument("--num-chains", type=int, default=4)
    ap.add_argument("--num-warmup", type=int, default=500)
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--target-accept", type=float, default=TARGET_ACCEPT)
    ap.add_argument("--max-tree-depth", type=int, default=8)
    ap.add_argument("--warmup-max-tree-depth", type=int, default=WARMUP_MAX_TREE_DEPTH)
    ap.add_argument("--threshold", type=float, default=1.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import jax
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    from dds_infer.posterior import worst_rank_diagnostics

    scales = np.asarray(SCALES)

    def model():
        numpyro.sample("x", dist.Normal(0.0, scales).to_event(1))

    n, c, s = args.n_stars, args.num_chains, args.num_samples
    kernel = NUTS(model, target_accept_prob=args.target_accept,
                  max_tree_depth=(args.warmup_max_tree_depth, args.max_tree_depth))
    mcmc = MCMC(kernel, num_warmup=args.num_warmup, num_samples=s, num_chains=n * c,
                chain_method="vectorized", progress_bar=False)
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(args.seed))
    seconds = time.perf_counter() - t0
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"]).reshape(n, c, s, len(SCALES))
    worst = worst_rank_diagnostics(x[..., v] for v in range(len(SCALES)))
    rhat = np.maximum(worst["rhat_bulk"], worst["rhat_folded"])
    t = args.threshold
    frac = float(np.mean(rhat < t))
    figures = {
        "n_stars": n, "settings": {"num_chains": c, "num_warmup": args.num_warmup, "num_samples": s,
                                   "target_accept": args.target_accept, "max_tree_depth": args.max_tree_depth,
                                   "warmup_max_tree_depth": args.warmup_max_tree_depth, "seed": args.seed},
        "frac_rhat_lt_1_01": frac,
        "frac_rhat_lt_1_01_se": float(np.sqrt(frac * (1.0 - frac) / n)),  # binomial standard error
        "frac_bulk_rhat_lt_1_01": float(np.mean(worst["rhat_bulk"] < t)),
        "frac_folded_rhat_lt_1_01": float(np.mean(worst["rhat_folded"] < t)),
        "median_ess_bulk_min": float(np.median(worst["ess_bulk"])),
        "median_ess_folded_min": float(np.median(worst["ess_folded"])),
        "draws_per_star": c * s, "seconds": round(seconds, 1),
    }
    if args.threshold != 1.01:
        figures["threshold"] = t
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
