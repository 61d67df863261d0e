"""A Parquet catalogue rewritten in sky order (nested HEALPix), in memory bounded by a bucket.

Everything downstream of a catalogue in sky order is cheaper: the runner's chunks (and the
shards) cover small patches of sky, so a dust-map file touches few pixels per chunk (20,480
stars: 36 → 30 s at nside 32), and one file per sky region (``dustmap --split-nside``) reads each
chunk about once instead of once per region. Gaia's ``source_id`` order is such an order; a
cross-match that lost it can be put back with :func:`sky_sort` (``dds-infer sort-sky``):

1. the id and position columns alone are read (:func:`dds_infer.sky_positions.read_positions`,
   ~24 bytes per row), the nested HEALPix pixel of each row computed and the rows ordered by
   (pixel, file row): deterministic;
2. one pass over the file, a row group at a time, appends each row to the bucket file of its
   coarse pixel (a nested pixel at a coarser nside, at most ``bucket_rows`` rows per bucket on
   average);
3. each bucket is read, put in order and appended to the output, in pixel order.

A table without an id column gets one, ``id`` = the row's file row in the input, so stars keep
the identity they had (without an id column a star's id is its file row, which sorting changes).
The output keeps the input's columns, units and metadata.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from .atomic import atomic_path

__all__ = ["sky_sort", "DEFAULT_BUCKET_ROWS"]

DEFAULT_BUCKET_ROWS = 1_000_000
_ROW = "__dds_file_row"


def _bucket_nside(n_rows: int, nside: int, bucket_rows: int) -> int:
    """The coarsest nside (≤ nside) whose 12·nside² buckets hold ≤ bucket_rows rows on average."""
    b = 1
    while b < nside and n_rows > bucket_rows * 12 * b * b:
        b *= 2
    return b


def _with_id_meta(schema):
    """The input schema plus an int64 ``id`` column, the astropy YAML header told about it (astropy's
    Parquet reader refuses a column its header does not list)."""
    import pyarrow as pa

    meta = dict(schema.metadata or {})
    yaml = meta.get(b"table_meta_yaml")
    if yaml is not None:  # astropy's header: a YAML mapping whose "datatype" lists the columns
        lines = yaml.decode().splitlines()
        cols = [i for i, line in enumerate(lines) if line.startswith("- {name:")]  # the column entries
        if not lines or lines[0] != "datatype:" or cols != list(range(1, len(cols) + 1)):
            raise ValueError("the table's astropy metadata has an unexpected layout: give it an id column")
        lines.insert(cols[-1] + 1, "- {name: id, datatype: int64}")
        meta[b"table_meta_yaml"] = "\n".join(lines).encode()
    meta.pop(b"pandas", None)  # (pandas' own column list would not name it either)
    return pa.schema(list(schema) + [pa.field("id", pa.int64())], metadata=meta)


def sky_sort(src, dst, *, nside: int = 32, column_map=None, bucket_rows: int = DEFAULT_BUCKET_ROWS,
             row_group_size: int = 262_144, on_rows=None) -> dict:
    """Write the Parquet catalogue ``src`` to ``dst`` (atomic) in nested HEALPix order at ``nside``
    (see the module docstring). column_map: as for the readers (the id and position columns).
    on_rows(n): called as rows are bucketed and as they are written (2 × the rows in all).
    Returns n_rows, nside, bucket_nside, n_buckets, added_id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .catalog_io import _format_for
    from .dustmap_io import _check_nside, healpix_index, region_of
    from .sky_positions import _wanted, read_positions

    src, dst = Path(src), Path(dst)
    if _format_for(src, None) != "parquet" or _format_for(dst, None) != "parquet":
        raise ValueError(f"sort-sky reads and writes Parquet (got {src.name} -> {dst.name}); convert other "
                         "formats first: dds-infer to-parquet (dds_infer.catalog_convert.to_parquet)")
    nside = _check_nside(nside)
    pf = pq.ParquetFile(src, pre_buffer=False)  # (pre-buffering kept ~2.7 GB of a 10^7-row file allocated)
    n = pf.metadata.num_rows
    added_id = _wanted(column_map, pf.schema_arrow.names)["id"] is None
    if added_id and "id" in pf.schema_arrow.names:
        raise ValueError("the table has an 'id' column that the column map does not use as the id: rename it")
    pos = read_positions(src, column_map)
    pix = healpix_index(pos.l, pos.b, nside)
    bnside = _bucket_nside(n, nside, int(bucket_rows))
    bucket = region_of(pix, nside, bnside)
    schema = _with_id_meta(pf.schema_arrow) if added_id else pf.schema_arrow
    with tempfile.TemporaryDirectory(prefix="dds_sort_", dir=dst.parent) as tmp, atomic_path(dst) as out:
        writers, at = {}, 0
        try:  # 1. each row to its bucket, with its file row
            for batch in pf.iter_batches(batch_size=65_536):
                rows = np.arange(at, at + batch.num_rows)
                at += batch.num_rows
                t = pa.Table.from_batches([batch]).append_column(_ROW, pa.array(rows))
                for c in np.unique(bucket[rows]):
                    w = writers.get(int(c))
                    if w is None:
                        w = writers[int(c)] = pq.ParquetWriter(Path(tmp) / f"b{int(c)}.parquet", t.schema)
                    w.write_table(t.filter(pa.array(bucket[rows] == c)))
                if on_rows is not None:
                    on_rows(batch.num_rows)
        finally:
            for w in writers.values():
                w.close()
        with pq.ParquetWriter(out, schema) as w:  # 2. each bucket in order, its rows by (pixel, file row)
            for c in sorted(writers):
                t = pq.read_table(Path(tmp) / f"b{c}.parquet")
                rows = t.column(_ROW).to_numpy()
                order = np.lexsort((rows, pix[rows]))
                t = t.take(pa.array(order)).drop_columns([_ROW])
                if added_id:
                    t = t.append_column("id", pa.array(rows[order], type=pa.int64()))
                w.write_table(t.cast(schema), row_group_size=int(row_group_size))
                if on_rows is not None:
                    on_rows(t.num_rows)
    return {"n_rows": int(n), "nside": nside, "bucket_nside": bnside, "n_buckets": len(writers), "added_id": added_id,
            "out": str(dst), "column_map": json.dumps(column_map) if column_map else None}
