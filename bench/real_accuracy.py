"""Accuracy of photometric inference on real stars (issue 5, acceptance 2).

    python bench/real_accuracy.py [--n-stars 1000] [--num-warmup 500 --num-samples 500] [--json]
    python bench/real_accuracy.py --method grid [--json]     # the same stars through the grid path

The published Green2020 network (imported from the anchor folder) infers θ, μ, E for a random
subset of the 10,000 held-out real test stars from photometry + parallax only: spectroscopic
labels and prior reddenings are withheld from the inference (the file has no (l, b), so the
sky-averaged Galactic prior is used). The θ prior is the published *training*-density grid — never
fitted to these test stars — divided by the selection volume of a G < 17 magnitude limit
(``--selection-limit``, :mod:`dds_infer.selection`: the training set is magnitude-limited, so its
density over-represents luminous types by the volume they are seen in, which the distance prior
counts again). 17 is set from the stars *not* scored by default (95th percentile of G among
9,000 of them: 17.2); on 3,000 of them (grid path) limits 15/16/17 gave σ(Teff) 150.2/148.3/147.6 K, none
(``--selection-limit none``, the training density as it is) 154 K. The release's errors already include a 0.02 mag floor
(``meta["mag_err_floor"]``), so the likelihood's default 0.02 floor adds nothing more.
Pipeline: grid modes → batched NUTS (4 chains) → mode combination, DR2 parallax zero-point,
flat E prior (``--method grid``: the grid path of issue 6 with the same model and priors, for
the sampler-independent accuracy). With ``--out DIR`` a rerun resumes the finished chunks.
``--reddening``, ``--E-scale`` and ``--sigma-floor`` change the E prior and the floor.
``--calibrate-offsets N`` first calibrates per-band photometric zero-point offsets
(:mod:`dds_infer.band_offsets`) on N other stars of the file, never the scored ones, and scores with them.

Prints robust σ (1.4826 MAD) and median bias of posterior median − catalogue value for Teff,
logg, [Fe/H] and E (vs the catalogue's prior reddening r), z-score robust σ using both the
posterior half-width and the catalogue error, and the fraction of stars flagged.
E is scored against the stars whose r is a measurement (``r_source`` b19: Bayestar19, sfd:
SFD). For ``r_source`` "default" (9.5% of the file: no map applied, Green et al. 2021 §3.3)
r is a placeholder, 0 with σ up to 1.6 mag, not a reference; those stars are counted and the
E figures including them are reported too (``E_reference``). ``by_label_source`` splits the
Teff and logg figures by spectroscopic survey (LAMOST, APOGEE, GALAH).
Goals: σ(Teff) ≤ 150 K, σ(logg) ≤ 0.20, σ(E) ≤ 0.05, |bias(logg)| ≤ 0.05, z_sigma in 0.8–1.3.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from _common import add_cpu_devices_arg, add_sampler_args, anchor_dir, report, start_devices

GOALS = {"sigma": {"teff": 150.0, "logg": 0.20, "E": 0.05}, "abs_bias": {"logg": 0.05}, "z_sigma": (0.8, 1.3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-stars", type=int, default=1000)
    add_sampler_args(ap)
    ap.add_argument("--dense-mass", action="store_true", help="dense (not diagonal) NUTS mass matrices")
    ap.add_argument("--reddening", default="flat", help="E prior kind (dds_infer.priors.REDDENING_KINDS)")
    ap.add_argument("--E-scale", type=float, default=1.0, help="half-normal E prior scale [mag]")
    ap.add_argument("--sigma-floor", type=float, default=0.02, help="photometric error floor [mag]")
    ap.add_argument("--selection-limit", default="17.0",
                    help="G limit of the training set's selection volume correction, or 'none' (default 17)")
    ap.add_argument("--calibrate-offsets", type=int, default=0, metavar="N",
                    help="first calibrate per-band zero-point offsets (dds_infer.band_offsets, grid path) on N "
                    "stars disjoint from the scored ones, then score with them (default 0: no offsets)")
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", action="store_true")
    add_cpu_devices_arg(ap)
    args = ap.parse_args(argv)
    devices = start_devices(args)
    limit = None if args.selection_limit.lower() == "none" else float(args.selection_limit)

    from dds_infer.catalog import StarCatalog
    from dds_infer.catalog_io import read_green2020_h5
    from dds_infer.keras_import import import_keras_model
    from dds_infer.pipeline import TARGET_ACCEPT, infer
    from dds_infer.posterior import flag_counts
    from dds_infer.priors import default_prior
    from dds_infer.inference import InferenceConfig
    from dds_infer.recovery import accuracy

    target_accept = TARGET_ACCEPT if args.target_accept is None else args.target_accept

    a = anchor_dir()
    emu = import_keras_model(a / "green2020_nn_model.h5", a / "green2020_theta_normalization.json",
                             density_path=a / "green2020_input_density.h5")
    full = read_green2020_h5(a / "green2020_test_data_small.h5")
    rows = np.sort(np.random.default_rng(args.seed).choice(full.n_stars, args.n_stars, replace=False))
    ref = full.subset(rows)
    blind = StarCatalog.from_arrays(ref.mag, ref.mag_err, ref.parallax, ref.parallax_err, ref.bands,
                                    ids=ref.star_ids(),  # labels and prior reddenings withheld;
                                    meta={"mag_err_floor": ref.meta.get("mag_err_floor")})  # 0.02 mag in mag_err
    prior = default_prior(emu, reddening=args.reddening, E_scale=args.E_scale, selection_limit=limit)
    config = InferenceConfig(sigma_floor=args.sigma_floor)
    calibration = None
    if args.calibrate_offsets:
        import dataclasses

        from dds_infer.band_offsets import calibrate_band_offsets

        rest = np.setdiff1d(np.arange(full.n_stars), rows)
        cal_rows = np.sort(np.random.default_rng(args.seed + 1).choice(rest, args.calibrate_offsets, replace=False))
        cal = full.subset(cal_rows)
        cal_blind = StarCatalog.from_arrays(cal.mag, cal.mag_err, cal.parallax, cal.parallax_err, cal.bands,
                                            ids=cal.star_ids(), meta={"mag_err_floor": cal.meta.get("mag_err_floor")})
        t_cal = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            bo = calibrate_band_offsets(cal_blind, emu, tmp, prior=prior, config=config, seed=args.seed,
                                        progress=not args.no_progress)
        config = dataclasses.replace(config, band_offsets=bo.as_config_tuple())
        calibration = {"n_stars": int(cal.n_stars), "iterations": len(bo.history), "converged": bo.attrs["converged"],
                       "band_offsets": bo.to_dict()["band_offsets"], "errors": bo.to_dict()["errors"],
                       "seconds": round(time.perf_counter() - t_cal, 1)}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        kw = (dict(method="grid", batch_size=1024) if args.method == "grid" else
              dict(num_chains=args.num_chains, num_warmup=args.num_warmup, num_samples=args.num_samples,
                   batch_size=args.batch_size, engine=args.engine,
                   target_accept_prob=target_accept, dense_mass=args.dense_mass))
        post = infer(blind, emu, args.out or tmp, prior=prior, config=config,
                     seed=args.seed, progress=not args.no_progress,
                     overwrite=args.out is None, **kw)
    seconds = time.perf_counter() - t0
    s = post.summary()
    r_source = ref.meta.get("r_source")
    placeholder = np.zeros(ref.n_stars, bool) if r_source is None else np.asarray(r_source) == "default"
    truth = {"teff": ref.theta[:, 0], "logg": ref.theta[:, 1], "feh": ref.theta[:, 2],
             "E": np.where(placeholder, np.nan, ref.E_prior)}  # accuracy() skips NaN truths
    ref_err = {"teff": np.sqrt(ref.theta_cov[:, 0, 0]), "logg": np.sqrt(ref.theta_cov[:, 1, 1]),
               "feh": np.sqrt(ref.theta_cov[:, 2, 2]), "E": ref.E_prior_err}
    score = lambda k, t, sel=slice(None): accuracy(s[f"{k}_median"].to_numpy()[sel], s[f"{k}_q16"].to_numpy()[sel],  # noqa: E731
                                                   s[f"{k}_q84"].to_numpy()[sel], t[sel], ref_err[k][sel])
    acc = {k: score(k, truth[k]) for k in truth}
    e_all = score("E", ref.E_prior)
    sources = ref.meta.get("atm_source")
    by_source = {} if sources is None else {
        str(src): {"n": int(np.sum(sources == src)),
                   **{f"{stat}_{k}": score(k, truth[k], sources == src)[stat] for k in ("teff", "logg")
                      for stat in ("sigma", "bias")}}
        for src in np.unique(sources)}
    figures = {
        "n_stars": int(post.n_stars), "devices": devices,
        "sigma": {k: v["sigma"] for k, v in acc.items()},
        "bias": {k: v["bias"] for k, v in acc.items()},
        "z_sigma": {k: v["z_sigma"] for k, v in acc.items()},
        "n_scored": {k: v["n"] for k, v in acc.items()},
        "E_reference": {"n_measured": int(acc["E"]["n"]), "n_placeholder": int(placeholder.sum()),
                        "sigma_incl_placeholder": e_all["sigma"], "bias_incl_placeholder": e_all["bias"],
                        "z_sigma_incl_placeholder": e_all["z_sigma"]},
        "by_label_source": by_source,
        "frac_flagged": float(np.mean(s["flag"] != 0)),
        "flag_counts": flag_counts(s["flag"]),
        "frac_rhat_lt_1_01": float(np.mean(s["r_hat_max"] < 1.01)) if args.method == "nuts" else None,
        "median_weight_ess": float(np.median(s["weight_ess"])) if args.method == "grid" else None,
        "frac_multimodal": float(np.mean(s["n_modes"] > 1)),
        "method": args.method,
        "settings": ({"num_chains": args.num_chains, "num_warmup": args.num_warmup, "num_samples": args.num_samples,
                      "dense_mass": args.dense_mass, "target_accept": target_accept}
                     if args.method == "nuts" else {"grid": "GridSettings()"})
        | {"seed": args.seed, "zp": "dr2", "prior": "galactic (sky average)", "reddening": args.reddening,
           "selection_limit": limit,
           "sigma_floor": args.sigma_floor, "catalog_mag_err_floor": ref.meta.get("mag_err_floor")},
        "band_offsets": calibration,
        "goals": GOALS,
        "seconds": round(seconds, 1), "engine": args.engine if args.method == "nuts" else None,
    }
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
