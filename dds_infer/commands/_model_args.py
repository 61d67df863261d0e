"""Arguments shared by the commands that run Eq. 19 on a catalogue (``infer``, ``calibrate-offsets``):
the model bundle, the catalogue, the likelihood's settings and the priors, and one function that
turns them into (emulator, catalogue, InferenceConfig, Prior)."""

from __future__ import annotations

from dataclasses import dataclass

from ..parallax_zp import L21_COLUMNS


def _angle_unit(text: str) -> str:
    import argparse

    from ..catalog import CatalogError
    from ..catalog_io import _parallax_unit

    try:
        _parallax_unit(text)
    except CatalogError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_columns_args(p) -> None:
    """``--columns`` and ``--parallax-unit``: how a generic table's columns are read."""
    p.add_argument("--columns", default=None, help="JSON file with the column map for generic tables")
    p.add_argument("--parallax-unit", default="mas", metavar="UNIT", type=_angle_unit,
                   help="unit of parallax columns that carry none in the table: mas (default), arcsec, uas, or "
                   "any astropy angle unit (columns with a unit are converted from it)")


def add_model_args(p) -> None:
    p.add_argument("--model", required=True, help="emulator bundle directory")
    p.add_argument("--catalog", required=True, help="catalogue (Green2020 HDF5 or a table)")
    add_columns_args(p)
    p.add_argument("--prior", default="galactic", help="prior kind passed to priors.default_prior")
    p.add_argument("--zp", default="dr2",
                   help="parallax zero-point: dr2 (-0.029 mas), dr3 (-0.017 mas), none, a value in mas, or "
                   "dr3-l21: per star from the Lindegren et al. (2021) recipe, which needs the catalogue "
                   "table's Gaia columns " + ", ".join(L21_COLUMNS) + " and the [gaia] extra; stars outside "
                   "the recipe's range get -0.017 (counted in the --json output)")
    p.add_argument("--parallax-inflation", type=float, default=1.0,
                   help="factor f on the parallax errors, sigma -> f sigma (default 1)")
    p.add_argument("--sigma-floor", type=float, default=0.02,
                   help="photometric error floor [mag] added in quadrature; a floor the catalogue already "
                   "includes (Green2020 HDF5: 0.02; mocks: the survey's) is not added again")
    p.add_argument("--catalog-err-floor", type=float, default=None,
                   help="declare the floor [mag] already in the catalogue's errors (overrides its metadata; "
                   "e.g. for a CSV, which keeps no table metadata)")
    p.add_argument("--band-offsets", default=None, metavar="JSON",
                   help="per-band photometric zero-point offsets [mag] added to the model magnitudes: the "
                   "file dds-infer calibrate-offsets writes, or a JSON object {band: offset}; bands it does "
                   "not name get 0")
    p.add_argument("--reddening", default="flat", choices=("flat", "halfnormal", "dustmap"),
                   help="reddening prior (dustmap: centred on the catalogue's E_prior ± E_prior_err)")
    p.add_argument("--selection-limit", default="auto", metavar="MAG|auto|bundle|none",
                   help="apparent-magnitude limit (in the model's first band, G for Green2020) of the catalogue "
                   "the model's training density comes from: the θ prior becomes that density divided by the "
                   "volume each stellar type is visible in (dds_infer.selection), the population density "
                   "Eq. 19 needs. auto (default): the limit the bundle records (dds-infer train estimates it, "
                   "import-keras --selection-limit sets it), none if it records none; bundle: the recorded "
                   "limit, an error without one; none: the density as it is")


@dataclass
class ModelInputs:
    emulator: object
    catalog: object
    config: object
    prior: object
    zp_report: dict | None
    selection_limit: float | None
    band_offsets: dict | None  # {band: offset} as used, or None


def build_model_inputs(args) -> ModelInputs:
    """Read the bundle and catalogue of ``args`` (:func:`add_model_args`) and build the likelihood
    settings and the prior. A per-star zero-point (``--zp dr3-l21``) is applied to the catalogue's
    parallaxes here, so the config then carries none."""
    from ..band_offsets import read_band_offsets
    from ..inference import InferenceConfig
    from ..priors import default_prior
    from ..selection import resolve_selection_limit
    from ._common import parse_selection_limit, read_catalog, read_model, row_range

    emu = read_model(args.model)
    rows = row_range(args)  # a shard of a catalogue too large for memory (infer --rows/--shard)
    cat = read_catalog(args.catalog, args.columns, parallax_unit=args.parallax_unit, require_labels=False,
                       **({} if rows is None else {"rows": rows}))
    if args.catalog_err_floor is not None:
        cat.meta["mag_err_floor"] = float(args.catalog_err_floor)
    zp, zp_report = zero_point(args, cat)
    if zp_report is not None:
        from ..parallax_zp import correct_parallax

        cat = correct_parallax(cat, zp, zp_report)
        zp = "none"
    offsets = None if args.band_offsets is None else read_band_offsets(args.band_offsets, emu.bands.names)
    config = InferenceConfig(zp=zp, sigma_floor=args.sigma_floor, parallax_inflation=args.parallax_inflation,
                             band_offsets=offsets, **({"parameterization": args.parameterization}
                                                      if hasattr(args, "parameterization") else {}))
    selection_limit = resolve_selection_limit(emu, parse_selection_limit(args.selection_limit))
    prior = default_prior(emu, kind=args.prior, reddening=args.reddening, selection_limit=selection_limit)
    return ModelInputs(emu, cat, config, prior, zp_report, selection_limit,
                       None if offsets is None else dict(zip(emu.bands.names, offsets)))


def zero_point(args, cat):
    """(zp for InferenceConfig, None) or, for --zp dr3-l21, (per-star zp (N,), report)."""
    if args.zp.lower() != "dr3-l21":
        try:
            return float(args.zp), None
        except ValueError:
            return args.zp, None
    from pathlib import Path

    from ..catalog_io import read_columns
    from ..parallax_zp import lindegren2021_zero_point
    from ._common import is_green2020_h5

    if is_green2020_h5(Path(args.catalog)):
        raise ValueError("--zp dr3-l21 needs Gaia (E)DR3 columns; the Green2020 HDF5 has DR2 parallaxes (use --zp dr2)")
    cols = read_columns(args.catalog, L21_COLUMNS, **({} if cat.meta.get("rows") is None else {"rows": cat.meta["rows"]}))
    return lindegren2021_zero_point(*(cols[c] for c in L21_COLUMNS))
