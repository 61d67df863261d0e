"""Per-star distance-reddening probability images for 3D dust mapping, grouped by HEALPix pixel.

3D dust maps are fit to per-star posteriors p(μ, E) binned on a (distance modulus, reddening)
grid and grouped by sky pixel: Bayestar (Green et al. 2014, ApJ 783, 114; Green et al. 2019,
ApJ 887, 93) reads smoothed images per star in groups named "pixel nside-index"; the
line-of-sight fits of Zucker et al. (2019, ApJ 879, 125) use per-star (μ, E) samples. This
module writes both, plus the per-star diagnostics a map-maker needs to cut stars.

Images (:func:`pdf_images`, :mod:`dds_infer.dust_images`, re-exported here): the weighted 2-D histogram of each star's (μ, E) draws on an
:class:`ImageGrid` (bins half-open, [lo, hi)), smoothed with a Gaussian of ``smooth_mu`` x
``smooth_E`` pixels (``scipy.ndimage.gaussian_filter``, mode="constant"), normalised to sum to 1
over the grid (all zero if no draw falls inside). Draws outside the grid (or NaN) are not
dropped silently: :func:`image_coverage` is their complement, stored per star.

HDF5 layout written by :func:`write_dustmap` (format "dds_infer.dustmap", version 2)::

  /                       attrs: format, format_version=2, nside, nest=True, frame="galactic",
                          mu_min, mu_max, mu_step, E_min, E_max, E_step, smooth_mu, smooth_E
                          (pixels), smoothing (description), dds_infer_version,
                          posterior_attrs (JSON), diagnostic_columns (JSON list), user attrs
  /mu_centers (n_mu,)     bin centres in μ;   /E_centers (n_E,) bin centres in E
  /pixel_index            table (pixel int64, n_stars int64) of the non-empty pixels, ascending
  /pixel_{nside}_{pix}/   attrs: nside, pixel, l_center, b_center (deg, nested pixel centre)
      star_id (n,)        UTF-8 strings; stars keep catalogue order
      l, b (n,)           Galactic coordinates [deg]
      pdf (n, n_mu, n_E)  images, chunked (1, n_mu, n_E), compressed
      coverage (n,)       weighted fraction of draws inside the grid
      samples (n, S, 5)   draws of teff, logg, feh, mu, E (attr columns), chains pooled
      sample_weights (n, S) chain weight of each draw, normalised to sum 1 per star
      diagnostics (n,)    table (compound dataset), one field per diagnostic of
                          Posterior.summary(): every numeric column not ending in
                          _median/_q16/_q84 (flag, r_hat_max, ess_bulk_min, n_divergent,
                          n_modes, ...) plus mu/E median, q16, q84

Version 1 (until 2026-12-03) kept each diagnostic as its own dataset ``<column> (n,)`` in the
pixel group; :func:`read_pixel` and :func:`read_dustmap` read both. One table instead of ~40
datasets per pixel matters when a catalogue's chunks scatter over the sky: each chunk then touches
~1,000 pixels, and every dataset created or written costs ~0.1 ms of HDF5 overhead (with the
boxed images below, 20,480 all-sky stars: 171.7 -> 80.8 s; bench/RESULTS.md, session 28).
The gzip chunks (one per star and dataset) are compressed on one thread per core, and the small
rows written through h5py's low-level API (:class:`dds_infer.h5_chunks.RowChunkWriter`; the same
arrays: 82.9 -> 51.2 s there, 31.3 -> 22.7 s at nside 2; session 29). Each chunk file is read for
the five variables binned only (:func:`dds_infer.posterior_draws.read_draws`), and the datasets of
each pixel are created and opened through h5py's low-level API
(:class:`dds_infer.h5_chunks.DatasetMaker`): 48.5 -> 35.9 s at nside 32, 20.9 -> 16.9 s at nside 2
(session 30).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_path
from .h5_chunks import DatasetMaker, RowChunkWriter
from .dust_images import ImageGrid, _bins, _coverage, _images64, image_coverage, pdf_images  # noqa: F401 (re-exported)

__all__ = ["ImageGrid", "pdf_images", "image_coverage", "healpix_index", "write_dustmap", "list_pixels",
           "read_pixel", "read_dustmap", "stored_coverage", "region_of", "write_summary_table", "SAMPLE_COLUMNS", "FORMAT",
           "FORMAT_VERSION"]

FORMAT, FORMAT_VERSION = "dds_infer.dustmap", 2
SAMPLE_COLUMNS = ("teff", "logg", "feh", "mu", "E")
_STAR_DATASETS = ("star_id", "l", "b", "pdf", "coverage", "samples", "sample_weights")
_QUANTILE_SUFFIXES = ("_median", "_q16", "_q84")
GZIP_LEVEL = 4  # (h5py's default)
_CHUNK = 64  # stars per image computation (bounds memory: 64 x 120 x 500 float64 = 31 MB)


def _check_lb(l_deg, b_deg, star_id=None):
    l, b = np.asarray(l_deg, dtype=np.float64), np.asarray(b_deg, dtype=np.float64)
    if l.shape != b.shape or l.ndim != 1:
        raise ValueError(f"l and b must be 1-D arrays of the same length, got shapes {l.shape}, {b.shape}")
    bad = ~(np.isfinite(l) & np.isfinite(b)) | (np.abs(b) > 90)
    if bad.any():
        rows = np.flatnonzero(bad)
        ids = "" if star_id is None else f" (star_id {[str(s) for s in np.asarray(star_id)[rows[:10]]]})"
        raise ValueError(f"{rows.size} star(s) have non-finite l/b or |b| > 90: rows {rows[:10].tolist()}{ids}")
    return l, b


def _check_nside(nside) -> int:
    n = int(nside)
    if n != nside or n < 1 or n & (n - 1):
        raise ValueError(f"nside must be a power of two (1, 2, 4, ...), got {nside}")
    return n


def healpix_index(l_deg, b_deg, nside) -> np.ndarray:
    """(N,) int64 NESTED HEALPix pixel (Górski et al. 2005, ApJ 622, 759) of Galactic (l, b) [deg]."""
    import astropy.units as u
    from astropy_healpix import lonlat_to_healpix

    n = _check_nside(nside)
    l, b = _check_lb(np.atleast_1d(l_deg), np.atleast_1d(b_deg))
    return np.asarray(lonlat_to_healpix(l * u.deg, b * u.deg, n, order="nested"), dtype=np.int64)


def region_of(pixel, nside: int, split_nside: int) -> np.ndarray:
    """Nested HEALPix pixel at ``split_nside`` holding each nested ``pixel`` at ``nside`` (a nested
    pixel's children at twice the nside are 4p ... 4p + 3)."""
    nside, split = _check_nside(nside), _check_nside(split_nside)
    if split > nside:
        raise ValueError(f"split_nside ({split}) must not exceed nside ({nside})")
    return np.asarray(pixel, dtype=np.int64) >> (2 * (nside.bit_length() - split.bit_length()))


def _diagnostics(summary) -> dict:
    """Numeric per-star columns of Posterior.summary() (no quantiles) plus mu/E quantiles."""
    from pandas.api.types import is_numeric_dtype

    keep = [c for c in summary.columns if c != "star_id" and is_numeric_dtype(summary[c])
            and not c.endswith(_QUANTILE_SUFFIXES)]
    keep += [f"{v}{s}" for v in ("mu", "E") for s in _QUANTILE_SUFFIXES]
    missing = [c for c in ("flag", "r_hat_max", "ess_bulk_min", "n_divergent", "n_modes") if c not in keep]
    clash = [c for c in keep if c in _STAR_DATASETS]
    if missing or clash:
        raise ValueError(f"summary columns missing {missing} or clashing with dataset names {clash}")
    return {c: np.asarray(summary[c]) for c in keep}


def _jsonable(v):
    if isinstance(v, (str, bool, int, float, np.generic, np.ndarray)):
        return v
    return json.dumps(v, sort_keys=True, default=str)


def _parts(posterior):
    """(Posterior, summary) pieces of ``posterior`` in star order: itself, or a
    :class:`~dds_infer.run_outputs.ChunkedPosterior`'s chunks one at a time."""
    from .run_outputs import posterior_parts

    yield from posterior_parts(posterior, SAMPLE_COLUMNS)  # (of a run's chunks, only the draws it bins)


def write_dustmap(path, posterior, l_deg, b_deg, *, nside=32, grid: ImageGrid = ImageGrid(),
                  n_samples=None, attrs=None, dtype="float32", compression="gzip", on_stars=None,
                  threads: int | None = None) -> Path:
    """Write per-star images, samples and diagnostics of ``posterior`` grouped by HEALPix pixel.

    posterior: a :class:`~dds_infer.posterior.Posterior`, or a run's
    :class:`~dds_infer.run_outputs.ChunkedPosterior` (:func:`dds_infer.run_outputs.open_run`),
    read one chunk at a time, so memory does not grow with the catalogue; both give the same file.
    l_deg, b_deg: (N,) Galactic coordinates of the posterior's stars. n_samples: keep this many
    draws per star, evenly spaced over the pooled chains (deterministic); None or more than
    available = all. ``dtype`` applies to pdf and samples. Layout: module docstring. Atomic.
    on_stars(n): called after each piece of the posterior is written with its number of stars
    (e.g. a progress bar's ``update``). threads: gzip compression threads (default one per core;
    :class:`dds_infer.h5_chunks.RowChunkWriter`; the file is the same for any number).
    """
    import astropy.units as u
    from astropy_healpix import healpix_to_lonlat

    from . import __version__

    nside = _check_nside(nside)
    l, b = _check_lb(l_deg, b_deg, posterior.star_id)
    if l.shape[0] != posterior.n_stars:
        raise ValueError(f"got {l.shape[0]} positions for {posterior.n_stars} stars")
    if n_samples is not None and int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    attrs = dict(attrs or {})
    pix = healpix_index(l, b, nside)
    sid = np.array([str(s) for s in posterior.star_id], dtype=object)
    pixels, counts = np.unique(pix, return_counts=True)
    # each star's row within its pixel's datasets (stars keep catalogue order within a pixel)
    order = np.argsort(pix, kind="stable")
    slot = np.empty(pix.size, dtype=np.int64)
    slot[order] = np.arange(pix.size) - np.repeat(np.cumsum(counts) - counts, counts)
    l_c, b_c = healpix_to_lonlat(pixels, nside, order="nested")
    n_mu, n_E = grid.shape
    root = {"format": FORMAT, "format_version": FORMAT_VERSION, "nside": nside, "nest": True,
            "frame": "galactic", **asdict(grid),
            "smoothing": "scipy.ndimage.gaussian_filter, mode='constant', sigma (smooth_mu, smooth_E) in "
                         "pixels, applied to the weighted histogram before normalising to sum 1 on the grid",
            "dds_infer_version": __version__,
            "posterior_attrs": json.dumps(posterior.attrs, sort_keys=True, default=str)}
    clash = sorted(set(attrs) & set(root) | ({"diagnostic_columns"} & set(attrs)))
    if clash:
        raise ValueError(f"attrs {clash} clash with reserved root attributes")
    gzip = compression == "gzip"
    packing = {"compression": compression, **({"compression_opts": GZIP_LEVEL} if gzip else {})}
    dtype = np.dtype(dtype)
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f, RowChunkWriter(threads) as put_rows:
            def rows_out(dset, first, rows):  # the one-row-per-chunk datasets (pdf, samples, weights)
                if gzip:
                    put_rows.put(dset, first, rows, GZIP_LEVEL)
                else:
                    put_rows.write(dset, first, rows)

            f.attrs.update({k: _jsonable(v) for k, v in {**root, **attrs}.items()})
            f["mu_centers"], f["E_centers"] = grid.mu_centers, grid.E_centers
            table = np.zeros(len(pixels), dtype=[("pixel", "<i8"), ("n_stars", "<i8")])
            table["pixel"], table["n_stars"] = pixels, counts
            f["pixel_index"] = table
            groups, made = {}, DatasetMaker()  # pixel -> its group; datasets of one kind made alike
            first = np.cumsum(counts) - counts
            for p, n, i0, lc, bc in zip(pixels, counts, first, l_c.to_value(u.deg), b_c.to_value(u.deg)):
                rows = order[i0:i0 + n]  # this pixel's stars, ascending (stable sort): O(N) over all pixels
                g = groups[int(p)] = f.create_group(f"pixel_{nside}_{p}")
                g.attrs.update(nside=nside, pixel=int(p), l_center=float(lc), b_center=float(bc))
                g.create_dataset("star_id", data=sid[rows], dtype=h5py.string_dtype("utf-8"))
                for name, v in (("l", l), ("b", b)):
                    put_rows.write(made.create(g, name, (n,), kind="lb", dtype=np.float64), 0, v[rows])
                made.create(g, "pdf", (n, n_mu, n_E), dtype=dtype, chunks=(1, n_mu, n_E), **packing)
            start, keep = 0, None
            for part, summ in _parts(posterior):
                diag = _diagnostics(summ)
                flat = {k: part.flat_draws(k) for k in SAMPLE_COLUMNS}
                w_all = flat["mu"][1]
                if keep is None:  # first part: the per-star datasets' shapes and types
                    total = w_all.shape[1]
                    keep = (np.arange(total) if n_samples is None or int(n_samples) >= total
                            else (np.arange(int(n_samples)) * total) // int(n_samples))
                    f.attrs["diagnostic_columns"] = json.dumps(list(diag))
                    diag_dtype = np.dtype([(c, v.dtype) for c, v in diag.items()])
                    for p, n in zip(pixels, counts):
                        g = groups[int(p)]
                        made.create(g, "coverage", (n,), dtype=np.float64)
                        made.create(g, "samples", (n, keep.size, len(SAMPLE_COLUMNS)), dtype=dtype,
                                    chunks=(1, keep.size, len(SAMPLE_COLUMNS)), **packing
                                    ).attrs["columns"] = list(SAMPLE_COLUMNS)
                        made.create(g, "sample_weights", (n, keep.size), dtype=np.float64, chunks=(1, keep.size),
                                    **packing)
                        made.create(g, "diagnostics", (n,), dtype=diag_dtype)
                elif w_all.shape[1] != total:
                    raise ValueError(f"posterior pieces differ in draws per star ({w_all.shape[1]} vs {total})")
                elif set(diag) != set(diag_dtype.names):
                    raise ValueError(f"posterior pieces differ in diagnostic columns ({sorted(diag)} vs "
                                     f"{sorted(diag_dtype.names)})")
                table = np.empty(part.n_stars, dtype=diag_dtype)  # this part's rows of the pixels' tables
                for c in diag_dtype.names:
                    table[c] = diag[c]
                pixel_of, w_norm = _bins(flat["mu"][0], flat["E"][0], w_all, grid)  # each draw's image pixel
                coverage = _coverage(pixel_of, w_norm)
                stop = start + part.n_stars
                p_part = pix[start:stop]
                o = np.argsort(p_part, kind="stable")
                ps, i0, nn = np.unique(p_part[o], return_index=True, return_counts=True)
                for p, a, m in zip(ps, i0, nn):
                    r = o[a:a + m]  # ascending: this part's rows in pixel p
                    dst = slice(int(slot[start + r[0]]), int(slot[start + r[-1]]) + 1)  # contiguous
                    gid = groups[int(p)].id
                    ds = lambda name: h5py.h5d.open(gid, name)  # noqa: E731 (low-level: 12 µs, h5py's g[name] 37)
                    pdf = ds(b"pdf")
                    for k in range(0, r.size, _CHUNK):
                        rr = r[k:k + _CHUNK]
                        rows_out(pdf, int(slot[start + rr[0]]), _images64(pixel_of[rr], w_norm[rr], grid).astype(dtype))
                    put_rows.write(ds(b"coverage"), dst.start, coverage[r])
                    rows_out(ds(b"samples"), dst.start, np.stack([flat[c][0][r][:, keep] for c in SAMPLE_COLUMNS],
                                                               axis=-1).astype(dtype))
                    sw = np.ascontiguousarray(w_all[r][:, keep])  # C order: sums independent of layout
                    rows_out(ds(b"sample_weights"), dst.start, sw / sw.sum(axis=1, keepdims=True))
                    put_rows.write(ds(b"diagnostics"), dst.start, table[r])
                start = stop
                if on_stars is not None:
                    on_stars(part.n_stars)
            if start != posterior.n_stars:
                raise ValueError(f"the posterior's pieces hold {start} stars, its star_id {posterior.n_stars}")
    return path


def _check_format(f, path):
    if f.attrs.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format attr {f.attrs.get('format')!r})")
    version = int(f.attrs.get("format_version", 0))
    if not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"{path} has {FORMAT} format_version {version}; this dds_infer reads 1 to "
                         f"{FORMAT_VERSION} (upgrade dds_infer)")


