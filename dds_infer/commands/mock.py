"""``dds-infer mock``: draw a mock catalogue with known truth (see :mod:`dds_infer.mock`)."""

from __future__ import annotations

import time


def register(sub) -> None:
    p = sub.add_parser(
        "mock",
        help="draw a mock Milky Way catalogue with known truth",
        description="Draw N stars from the Galactic model, a stellar population and a truth model, "
        "observe them through the Green2020-like survey model and write a table with the "
        "catalogue columns plus true_* columns (format from the extension).",
    )
    p.add_argument("--n", type=int, required=True, help="number of (selected) stars")
    p.add_argument("--out", required=True, help="output table (.parquet, .fits, .h5, .csv, ...)")
    p.add_argument("--truth", default="physical",
                   help='"physical" (isochrones + synthetic photometry + G23 extinction; needs '
                        'pip install "dds_infer[mock]") or a model bundle directory (emulator as truth)')
    p.add_argument("--population", choices=("isochrone", "domain"), default=None,
                   help="stellar types: isochrone population, or the emulator's training density "
                        "(default: isochrone for --truth physical, domain for a bundle)")
    p.add_argument("--selection-limit", default="auto", metavar="MAG|auto|bundle|none",
                   help="--population domain: draw θ from the truth bundle's training density divided by the "
                   "volume each stellar type is brighter than this limit in (as dds-infer infer's prior with "
                   "the same flag, so the mock follows that prior). auto (default): the bundle's recorded limit, "
                   "none if it records none; bundle: the recorded limit, an error without one; none: the "
                   "density itself")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--l", type=float, nargs="*", default=None, help="sightline longitudes [deg]")
    p.add_argument("--b", type=float, nargs="*", default=None, help="sightline latitudes [deg]")
    p.add_argument("--no-labels", action="store_true", help="omit spectroscopic labels and reddening priors")
    p.add_argument("--label-noise-scale", type=float, default=1.0,
                   help="scale of the spectroscopic label errors (e.g. 0.01: near-exact labels)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def load_truth(spec: str):
    """The truth model named on the command line: "physical" or a bundle directory."""
    if spec == "physical":
        from ..truth import build_truth_model

        return build_truth_model()
    from ._common import read_model

    return read_model(spec)


def run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..cli import emit_json
    from ..mock import MockConfig, make_mock, write_mock
    from ._common import parse_selection_limit

    if (args.l is None) != (args.b is None) or (args.l is not None and len(args.l) != len(args.b)):
        raise ValueError("--l and --b must be given together, with the same number of values")
    population = args.population or ("isochrone" if args.truth == "physical" else "domain")
    limit = parse_selection_limit(args.selection_limit)
    if population != "domain" and limit not in ("auto", None):
        raise ValueError("--selection-limit applies to --population domain (θ from the training density)")
    t0 = time.perf_counter()
    truth = load_truth(args.truth)
    cfg = MockConfig(n=args.n, seed=args.seed, population=population,
                     l=None if args.l is None else tuple(args.l),
                     b=None if args.b is None else tuple(args.b), labels=not args.no_labels,
                     label_noise_scale=args.label_noise_scale, selection_limit=limit)
    with tqdm(total=args.n, desc="mock stars", unit="star", disable=args.no_progress) as bar:
        def progress(done, total):
            bar.update(done - bar.n)

        mock = make_mock(truth, cfg, progress=progress)
    path = write_mock(mock, args.out)
    cat = mock.catalog
    summary = {
        "out": str(path), "n_stars": cat.n_stars, "truth": args.truth, "population": population,
        "seed": args.seed, "seconds": round(time.perf_counter() - t0, 2), **mock.report,
        "missing_frac": {b: float(np.isnan(cat.mag[:, j]).mean()) for j, b in enumerate(cat.bands.names)},
        "median_parallax_snr": float(np.nanmedian(cat.parallax / cat.parallax_err)),
        "E_true_percentiles_5_50_95": np.percentile(mock.truth["E"], [5, 50, 95]).round(4).tolist(),
    }
    if args.json:
        emit_json(summary)
    else:
        print(f"wrote {cat.n_stars} mock stars to {path} ({summary['seconds']} s; "
              f"{mock.report['n_drawn']} drawn, {mock.report['n_rejected_selection']} outside the "
              f"selection, {mock.report['n_rejected_theta']} with no valid θ)")
    return 0
