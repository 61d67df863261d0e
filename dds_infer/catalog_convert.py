"""Any catalogue table rewritten as Parquet, block by block: the format shards and ``sort-sky`` read.

A shard (``infer --shard K/N``) reads only its rows from Parquet (by row group) and FITS (memory
mapped); other formats are read whole, and ``sort-sky`` takes Parquet only. Archives deliver FITS,
VOTable, CSV or ECSV. :func:`to_parquet` (``dds-infer to-parquet``) writes a table as Parquet in
row groups of a chosen size, keeping its columns, units, masks (as nulls) and metadata as
astropy's Parquet writer stores them:

* FITS is read through a memory map ``block_rows`` rows at a time (memory bounded by a block);
* Parquet is re-blocked row group by row group (e.g. row groups of 10⁷ rows, which every shard
  would decode whole, into ones of 2.6·10⁵);
* other formats are read whole by astropy (memory grows with the table), then written in blocks;
* the Green2020 test-data HDF5 layout is written in the column names the readers expect.

The output is written to a temporary file and renamed when complete (atomic).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .atomic import atomic_path

__all__ = ["to_parquet", "DEFAULT_ROW_GROUP_ROWS", "DEFAULT_BLOCK_ROWS"]

DEFAULT_ROW_GROUP_ROWS = 262_144
DEFAULT_BLOCK_ROWS = 1_000_000


def _astropy_source(path: Path, form: str):
    """(astropy Table, read whole?) of a non-Parquet table file: FITS memory-mapped, else whole."""
    from astropy.table import Table

    from .catalog_io import is_green2020_h5, read_green2020_h5
    from .catalog_write import catalog_to_table

    if is_green2020_h5(path):
        return catalog_to_table(read_green2020_h5(path, require_labels=False, require_reddening_prior=False)), True
    if form == "fits":
        return Table.read(path, format="fits", memmap=True), False
    return Table.read(path, format=form), True


def _arrow_block(table, tmpdir: Path):
    """An astropy Table as an Arrow table with astropy's Parquet schema metadata (units, meta)."""
    import pyarrow.parquet as pq

    p = tmpdir / "block.parquet"
    table.write(p, format="parquet", overwrite=True)
    return pq.read_table(p)


def to_parquet(src, dst, *, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS, block_rows: int = DEFAULT_BLOCK_ROWS,
               on_rows=None) -> dict:
    """Write the table file ``src`` to the Parquet file ``dst`` (atomic) in row groups of
    ``row_group_rows`` rows (module docstring). ``block_rows``: rows read at a time from FITS
    (rounded up to whole row groups). on_rows(n): called as rows are written. Returns n_rows,
    n_row_groups, columns, format (of ``src``) and read_whole (memory grew with the table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .catalog_io import _format_for

    src, dst = Path(src), Path(dst)
    if int(row_group_rows) < 1 or int(block_rows) < 1:
        raise ValueError(f"row_group_rows and block_rows must be >= 1, got {row_group_rows}, {block_rows}")
    if not src.is_file():
        raise FileNotFoundError(f"catalogue {src} not found")
    if _format_for(dst, None) != "parquet":
        raise ValueError(f"the output {str(dst)!r} must be a .parquet file")
    if src.resolve() == dst.resolve():
        raise ValueError("the output must be another file than the input")
    form = _format_for(src, None)
    rg = int(row_group_rows)
    n_rows, writer, names, read_whole = 0, None, None, False
    with atomic_path(dst, keep_extension=True) as tmp, tempfile.TemporaryDirectory(dir=dst.parent) as work:
        try:
            if form == "parquet":
                pf = pq.ParquetFile(src)  # (units and metadata are in its schema's metadata)
                blocks = (pa.Table.from_batches([b], schema=pf.schema_arrow) for b in pf.iter_batches(batch_size=rg))
            else:
                table, read_whole = _astropy_source(src, form)
                step = max(rg, (int(block_rows) // rg) * rg)
                blocks = (_arrow_block(table[a:a + step], Path(work)) for a in range(0, len(table), step))
            for block in blocks:
                if writer is None:
                    writer = pq.ParquetWriter(tmp, block.schema)
                    names = block.schema.names
                writer.write_table(block.cast(writer.schema), row_group_size=rg)
                n_rows += block.num_rows
                if on_rows is not None:
                    on_rows(block.num_rows)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"{src} holds no rows")
    groups = pq.ParquetFile(dst).metadata.num_row_groups
    return {"n_rows": int(n_rows), "n_row_groups": int(groups), "columns": list(names), "format": form,
            "read_whole": bool(read_whole), "row_group_rows": rg}
