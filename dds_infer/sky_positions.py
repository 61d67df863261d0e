"""The sky positions of a catalogue's stars, read from its id and position columns alone.

A dust-map file groups stars by sky pixel (:mod:`dds_infer.dustmap_io`), so ``dds-infer dustmap``
needs each star's id and Galactic (l, b), not its photometry. :func:`read_positions` reads only
those columns (Parquet by name; FITS memory-mapped; other formats read once), of a shard's rows when asked
(:mod:`dds_infer.catalog_rows`), so the catalogue may also be a positions-only table, and the
read costs ~3 columns of the catalogue instead of ~30.

Columns, as :func:`dds_infer.catalog_io.read_table` takes them: ``l``, ``b`` [deg] and ``id``
by default; with a column map, its ``id`` and ``l``/``b`` or ``ra``/``dec`` (ICRS, converted to
Galactic). A table without an id column numbers its stars by file row (the ids ``infer`` gave
them). The Green2020 test-data HDF5 file has no positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from astropy import units as u

from .catalog_checks import CatalogError
from .catalog_io import _format_for, _load, _radec_to_lb, _values
from .catalog_rows import global_ids

__all__ = ["SkyPositions", "match_rows", "read_positions"]


@dataclass
class SkyPositions:
    """Star ids (N,) and Galactic l, b [deg] (N,) of a catalogue, in file order; ``rows``: the file
    rows [start, stop) read (None: all)."""

    ids: np.ndarray
    l: np.ndarray
    b: np.ndarray
    rows: tuple | None = None


def _wanted(column_map: Mapping | None, names) -> dict:
    """{"id": column|None, "l"/"b" or "ra"/"dec": column} of the column map (default: l, b, id)."""
    names = set(names)
    if column_map is None:
        if not {"l", "b"} <= names:
            raise CatalogError("the catalogue has no sky positions: it needs l, b columns (or ra, dec mapped "
                               f"through --columns); it has {sorted(names)[:30]}")
        return {"id": "id" if "id" in names else None, "l": "l", "b": "b"}
    want = {"id": column_map.get("id")}
    if column_map.get("l") is not None:
        want.update(l=column_map["l"], b=column_map.get("b"))
    elif column_map.get("ra") is not None:
        want.update(ra=column_map["ra"], dec=column_map.get("dec"))
    else:
        raise CatalogError("the column map names no sky positions: it needs 'l' and 'b', or 'ra' and 'dec'")
    missing = [f"{k} -> {c!r}" for k, c in want.items() if (c is not None and c not in names) or
               (c is None and k != "id")]
    if missing:
        raise CatalogError(f"column map entries not in the table: {', '.join(missing)}")
    return want


def read_positions(path, column_map: Mapping | None = None, *, rows=None, format: str | None = None) -> SkyPositions:
    """Ids and Galactic (l, b) [deg] of the stars of a table file (see the module docstring);
    ``rows=(start, stop)``: only those file rows. Raises :class:`CatalogError` naming the
    missing columns, a non-numeric or unit-less-but-wrong column, or duplicate ids."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"catalogue {path} not found")
    form = _format_for(path, format)
    if form == "parquet":  # only the wanted columns are decoded
        import pyarrow.parquet as pq

        want = _wanted(column_map, pq.ParquetFile(path).schema_arrow.names)
        table, source, span = _load(path, form, {"include_names": [c for c in want.values() if c is not None]}, rows)
    else:  # read once (FITS memory-mapped: only the columns used below are touched)
        table, source, span = _load(path, form, {"memmap": True} if form == "fits" else {}, rows)
        want = _wanted(column_map, table.colnames)
    problems: list[str] = []
    if "l" in want:
        l, b = (_values(table, want[k], k, problems, u.deg) for k in ("l", "b"))
    else:
        lb = _radec_to_lb(*(_values(table, want[k], k, problems, u.deg) for k in ("ra", "dec")))
        l, b = lb["l"], lb["b"]
    if problems:
        raise CatalogError(f"{source}: " + "; ".join(problems), problems)
    if want["id"] is not None:
        ids = np.asarray(table[want["id"]])
        ids = ids.astype(str) if ids.dtype.kind == "S" else ids
    else:
        ids = global_ids(*(span or (0, len(table))))
    index = pd.Index(ids)  # (hashed: no copy of 10^8 ids as strings)
    if not index.is_unique:
        dup = index[index.duplicated()].unique()
        raise CatalogError(f"{source}: {dup.size} id(s) given to more than one row: {[str(d) for d in dup[:10]]}")
    return SkyPositions(ids=ids, l=l, b=b, rows=span)


def match_rows(ids, star_id) -> np.ndarray:
    """Index into ``ids`` of each of ``star_id`` (-1 where absent): integer ids compared as integers,
    anything else as strings (a posterior's ids may come back from a file as another type)."""
    ids, star_id = np.asarray(ids), np.asarray(star_id)
    if ids.dtype.kind in "iu" and star_id.dtype.kind in "iu":
        return pd.Index(ids).get_indexer(star_id)
    return pd.Index(ids.astype(str)).get_indexer(star_id.astype(str))
