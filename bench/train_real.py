"""Train on the 70% split of the shared Green2020 real stars and compare with the published network.

Both models are evaluated on the same 10% test split (catalogue's prior
reddening, paper §4 convention, dof = modelled entries - 1).

    python bench/train_real.py [--json] [--iterations 20 --epochs 25] [--seed 0] [--out DIR]
                               [--set TRAINCONFIG_FIELD=JSON_VALUE ...]   (experiments)
                               [--bootstrap B]   (sampling noise: see below)

``--bootstrap B`` trains on a resample (with replacement, seed B) of the seed's training split,
the validation and test splits unchanged: the spread of the figures over B = 0, 1, ... is the
sampling noise of a 7,000-star training set (bench/RESULTS.md, issue 3).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import anchor_dir, report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help="override a TrainConfig field, e.g. --set loss_reddening='\"prior\"' --set cov_inflation=[1e-4,1e-3]")
    p.add_argument("--bootstrap", type=int, default=None, metavar="B",
                   help="train on a resample with replacement (seed B) of the training split")
    p.add_argument("--out", default=None, help="bundle directory to keep (default: temporary)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from dds_infer.catalog_io import read_green2020_h5
    from dds_infer.evaluate import evaluate_catalog
    from dds_infer.keras_import import import_keras_model
    from dds_infer.training import TrainConfig, split_indices, train
    from dds_infer.train_io import save_training_bundle

    a = anchor_dir()
    cat = read_green2020_h5(a / "green2020_test_data_small.h5")
    pub = import_keras_model(a / "green2020_nn_model.h5", a / "green2020_theta_normalization.json",
                             density_path=a / "green2020_input_density.h5")
    kw = {"batch_size": args.batch_size} if args.batch_size else {}
    for item in args.set:
        k, _, v = item.partition("=")
        val = json.loads(v)
        kw[k] = tuple(val) if isinstance(val, list) else val
    cfg = TrainConfig(iterations=args.iterations, epochs=args.epochs, seed=args.seed, progress=not args.json, **kw)
    split = None
    if args.bootstrap is not None:
        split = split_indices(cat.n_stars, cfg.seed, cfg.split)
        rng = np.random.default_rng(args.bootstrap)
        split["train"] = rng.choice(split["train"], split["train"].size, replace=True)
    t0 = time.perf_counter()
    emu, hist = train(cat, cfg, split=split)
    seconds = time.perf_counter() - t0
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="train_real_")  # removed at the end
    out = Path(args.out) if args.out else Path(tmp.name) / "bundle"
    save_training_bundle(emu, hist, out, catalog_path=a / "green2020_test_data_small.h5")

    test = cat.subset(hist["split"]["test"])
    res = {}
    for name, model in (("new", emu), ("published", pub)):
        for red in ("prior", "fit"):
            r = evaluate_catalog(model, test, reddening=red)
            res[f"{name}_{red}"] = r.summary
    R_new = np.asarray(emu.reddening_vector(test.theta)).mean(axis=0)
    R_pub = np.asarray(pub.reddening_vector(test.theta)).mean(axis=0)
    last = hist["epochs"][-1]
    bands = list(cat.bands.names)
    out_json = {
        "n_train": int(hist["split"]["train"].size),
        "n_test": int(test.n_stars),
        "iterations": cfg.iterations, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "seed": cfg.seed,
        "overrides": {k: v for k, v in kw.items()}, "bootstrap": args.bootstrap,
        "chi2_dof_mean_new": res["new_prior"]["chi2_dof_mean"],
        "chi2_dof_mean_published": res["published_prior"]["chi2_dof_mean"],
        "outlier_frac_new": res["new_prior"]["outlier_frac"],
        "outlier_frac_published": res["published_prior"]["outlier_frac"],
        "chi2_dof_mean_new_fitE": res["new_fit"]["chi2_dof_mean"],
        "chi2_dof_mean_published_fitE": res["published_fit"]["chi2_dof_mean"],
        "train_loss": last["train_loss"], "val_loss": last["val_loss"],
        "train_val_loss_gap": abs(last["val_loss"] - last["train_loss"]) / last["train_loss"],
        "R_mean_new": dict(zip(bands, map(float, R_new))),
        "R_mean_published": dict(zip(bands, map(float, R_pub))),
        "R_rel_diff": dict(zip(bands, map(float, (R_new - R_pub) / R_pub))),
        "final_outlier_frac_train": hist["iterations"][-1]["outlier_frac_train"],
        "bundle": str(out) if args.out else None,  # (--out keeps it)
        "seconds": seconds,
    }
    if tmp is not None:
        tmp.cleanup()
    report(out_json, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
