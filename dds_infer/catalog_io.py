"""Reading and writing :class:`~dds_infer.catalog.StarCatalog` tables.

* :func:`read_green2020_h5` reads the Green et al. (2021) test-data layout.
* :func:`read_table` reads any table astropy can (FITS, HDF5, Parquet, CSV,
  ECSV, VOTable) or an in-memory astropy Table / pandas DataFrame, through a
  ``column_map`` (see :func:`read_table`).
* :func:`~dds_infer.catalog_write.write_table` / :func:`~dds_infer.catalog_write.catalog_to_table`
  (:mod:`dds_infer.catalog_write`, re-exported here) write one column per band
  (``mag_<band>``, ``mag_err_<band>``, ...) readable back with :func:`default_column_map`.

All readers call :func:`~dds_infer.catalog.validate`; problems in the column
map (unknown bands, absent columns, unpaired keys; :mod:`dds_infer.column_map`) are all
reported at once.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from .catalog import LABEL_NAMES, CatalogError, StarCatalog
from .catalog_checks import _rows
from .catalog_rows import check_rows, global_ids, read_table_rows
from .catalog_write import catalog_to_table, write_astropy_table, write_table  # noqa: F401
from .column_map import COLUMN_MAP_KEYS, _check_map, _check_photometry_names, _cov_pair, default_column_map
from .passbands import GREEN2020, BandSet

__all__ = [
    "read_green2020_h5",
    "read_table",
    "read_columns",
    "write_table",
    "catalog_to_table",
    "table_to_catalog",
    "default_column_map",
    "COLUMN_MAP_KEYS",
]

_FORMATS = {
    ".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits", ".fit.gz": "fits",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "ascii.csv", ".ecsv": "ascii.ecsv",
    ".vot": "votable", ".votable": "votable", ".xml": "votable",
    ".txt": "ascii", ".dat": "ascii",
}
_PARALLAX_UNITS = {"mas": u.mas, "arcsec": u.arcsec, "as": u.arcsec, "uas": u.uas, "µas": u.uas}


def _format_for(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        return fmt
    name = path.name.lower()
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return _FORMATS[ext]
    raise CatalogError(f"cannot tell the table format of {str(path)!r} from its extension; "
                       f"pass format= (one of {sorted(set(_FORMATS.values()))})")


GREEN2020_ERR_FLOOR = 0.02  # mag, included in the Green et al. (2021) release's mag_err


def is_green2020_h5(path) -> bool:
    """True for the Green2020 test-data HDF5 layout (structured ``data`` with ``atm_param``)."""
    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5", ".hdf"):
        return False
    with h5py.File(path, "r") as f:
        d = f.get("data")
        return isinstance(d, h5py.Dataset) and d.dtype.names is not None and "atm_param" in d.dtype.names


def read_green2020_h5(path, *, require_labels: bool = True,
                      require_reddening_prior: bool = True, rows=None) -> StarCatalog:
    """Read the Green et al. (2021) test-data HDF5 (dataset ``data``).

    theta/theta_cov = atm_param/atm_param_cov, E_prior/E_prior_err = r/r_err,
    ids = row index. ``meta`` holds ``source``, ``atm_source``, ``r_source``
    (str arrays) and ``r_fit``/``r_var`` when present, and ``mag_err_floor`` = 0.02 mag:
    the release's errors already include that floor in quadrature (every band's smallest
    error is ≥ 0.0200; checked here), so inference does not add it again
    (:func:`dds_infer.inference.photometric_variance`). ``rows=(start, stop)``: only those rows
    (ids stay the file rows), as :func:`read_table`.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        start, stop = (0, len(f["data"])) if rows is None else check_rows(rows, len(f["data"]), repr(str(path)))
        d = f["data"][start:stop]
        meta: dict[str, Any] = {"source": str(path), "format": "green2020_h5"}
        if rows is not None:
            meta.update(rows=[start, stop], first_row=start)
        for k in ("atm_source", "r_source"):
            if k in d.dtype.names:
                meta[k] = d[k].astype(str)
        for k in ("r_fit", "r_var"):
            if k in f:
                meta[k] = np.asarray(f[k][start:stop], dtype=np.float64)
        meta["per_star_keys"] = [k for k in ("atm_source", "r_source", "r_fit", "r_var") if k in meta]
    err = np.asarray(d["mag_err"], dtype=np.float64)
    if np.all(np.where(np.isfinite(err), err, 1.0) >= GREEN2020_ERR_FLOOR - 5e-5):
        meta["mag_err_floor"] = GREEN2020_ERR_FLOOR
    return StarCatalog.from_arrays(
        d["mag"], d["mag_err"], d["parallax"], d["parallax_err"], GREEN2020,
        theta=d["atm_param"], theta_cov=d["atm_param_cov"], E_prior=d["r"],
        E_prior_err=d["r_err"], ids=np.arange(start, stop), meta=meta,
        require_labels=require_labels, require_reddening_prior=require_reddening_prior)


