"""Per-star HDF5 rows written as compressed chunks, compressed on several threads.

The dust-map file (:mod:`dds_infer.dustmap_io`) stores each star's image and draws as one gzip
chunk. Left to HDF5, every chunk is compressed on the writing thread when the chunk cache
flushes it, one at a time. :class:`RowChunkWriter` compresses a block of rows with ``zlib`` on a
thread pool (zlib releases the GIL, so the cores work together) and hands the compressed chunks
to HDF5 as they are (``write_direct_chunk``). The bytes are what HDF5's deflate filter would have
written at the dataset's gzip level, so the file reads back through the standard filter pipeline
with identical arrays, in any HDF5 reader.

Datasets that are not gzip-compressed, or whose chunk is not exactly one row, are written the
ordinary way. :class:`DatasetMaker` creates many datasets of a few kinds (one of each per
dust-map pixel) without h5py's per-call cost of building their type and creation properties.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["RowChunkWriter", "DatasetMaker"]


def _low(dset):
    """The low-level DatasetID of an h5py Dataset (a DatasetID as it is)."""
    import h5py

    return dset.id if isinstance(dset, h5py.Dataset) else dset


def _threads(threads: int | None) -> int:
    """``threads``, or the cores this process may run on (a cluster job's share, not the node's)."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, int(threads))


class RowChunkWriter:
    """Rows of datasets in an open HDF5 file, written with little per-call overhead.

    :meth:`put` writes rows of a gzip dataset chunked one row per chunk, compressed on a thread
    pool; :meth:`write` writes uncompressed rows. Both trust the caller about the dataset
    (reading its layout or dtype back from HDF5 costs more than a small write). Rows for
    :meth:`put` are queued and compressed together, many at a time (a dust-map pixel may hold one
    star: one chunk per task would cost more in thread hand-offs than it saves), once
    ``batch_bytes`` of them wait, or at :meth:`flush`. threads: compression threads (default: one
    per core the process may use; 1 compresses on the calling thread). Use as a context manager
    *inside* the ``h5py.File`` context: leaving it writes what waits (after an error, drops it)."""

    def __init__(self, threads: int | None = None, batch_bytes: int = 32 << 20):
        n = _threads(threads)
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="dds-deflate") if n > 1 else None
        self._batch_bytes = int(batch_bytes)
        self._queue = []  # (dset, chunk offset, level, raw bytes)
        self._queued = 0
        self._mtypes = {}  # numpy dtype -> HDF5 memory type (write)

    def put(self, dset, first: int, rows: np.ndarray, level: int) -> None:
        """``dset[first:first + n] = rows`` for a dataset created with ``compression="gzip"``,
        ``compression_opts=level`` and ``chunks=(1, *row shape)``; ``rows`` in its dtype. ``dset``:
        an h5py Dataset or its low-level DatasetID (``h5py.h5d.open``: a third of the cost of
        opening a dataset by name through h5py)."""
        dset = _low(dset)
        rows = np.ascontiguousarray(rows)
        zero = (0,) * (rows.ndim - 1)
        self._queue += [(dset, (int(first) + i, *zero), int(level), r.tobytes()) for i, r in enumerate(rows)]
        self._queued += rows.nbytes
        if self._queued >= self._batch_bytes:
            self.flush()

    def write(self, dset, first: int, rows: np.ndarray) -> None:
        """``dset[first:first + n] = rows`` (uncompressed rows, in the dataset's dtype) through h5py's low-level
        API with a memory type made once per dtype: h5py's ``__setitem__`` translates a compound
        dtype on every call (0.75 ms for the ~45 fields of the dust-map diagnostics table, against
        0.10 ms here; a dust-map file at nside 32 writes one per pixel and chunk)."""
        import h5py

        dset = _low(dset)  # (a Dataset or its DatasetID, as for put)
        rows = np.ascontiguousarray(rows)  # (in the dataset's dtype: reading dset.dtype would translate it)
        mtype = self._mtypes.get(rows.dtype)
        if mtype is None:
            mtype = self._mtypes[rows.dtype] = h5py.h5t.py_create(rows.dtype)
        fspace = dset.get_space()
        fspace.select_hyperslab((int(first),) + (0,) * (rows.ndim - 1), rows.shape)
        dset.write(h5py.h5s.create_simple(rows.shape), fspace, rows, mtype)

    def flush(self) -> None:
        """Compress and write every queued row."""
        queue, self._queue, self._queued = self._queue, [], 0
        squeeze = (lambda task: zlib.compress(task[3], task[2]))  # noqa: E731
        done = map(squeeze, queue) if self._pool is None else self._pool.map(squeeze, queue)
        for (dset, offset, _, _), blob in zip(queue, done):  # in order, each as soon as it is compressed
            dset.write_direct_chunk(offset, blob)

    def close(self, write_queued: bool = True) -> None:
        try:
            if write_queued:
                self.flush()
        finally:
            self._queue, self._queued = [], 0
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> "RowChunkWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(write_queued=exc_type is None)


class DatasetMaker:
    """Datasets of a few kinds, created many times over (a dust-map file has one of each kind per
    HEALPix pixel: ~10⁴ pixels at nside 32). h5py's ``create_dataset`` builds the HDF5 type and
    the creation property list anew on every call (0.1 ms, 0.35 ms for the ~45-field diagnostics
    table). Here the first dataset of a kind is created by h5py; the later ones through the
    low-level API with that dataset's type and creation property list, so each kind's datasets
    have the same layout, filters and type as h5py would give them."""

    def __init__(self):
        self._kinds = {}  # kind -> (HDF5 type, dataset creation property list)

    def create(self, group, name: str, shape, kind: str | None = None, **kwargs):
        """``group.create_dataset(name, shape, **kwargs)``, the same ``kwargs`` (dtype, chunks,
        compression) for every dataset of ``kind`` (default: ``name``)."""
        import h5py

        kind = name if kind is None else kind
        made = self._kinds.get(kind)
        if made is None:
            dset = group.create_dataset(name, shape, **kwargs)
            self._kinds[kind] = (dset.id.get_type(), dset.id.get_create_plist())
            return dset
        tid, dcpl = made
        space = h5py.h5s.create_simple(tuple(int(n) for n in shape))
        return h5py.Dataset(h5py.h5d.create(group.id, name.encode(), tid, space, dcpl=dcpl, lcpl=group._lcpl))
