"""Catalogue validation: :func:`validate` checks a :class:`~dds_infer.catalog.StarCatalog`,
collects *every* problem and raises one :class:`CatalogError` naming columns and rows;
otherwise it returns a :class:`ValidationReport` (counts of missing data, warnings).
Nothing is dropped or clipped.
"""

from __future__ import annotations

import re
import warnings as _warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .catalog import StarCatalog

__all__ = ["CatalogError", "ValidationReport", "validate", "LABEL_NAMES", "MAX_ROWS_SHOWN", "MAG_RANGE"]

LABEL_NAMES = ("teff", "logg", "feh")
MAX_ROWS_SHOWN = 10
# Apparent magnitudes outside this range are treated as sentinels (99, -9999, ...).
MAG_RANGE = (-10.0, 40.0)
# Parallax-unit heuristic (see _check_parallax).
ARCSEC_MEDIAN_PLX = 0.01
ARCSEC_MEDIAN_ERR = 1e-3
UAS_MEDIAN_PLX = 10.0
UAS_MEDIAN_ERR = 10.0
_VEGA_TO_AB = re.compile(r"Vega\s*->\s*AB:\s*\+?([0-9.]+)\s*mag")


class CatalogError(ValueError):
    """Invalid catalogue content; the message names the column and rows.

    ``problems`` holds the individual messages (list of str).
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


@dataclass
class ValidationReport:
    """What :func:`validate` found in a valid catalogue (counts, warnings)."""

    n_stars: int
    bands: tuple[str, ...]
    n_observed: dict[str, int]
    n_missing: dict[str, int]
    n_err_without_mag: dict[str, int]  # finite error but NaN magnitude: missing
    n_no_photometry: int
    n_one_band: int  # exactly one observed band: no colour, so θ and E rest on the priors (and ϖ)
    n_no_parallax: int
    n_unlabelled: int | None  # None: catalogue has no labels
    n_no_reddening_prior: int | None  # None: no reddening-prior block
    n_no_position: int | None  # None: no l, b
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bands"] = list(self.bands)
        return d

    def summary(self) -> str:
        lines = [f"{self.n_stars} stars, {len(self.bands)} bands"]
        w = max(len(b) for b in self.bands)
        for b in self.bands:
            extra = (f" ({self.n_err_without_mag[b]} with error but no magnitude)"
                     if self.n_err_without_mag[b] else "")
            lines.append(f"  {b:<{w}}  observed {self.n_observed[b]:>8}  "
                         f"missing {self.n_missing[b]:>8}{extra}")
        lines.append(f"stars without photometry: {self.n_no_photometry}")
        lines.append(f"stars with a single observed band (no colour): {self.n_one_band}")
        lines.append(f"stars without parallax: {self.n_no_parallax}")
        for label, n in (("labels", self.n_unlabelled),
                         ("reddening prior", self.n_no_reddening_prior),
                         ("position (l, b)", self.n_no_position)):
            lines.append(f"stars without {label}: " + ("n/a (column block absent)" if n is None else str(n)))
        lines += [f"warning: {m}" for m in self.warnings]
        return "\n".join(lines)


def _rows(mask: np.ndarray, ids: np.ndarray | None, first_row: int = 0) -> str:
    """'<k> of <N> rows: rows [..] (ids [..])' for a boolean row mask. ``first_row``: the file row
    of the catalogue's first star (a shard, :mod:`dds_infer.catalog_rows`), so rows name file rows."""
    idx = np.flatnonzero(mask)
    more = ", ..." if idx.size > MAX_ROWS_SHOWN else ""
    fmt = lambda xs: "[" + ", ".join(map(repr, xs)) + more + "]"  # noqa: E731
    of = f"{mask.size} rows" if not first_row else f"{mask.size} rows (file rows {first_row}:{first_row + mask.size})"
    s = f"{idx.size} of {of}: rows {fmt((idx[:MAX_ROWS_SHOWN] + int(first_row)).tolist())}"
    if ids is not None and len(ids) == mask.size:
        s += f" (ids {fmt([_py(i) for i in ids[idx[:MAX_ROWS_SHOWN]]])})"
    return s


def _py(x):
    x = x.item() if hasattr(x, "item") else x
    return x.decode() if isinstance(x, bytes) else x


def _check_shape(problems, name, a, shape, required=True) -> bool:
    if a is None:
        if required:
            problems.append(f"[{name}] missing (None)")
        return False
    if np.shape(a) != shape:
        problems.append(f"[{name}] shape {np.shape(a)}, expected {shape}")
        return False
    if not np.issubdtype(np.asarray(a).dtype, np.number):
        problems.append(f"[{name}] dtype {np.asarray(a).dtype} is not numeric")
        return False
    return True