def _load(source, fmt, read_kwargs, rows=None) -> tuple[Table, str, tuple | None]:
    """The table, a name for it in messages, and the file rows (start, stop) it holds when
    ``rows`` = (start, stop|None) asked for a shard (:mod:`dds_infer.catalog_rows`), else None;
    a table with no rows is refused."""
    with warnings.catch_warnings():  # (a string column written by pandas has no declared length: harmless)
        warnings.filterwarnings("ignore", message=r"No table::len::")
        table, name, span = _read_any(source, fmt, read_kwargs, rows)
    if len(table) == 0:
        raise CatalogError(f"{name} has no rows (columns: {', '.join(table.colnames[:30])}"
                           f"{', ...' if len(table.colnames) > 30 else ''})")
    return table, name, span


def _read_any(source, fmt, read_kwargs, rows=None) -> tuple[Table, str, tuple | None]:
    if isinstance(source, Table):
        table, name = source, "<astropy Table>"
    elif (pd := sys.modules.get("pandas")) is not None and isinstance(source, pd.DataFrame):
        table, name = Table.from_pandas(source), "<pandas DataFrame>"  # (a DataFrame implies pandas is imported)
    else:
        table = None
    if table is not None:
        if rows is None:
            return table, name, None
        start, stop = check_rows(rows, len(table), name)
        return table[start:stop], name, (start, stop)
    path = Path(source)
    if not path.exists():
        raise CatalogError(f"table file not found: {str(path)!r}")
    form = _format_for(path, fmt)
    try:
        if rows is not None:  # only these rows of the file
            table, start, stop = read_table_rows(path, form, rows, read_kwargs)
            return table, f"{str(path)!r} rows {start}:{stop}", (start, stop)
        if form == "parquet":  # (astropy's reader fails on an empty file with a string column)
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(path)
            except Exception:  # not readable as Parquet: Table.read below says why
                pf = None
            if pf is not None and pf.metadata.num_rows == 0:
                return Table(names=pf.schema_arrow.names), repr(str(path)), None
        return Table.read(path, format=form, **read_kwargs), repr(str(path)), None
    except CatalogError:  # (rows outside the file)
        raise
    except Exception as exc:  # a reader's own error, with the file and the format it was read as
        raise CatalogError(f"{str(path)!r} could not be read as a {form} table: {type(exc).__name__}: {exc}"
                           ) from exc


def _values(table: Table, name: str, key: str, problems: list, unit=None) -> np.ndarray:
    """Float64 values of a column, masked -> NaN, converted to ``unit`` if it has one.

    On a problem (appended to ``problems``) returns all-NaN so reading can go on
    collecting problems; the caller raises before building the catalogue.
    """
    col = table[name]
    nan = np.full(len(table), np.nan)
    if col.ndim != 1:
        problems.append(f"[{key}] column {name!r} has shape {col.shape}, expected one value per row")
        return nan
    try:
        vals = np.ma.asarray(col).astype(np.float64).filled(np.nan)
    except (TypeError, ValueError):
        problems.append(f"[{key}] column {name!r} is not numeric (dtype {col.dtype})")
        return nan
    if unit is not None and getattr(col, "unit", None) is not None:
        try:
            vals = vals * col.unit.to(unit)
        except u.UnitConversionError:
            problems.append(f"[{key}] column {name!r} has unit {col.unit}, not convertible to {unit}")
            return nan
    return vals


def _parallax_unit(parallax_unit) -> u.UnitBase:
    if isinstance(parallax_unit, str) and parallax_unit.lower() in _PARALLAX_UNITS:
        return _PARALLAX_UNITS[parallax_unit.lower()]
    try:
        unit = u.Unit(parallax_unit)
        unit.to(u.mas)
        return unit
    except (ValueError, TypeError, u.UnitConversionError):
        raise CatalogError(f"parallax_unit={parallax_unit!r} is not an angle unit; use 'mas', 'arcsec', 'uas' or another astropy angle unit") from None


