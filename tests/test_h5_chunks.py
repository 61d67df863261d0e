"""dds_infer.h5_chunks.RowChunkWriter: rows compressed on threads and written as HDF5 chunks read
back exactly as HDF5's own gzip filter writes them."""

import h5py
import numpy as np
import pytest

from dds_infer.h5_chunks import RowChunkWriter


def _rows(n=37, seed=0):
    rng = np.random.default_rng(seed)
    a = np.zeros((n, 12, 50), dtype=np.float32)
    a[:, 3:7, 10:30] = rng.random((n, 4, 20), dtype=np.float32)  # mostly zeros, as the images
    return a


@pytest.mark.parametrize("threads, batch_bytes", [(1, 32 << 20), (2, 32 << 20), (3, 1), (2, 30_000)])
def test_rows_read_back_as_hdf5_writes_them(tmp_path, threads, batch_bytes):
    """Every row once, at its place, whether queued rows are flushed at every put (batch_bytes 1),
    every few puts, or only when the writer closes."""
    a = _rows()
    with h5py.File(tmp_path / "f.h5", "w") as f:
        ref = f.create_dataset("ref", a.shape, dtype="f4", chunks=(1, 12, 50), compression="gzip")
        ref[...] = a
        mine = f.create_dataset("mine", a.shape, dtype="f4", chunks=(1, 12, 50), compression="gzip")
        lvl9 = f.create_dataset("lvl9", a.shape, dtype="f4", chunks=(1, 12, 50), compression="gzip",
                                compression_opts=9)
        plain = f.create_dataset("plain", a.shape, dtype="f8", chunks=(4, 12, 50))
        table = f.create_dataset("table", (6,), dtype=[("flag", "<i8"), ("r_hat", "<f8")])
        rows = np.array([(3, 1.5), (4, np.nan)], dtype=table.dtype)
        with RowChunkWriter(threads, batch_bytes=batch_bytes) as w:
            w.put(mine, 0, a[:20], 4)
            w.put(mine, 20, a[20:], 4)
            w.put(lvl9, 0, a, 9)
            w.write(plain, 5, a[5:9].astype(np.float64))  # not one row per chunk: HDF5 writes it
            w.write(table, 2, rows)  # a compound table
    with h5py.File(tmp_path / "f.h5", "r") as f:
        np.testing.assert_array_equal(f["mine"][...], a)
        np.testing.assert_array_equal(f["lvl9"][...], a)
        np.testing.assert_array_equal(f["plain"][5:9], a[5:9])
        assert not f["plain"][:5].any()
        back = f["table"][2:4]
        np.testing.assert_array_equal(back["flag"], rows["flag"])
        np.testing.assert_array_equal(back["r_hat"], rows["r_hat"])  # (NaN where NaN)
        assert not f["table"][:2]["flag"].any() and not f["table"][4:]["flag"].any()
        # the same deflate stream as HDF5's filter at the dataset's level
        for i in (0, 17, 36):
            assert f["mine"].id.read_direct_chunk((i, 0, 0)) == f["ref"].id.read_direct_chunk((i, 0, 0))
        assert f["lvl9"].id.get_storage_size() <= f["mine"].id.get_storage_size()


def test_nothing_queued_is_written_after_an_error(tmp_path):
    a = _rows(4)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        d = f.create_dataset("d", a.shape, dtype="f4", chunks=(1, 12, 50), compression="gzip")
        with pytest.raises(RuntimeError, match="stop"):
            with RowChunkWriter(2) as w:
                w.put(d, 0, a, 4)
                raise RuntimeError("stop")
        assert d.id.get_num_chunks() == 0


def test_dust_map_files_do_not_depend_on_the_thread_count_or_compression(tmp_path):
    import sys
    from pathlib import Path

    from dds_infer.dustmap_io import read_dustmap, write_dustmap

    sys.path.insert(0, str(Path(__file__).parent))
    from test_dustmap_io import _posterior, _sky

    post, (l, b) = _posterior(n=9), _sky(n=9)
    maps = []
    for threads, compression in ((1, "gzip"), (2, "gzip"), (2, None), (2, "lzf")):
        out = tmp_path / f"{threads}_{compression}.h5"
        write_dustmap(out, post, l, b, nside=2, threads=threads, compression=compression)
        maps.append(read_dustmap(out)[1])
    for other in maps[1:]:
        assert maps[0].keys() == other.keys()
        for p in maps[0]:
            for k, v in maps[0][p].items():
                np.testing.assert_array_equal(np.asarray(v), np.asarray(other[p][k]), err_msg=f"{p} {k}")


def test_dataset_maker_makes_what_h5py_makes(tmp_path):
    """DatasetMaker: the second and later datasets of a kind, made through the low-level API, have
    the type, shape, chunks, filters, fill value and layout of h5py's create_dataset with the same
    arguments, and read and write the same."""
    from dds_infer.h5_chunks import DatasetMaker

    table = np.dtype([("flag", "<i8"), ("r_hat", "<f8"), ("n_modes", "<i4")])
    kinds = {"pdf": dict(dtype="f4", chunks=(1, 12, 50), compression="gzip", compression_opts=4),
             "diag": dict(dtype=table), "cov": dict(dtype=np.float64)}
    shapes = {"pdf": lambda n: (n, 12, 50), "diag": lambda n: (n,), "cov": lambda n: (n,)}
    made, written = DatasetMaker(), {}
    with h5py.File(tmp_path / "f.h5", "w") as f:
        for i, n in enumerate((3, 1, 7)):
            g, ref = f.create_group(f"g{i}"), f.create_group(f"ref{i}")
            for kind, kw in kinds.items():
                a = made.create(g, kind, shapes[kind](n), **kw)
                b = ref.create_dataset(kind, shapes[kind](n), **kw)
                assert (a.dtype, a.shape, a.chunks, a.compression, a.compression_opts, a.shuffle, a.fillvalue) == \
                       (b.dtype, b.shape, b.chunks, b.compression, b.compression_opts, b.shuffle, b.fillvalue), kind
                assert a.id.get_create_plist().get_layout() == b.id.get_create_plist().get_layout()
                data = np.zeros(a.shape, a.dtype)
                if a.dtype.names:
                    data["flag"], data["r_hat"] = np.arange(n), 1.0 + np.arange(n) / 100
                else:
                    data[...] = np.arange(data.size).reshape(data.shape)
                a[...] = data
                written[f"g{i}/{kind}"] = data
                assert a.name == f"/g{i}/{kind}"
    with h5py.File(tmp_path / "f.h5", "r") as f:
        for name, data in written.items():
            np.testing.assert_array_equal(f[name][()], data)