def list_pixels(path) -> np.ndarray:
    """Ascending int64 ids of the non-empty pixels of a dust-map file."""
    with h5py.File(path, "r") as f:
        _check_format(f, path)
        return np.asarray(f["pixel_index"]["pixel"], dtype=np.int64)


def _read_group(f, pixel) -> dict:
    nside = int(f.attrs["nside"])
    name = f"pixel_{nside}_{int(pixel)}"
    if name not in f:
        n_pix, filled = 12 * nside ** 2, f["pixel_index"]["pixel"]
        where = (f"is outside 0..{n_pix - 1}" if not 0 <= int(pixel) < n_pix else "has no stars in this file")
        raise KeyError(f"pixel {pixel} (nside {nside}, nested) {where}; the file's {len(filled)} pixels with stars "
                       f"include {filled[:5].tolist()} (dds_infer.dustmap_io.list_pixels)")
    g = f[name]
    out = {"star_id": np.array(g["star_id"].asstr()[()], dtype=str), "mu_centers": f["mu_centers"][()],
           "E_centers": f["E_centers"][()], "nside": nside, "pixel": int(g.attrs["pixel"])}
    out.update({k: g[k][()] for k in _STAR_DATASETS[1:]})
    columns = json.loads(f.attrs["diagnostic_columns"])
    if "diagnostics" in g:  # format version 2: one table
        table = g["diagnostics"][()]
        out.update({c: table[c] for c in columns})
    else:  # version 1: a dataset per column
        out.update({c: g[c][()] for c in columns})
    return out


