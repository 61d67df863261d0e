"""Star catalogues: the one container every other module consumes.

A :class:`StarCatalog` holds plain numpy arrays (float64) for N stars and the
:class:`~dds_infer.passbands.BandSet` its magnitude columns follow. Missing
photometry is non-finite (NaN) in both ``mag`` and ``mag_err``; missing
parallaxes are NaN. Optional blocks (spectroscopic labels, reddening priors,
sky positions, ids) are ``None`` when absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .passbands import GREEN2020, BandSet

__all__ = ["StarCatalog", "CatalogError"]


class CatalogError(ValueError):
    """Invalid catalogue content; the message names the column and rows."""


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
    meta: free-form provenance (source file, column map, ...).
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

    @property
    def n_stars(self) -> int:
        return int(self.mag.shape[0])

    def __len__(self) -> int:
        return self.n_stars

    @property
    def n_bands(self) -> int:
        return int(self.mag.shape[1])

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
        """Rows ``idx`` (index array or boolean mask) as a new catalogue."""
        idx = np.asarray(idx)
        take = (lambda a: None if a is None else a[idx])
        return replace(
            self,
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