def _check_parallax(problems, plx, err, ids, first=0):
    """Errors on parallax_err, plus the arcsec-vs-mas heuristic.

    Heuristic: over rows with finite parallax and finite positive error, if
    median |parallax| < 0.01 AND median parallax_err < 1e-3, the values are
    taken to be arcsec. A median error below 1 micro-arcsec-scale (1e-3 mas)
    is impossible for any astrometric survey (Gaia's best is ~0.01-0.02 mas),
    but typical in arcsec (1e-5 - 5e-4 as); requiring both medians to be tiny
    keeps single odd stars and genuinely distant samples from triggering it.

    The other way, micro-arcseconds: median |parallax| > 10 AND median parallax_err > 10. In mas
    that is a sample within ~100 pc measured 10-1000x worse than Gaia (0.01-1.3 mas for
    G = 10-21); in µas it is any Gaia sample (errors 10-1300 µas, parallaxes of stars at
    0.1-10 kpc 100-10,000 µas).
    """
    has = np.isfinite(plx)
    bad = has & ~(np.isfinite(err) & (err > 0))
    if bad.any():
        problems.append(f"[parallax_err] NaN/inf or <= 0 where parallax is finite: {_rows(bad, ids, first)}")
    ok = has & np.isfinite(err) & (err > 0)
    if np.isinf(plx).any():
        problems.append(f"[parallax] infinite: {_rows(np.isinf(plx), ids, first)}")
    if ok.any() and (np.median(np.abs(plx[ok])) < ARCSEC_MEDIAN_PLX
                     and np.median(err[ok]) < ARCSEC_MEDIAN_ERR):
        problems.append(
            f"[parallax] parallax looks like arcsec, expected mas (median |parallax| = "
            f"{np.median(np.abs(plx[ok])):.3g}, median parallax_err = {np.median(err[ok]):.3g}); "
            "multiply by 1000 or pass parallax_unit='arcsec' (CLI: --parallax-unit arcsec)")
    if ok.any() and (np.median(np.abs(plx[ok])) > UAS_MEDIAN_PLX and np.median(err[ok]) > UAS_MEDIAN_ERR):
        problems.append(
            f"[parallax] parallax looks like micro-arcsec, expected mas (median |parallax| = "
            f"{np.median(np.abs(plx[ok])):.3g}, median parallax_err = {np.median(err[ok]):.3g}); "
            "divide by 1000 or pass parallax_unit='uas' (CLI: --parallax-unit uas)")


def _magnitude_system_doubts(bands, mag) -> list[str]:
    """Warnings for bands the model takes in AB after a Vega→AB shift (their note says
    ``Vega->AB: +X mag``, e.g. unWISE W1/W2, +2.699/+3.339) that look given in Vega: the median of
    the band minus the nearest earlier Vega band (2MASS Ks for W1 and W2) over the stars with both
    is below X/2. A warning, not an error: it judges the stars' colours (an emulator with random
    weights, e.g. in tests, has any colours). Real star colours Ks − W1 and Ks − W2 are within
    ±0.5 mag (Vega; the Green2020 test stars in AB: medians
    2.64 and 3.35, interquartile ranges ~0.1), so the two systems are ~2.7-3.3 mag apart. Needs ≥ 10
    stars with both, and the differences' interquartile range below 1 mag (a colour locus: not
    unrelated magnitudes such as random test data)."""
    out = []
    for j, band in enumerate(bands.bands):
        m = _VEGA_TO_AB.search(band.note or "")
        ref = [k for k in range(j) if bands.bands[k].system.lower() == "vega"]
        if band.system.upper() != "AB" or m is None or not ref:
            continue
        shift, k = float(m.group(1)), ref[-1]
        d = mag[:, j] - mag[:, k]
        d = d[np.isfinite(d)]
        if d.size < 10:
            continue
        q25, med, q75 = np.percentile(d, [25, 50, 75])
        if med < shift / 2 and q75 - q25 < 1.0:  # (a stellar colour locus, not unrelated magnitudes)
            out.append(
                f"[{band.name}] looks like Vega magnitudes: the median {band.name} - {bands.bands[k].name} "
                f"is {med:.2f} over {d.size} stars, where the model's AB system gives ~{shift:.1f} "
                f"({band.note}); if so, add {shift} mag to the column")
    return out


