"""A mock sightline with one dust cloud, end to end (issue 6, acceptance 3).

    python bench/los_mock.py [--n-stars 300] [--cloud-pc 400] [--delta-E 0.5] [--method grid|nuts] [--json]
                             [--cpu-devices N]   (default: one JAX CPU device per core; LOS chains split over them)

Stars along (l, b) = (160°, −10°) from the Galactic prior of the shipped model (distances drawn in
μ ∈ [5, 10.5], i.e. 100 pc – 1.3 kpc, as for a LOS study of a nearby cloud), reddened by
E_fg = 0.05 in front of a thin cloud at --cloud-pc adding --delta-E behind it (3% scatter per
star), observed through the Green2020-like survey (:func:`dds_infer.simulate.simulate_cloud_sightline`).
Per-star posteriors with a flat E prior (grid path by default) → the HDF5 dust-map writer
(nested HEALPix, default images) → ``read_pixel`` → the LOS model with one cloud
(:func:`dds_infer.los.fit_los`, NUTS 4 × (500 + 500)). Goal: fitted cloud distance within 10% of
the truth and its 68% interval covering it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, add_cpu_devices_arg, report, start_devices


def run_sightline(n_stars=300, cloud_pc=400.0, delta_E=0.5, l=160.0, b=-10.0, seed=0, method="grid",
                  num_warmup=500, num_samples=500, out_dir=None, progress=False):
    from dds_infer import load_bundle
    from dds_infer.dustmap_io import healpix_index, read_pixel, write_dustmap
    from dds_infer.inference import InferenceConfig
    from dds_infer.los import fit_los
    from dds_infer.pipeline import infer
    from dds_infer.priors import default_prior
    from dds_infer.simulate import simulate_cloud_sightline

    t0 = time.perf_counter()
    emu = load_bundle(REPO / "models" / "mock13-v1")
    prior = default_prior(emu)  # flat E: the LOS profile replaces the reddening prior
    cat, truth = simulate_cloud_sightline(emu, prior, n_stars, l, b, cloud_pc=cloud_pc, delta_E=delta_E,
                                          seed=seed, mu_range=(5.0, 10.5))
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="los_mock_"))
    post = infer(cat, emu, out_dir / "run", prior=prior, config=InferenceConfig(), method=method, seed=seed,
                 progress=progress, overwrite=True, batch_size=1024 if method == "grid" else 64)
    t_inf = time.perf_counter() - t0
    h5 = write_dustmap(out_dir / "sightline.h5", post, cat.l, cat.b, nside=64)
    pix = int(healpix_index(np.array([l]), np.array([b]), 64)[0])
    px = read_pixel(h5, pix)
    fit = fit_los(px["pdf"], px["mu_centers"], px["E_centers"], 1, num_warmup=num_warmup,
                  num_samples=num_samples, num_chains=4, seed=seed)
    s = fit.summary()
    c = s["clouds"][0]
    d = c["distance_pc"]
    d_true = 10.0 ** (truth["mu"] / 5.0 + 1.0)
    return {"n_stars": int(cat.n_stars), "method": method, "cloud_pc_true": cloud_pc, "delta_E_true": delta_E,
            "n_in_front": int(np.sum(d_true < cloud_pc)), "cloud_distance_pc": d, "delta_E": c["delta_E"],
            "E_fg": s["E_fg"], "f_out": s["f_out"], "r_hat": c["r_hat"], "ess": c["ess"],
            "num_divergent": s["num_divergent"],
            "rel_error": abs(d["median"] - cloud_pc) / cloud_pc,
            "within_10pct": bool(abs(d["median"] - cloud_pc) <= 0.1 * cloud_pc),
            "interval68_covers": bool(d["q16"] <= cloud_pc <= d["q84"]),
            "seconds_inference": t_inf, "seconds_los": fit.seconds, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-stars", type=int, default=300)
    ap.add_argument("--cloud-pc", type=float, default=400.0)
    ap.add_argument("--delta-E", type=float, default=0.5)
    ap.add_argument("--method", choices=("grid", "nuts"), default="grid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--json", action="store_true")
    add_cpu_devices_arg(ap)
    args = ap.parse_args(argv)
    devices = start_devices(args)
    report({**run_sightline(args.n_stars, args.cloud_pc, args.delta_E, seed=args.seed, method=args.method,
                            out_dir=args.out_dir, progress=not args.json), "devices": devices}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