def read_pixel(path, pixel) -> dict:
    """Arrays of one pixel: star_id, l, b, pdf, coverage, samples, sample_weights, mu_centers,
    E_centers, nside, pixel and every diagnostic column."""
    with h5py.File(path, "r") as f:
        _check_format(f, path)
        return _read_group(f, pixel)


def stored_coverage(path) -> np.ndarray:
    """Every star's ``coverage`` in the file (pixel by pixel, ascending)."""
    with h5py.File(path, "r") as f:
        _check_format(f, path)
        nside = int(f.attrs["nside"])
        return np.concatenate([f[f"pixel_{nside}_{p}"]["coverage"][()] for p in f["pixel_index"]["pixel"]]
                              or [np.zeros(0)])


def read_dustmap(path) -> tuple[dict, dict]:
    """(root attributes as stored, {pixel: read_pixel dict}) for the whole file."""
    with h5py.File(path, "r") as f:
        _check_format(f, path)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        return attrs, {int(p): _read_group(f, p) for p in f["pixel_index"]["pixel"]}


def write_summary_table(path, posterior, l_deg, b_deg, *, nside=32) -> Path:
    """Parquet of ``posterior.summary()`` plus l, b and the nested HEALPix ``healpix`` column. Atomic."""
    nside = _check_nside(nside)
    l, b = _check_lb(l_deg, b_deg, posterior.star_id)
    if l.shape[0] != posterior.n_stars:
        raise ValueError(f"got {l.shape[0]} positions for {posterior.n_stars} stars")
    df = posterior.summary()
    df["l"], df["b"], df["healpix"] = l, b, healpix_index(l, b, nside)
    df.attrs["healpix_nside"], df.attrs["healpix_order"] = nside, "nested"
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path
