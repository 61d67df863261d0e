"""Training speed on 10^5 stars (the shared real stars resampled with replacement, small jitter).

Times one epoch (compiled, default architecture and batch size) and one
covariance refresh (Eqs. 4-9 for all stars), then runs the real default
20 x 25 schedule with ``dds_infer.training.train`` end to end and reports its
wall time (``--no-full`` skips it and reports the extrapolation only).

    python bench/train_bench.py [--json] [--n-stars 100000] [--epochs-timed 2] [--no-full]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _common import anchor_dir, report


def resampled_catalog(cat, n: int, seed: int = 0):
    """n stars drawn with replacement, θ jittered by 0.1 σ_θ and magnitudes by 0.2 σ_m."""
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    sub = cat.subset(rng.integers(0, cat.n_stars, n))
    sig = np.sqrt(np.diagonal(sub.theta_cov, axis1=1, axis2=2))
    mag = sub.mag + 0.2 * np.nan_to_num(sub.mag_err) * rng.standard_normal(sub.mag.shape)
    return replace(sub, theta=sub.theta + 0.1 * sig * rng.standard_normal(sig.shape), mag=mag)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-stars", type=int, default=100_000)
    p.add_argument("--epochs-timed", type=int, default=2)
    p.add_argument("--no-full", action="store_true", help="skip the end-to-end default schedule")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from dds_infer.catalog_io import read_green2020_h5
    from dds_infer.emulator import init_emulator
    from dds_infer.evaluate import prepare_photometry
    from dds_infer.training import TrainConfig, _fit_inputs, usable_stars
    from dds_infer.train_core import (StarBatchData, make_epoch_fn, make_eval_fn, make_optimizer,
                                      refresh_star_terms)

    cfg = TrainConfig()
    cat = resampled_catalog(read_green2020_h5(anchor_dir() / "green2020_test_data_small.h5"), args.n_stars)
    n_tr = int(round(cfg.split[0] * cat.n_stars))
    n_fit = n_tr + int(round(cfg.split[1] * cat.n_stars))
    fit = cat.subset(np.arange(n_fit))
    phot = prepare_photometry(fit)
    th, cov, Ep, Epe = _fit_inputs(fit, usable_stars(fit, phot))
    emu = init_emulator(jax.random.PRNGKey(0), hidden=cfg.hidden, theta_med=np.median(fit.theta, 0),
                        theta_std=np.std(fit.theta, 0))

    def refresh():
        out = refresh_star_terms(emu, th, cov, Ep, Epe, phot, first=False, chunk_size=cfg.chunk_size)
        jax.block_until_ready(out)
        return out

    t = time.perf_counter()
    refresh()
    refresh_compile = time.perf_counter() - t
    t = time.perf_counter()
    terms = refresh()
    refresh_s = time.perf_counter() - t

    data = StarBatchData(x=emu.normalize(th), E=terms.E, c_obs=phot.c_obs, W=terms.W, mask=phot.mask,
                         weight=jnp.ones(n_fit, jnp.float32))
    d_tr = jax.tree_util.tree_map(lambda a: a[:n_tr], data)
    d_va = jax.tree_util.tree_map(lambda a: a[n_tr:], data)
    epoch = make_epoch_fn(13, tuple(cfg.hidden), cfg.batch_size, cfg.l2_hidden, cfg.l1_reddening)
    evalf = make_eval_fn(13, tuple(cfg.hidden))
    opt = make_optimizer()
    params, state = emu.params, opt.init(emu.params)
    t = time.perf_counter()
    params, state, loss = epoch(params, state, jax.random.PRNGKey(0), d_tr)
    jax.block_until_ready(loss)
    epoch_compile = time.perf_counter() - t
    t = time.perf_counter()
    for k in range(args.epochs_timed):
        params, state, loss = epoch(params, state, jax.random.PRNGKey(k + 1), d_tr)
        float(evalf(params, d_tr)), float(evalf(params, d_va))
    epoch_s = (time.perf_counter() - t) / args.epochs_timed
    n_epochs = cfg.iterations * cfg.epochs
    full = n_epochs * epoch_s + (cfg.iterations + 1) * refresh_s + refresh_compile + epoch_compile
    extrapolated = True
    if not args.no_full:
        from dds_infer.training import train

        t = time.perf_counter()
        _, hist = train(cat, TrainConfig(progress=not args.json))
        full = time.perf_counter() - t
        extrapolated = False
    out = {
        "n_stars": cat.n_stars, "n_train": n_tr, "batch_size": cfg.batch_size, "hidden": list(cfg.hidden),
        "backend": jax.default_backend(), "devices": str(jax.devices()),
        "epoch_seconds": epoch_s,
        "star_epochs_per_s": n_tr / epoch_s,
        "covariance_refresh_seconds": refresh_s,
        "compile_seconds": refresh_compile + epoch_compile - refresh_s - epoch_s,
        "full_schedule_seconds": full,
        "full_schedule_extrapolated": extrapolated,
        "full_schedule_note": (f"{args.epochs_timed} timed epochs (incl. train/val loss evaluation) x {n_epochs} "
                               f"+ {cfg.iterations + 1} refreshes + first-call compile") if extrapolated else
                              f"dds_infer.training.train, default {cfg.iterations} x {cfg.epochs} schedule, end to end",
    }
    report(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
