"""Inference speed: the batched NUTS engine against a per-star NumPyro MCMC loop, on real stars.

Both run the same single-star model with the published network (imported from the anchor
folder unless --model), C chains × (warmup + draws), the pipeline's chain starts in the
grid posterior modes (--init uniform: NumPyro's init_to_uniform), target acceptance 0.95
(--target-accept), max tree depth 8 (--max-tree-depth) and 4 during warmup
(--warmup-max-tree-depth) as in the pipeline, diagonal mass
matrix, and the model's (μ, E) sites whitened on the conditional Gaussian
(--parameterization direct: the plain (μ, log E) sites, ~10× more leapfrog steps per draw).

(a) engine (--engine, default queue as ``dds-infer infer``): ``queue``: the queue engine
    (:mod:`dds_infer.nuts_queue`, no lockstep: each chain advances one leapfrog step per
    iteration and a finished chain's slot takes the next (star, chain) job) on all N stars in
    one call, compiled ahead of time (``engine_compile_seconds``) and timed with its grid-mode
    starts; ``batch``: ``dds_infer.engine.run_nuts_batch`` on batches of --batch-size stars
    (one compiled program, the last batch padded), after the batched grid-mode starts, compile
    time measured on a first call and excluded from the rate. ``seconds_engine`` is the
    steady-state wall time for all N stars. ``lockstep_efficiency`` (batch) = mean leapfrog
    steps per draw / mean over draws of the batch's largest tree (sampling phase): the fraction
    of vmapped work that is not padding.
(b) baseline: one ``numpyro.infer.MCMC(NUTS(model), num_chains=C, chain_method="vectorized",
    jit_model_args=True)`` re-run per star (compiled once: the star is a traced model argument).
    "vectorized" is the fastest fair per-star baseline on CPU ("parallel" needs C devices,
    "sequential" runs the C chains one after another). It is timed on the first
    --baseline-stars stars after a compile call and extrapolated per star. Caveat, measured
    with jax_log_compiles: numpyro 0.22's ``MCMC.run`` builds a new collection transform on
    every call, so its sampling loop is recompiled for every star (~11 s of each run here).
    ``engine_b1_stars_per_s`` is therefore also reported: the same NumPyro NUTS kernel (C
    vectorised chains) compiled once and looped one star at a time, and
    ``speedup_vs_engine_b1`` = (a) / that: the gain from batching stars alone.
(c) the other engine, on the first N stars of the same run: ``--vs-batch N`` (with --engine
    queue; keys batch_*, ``speedup_vs_batch_engine``) or ``--queue N`` (with --engine batch; keys
    queue_*, ``speedup_queue_vs_engine``). ``--queue N --queue-only``: only the queue engine
    (e.g. ``--n-stars 1024 --queue 1024 --queue-only``: the rate at catalogue scale, where the
    queue's idle tail matters less).
``frac_rhat_lt_1_01_converged_reference`` (and ``queue_*``): the fraction of stars a sampler with
no convergence problem would bring below R-hat 1.01 at the measured bulk ESS of each star's
variables (:func:`converged_rhat_reference`); the measured fraction is to be read against it.
``--cpu-devices N`` (default: one per core, as ``dds-infer``): (a) and (c) spread their stars
over N JAX CPU devices (:mod:`dds_infer.devices`); ``devices`` is reported. With N > 1 the
baselines (b) run in a separate one-device process with XLA's default threading
(``baseline_process``), which is faster for one device than the multi-device setting.
``--init-mass laplace``: both engines start each chain's warmup from the Laplace approximation
at the mode nearest its start instead of NumPyro's identity (the default, as the pipeline's).

    python bench/infer_bench.py [--json] [--model-source toy|eq19] [--n-stars 200] [--engine queue|batch]
        [--vs-batch N] [--batch-size 64] [--parameterization whitened|direct] [--max-tree-depth 8]
        [--init grid|uniform] [--init-mass laplace|identity] [--n-slots 64xdevices]
        [--engine batch --queue N [--queue-only]]
    python bench/infer_bench.py --method grid [--n-stars 300 --n-mock 300 --work-dir DIR] [--json]
      (keys grid_stars_per_s, grid_setup_seconds, grid_agreement_frac, ...: see bench/_grid_compare.py)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _common import REPO, add_cpu_devices_arg, anchor_dir, report, start_devices


def load_model_source(source: str, emu, parameterization: str = "whitened"):
    """(model, star_data_fn, prior, config) of the toy placeholder or the Eq. 19 model."""
    if source == "toy":
        sys.path.insert(0, str(REPO / "tests"))
        from _toy_model import InferenceConfig, star_data_from_catalog, star_model

        return star_model, star_data_from_catalog, None, InferenceConfig()
    from dds_infer.inference import InferenceConfig, star_data_from_catalog, star_model
    from dds_infer.priors import default_prior

    return star_model, star_data_from_catalog, default_prior(emu), InferenceConfig(parameterization=parameterization)


def load_emulator(path: str | None):
    from dds_infer import load_bundle

    if path:
        return load_bundle(path)
    from dds_infer.keras_import import import_keras_model

    a = anchor_dir()
    return import_keras_model(a / "green2020_nn_model.h5", a / "green2020_theta_normalization.json",
                              density_path=a / "green2020_input_density.h5")


def make_init(init: str, model_source: str, static, num_chains: int):
    """None (NumPyro's init_to_uniform) or the pipeline's grid-mode chain starts."""
    if init == "uniform":
        return None
    if model_source != "eq19":
        raise SystemExit("--init grid needs --model-source eq19")
    from dds_infer.pipeline import mode_init_fn

    emu, prior, config = static
    return mode_init_fn(emu, prior, config, num_chains)


def _keys(rows):
    """(init keys, NUTS keys) per star, split exactly as the pipeline's runner does."""
    import jax

    from dds_infer.engine import star_keys

    split = jax.vmap(jax.random.split)(star_keys(0, rows))
    return split[:, 0], split[:, 1]


def time_engine(model, stars, static, n, batch_size, settings, init_fn=None, devices=None):
    """Steady-state seconds for n stars (grid-mode starts included when init_fn is given), on
    ``devices`` devices (default all: each runs its share of a batch in its own lockstep)."""
    import jax

    from dds_infer.devices import n_devices, padded_size
    from dds_infer.engine import run_nuts_batch
    from dds_infer.posterior import Posterior, concat

    take = lambda rows: jax.tree_util.tree_map(lambda a: a[rows], stars)  # noqa: E731

    def batch(rows):
        k_init, k_nuts = _keys(rows)
        init = None if init_fn is None else init_fn(take(rows), k_init)
        return jax.block_until_ready(run_nuts_batch(model, take(rows), static, init, k_nuts,
                                                    pad_to=batch_size, devices=devices, **settings))

    n_dev = n_devices(devices)
    share = padded_size(batch_size, n_dev) // n_dev

    t0 = time.perf_counter()
    batch(np.arange(min(batch_size, n)))
    first = time.perf_counter() - t0
    results, lanes_mean, lanes_max, t0 = [], [], [], time.perf_counter()
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        res = batch(rows)
        results.append(Posterior.from_batch(res, rows, static[0]))
        steps = np.asarray(res.num_steps)  # (B, C, S): vmapped NUTS pays the largest tree per draw
        lanes_mean.append(steps.mean())  # ... of its device's share of the (padded) batch
        lanes_max.append(np.mean([steps[i:i + share].max(axis=(0, 1)).mean() for i in range(0, len(rows), share)]))
    seconds = time.perf_counter() - t0
    n_batches = -(-n // batch_size)
    lockstep = float(np.mean(lanes_mean) / np.mean(lanes_max))
    return seconds, max(first - seconds / n_batches, 0.0), concat(results), lockstep


def time_queue(model, stars, static, n, settings, init_fn, n_slots):
    """The queue engine (dds_infer.nuts_queue) on the first n stars in ONE call (n × C jobs on
    n_slots slots in all, n_slots / devices on each device): (steady seconds incl. the grid-mode
    starts, compile seconds, Posterior, iterations per device). Compiled ahead of time so that
    the compile is measured apart."""
    import jax

    from dds_infer import nuts_queue
    from dds_infer.devices import first_rows, padded_size
    from dds_infer.engine import BatchResult, NutsSettings, pad_batch, split_static
    from dds_infer.posterior import Posterior

    rows = np.arange(n)
    sub = jax.tree_util.tree_map(lambda a: a[rows], stars)
    k_init, k_nuts = _keys(rows)
    nuts = NutsSettings(settings["num_warmup"], settings["num_samples"], settings["num_chains"],
                        settings["target_accept_prob"], settings["max_tree_depth"], False, settings["init_mass"],
                        settings["warmup_max_tree_depth"])
    fn, n_dev = nuts_queue.sharded_queue_program(model, tuple(static), nuts, int(n_slots), init_fn is not None)
    arrays = split_static(tuple(static))[1]
    size = padded_size(n, n_dev)
    init = None if init_fn is None else jax.block_until_ready(init_fn(sub, k_init))
    t0 = time.perf_counter()
    active = np.arange(size) < n
    exe = fn.lower(pad_batch(sub, size), arrays, pad_batch(init, size), pad_batch(k_nuts, size), active).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    init = None if init_fn is None else init_fn(sub, k_init)
    out, n_iter = jax.block_until_ready(exe(pad_batch(sub, size), arrays, pad_batch(init, size),
                                            pad_batch(k_nuts, size), active))
    seconds = time.perf_counter() - t0
    out, n_iter = first_rows(out, n, n_dev), first_rows(n_iter, n_dev, n_dev)
    res = BatchResult(**out, iterations=n_iter)
    return seconds, compile_s, Posterior.from_batch(res, rows, static[0]), np.asarray(n_iter).tolist()


def time_baseline(model, stars, static, n, settings, init_fn=None):
    """Per-star MCMC loop; with init_fn, each star starts from the same grid-mode starts as the
    engine (computed for all stars in one batched call before the timing: not charged)."""
    import jax
    from numpyro.infer import MCMC, NUTS

    from dds_infer.engine import NutsSettings

    emu, prior, config = static
    closure = lambda star: model(star, emu, prior, config)  # noqa: E731
    depths = NutsSettings(max_tree_depth=settings["max_tree_depth"],
                          warmup_max_tree_depth=settings["warmup_max_tree_depth"]).tree_depths
    mcmc = MCMC(NUTS(closure, target_accept_prob=settings["target_accept_prob"], max_tree_depth=depths),
                num_warmup=settings["num_warmup"], num_samples=settings["num_samples"],
                num_chains=settings["num_chains"], chain_method="vectorized", progress_bar=False,
                jit_model_args=True)
    star = lambda i: jax.tree_util.tree_map(lambda a: a[i], stars)  # noqa: E731
    rows = np.arange(n)
    k_init, k_nuts = _keys(rows)
    inits = None
    if init_fn is not None:
        inits = jax.block_until_ready(init_fn(jax.tree_util.tree_map(lambda a: a[rows], stars), k_init))
    init = lambda i: None if inits is None else jax.tree_util.tree_map(lambda a: a[i], inits)  # noqa: E731
    t0 = time.perf_counter()
    mcmc.run(jax.random.key(10_000), star(0), init_params=init(0))
    jax.block_until_ready(mcmc.get_samples())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        mcmc.run(k_nuts[i], star(i), init_params=init(i))
        jax.block_until_ready(mcmc.get_samples())
    seconds = time.perf_counter() - t0
    return seconds, max(first - seconds / n, 0.0)


def converged_rhat_reference(summary, num_chains: int, num_samples: int, seed: int = 0) -> float:
    """Fraction of stars with R-hat < 1.01 that a sampler with NO convergence problem would give at
    each star's measured bulk ESS (:func:`dds_infer.posterior.rhat_pass_rate_reference`)."""
    from dds_infer.posterior import FITTED, rhat_pass_rate_reference

    ess = np.stack([summary[f"{k}_ess_bulk"].to_numpy() for k in FITTED], 1)
    return float(np.mean(rhat_pass_rate_reference(ess, num_chains, num_samples, seed=seed)))


def jax_take(stars, n):
    import jax

    return jax.tree_util.tree_map(lambda a: a[:n], stars)


# the queue_* keys that are the (a) keys when the queue engine is the engine under test
QUEUE_AS_ENGINE = {"queue_seconds": "seconds_engine", "queue_compile_seconds": "engine_compile_seconds",
                   "queue_stars_per_s": "engine_stars_per_s", "queue_frac_rhat_lt_1_01": "frac_rhat_lt_1_01",
                   "queue_frac_rhat_lt_1_01_converged_reference": "frac_rhat_lt_1_01_converged_reference",
                   "queue_frac_bulk_rhat_lt_1_01": "frac_bulk_rhat_lt_1_01",
                   "queue_frac_folded_rhat_lt_1_01": "frac_folded_rhat_lt_1_01",
                   "queue_median_ess": "median_ess", "queue_frac_divergent_stars": "frac_divergent_stars",
                   "queue_mean_leapfrog_steps_per_draw": "mean_leapfrog_steps_per_draw"}


def rhat_halves(post) -> dict:
    """Fractions of stars whose bulk (location) and folded (scale) R-hat are both below 1.01 in
    every fitted variable: which half of R-hat fails (:func:`dds_infer.posterior.rank_diagnostics`;
    ``bench/rhat_ceiling.py`` gives the same on an ideal Gaussian)."""
    from dds_infer.posterior import FITTED, worst_rank_diagnostics

    worst = worst_rank_diagnostics(post.samples[k] for k in FITTED)
    return {f"frac_{h}_rhat_lt_1_01": float(np.mean(worst[f"rhat_{h}"] < 1.01)) for h in ("bulk", "folded")}


def rate_figures(post, args) -> dict:
    """Convergence and step figures of an engine run (either engine)."""
    summ = post.summary()
    return {"frac_rhat_lt_1_01": float(np.mean(summ["r_hat_max"] < 1.01)), **rhat_halves(post),
            "frac_rhat_lt_1_01_converged_reference": converged_rhat_reference(
                summ, args.num_chains, args.num_samples),
            "median_ess": float(np.nanmedian(summ["ess_bulk_min"])),
            "frac_divergent_stars": float(np.mean(summ["n_divergent"] > 0)),
            "mean_leapfrog_steps_per_draw": float(post.sample_stats["num_steps"].mean())}


def queue_figures(args, model, stars, static, settings, init_fn, n: int | None = None) -> dict:
    """The queue_* keys: the queue engine on the first n (default --queue) stars in one call."""
    from dds_infer.nuts_queue import default_slots

    nq = min(args.queue if n is None else n, args.n_stars)
    if args.n_slots is None:
        args.n_slots = default_slots()
    sec_q, compile_q, post_q, iters = time_queue(model, stars, static, nq, settings, init_fn, args.n_slots)
    steps = post_q.sample_stats["num_steps"]
    slots_per_device = -(-args.n_slots // len(iters))
    return {"queue_stars": nq, "queue_n_slots": args.n_slots, "queue_seconds": sec_q,
            "queue_compile_seconds": compile_q, "queue_stars_per_s": nq / sec_q,
            **{f"queue_{k}": v for k, v in rate_figures(post_q, args).items()},
            "queue_iterations": int(np.sum(iters)), "queue_iterations_per_device": iters,
            # wall time of one iteration on the busiest device (the devices run in parallel), and
            # per slot: one leapfrog step with all of NUTS's bookkeeping (bench/potential_cost.py
            # times the potential alone)
            "queue_us_per_iteration": sec_q / max(iters) * 1e6,
            "queue_us_per_slot_iteration": sec_q / max(iters) / slots_per_device * 1e6,
            # sampling-phase leapfrog steps per slot-iteration: a lower bound on the
            # useful fraction (warmup steps are not recorded)
            "queue_sampling_steps_per_slot_iteration": float(steps.sum()) / (np.sum(iters) * slots_per_device)}


def baseline_figures(args, model, stars, static, settings, init_fn) -> dict:
    """(b): the per-star MCMC loop and the engine's kernel looped one star at a time, one device."""
    nb = min(args.baseline_stars, args.n_stars)
    sec_b, compile_b = time_baseline(model, stars, static, nb, settings, init_fn)
    sec_1, _, _, _ = time_engine(model, jax_take(stars, nb), static, nb, 1, settings, init_fn, devices=1)
    return {"engine_b1_stars_per_s": nb / sec_1,
            "baseline": f"per-star MCMC(NUTS, chain_method='vectorized', jit_model_args=True), "
                        f"timed on {nb} stars, extrapolated per star",
            "baseline_stars_timed": nb, "seconds_baseline": sec_b,
            "seconds_baseline_extrapolated": sec_b / nb * args.n_stars,
            "baseline_compile_seconds": compile_b, "baseline_stars_per_s": nb / sec_b}


def baseline_subprocess(argv) -> dict:
    """:func:`baseline_figures` in a fresh process on one CPU device with XLA's own threading (a
    one-device program runs faster with it; a multi-device process turns it off), same settings."""
    import json
    import os
    import subprocess

    from dds_infer.devices import SINGLE_THREAD_FLAGS

    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = [sys.executable, __file__, *argv, "--baseline-only", "--cpu-devices", "1", "--json"]
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "").replace(SINGLE_THREAD_FLAGS, "").strip())
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return {**json.loads(out), "baseline_process": "separate, 1 device, XLA's default threading"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-source", choices=("toy", "eq19"), default="eq19")
    p.add_argument("--model", default=None, help="emulator bundle (default: the published network from the anchors)")
    p.add_argument("--parameterization", choices=("whitened", "direct"), default="whitened",
                   help="eq19 model's (mu, E) sites: whitened on the conditional Gaussian (default) or direct")
    p.add_argument("--max-tree-depth", type=int, default=8,
                   help="NUTS tree-depth cap for both (default 8, the pipeline's; NumPyro's is 10)")
    p.add_argument("--target-accept", type=float, default=0.95, help="NUTS target acceptance (default 0.95, as the pipeline)")
    p.add_argument("--warmup-max-tree-depth", type=int, default=None,
                   help="NUTS tree-depth cap during warmup, for all three samplers (default: the pipeline's, "
                   "dds_infer.pipeline.WARMUP_MAX_TREE_DEPTH = 4; --max-tree-depth's value turns it off)")
    p.add_argument("--init-mass", choices=("identity", "laplace"), default="identity",
                   help="mass matrix the warmup starts from: NumPyro's identity (default, as the pipeline) or "
                   "the curvature at the mode nearest each chain's start (engine.laplace_inverse_mass)")
    p.add_argument("--init", choices=("grid", "uniform"), default=None,
                   help="chain starts for both: the pipeline's grid modes (default for eq19) or NumPyro's "
                   "init_to_uniform (default for toy)")
    p.add_argument("--vs-direct", type=int, default=0,
                   help="also time the batch engine with the direct (mu, log E) coordinates on this many of the "
                   "stars, and with the whitened ones again on the same stars (keys direct_*, "
                   "speedup_whitened_vs_direct)")
    p.add_argument("--engine", choices=("queue", "batch"), default="queue",
                   help="(a): the NUTS engine under test (default queue, as dds-infer infer)")
    p.add_argument("--vs-batch", type=int, default=0,
                   help="with --engine queue: also the batch engine on the first N stars in the same run "
                   "(keys batch_*, speedup_vs_batch_engine)")
    p.add_argument("--queue", type=int, default=0,
                   help="with --engine batch: also run the queue engine (dds_infer.nuts_queue: no lockstep, "
                   "finished chains refilled) on this many of the stars in one call (keys queue_*, "
                   "speedup_queue_vs_engine)")
    p.add_argument("--n-slots", type=int, default=None,
                   help="queue engine: chains advanced together, in all devices (default: 64 per device, the "
                   "engine's)")
    p.add_argument("--queue-only", action="store_true",
                   help="--queue N: time only the queue engine (e.g. its catalogue-scale rate on N = 1000 stars, "
                   "where the idle tail of the queue matters less); no engine_* keys")
    p.add_argument("--n-stars", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--baseline-stars", type=int, default=20, help="stars timed for the baseline (0: skip)")
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--num-warmup", type=int, default=500)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--method", choices=("nuts", "grid"), default="nuts",
                   help="grid: the grid path against NUTS (bench/_grid_compare.py): agreement, coverage, speed")
    p.add_argument("--n-mock", type=int, default=300, help="--method grid: mock stars drawn from the prior")
    p.add_argument("--mock-model", default=str(REPO / "models" / "mock13-v1"))
    p.add_argument("--grid-batch", type=int, default=1000, help="--method grid: stars per grid batch (speed)")
    p.add_argument("--grid-vs-whole-batch", action="store_true",
                   help="--method grid: also time each device's share vmapped at once instead of in blocks "
                        "(grid_stars_per_s_whole_batch, grid_block_speedup)")
    p.add_argument("--work-dir", default=None, help="--method grid: keep (and resume) the NUTS runs here")
    p.add_argument("--json", action="store_true")
    p.add_argument("--baseline-only", action="store_true",
                   help="only the (b) baselines (what a multi-device run starts in a 1-device subprocess)")
    add_cpu_devices_arg(p)
    args = p.parse_args(argv)
    if args.engine == "queue" and args.queue > 0 and not args.queue_only:
        p.error("--queue N adds the queue engine to --engine batch; the engine under test is already the queue "
                "(--vs-batch N adds the batch engine)")
    if args.engine == "batch" and args.vs_batch > 0:
        p.error("--vs-batch N adds the batch engine to --engine queue")
    devices = start_devices(args)
    if args.method == "grid":
        from _grid_compare import run

        if args.n_stars == 200 and "--n-stars" not in (argv or sys.argv):
            args.n_stars = 300
        report(run(args, load_emulator(args.model), anchor_dir()), args.json)
        return 0

    from dds_infer.catalog_io import read_green2020_h5
    from dds_infer.pipeline import WARMUP_MAX_TREE_DEPTH

    if args.warmup_max_tree_depth is None:
        args.warmup_max_tree_depth = WARMUP_MAX_TREE_DEPTH
    emu = load_emulator(args.model)
    model, star_data_fn, prior, config = load_model_source(args.model_source, emu, args.parameterization)
    cat = read_green2020_h5(anchor_dir() / "green2020_test_data_small.h5", require_labels=False,
                            require_reddening_prior=False)
    cat = cat.subset(np.arange(args.n_stars))
    stars = star_data_fn(cat)
    static = (emu, prior, config)
    settings = dict(num_warmup=args.num_warmup, num_samples=args.num_samples, num_chains=args.num_chains,
                    target_accept_prob=args.target_accept, max_tree_depth=args.max_tree_depth,
                    init_mass=args.init_mass, warmup_max_tree_depth=args.warmup_max_tree_depth)

    if args.init is None:
        args.init = "grid" if args.model_source == "eq19" else "uniform"
    init_fn = make_init(args.init, args.model_source, static, args.num_chains)
    figures = {"model_source": args.model_source, "parameterization": args.parameterization, "init": args.init,
               "init_mass": args.init_mass, "target_accept": args.target_accept,
               "warmup_max_tree_depth": args.warmup_max_tree_depth,
               "max_tree_depth": args.max_tree_depth, "n_stars": args.n_stars,
               "num_chains": args.num_chains, "num_warmup": args.num_warmup, "num_samples": args.num_samples}
    if args.baseline_only:
        report(baseline_figures(args, model, stars, static, settings, init_fn), args.json)
        return 0
    figures["devices"] = devices
    if args.queue_only:
        if args.queue <= 0:
            raise SystemExit("--queue-only needs --queue N")
        figures.update(queue_figures(args, model, stars, static, settings, init_fn))
        report(figures, args.json)
        return 0
    if args.engine == "queue":
        q = queue_figures(args, model, stars, static, settings, init_fn, n=args.n_stars)
        figures.update({"engine": "queue", "lockstep_efficiency": None,
                        **{QUEUE_AS_ENGINE.get(k, k): v for k, v in q.items() if k != "queue_stars"}})
    else:
        sec_e, compile_e, post, lockstep = time_engine(model, stars, static, args.n_stars, args.batch_size,
                                                       settings, init_fn)
        figures.update({"engine": "batch", "batch_size": args.batch_size, "seconds_engine": sec_e,
                        "engine_compile_seconds": compile_e, "engine_stars_per_s": args.n_stars / sec_e,
                        **rate_figures(post, args), "lockstep_efficiency": lockstep})
    if args.vs_batch > 0:
        nb = min(args.vs_batch, args.n_stars)
        sec_b, _, post_b, lock_b = time_engine(model, jax_take(stars, nb), static, nb, args.batch_size, settings,
                                               init_fn)
        figures.update({"batch_stars": nb, "batch_size": args.batch_size, "batch_stars_per_s": nb / sec_b,
                        **{f"batch_{k}": v for k, v in rate_figures(post_b, args).items()},
                        "batch_lockstep_efficiency": lock_b,
                        "speedup_vs_batch_engine": figures["engine_stars_per_s"] / (nb / sec_b)})
    if args.baseline_stars > 0:
        base = (baseline_figures(args, model, stars, static, settings, init_fn) if devices == 1
                else baseline_subprocess(argv))
        figures.update(base)
        figures.update({"speedup_vs_engine_b1": figures["engine_stars_per_s"] / base["engine_b1_stars_per_s"],
                        "speedup": figures["engine_stars_per_s"] / base["baseline_stars_per_s"]})
    if args.vs_direct > 0 and args.model_source == "eq19":
        import dataclasses

        nd = min(args.vs_direct, args.n_stars)
        static_d = (emu, prior, dataclasses.replace(config, parameterization="direct"))
        init_d = make_init(args.init, args.model_source, static_d, args.num_chains)
        sec_d, _, post_d, lock_d = time_engine(model, jax_take(stars, nd), static_d, nd, args.batch_size, settings, init_d)
        sec_w, _, _, _ = time_engine(model, jax_take(stars, nd), static, nd, args.batch_size, settings, init_fn)
        summ_d = post_d.summary()
        figures.update({"direct_stars": nd, "direct_engine_stars_per_s": nd / sec_d,
                        "direct_frac_rhat_lt_1_01": float(np.mean(summ_d["r_hat_max"] < 1.01)),
                        "direct_median_ess": float(np.nanmedian(summ_d["ess_bulk_min"])),
                        "direct_mean_leapfrog_steps_per_draw": float(post_d.sample_stats["num_steps"].mean()),
                        "direct_lockstep_efficiency": lock_d,
                        "speedup_whitened_vs_direct": sec_d / sec_w})
    if args.queue > 0:
        figures.update(queue_figures(args, model, stars, static, settings, init_fn))
        figures["speedup_queue_vs_engine"] = figures["queue_stars_per_s"] / figures["engine_stars_per_s"]
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