def _check_labels(problems, warnings, cat, n, require, ids, first=0) -> int | None:
    theta, cov = cat.theta, cat.theta_cov
    if theta is None:
        if require:
            problems.append("[teff, logg, feh] labels required but the catalogue has none (theta is None)")
        return None
    if not _check_shape(problems, "theta", theta, (n, 3)):
        return None
    cov_ok = _check_shape(problems, "theta_cov", cov, (n, 3, 3))
    finite = np.isfinite(theta)
    if require:
        for j, name in enumerate(LABEL_NAMES):
            if (~finite[:, j]).any():
                problems.append(f"[{name}] non-finite label (labels required): {_rows(~finite[:, j], ids, first)}")
    teff = theta[:, 0]
    if (finite[:, 0] & (teff <= 0)).any():
        problems.append(f"[teff] <= 0 K: {_rows(finite[:, 0] & (teff <= 0), ids, first)}")
    elif finite[:, 0].any() and np.median(teff[finite[:, 0]]) < 100:
        problems.append("[teff] median Teff < 100: looks like log10(Teff) or kK; expected Kelvin")
    labelled = finite.all(axis=1)
    if cov_ok:
        check = labelled if not require else np.ones(n, bool)
        cfin = np.isfinite(cov).all(axis=(1, 2))
        if (check & ~cfin).any():
            problems.append(f"[theta_cov] NaN/inf covariance for labelled star: {_rows(check & ~cfin, ids, first)}")
        sel = check & cfin
        if sel.any():
            c = cov[sel]
            d = np.sqrt(np.abs(np.diagonal(c, axis1=1, axis2=2)))
            asym = np.abs(c - np.swapaxes(c, 1, 2)) > 1e-5 * d[:, :, None] * d[:, None, :] + 1e-300
            bad = np.zeros(n, bool)
            bad[np.flatnonzero(sel)[asym.any(axis=(1, 2))]] = True
            if bad.any():
                problems.append(f"[theta_cov] not symmetric: {_rows(bad, ids, first)}")
            eig = np.linalg.eigvalsh(0.5 * (c + np.swapaxes(c, 1, 2)))
            npd = np.zeros(n, bool)
            npd[np.flatnonzero(sel)[eig.min(axis=1) <= 0]] = True
            if npd.any():
                problems.append(f"[theta_cov] not positive definite: {_rows(npd, ids, first)}")
    n_unl = int((~labelled).sum())
    if n_unl:
        warnings.append(f"{n_unl} stars have incomplete labels (teff/logg/feh not all finite)")
    return n_unl


