"""A dust-map input split into one file per coarse sky region: written in parallel, resumable.

At 10⁸ stars one dust-map file (:func:`dds_infer.dustmap_io.write_dustmap`) takes days to write
in one process, and an interruption loses all of it. :func:`write_dustmap_regions` writes one
complete dust-map file per non-empty nested HEALPix pixel of a coarser ``split_nside``
(``dustmap_{split_nside}_{pixel}.h5``: the same format, holding every star whose ``nside`` pixel
lies in that region, so each fine pixel's group is whole in one file), as Bayestar's inputs are
split by sky region:

- each file is atomic, so a rerun skips the files that exist and writes only the others
  (a file written with other settings is an error naming it);
- ``region=(k, n)`` writes only every n-th region from the k-th, e.g. one job-array task each;
- a region's stars are read from the run's chunk files only where a chunk holds any of them, so
  a catalogue in sky order (Gaia's ``source_id`` order is) reads each chunk about once in all.

``index.json`` (atomic, the same from every process) records the settings and every region
with its star count; a region whose file is missing is not written yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_path
from .dustmap_io import _check_nside, healpix_index, region_of, write_dustmap
from .posterior import StarRows
from .run_outputs import posterior_parts

__all__ = ["SelectedPosterior", "region_of", "write_dustmap_regions", "INDEX"]

INDEX = "index.json"


@dataclass
class SelectedPosterior(StarRows):
    """The stars ``select`` (boolean mask) of a posterior (:class:`~dds_infer.posterior.Posterior`,
    :class:`~dds_infer.run_outputs.ChunkedPosterior` or ``JoinedPosterior``), with its ``parts``
    interface: only the chunks that hold any of them are read."""

    base: object
    select: np.ndarray
    star_id: np.ndarray = field(init=False)
    attrs: dict = field(init=False)

    def __post_init__(self):
        self.select = np.asarray(self.select, dtype=bool)
        self.star_id = np.asarray(self.base.star_id)[self.select]
        self.attrs = dict(getattr(self.base, "attrs", None) or {})

    def parts(self, variables=None, select=None):
        """``select``: a mask over this selection's stars (a selection of the selection)."""
        sel = self.select
        if select is not None:
            sel = sel.copy()
            sel[sel] = np.asarray(select, dtype=bool)
        yield from posterior_parts(self.base, variables, sel)


def _settings(nside, split, grid, n_samples, attrs) -> str:
    from dataclasses import asdict

    return json.dumps({"nside": nside, "split_nside": split, "grid": asdict(grid), "n_samples": n_samples,
                       "attrs": attrs}, sort_keys=True, default=str)


def write_dustmap_regions(out_dir, posterior, l_deg, b_deg, *, split_nside: int, nside: int = 32,
                          region: tuple[int, int] | None = None, attrs=None, on_start=None, on_stars=None,
                          **write_kw) -> dict:
    """Write ``out_dir/dustmap_{split_nside}_{pixel}.h5`` for each region of this process (all, or
    ``region=(k, n)``: every n-th from the k-th) whose file does not exist yet (see the module
    docstring). ``write_kw``: grid, n_samples, dtype, compression, threads (as write_dustmap).
    on_start(n): called first with the stars of this process's regions; on_stars(n): with the
    stars of each region written or skipped (e.g. a progress bar's total and ``update``). Returns counts and the files of this
    process: ``n_regions`` (all), ``regions_here``, ``written``, ``skipped``."""
    from .dustmap_io import ImageGrid

    out_dir = Path(out_dir)
    nside, split = _check_nside(nside), _check_nside(split_nside)
    l, b = np.asarray(l_deg, dtype=np.float64), np.asarray(b_deg, dtype=np.float64)
    if l.shape != (posterior.n_stars,):
        raise ValueError(f"got {l.shape[0]} positions for {posterior.n_stars} stars")
    cell = region_of(healpix_index(l, b, nside), nside, split)
    cells, counts = np.unique(cell, return_counts=True)
    if region is not None:
        k, n = int(region[0]), int(region[1])
        if not 0 <= k < n:
            raise ValueError(f"region must be K/N with 0 <= K < N, got {k}/{n}")
    here = cells if region is None else cells[k::n]
    n_here = int(np.isin(cell, here).sum())
    if on_start is not None:
        on_start(n_here)
    attrs = dict(attrs or {})
    settings = _settings(nside, split, write_kw.get("grid", ImageGrid()), write_kw.get("n_samples"),
                         {**attrs, "posterior": getattr(posterior, "attrs", None)})
    out_dir.mkdir(parents=True, exist_ok=True)
    index = {"format": "dds_infer.dustmap_regions", "split_nside": split, "nside": nside,
             "file_pattern": f"dustmap_{split}_{{pixel}}.h5", "settings": json.loads(settings),
             "regions": {str(int(c)): int(m) for c, m in zip(cells, counts)}}
    with atomic_path(out_dir / INDEX) as tmp:
        tmp.write_text(json.dumps(index, indent=1))
    written, skipped = [], []
    for c in here:
        path = out_dir / f"dustmap_{split}_{int(c)}.h5"
        mask = cell == c
        if path.exists():
            with h5py.File(path, "r") as f:
                if f.attrs.get("region_settings") != settings:
                    raise ValueError(f"{path} exists from another dustmap run (other settings or posteriors): "
                                     "write into a new folder, or delete the folder's files")
            skipped.append(str(path))
        else:
            write_dustmap(path, SelectedPosterior(posterior, mask), l[mask], b[mask], nside=nside,
                          attrs={**attrs, "split_nside": split, "split_pixel": int(c), "region_settings": settings},
                          **write_kw)
            written.append(str(path))
        if on_stars is not None:
            on_stars(int(mask.sum()))
    return {"n_regions": int(cells.size), "regions_here": int(here.size), "written": written, "skipped": skipped,
            "n_stars_here": n_here}
