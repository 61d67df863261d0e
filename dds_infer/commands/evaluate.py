"""``dds-infer evaluate``: χ²/dof and z-scores of a model on a labelled catalogue (paper §4)."""

from __future__ import annotations

from pathlib import Path

from ._model_args import add_columns_args


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="chi^2/dof, outlier fraction and z-scores of a model on a labelled catalogue",
        description="Evaluate an emulator bundle on a catalogue with spectroscopic labels, "
        "parallaxes and prior reddenings (Green et al. 2021, section 4).",
    )
    p.add_argument("--model", required=True, help="emulator bundle directory")
    p.add_argument("--catalog", required=True, help="catalogue (Green2020 HDF5 or a table)")
    add_columns_args(p)
    p.add_argument("--reddening", choices=("prior", "fit"), default="prior",
                   help="use the catalogue's prior reddening, or re-fit it per star (Eqs. 8-9)")
    p.add_argument("--min-parallax-snr", type=float, default=5.0,
                   help="model c_0 (absolute magnitude) only where parallax/error exceeds this")
    p.add_argument("--parallax-zp", type=float, default=0.0, help="parallax zero-point [mas] to subtract")
    p.add_argument("--chi2-cut", type=float, default=5.0, help="chi^2/dof outlier threshold")
    p.add_argument("--n-fitted", type=int, default=1,
                   help="parameters fitted per star, subtracted from the dof (1 = reddening; paper convention)")
    p.add_argument("--split-part", choices=("train", "validation", "test"), default=None,
                   help="evaluate only this part of a train/validation/test split (e.g. the held-out test stars "
                        "of the catalogue the model was trained on), from --split or the model's extras/split.npz")
    p.add_argument("--split", default=None, metavar="FILE",
                   help="with --split-part: split file (.npz or .json with train/validation/test row indices; "
                        "default: the model bundle's extras/split.npz)")
    p.add_argument("--out", default=None, help="optional Parquet file for per-star results")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def split_rows(path, part: str, n_rows: int):
    """Sorted unique catalogue rows of one part of a split file (a bootstrap's repeated training
    rows are evaluated once); refuses a split that points past the catalogue, naming the file."""
    import numpy as np

    from ..train_io import read_split

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {str(path)!r} not found (a bundle written by dds-infer train has "
                                "extras/split.npz; give another with --split)")
    rows = np.unique(np.asarray(read_split(path)[part], dtype=np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= n_rows):
        raise ValueError(f"split file {str(path)!r}: {part} rows reach {rows[-1]}, but the catalogue has {n_rows} "
                         "rows (a split refers to the catalogue the model was trained on)")
    return rows


def run(args) -> int:
    import numpy as np
    import pandas as pd

    from ..cli import emit_json
    from ..evaluate import evaluate_catalog
    from ._common import read_catalog, read_model

    emu = read_model(args.model)
    cat = read_catalog(args.catalog, args.columns, parallax_unit=args.parallax_unit, require_labels=True, require_reddening_prior=True)
    rows = None
    if args.split_part is not None:
        split_file = args.split or Path(args.model) / "extras" / "split.npz"
        rows = split_rows(split_file, args.split_part, cat.n_stars)
        cat = cat.subset(rows)
    elif args.split is not None:
        raise ValueError("--split needs --split-part (which part of the split to evaluate)")
    res = evaluate_catalog(emu, cat, reddening=args.reddening, min_parallax_snr=args.min_parallax_snr,
                           parallax_zero_point=args.parallax_zp, chi2_cut=args.chi2_cut,
                           n_fitted=args.n_fitted, progress=True)
    summary = dict(res.summary)
    if rows is not None:
        summary.update(split_part=args.split_part, split_file=str(split_file))
    if args.out:
        df = pd.DataFrame({"id": cat.star_ids(), "chi2": res.chi2, "n_modelled": res.n_modelled,
                           "dof": res.dof, "chi2_dof": res.chi2_dof, "E": res.E, "E_err": res.E_err})
        for j, name in enumerate(res.entry_names):
            df[f"z_{name}"] = res.z[:, j]
        from ..atomic import atomic_path

        with atomic_path(args.out) as tmp:
            df.to_parquet(tmp, index=False)
        summary["out"] = str(args.out)
    if args.json:
        emit_json(summary)
        return 0
    part = "" if rows is None else f" of the split's {args.split_part} part"
    print(f"stars: {summary['n_stars']}{part} (evaluated: {summary['n_evaluated']}), reddening: {args.reddening}")
    print(f"mean chi2/dof (chi2/dof < {args.chi2_cut:g}): {summary['chi2_dof_mean']:.4f}")
    print(f"outlier fraction (chi2/dof > {args.chi2_cut:g}): {summary['outlier_frac']:.4f} "
          f"({summary['n_outliers']} stars)")
    print(f"{'entry':>22s} {'n':>6s} {'median z':>9s} {'robust sd':>9s}")
    for name, z in summary["z_scores"].items():
        print(f"{name:>22s} {z['n']:6d} {z['median']:9.3f} {z['robust_sigma']:9.3f}")
    if np.isfinite(summary["chi2_dof_mean"]) and args.out:
        print(f"per-star results: {args.out}")
    return 0