def validate(catalog: StarCatalog, *, require_labels: bool = False,
             require_reddening_prior: bool = False) -> ValidationReport:
    """Check ``catalog``; raise one :class:`CatalogError` listing every problem.

    Errors: shape/dtype mismatches; per band, error <= 0 or NaN/inf where the
    magnitude is finite, infinite or sentinel-like magnitudes (outside
    ``MAG_RANGE``); parallax_err <= 0/NaN where parallax is finite; parallax
    apparently in arcsec; non-finite labels (when required), non-symmetric /
    non-positive-definite / NaN theta_cov (labelled stars, or all when
    required); E_prior_err < 0 or NaN where E_prior is finite; l outside
    [-180, 360] or b outside [-90, 90]; an id given to more than one row. Missing data (NaN) is counted, never
    dropped: a finite error with a NaN magnitude is just a missing band.
    Warnings (kept stars): no observed band; a single observed band (no
    colour); an error without a magnitude; incomplete labels.
    """
    problems: list[str] = []
    warnings: list[str] = []
    bands = catalog.bands.names
    mag, err = catalog.mag, catalog.mag_err
    n = int(np.shape(mag)[0]) if np.ndim(mag) >= 1 else 0
    nb = len(bands)
    ids = catalog.ids
    first = int((catalog.meta or {}).get("first_row", 0) or 0)  # a shard's rows are named as file rows
    if ids is not None and np.shape(ids) != (n,):
        problems.append(f"[ids] shape {np.shape(ids)}, expected ({n},)")
        ids = None
    if ids is not None and n > 1:  # outputs (posteriors, summaries, dust maps) are keyed by id
        _, inverse, counts = np.unique(np.asarray(ids), return_inverse=True, return_counts=True)
        if (counts > 1).any():
            dup = counts[inverse] > 1
            problems.append(f"[id] {int((counts > 1).sum())} id(s) given to more than one row (outputs are keyed "
                            f"by id: make them unique, or leave the id column out to use row numbers): "
                            f"{_rows(dup, ids, first)}")
    phot_ok = _check_shape(problems, "mag", mag, (n, nb))
    phot_ok &= _check_shape(problems, "mag_err", err, (n, nb))
    n_obs, n_mis, n_ewm = {}, {}, {}
    n_no_phot = n
    n_one = 0
    if phot_ok:
        fm, fe = np.isfinite(mag), np.isfinite(err)
        for j, name in enumerate(bands):
            m, e = mag[:, j], err[:, j]
            bad = fm[:, j] & ~fe[:, j]
            if bad.any():
                problems.append(f"[{name}] NaN/inf error where the magnitude is finite: {_rows(bad, ids, first)}")
            bad = fm[:, j] & fe[:, j] & (e <= 0)
            if bad.any():
                problems.append(f"[{name}] error <= 0 on observed band: {_rows(bad, ids, first)}")
            bad = np.isinf(m)
            if bad.any():
                problems.append(f"[{name}] infinite magnitude: {_rows(bad, ids, first)}")
            bad = fm[:, j] & ((m < MAG_RANGE[0]) | (m > MAG_RANGE[1]))
            if bad.any():
                problems.append(f"[{name}] magnitude outside {list(MAG_RANGE)} "
                                f"(sentinel for missing? use NaN): {_rows(bad, ids, first)}")
            n_obs[name] = int((fm[:, j] & fe[:, j]).sum())
            n_mis[name] = n - n_obs[name]
            n_ewm[name] = int((~fm[:, j] & fe[:, j]).sum())
            if n_ewm[name]:
                warnings.append(f"{name}: {n_ewm[name]} rows have an error but no magnitude (treated as missing)")
        for msg in _magnitude_system_doubts(catalog.bands, np.where(fm & fe, mag, np.nan)):
            warnings.append(msg)
            _warnings.warn(msg, UserWarning, stacklevel=2)
        no_phot = ~(fm & fe).any(axis=1)
        n_no_phot = int(no_phot.sum())
        if n_no_phot:
            msg = f"{n_no_phot} stars have no observed band (kept): {_rows(no_phot, ids, first)}"
            warnings.append(msg)
            _warnings.warn(msg, UserWarning, stacklevel=2)
        one = (fm & fe).sum(axis=1) == 1
        n_one = int(one.sum())
        if n_one:
            msg = (f"{n_one} star{' has' if n_one == 1 else 's have'} a single observed band, so no colour: "
                   "Teff, logg, [Fe/H] and E come from the priors, the magnitude and the parallax alone "
                   f"(kept): {_rows(one, ids, first)}")
            warnings.append(msg)
            _warnings.warn(msg, UserWarning, stacklevel=2)
    n_no_plx = n
    if (_check_shape(problems, "parallax", catalog.parallax, (n,))
            & _check_shape(problems, "parallax_err", catalog.parallax_err, (n,))):
        _check_parallax(problems, catalog.parallax, catalog.parallax_err, ids, first)
        n_no_plx = int((~np.isfinite(catalog.parallax)).sum())
    n_unl = _check_labels(problems, warnings, catalog, n, require_labels, ids, first)
    n_no_red = None
    E, Ee = catalog.E_prior, catalog.E_prior_err
    if E is None and require_reddening_prior:
        problems.append("[E_prior] reddening prior required but the catalogue has none (E_prior is None)")
    elif E is not None and (_check_shape(problems, "E_prior", E, (n,))
                            & _check_shape(problems, "E_prior_err", Ee, (n,))):
        fE = np.isfinite(E)
        if require_reddening_prior and (~fE).any():
            problems.append(f"[E_prior] non-finite (reddening prior required): {_rows(~fE, ids, first)}")
        bad = fE & ~np.isfinite(Ee)
        if bad.any():
            problems.append(f"[E_prior_err] NaN/inf where E_prior is finite: {_rows(bad, ids, first)}")
        bad = np.isfinite(Ee) & (Ee < 0)
        if bad.any():
            problems.append(f"[E_prior_err] negative: {_rows(bad, ids, first)}")
        n_no_red = int((~fE).sum())
    n_no_pos = None
    if (catalog.l is None) != (catalog.b is None):
        problems.append("[l, b] only one of l and b given")
    elif catalog.l is not None and (_check_shape(problems, "l", catalog.l, (n,))
                                    & _check_shape(problems, "b", catalog.b, (n,))):
        l, b = catalog.l, catalog.b
        bad = np.isfinite(l) & ((l < -180) | (l > 360)) | np.isinf(l)
        if bad.any():
            problems.append(f"[l] outside [-180, 360] deg: {_rows(bad, ids, first)}")
        bad = np.isfinite(b) & (np.abs(b) > 90) | np.isinf(b)
        if bad.any():
            problems.append(f"[b] outside [-90, 90] deg: {_rows(bad, ids, first)}")
        n_no_pos = int((~(np.isfinite(l) & np.isfinite(b))).sum())
    if problems:
        raise CatalogError(
            f"catalogue validation failed ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems),
            problems)
    return ValidationReport(
        n_stars=n, bands=tuple(bands), n_observed=n_obs, n_missing=n_mis,
        n_err_without_mag=n_ewm, n_no_photometry=n_no_phot, n_one_band=n_one, n_no_parallax=n_no_plx,
        n_unlabelled=n_unl, n_no_reddening_prior=n_no_red, n_no_position=n_no_pos,
        warnings=warnings)
