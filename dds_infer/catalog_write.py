"""Writing :class:`~dds_infer.catalog.StarCatalog` tables (read back by :mod:`dds_infer.catalog_io`).

* :func:`catalog_to_table`: one column per quantity (``mag_<band>``, ``mag_err_<band>``, ...),
  the names :func:`dds_infer.catalog_io.default_column_map` reads;
* :func:`write_table` / :func:`write_astropy_table`: any format astropy writes, chosen by the
  file's extension (Parquet, FITS, HDF5, CSV, ECSV, VOTable), written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import Table

from .atomic import atomic_path
from .catalog import LABEL_NAMES, StarCatalog

__all__ = ["catalog_to_table", "write_table", "write_astropy_table"]

_COV_PAIRS = tuple((i, j) for i in range(3) for j in range(i, 3))


def catalog_to_table(catalog: StarCatalog) -> Table:
    """One column per quantity: ``mag_<band>``, ``mag_err_<band>``, ``parallax`` [mas],
    ``teff`` [K], ``logg``, ``feh``, ``*_err``, ``cov_<a>_<b>``, ``E_prior``,
    ``E_prior_err``, ``l``/``b`` [deg], ``id`` (optional blocks only when present)."""
    t = Table(meta={"BANDSET": catalog.bands.name})
    if catalog.mag_err_floor is not None:  # the floor already in mag_err (see inference)
        t.meta["MAGFLOOR"] = catalog.mag_err_floor.tolist()
    if catalog.ids is not None:
        t["id"] = catalog.ids
    for j, b in enumerate(catalog.bands.names):
        t[f"mag_{b}"] = catalog.mag[:, j]
        t[f"mag_err_{b}"] = catalog.mag_err[:, j]
    t["parallax"] = catalog.parallax * u.mas
    t["parallax_err"] = catalog.parallax_err * u.mas
    if catalog.theta is not None:
        for j, k in enumerate(LABEL_NAMES):
            t[k] = catalog.theta[:, j] * (u.K if k == "teff" else 1)
        for j, k in enumerate(LABEL_NAMES):
            t[f"{k}_err"] = np.sqrt(catalog.theta_cov[:, j, j]) * (u.K if k == "teff" else 1)
        c = catalog.theta_cov
        asym = not np.array_equal(c, np.swapaxes(c, 1, 2), equal_nan=True)
        for i, j in _COV_PAIRS:  # lower triangle too if the input is not exactly symmetric
            t[f"cov_{LABEL_NAMES[i]}_{LABEL_NAMES[j]}"] = c[:, i, j]
        for i, j in _COV_PAIRS if asym else ():
            if i != j:
                t[f"cov_{LABEL_NAMES[j]}_{LABEL_NAMES[i]}"] = c[:, j, i]
    if catalog.E_prior is not None:
        t["E_prior"] = catalog.E_prior
        t["E_prior_err"] = catalog.E_prior_err
    if catalog.l is not None:
        t["l"] = catalog.l * u.deg
        t["b"] = catalog.b * u.deg
    return t


def write_table(catalog: StarCatalog, path, *, format: str | None = None,
                overwrite: bool = True) -> Path:
    """Write :func:`catalog_to_table` to ``path`` (format from the extension:
    Parquet, FITS, HDF5, CSV, ECSV, VOTable); returns the path."""
    return write_astropy_table(catalog_to_table(catalog), path, format=format, overwrite=overwrite)


def write_astropy_table(table: Table, path, *, format: str | None = None, overwrite: bool = True) -> Path:
    """Write any astropy ``table`` as :func:`write_table` does (format from the extension;
    HDF5 under the path ``catalog`` with its metadata), atomically: to a temporary file beside
    ``path``, then renamed, so an interrupted write never leaves a partial catalogue. Returns
    the path."""
    from .catalog_io import _format_for

    path = Path(path)
    fmt = _format_for(path, format)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    kwargs: dict[str, Any] = {"overwrite": True}
    if fmt == "hdf5":
        kwargs.update(path="catalog", serialize_meta=True)
    with atomic_path(path, keep_extension=True) as tmp:  # same extension: same format, compression
        table.write(tmp, format=fmt, **kwargs)
    return path
