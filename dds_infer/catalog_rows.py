"""Row ranges of catalogue files: run a catalogue larger than memory as shards.

A 3D dust map needs 10^8+ stars; read whole, such a catalogue needs ~1 kB of memory per star
(photometry, errors, labels, positions in float64, plus the reader's table). Each shard is a
contiguous range of the file's rows ``[start, stop)``, read on its own
(:func:`read_table_rows`), with star ids that stay global: a table without an id column numbers
its stars by file row, so shards never collide and a sharded run draws the same per-star random
numbers as the whole catalogue (:func:`dds_infer.engine.star_keys` of the file row).

* :func:`parse_rows` reads ``"START:STOP"`` (``dds-infer infer --rows``);
* :func:`shard_rows` gives shard ``k`` of ``n_shards`` (``dds-infer infer --shard K/N``, e.g. from
  a job array's task id): near-equal contiguous ranges that cover the file once;
* :func:`count_rows` counts a file's rows from its metadata where the format has it.

Parquet is read one row group (or 65,536-row batch) at a time and FITS through a memory map, so
memory is the shard's. The other formats (HDF5 tables, CSV, ECSV, VOTable) are read whole and then
sliced: convert a catalogue too large for memory to Parquet (e.g. with pyarrow) first.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from astropy.table import Table

from .catalog_checks import CatalogError

__all__ = ["parse_rows", "shard_rows", "count_rows", "read_table_rows", "check_rows", "shard_read_notes",
           "parquet_row_groups"]

PARQUET_BATCH = 65_536  # rows decoded at a time when a shard starts inside a Parquet row group
LARGE_ROW_GROUP = 2_000_000  # rows: above this a shard holds much more than its own rows in memory


def parse_rows(text: str) -> tuple[int, int | None]:
    """``"START:STOP"`` → (start, stop); ``"START:"`` → (start, None) = to the end of the file."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d*)\s*", str(text))
    if m is None:
        raise ValueError(f"--rows must be START:STOP (file rows, 0-based, STOP excluded), got {text!r}")
    start, stop = int(m.group(1)), (int(m.group(2)) if m.group(2) else None)
    if stop is not None and stop <= start:
        raise ValueError(f"--rows {text!r}: STOP must be larger than START")
    return start, stop


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` → (k, n_shards), 0 ≤ k < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if m is None or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f"--shard must be K/N with 0 <= K < N (e.g. 0/100), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_rows(k: int, n_shards: int, n_rows: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``k`` of ``n_shards``: contiguous, sizes differing by at most
    one, together covering ``range(n_rows)`` once. A shard may be empty when n_shards > n_rows."""
    if not 0 <= int(k) < int(n_shards):
        raise ValueError(f"shard {k} of {n_shards}: need 0 <= k < n_shards")
    return int(k) * int(n_rows) // int(n_shards), (int(k) + 1) * int(n_rows) // int(n_shards)


def count_rows(path, form: str) -> int:
    """Number of rows of a table file (``form``: the astropy format name). Parquet and FITS from
    their metadata; other formats by reading the table."""
    path = Path(path)
    if form == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if form == "fits":
        from astropy.io import fits

        with fits.open(path, memmap=True) as hdul:
            for hdu in hdul:
                if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                    return int(hdu.header["NAXIS2"])
        raise CatalogError(f"{str(path)!r} holds no table HDU")
    return len(Table.read(path, format=form))


def check_rows(rows, n_rows: int, name: str) -> tuple[int, int]:
    """(start, stop) within ``[0, n_rows]``; stop None = n_rows. An empty or out-of-range request
    is an error naming the file and its length (never a silently shorter shard)."""
    start, stop = int(rows[0]), (n_rows if rows[1] is None else int(rows[1]))
    if start < 0 or stop > n_rows or stop <= start:
        raise CatalogError(f"rows {start}:{stop} are not within the {n_rows} rows (0:{n_rows}) of {name}")
    return start, stop


def parquet_row_groups(path) -> np.ndarray:
    """(n_groups + 1,) file rows where a Parquet file's row groups start, and its row count
    (``path``: a file, or an open ``pyarrow.parquet.ParquetFile``)."""
    import pyarrow.parquet as pq

    md = (path if isinstance(path, pq.ParquetFile) else pq.ParquetFile(path)).metadata
    return np.concatenate([[0], np.cumsum([md.row_group(g).num_rows for g in range(md.num_row_groups)])]).astype(np.int64)


def _parquet_rows(path: Path, start: int, stop: int, read_kwargs: dict) -> Table:
    """Rows [start, stop) of a Parquet file, decoding only the row groups they fall in, as an
    astropy Table with the file's column units and metadata (read back by astropy's own reader)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    bounds = parquet_row_groups(pf)
    groups = [g for g in range(bounds.size - 1) if bounds[g] < stop and bounds[g + 1] > start]
    names = read_kwargs.get("include_names")  # decode only these columns (astropy's reader selects them too)
    schema = pf.schema_arrow if names is None else pa.schema(
        [pf.schema_arrow.field(c) for c in names], metadata=pf.schema_arrow.metadata)
    pieces, at = [], int(bounds[groups[0]])
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH, row_groups=groups, columns=names):
        lo, hi = max(start - at, 0), min(stop - at, batch.num_rows)
        if hi > lo:
            pieces.append(batch.slice(lo, hi - lo))
        at += batch.num_rows
        if at >= stop:
            break
    buf = io.BytesIO()  # astropy rebuilds units and meta from the schema metadata kept here
    pq.write_table(pa.Table.from_batches(pieces, schema=schema), buf, compression="none")
    del pieces  # (only the buffer and the table read from it stay)
    buf.seek(0)
    return Table.read(buf, format="parquet", **read_kwargs)


def read_table_rows(path, form: str, rows, read_kwargs: dict) -> tuple[Table, int, int]:
    """Rows ``rows`` = (start, stop|None) of a table file → (astropy Table, start, stop)."""
    path = Path(path)
    n_rows = count_rows(path, form)
    start, stop = check_rows(rows, n_rows, repr(str(path)))
    if form == "parquet":
        return _parquet_rows(path, start, stop, read_kwargs), start, stop
    if form == "fits":
        t = Table.read(path, format="fits", **{"memmap": True, **read_kwargs})
        return Table(t[start:stop], copy=True), start, stop  # (copied out of the memory map)
    return Table.read(path, format=form, **read_kwargs)[start:stop], start, stop


def global_ids(start: int, stop: int) -> np.ndarray:
    """Star ids of a shard of a table without an id column: its file rows."""
    return np.arange(start, stop, dtype=np.int64)


def shard_read_notes(path, form: str, n_rows: int) -> list[str]:
    """What reading a shard of this file will cost beyond its own rows, as advice (empty: nothing):
    a format read whole for every shard, or Parquet row groups so large that a shard decodes far
    more rows than it runs (a shard decodes every row group it overlaps)."""
    if form == "parquet":
        largest = int(np.diff(parquet_row_groups(path)).max(initial=0))
        if largest > LARGE_ROW_GROUP:
            return [f"row groups of up to {largest} rows: every shard decodes each row group it overlaps whole "
                    f"(~1 kB per row); rewrite with smaller ones: dds-infer to-parquet --catalog IN --out "
                    f"OUT.parquet (row groups of 262,144 rows)"]
        return []
    if form == "fits" or n_rows <= LARGE_ROW_GROUP:
        return []
    return [f"format {form!r} is read whole for every shard ({n_rows} rows): convert the catalogue to Parquet "
            "(read by row group; dds-infer to-parquet) or FITS (memory-mapped) before running it in shards"]