def read_table(path_or_table, column_map: Mapping | None = None, bands: BandSet = GREEN2020, *,
               format: str | None = None, require_labels: bool = False,
               require_reddening_prior: bool = False, parallax_unit="mas", rows=None,
               **read_kwargs) -> StarCatalog:
    """Read a table into a validated :class:`StarCatalog`.

    ``column_map`` keys (values are column names):
      ``mag``/``mag_err``: {band name or alias: column}; bands of ``bands``
      not listed are missing (NaN). ``parallax``, ``parallax_err`` (key
      required; ``None`` = no parallaxes). Optional: ``teff``, ``logg``,
      ``feh`` with ``teff_err``... and/or ``cov`` {"teff_logg": column, ...}
      (entries override the diagonal from *_err; absent off-diagonals are 0;
      'a_b' fills both [a,b] and [b,a] unless 'b_a' is also given);
      ``E_prior``, ``E_prior_err``; ``l``, ``b`` (deg) or ``ra``, ``dec``
      (ICRS deg, converted to Galactic); ``id``.
    ``column_map=None`` uses :func:`default_column_map` for the table's columns.
    Masked values become NaN. Parallaxes: columns with astropy units are
    converted to mas; unitless ones are taken in ``parallax_unit`` ("mas",
    "arcsec"/"as" or any astropy angle unit). ``read_kwargs`` go to
    ``Table.read`` (e.g. ``hdu=``, ``path=``).
    ``rows=(start, stop)`` reads only those file rows (stop None: to the end), a shard of a
    catalogue too large for memory (:mod:`dds_infer.catalog_rows`): without an id column the stars'
    ids are their file rows, ``meta["rows"]``/``meta["first_row"]`` record the range, and problems
    name file rows.
    """
    table, source, span = _load(path_or_table, format, read_kwargs, rows)
    if column_map is None:
        column_map = default_column_map(bands, table.colnames)
        _check_photometry_names(table.colnames, bands)
        absent = [k for k in LABEL_NAMES if k not in table.colnames]
        if require_labels and absent:
            more = ", ..." if len(table.colnames) > 40 else ""
            raise CatalogError(f"labels required: no column {' or '.join(map(repr, absent))} in the table "
                               f"(columns: {', '.join(table.colnames[:40])}{more})",
                               [f"[{k}] no column {k!r}" for k in absent])
    problems, mags, errs = _check_map(column_map, table.colnames, bands, require_labels)
    if problems:
        raise CatalogError(f"column map problems ({len(problems)}):\n  - " + "\n  - ".join(problems),
                           problems)
    n, nb = len(table), len(bands)
    col = lambda key, unit=None: _values(table, column_map[key], key, problems, unit)  # noqa: E731
    mag = np.full((n, nb), np.nan)
    mag_err = np.full((n, nb), np.nan)
    for i, c in mags.items():
        mag[:, i] = _values(table, c, f"mag {bands.names[i]}", problems)
    for i, c in errs.items():
        mag_err[:, i] = _values(table, c, f"mag_err {bands.names[i]}", problems)
    ids = None  # (also for the row messages below)
    if column_map.get("id") is not None:
        ids = np.asarray(table[column_map["id"]])
        ids = ids.astype(str) if ids.dtype.kind == "S" else ids
    first = 0 if span is None else span[0]
    plx_unit = _parallax_unit(parallax_unit)
    plx = plx_err = np.full(n, np.nan)
    if column_map.get("parallax") is not None:
        plx, plx_err = (_plx(table, column_map[k], k, plx_unit, problems) for k in ("parallax", "parallax_err"))
    kw: dict[str, Any] = {}
    if column_map.get("teff") is not None:
        theta = np.stack([col(k, u.K if k == "teff" else None) for k in LABEL_NAMES], axis=1)
        cov = np.zeros((n, 3, 3))
        for j, k in enumerate(LABEL_NAMES):
            if column_map.get(f"{k}_err") is not None:
                err = col(f"{k}_err", u.K if k == "teff" else None)
                neg = err < 0  # (squared below: the sign would be lost)
                if neg.any():
                    problems.append(f"[{k}_err] negative label error: {_rows(neg, ids, first)}")
                cov[:, j, j] = err ** 2
        cov_map = column_map.get("cov") or {}
        given = {_cov_pair(pk) for pk in cov_map}
        for pk, c in cov_map.items():  # 'a_b' fills [a,b] and, unless 'b_a' is given, [b,a]
            i, j = _cov_pair(pk)
            v = _values(table, c, f"cov {pk}", problems)
            cov[:, i, j] = v
            if (j, i) not in given:
                cov[:, j, i] = v
        kw.update(theta=theta, theta_cov=cov)
    if column_map.get("E_prior") is not None:
        kw.update(E_prior=col("E_prior"), E_prior_err=col("E_prior_err"))
    if column_map.get("l") is not None:
        kw.update(l=col("l", u.deg), b=col("b", u.deg))
    elif column_map.get("ra") is not None:
        kw.update(_radec_to_lb(col("ra", u.deg), col("dec", u.deg)))
    if ids is None and span is not None:
        ids = global_ids(*span)  # (unique across the file's shards)
    if ids is not None:
        kw["ids"] = ids
    if problems:
        raise CatalogError(f"column problems ({len(problems)}):\n  - " + "\n  - ".join(problems), problems)
    meta = {"source": source, "format": format, "column_map": _plain(column_map),
            "parallax_unit": str(plx_unit)}
    if span is not None:
        meta.update(rows=[int(span[0]), int(span[1])], first_row=int(span[0]))
    if table.meta.get("MAGFLOOR") is not None and len(table.meta["MAGFLOOR"]) == len(bands):
        meta["mag_err_floor"] = np.asarray(table.meta["MAGFLOOR"], dtype=np.float64)
    return StarCatalog.from_arrays(mag, mag_err, plx, plx_err, bands, meta=meta,
                                   require_labels=require_labels,
                                   require_reddening_prior=require_reddening_prior, **kw)


