"""The grid path against NUTS (issue 6, acceptances 1 and 2): agreement, calibration, speed.

Called by ``python bench/infer_bench.py --method grid``. On the same stars:

* real: the first --n-stars shared held-out stars (published network, Galactic prior, flat E):
  NUTS (the pipeline: grid-mode starts, 4 × (500 + 500), depth 8, mode combination) and
  the grid path; the agreement of posterior medians in units of the NUTS posterior σ
  ((q84 − q16)/2), per variable and for all five at once (``grid_agreement_frac``: fraction of
  all real + mock stars whose five medians all agree within 0.25 σ); also restricted to stars
  that NUTS itself did not flag.
* mock: --n-mock stars drawn from the prior (half-normal E, scale 0.3) with the shipped model as
  truth (as bench/sbc.py): the same agreement, and the 68% / 95% coverage of both methods.
* speed: the grid path on all 10,000 shared stars (chunks of --grid-batch, padded and spread over
  the devices as ``dds-infer infer --method grid`` does: ``gridpath.grid_batch_on_devices``),
  compute only (``grid_stars_per_s``, compilation and the shared coarse grid excluded and
  reported as ``grid_setup_seconds``), plus the peak-RSS growth and the NetCDF size per 10^4
  stars. Until 2026-12-03 it timed ``grid_batch`` on one device (XLA threading over both cores).

NUTS results are cached in --work-dir (the runner resumes), so a rerun only redoes the grid.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

VARS = ("teff", "logg", "feh", "mu", "E")


class _RSSPeak:
    """Peak resident memory (MB) of this process while the block runs, sampled every 20 ms."""

    def __enter__(self):
        import threading

        self.base = self.peak = _rss_mb()
        self._stop = threading.Event()

        def poll():
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, _rss_mb())

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _quantiles(post):
    s = post.summary()
    return (*(np.column_stack([s[f"{v}_{q}"] for v in VARS]) for q in ("median", "q16", "q84")), s)


def agreement(nuts, grid, tol: float = 0.25) -> dict:
    from dds_infer.recovery import median_agreement

    mn, q16, q84, sumn = _quantiles(nuts)
    ok = median_agreement(_quantiles(grid)[0], mn, q16, q84, tol)
    clean = (sumn["flag"].to_numpy() & (1 | 2 | 4)) == 0
    return {"n": int(len(ok)), "frac_all": float(ok.all(axis=1).mean()),
            "frac_by_var": {v: float(ok[:, j].mean()) for j, v in enumerate(VARS)},
            "n_nuts_clean": int(clean.sum()),
            "frac_all_nuts_clean": float(ok[clean].all(axis=1).mean()) if clean.any() else float("nan"),
            "ok_all": ok.all(axis=1)}


def coverage(post, truth) -> tuple[dict, dict]:
    from dds_infer.recovery import interval_coverage

    c68, c95 = {}, {}
    for j, v in enumerate(VARS):
        d, w = post.flat_draws(v)
        c68[v] = interval_coverage(d, truth[:, j], 0.68, w)
        c95[v] = interval_coverage(d, truth[:, j], 0.95, w)
    return c68, c95


def run(args, emu_real, anchor) -> dict:
    import jax

    from dds_infer import load_bundle
    from dds_infer.catalog_io import read_green2020_h5
    from dds_infer.devices import padded_size
    from dds_infer.engine import pad_batch, star_keys
    from dds_infer.gridpath import GridSettings, grid_batch_on_devices, make_cell_grid
    from dds_infer.inference import InferenceConfig, star_data_from_catalog
    from dds_infer.pipeline import infer
    from dds_infer.priors import default_prior
    from dds_infer.simulate import draw_from_prior, simulate_observations

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="grid_compare_"))
    config = InferenceConfig()
    settings = GridSettings()
    nuts_kw = dict(num_chains=4, num_warmup=500, num_samples=500, batch_size=args.batch_size, seed=0,
                   progress=not args.json, max_tree_depth=8, combine="always")  # draws compared in memory
    out = {"n_real": args.n_stars, "n_mock": args.n_mock, "grid_settings": str(settings)}
    # real stars
    full = read_green2020_h5(anchor / "green2020_test_data_small.h5", require_labels=False,
                             require_reddening_prior=False)
    real = full.subset(np.arange(args.n_stars))
    prior_r = default_prior(emu_real)
    out["nuts_from_cache"] = (work / "nuts_real" / "posterior.nc").exists()  # then its timing is not a rate
    t0 = time.perf_counter()
    nuts_r = infer(real, emu_real, work / "nuts_real", prior=prior_r, config=config, **nuts_kw)
    out["nuts_seconds_real"] = time.perf_counter() - t0
    for d in ("grid_real", "grid_mock"):  # the grid runs are always redone (only NUTS is cached)
        shutil.rmtree(work / d, ignore_errors=True)
    grid_r = infer(real, emu_real, work / "grid_real", prior=prior_r, config=config, method="grid",
                   batch_size=1024, seed=0, progress=False, overwrite=True, combine="always")
    ag_r = agreement(nuts_r, grid_r)
    # mock stars from the prior, shipped model as truth
    emu_m = load_bundle(args.mock_model)
    prior_m = default_prior(emu_m, reddening="halfnormal", E_scale=0.3)
    draws = draw_from_prior(prior_m, int(args.n_mock * 1.6) + 50, seed=7)
    cat_m, keep = simulate_observations(emu_m, draws, config, seed=7)
    keep = keep[: args.n_mock]
    cat_m = cat_m.subset(np.arange(len(keep)))
    truth = np.column_stack([np.asarray(draws[v])[keep] for v in VARS])
    nuts_m = infer(cat_m, emu_m, work / "nuts_mock", prior=prior_m, config=config, **nuts_kw)
    grid_m = infer(cat_m, emu_m, work / "grid_mock", prior=prior_m, config=config, method="grid",
                   batch_size=1024, seed=0, progress=False, overwrite=True, combine="always")
    ag_m = agreement(nuts_m, grid_m)
    ok = np.concatenate([ag_r.pop("ok_all"), ag_m.pop("ok_all")])
    out.update({"grid_agreement_frac": float(ok.mean()), "agreement_real": ag_r, "agreement_mock": ag_m})
    g68, g95 = coverage(grid_m, truth)
    n68, n95 = coverage(nuts_m, truth)
    out.update({"grid_coverage68_mock": g68, "grid_coverage95_mock": g95,
                "nuts_coverage68_mock": n68, "nuts_coverage95_mock": n95,
                "grid_median_weight_ess_real": float(np.median(grid_r.star_stats["weight_ess"])),
                "grid_median_weight_ess_mock": float(np.median(grid_m.star_stats["weight_ess"])),
                "grid_frac_low_ess_real": float(np.mean(grid_r.star_stats["weight_ess"] < 100))})
    # speed on all shared stars
    n = full.n_stars
    stars = star_data_from_catalog(full)
    keys = star_keys(0, np.arange(n))
    B = args.grid_batch
    n_full = (n // B) * B  # whole batches only (no recompilation for a ragged tail)
    grid = None

    def timed(star_block):
        """(setup s, compute s, padded batch, RSS peak) of the grid path over n_full stars, as
        dds-infer runs it: each device its share of a batch, padded as grid_batch_fn pads it."""
        nonlocal grid
        run, multiple = grid_batch_on_devices(config, settings, star_block=star_block)
        size = padded_size(B, multiple)
        take = lambda a, b: pad_batch(jax.tree_util.tree_map(lambda x: x[a:b], (stars, keys)), size)  # noqa: E731
        t0 = time.perf_counter()
        if grid is None:
            grid = make_cell_grid(emu_real, settings.threshold, settings.stride)
        jax.block_until_ready(run(*take(0, B), grid, emu_real, prior_r))
        setup = time.perf_counter() - t0
        with _RSSPeak() as rss:  # the working memory of the batches above what setup left resident
            t0 = time.perf_counter()
            for a in range(0, n_full, B):
                jax.block_until_ready(run(*take(a, a + B), grid, emu_real, prior_r))
            return setup, time.perf_counter() - t0, size, rss

    setup, sec, size, rss = timed("auto")
    whole = timed(None)[1] if args.grid_vs_whole_batch else None  # the same, each share vmapped at once
    if whole is not None:
        out.update({"grid_stars_per_s_whole_batch": n_full / whole, "grid_block_speedup": whole / sec})
    nc = Path(work / "grid_real" / "posterior.nc").stat().st_size
    out.update({"grid_stars_per_s": n_full / sec, "grid_speed_stars": n_full, "grid_batch": B, "grid_padded_batch": size,
                "grid_setup_seconds": setup, "grid_peak_rss_growth_mb": rss.peak - rss.base,
                "grid_rss_mb_before_speed_run": rss.base,
                "grid_netcdf_mb_per_1e4_stars": nc / args.n_stars * 1e4 / 1e6,
                "nuts_stars_per_s_real": args.n_stars / out["nuts_seconds_real"]})
    return out
