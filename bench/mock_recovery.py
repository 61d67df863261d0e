"""Recovery of a physically grounded truth by training on its mock catalogue (issue 4, acceptance 1).

    python bench/mock_recovery.py --model models/mock13-v1 --catalog mock_train.parquet [--json]

Compares the trained emulator with the truth model (:func:`dds_infer.truth.build_truth_model`)
at the *true* θ of the held-out test split (the split stored in the bundle), restricted to the
central 95% of the mock θ distribution: stars whose true Teff, logg and [Fe/H] each lie within
their 2.5-97.5% quantiles. Prints per band RMS(M_learned − M_true) and the mean R ratio
learned/true − 1, the goals (≤ 0.03 mag; |ratio − 1| ≤ 3%) and whether each band meets them,
and the bundle's training ``label_update``, ``label_shrinkage``, ``parallax_likelihood`` and ``l2_hidden`` (from its ``extras/history.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

RMS_GOAL = 0.03
R_GOAL = 0.03


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="bundle trained on the mock catalogue")
    ap.add_argument("--catalog", required=True, help="the mock catalogue it was trained on (true_* columns)")
    ap.add_argument("--split", default="test", choices=("train", "validation", "test", "all"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from dds_infer import load_bundle
    from dds_infer.mock import read_mock
    from dds_infer.truth import build_truth_model

    t0 = time.perf_counter()
    emu = load_bundle(args.model)
    truth = build_truth_model()
    mock = read_mock(args.catalog)
    theta = mock.truth[["teff", "logg", "feh"]].to_numpy()
    idx = np.arange(len(theta))
    split_file = Path(args.model) / "extras" / "split.npz"
    if args.split != "all":
        if not split_file.is_file():
            raise SystemExit(f"{split_file} missing: the bundle has no stored split (use --split all)")
        idx = np.load(split_file)[args.split]
    lo, hi = np.percentile(theta, [2.5, 97.5], axis=0)
    central = np.all((theta >= lo) & (theta <= hi), axis=1)
    sel = idx[central[idx]]
    th = theta[sel]
    dM = np.asarray(emu.absolute_mags(th)) - np.asarray(truth.absolute_mags(th))
    R_new = np.asarray(emu.reddening_vector(th)).mean(axis=0)
    R_true = np.asarray(truth.reddening_vector(th)).mean(axis=0)
    names = list(emu.bands.names)
    rms = np.sqrt(np.mean(dM**2, axis=0))
    ratio = R_new / R_true - 1
    hist_file = Path(args.model) / "extras" / "history.json"
    label_update = label_shrinkage = parallax_likelihood = l2_hidden = None
    if hist_file.is_file():
        import json

        train_cfg = json.loads(hist_file.read_text()).get("config", {})
        label_update = train_cfg.get("label_update", "none")
        label_shrinkage = train_cfg.get("label_shrinkage", "none")
        parallax_likelihood = train_cfg.get("parallax_likelihood", "inverted")
        l2_hidden = train_cfg.get("l2_hidden")
    figures = {
        "n_stars": int(len(sel)), "split": args.split, "label_update": label_update,
        "label_shrinkage": label_shrinkage, "parallax_likelihood": parallax_likelihood, "l2_hidden": l2_hidden,
        "theta_box_2.5_97.5": {"lo": lo.round(3).tolist(), "hi": hi.round(3).tolist()},
        "rms_dM": dict(zip(names, rms.round(4).tolist())),
        "median_dM": dict(zip(names, np.median(dM, axis=0).round(4).tolist())),
        "R_mean_learned": dict(zip(names, R_new.round(4).tolist())),
        "R_mean_true": dict(zip(names, R_true.round(4).tolist())),
        "R_rel_diff": dict(zip(names, ratio.round(4).tolist())),
        "bands_rms_ok": int(np.sum(rms <= RMS_GOAL)), "bands_R_ok": int(np.sum(np.abs(ratio) <= R_GOAL)),
        "goal": {"rms_dM_max": RMS_GOAL, "R_rel_diff_max": R_GOAL},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