def read_ids(path_or_table, column_map: Mapping | None = None, bands: BandSet = GREEN2020, *,
             format: str | None = None, rows=None, **read_kwargs) -> np.ndarray | None:
    """The id column of a table as :func:`read_table` takes it (``rows``: only those file rows),
    unvalidated; None when the table has none (its stars' ids are then their rows)."""
    table, _, _ = _load(path_or_table, format, read_kwargs, rows)
    col = (default_column_map(bands, table.colnames) if column_map is None else column_map).get("id")
    return None if col is None or col not in table.colnames else np.asarray(table[col])


def read_columns(path_or_table, names, *, format: str | None = None, rows=None,
                 **read_kwargs) -> dict[str, np.ndarray]:
    """Extra float columns of a table by name (e.g. the Gaia inputs of
    :func:`dds_infer.parallax_zp.lindegren2021_zero_point`), masked -> NaN, row order kept;
    ``rows=(start, stop)``: only those file rows, as :func:`read_table`.
    Raises :class:`CatalogError` naming every missing or non-numeric column."""
    table, source, _ = _load(path_or_table, format, read_kwargs, rows)
    missing = [c for c in names if c not in table.colnames]
    if missing:
        raise CatalogError(f"{source}: missing column(s) {missing} (has: {', '.join(table.colnames[:30])}"
                           f"{', ...' if len(table.colnames) > 30 else ''})", [f"missing column {c!r}" for c in missing])
    problems: list[str] = []
    out = {c: _values(table, c, c, problems) for c in names}
    if problems:
        raise CatalogError(f"column problems ({len(problems)}):\n  - " + "\n  - ".join(problems), problems)
    return out


def _plx(table, name, key, unit, problems):
    if getattr(table[name], "unit", None) is not None:
        return _values(table, name, key, problems, u.mas)
    return _values(table, name, key, problems) * unit.to(u.mas)


def _radec_to_lb(ra, dec) -> dict:
    l, b = np.full(ra.shape, np.nan), np.full(ra.shape, np.nan)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if ok.any():
        g = SkyCoord(ra=ra[ok] * u.deg, dec=dec[ok] * u.deg, frame="icrs").galactic
        l[ok], b[ok] = g.l.deg, g.b.deg
    return {"l": l, "b": b}


def _plain(cmap: Mapping) -> dict:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in cmap.items()}


def table_to_catalog(table, bands: BandSet = GREEN2020, **kwargs) -> StarCatalog:
    """:func:`read_table` on an in-memory table with the default column map."""
    return read_table(table, None, bands, **kwargs)
