"""Star catalogues: the one container every other module consumes.

A :class:`StarCatalog` holds plain numpy arrays (float64) for N stars and the
:class:`~dds_infer.passbands.BandSet` its magnitude columns follow. Missing
photometry is non-finite (NaN) in both ``mag`` and ``mag_err``; missing
parallaxes are NaN. Optional blocks (spectroscopic labels, reddening priors,
sky positions, ids) are ``None`` when absent.

:func:`validate` (:mod:`dds_infer.catalog_checks`, re-exported here) checks a catalogue,
collects *every* problem and raises one :class:`CatalogError` naming columns and rows;
otherwise it returns a :class:`ValidationReport`. Nothing is dropped or clipped. Readers and
writers live in :mod:`dds_infer.catalog_io`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .catalog_checks import LABEL_NAMES, MAX_ROWS_SHOWN, CatalogError, ValidationReport, validate
from .passbands import GREEN2020, BandSet

__all__ = [
    "StarCatalog",
    "CatalogError",
    "ValidationReport",
    "validate",
    "LABEL_NAMES",
    "MAX_ROWS_SHOWN",
]


@dataclass(frozen=True)
class StarCatalog:
    """Photometry (+ parallax, + optional labels / reddening priors) of N stars.

    mag, mag_err: (N, B) apparent magnitudes and 1-sigma errors, band order of
        ``bands``; NaN where a band is unobserved.
    parallax, parallax_err: (N,) in mas; NaN where there is no parallax.
    theta, theta_cov: (N, 3), (N, 3, 3) spectroscopic (Teff [K], logg, [Fe/H])
        and covariance in physical units, or None (inference-only catalogue).
    E_prior, E_prior_err: (N,) prior reddening estimate and sigma, or None.
    l, b: (N,) Galactic longitude/latitude in degrees, or None.
    ids: (N,) identifiers, or None (then ``row`` indices are used).
    meta: free-form provenance (source file, column map, ...); ``meta["per_star_keys"]`` names
        the entries that hold one value per star (subset with the rows).
    """

    mag: np.ndarray
    mag_err: np.ndarray
    parallax: np.ndarray
    parallax_err: np.ndarray
    bands: BandSet = GREEN2020
    theta: np.ndarray | None = None
    theta_cov: np.ndarray | None = None
    E_prior: np.ndarray | None = None
    E_prior_err: np.ndarray | None = None
    l: np.ndarray | None = None
    b: np.ndarray | None = None
    ids: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_arrays(
        cls,
        mag,
        mag_err,
        parallax,
        parallax_err,
        bands: BandSet = GREEN2020,
        *,
        require_labels: bool = False,
        require_reddening_prior: bool = False,
        **optional,
    ) -> "StarCatalog":
        """Build from array-likes (coerced to float64) and :func:`validate`.

        ``optional`` takes the remaining fields (theta, theta_cov, E_prior,
        E_prior_err, l, b, ids, meta). The report is stored in
        ``meta["validation"]``; invalid input raises :class:`CatalogError`.
        """
        f64 = lambda a: None if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
        kw = {k: f64(optional.pop(k, None)) for k in
              ("theta", "theta_cov", "E_prior", "E_prior_err", "l", "b")}
        ids = optional.pop("ids", None)
        meta = dict(optional.pop("meta", None) or {})
        if optional:
            raise TypeError(f"unexpected StarCatalog fields: {sorted(optional)}")
        cat = cls(f64(mag), f64(mag_err), f64(parallax), f64(parallax_err), bands,
                  ids=None if ids is None else np.asarray(ids), meta=meta, **kw)
        return cat.validated(require_labels=require_labels,
                             require_reddening_prior=require_reddening_prior)

    def validated(self, *, require_labels: bool = False,
                  require_reddening_prior: bool = False) -> "StarCatalog":
        """Return ``self`` after :func:`validate` (report in ``meta["validation"]``)."""
        rep = validate(self, require_labels=require_labels,
                       require_reddening_prior=require_reddening_prior)
        self.meta["validation"] = rep.to_dict()
        return self

    @property
    def n_stars(self) -> int:
        return int(self.mag.shape[0])

    def __len__(self) -> int:
        return self.n_stars

    @property
    def n_bands(self) -> int:
        return int(self.mag.shape[1])

    @property
    def mag_err_floor(self) -> np.ndarray | None:
        """(B,) error floor [mag] already included in ``mag_err``, as declared in
        ``meta["mag_err_floor"]`` (a scalar or one value per band), or None when undeclared."""
        f = self.meta.get("mag_err_floor")
        if f is None:
            return None
        f = np.broadcast_to(np.asarray(f, dtype=np.float64), (self.n_bands,))
        if not np.all(np.isfinite(f) & (f >= 0)):
            raise ValueError(f"meta['mag_err_floor'] must be finite and >= 0, got {f}")
        return f

    @property
    def has_labels(self) -> bool:
        return self.theta is not None

    @property
    def has_reddening_prior(self) -> bool:
        return self.E_prior is not None

    @property
    def observed(self) -> np.ndarray:
        """(N, B) bool: band observed (finite magnitude and error)."""
        return np.isfinite(self.mag) & np.isfinite(self.mag_err)

    def subset(self, idx) -> "StarCatalog":
        """Rows ``idx`` (index array or boolean mask) as a new catalogue. Per-star arrays kept in
        ``meta`` (the keys listed in ``meta["per_star_keys"]``, e.g. the Green2020 file's
        ``r_source``) are subset too. A shard's file-row range (``meta["rows"]``, ``"first_row"``,
        :mod:`dds_infer.catalog_rows`) is not kept: a subset is not a range of the file's rows."""
        idx = np.asarray(idx)
        take = (lambda a: None if a is None else a[idx])
        per_star = {k: np.asarray(self.meta[k])[idx] for k in self.meta.get("per_star_keys", ()) if k in self.meta}
        kept = {k: v for k, v in self.meta.items() if k not in ("rows", "first_row")}
        return replace(
            self,
            meta={**kept, **per_star},
            mag=self.mag[idx],
            mag_err=self.mag_err[idx],
            parallax=self.parallax[idx],
            parallax_err=self.parallax_err[idx],
            theta=take(self.theta),
            theta_cov=take(self.theta_cov),
            E_prior=take(self.E_prior),
            E_prior_err=take(self.E_prior_err),
            l=take(self.l),
            b=take(self.b),
            ids=take(self.ids),
        )

    def star_ids(self) -> np.ndarray:
        return self.ids if self.ids is not None else np.arange(self.n_stars)
