"""The column map of a catalogue table: which column holds each band's magnitude and error, the
parallax, the labels and their covariance, the prior reddening, the sky position and the id.

:func:`default_column_map` matches the names :func:`dds_infer.catalog_write.catalog_to_table`
writes; :func:`_check_map` collects every structural problem of a map (unknown bands or keys,
absent columns, unpaired keys) so that :func:`dds_infer.catalog_io.read_table` reports them all
at once; :func:`_check_photometry_names` refuses ``mag_<x>`` columns whose x is no band.
"""

from __future__ import annotations

from typing import Any, Mapping

from .catalog import LABEL_NAMES, CatalogError
from .catalog_write import _COV_PAIRS
from .passbands import GREEN2020, BandSet, UnknownBandError

__all__ = ["COLUMN_MAP_KEYS", "default_column_map"]

_SCALAR_KEYS = ("parallax", "parallax_err", "teff", "logg", "feh", "teff_err", "logg_err",
                "feh_err", "E_prior", "E_prior_err", "l", "b", "ra", "dec", "id")
COLUMN_MAP_KEYS = ("mag", "mag_err", "cov") + _SCALAR_KEYS

def default_column_map(bands: BandSet = GREEN2020, columns=None) -> dict:
    """The column map matching :func:`catalog_to_table`'s column names.

    With ``columns`` (names present in a table): label errors ``<label>_err`` are read where
    present (the ``cov_*`` columns, when all are there, override their diagonal); bands with
    neither ``mag_<band>`` nor ``mag_err_<band>`` and optional blocks (labels, cov, reddening
    prior, l/b, id) whose columns are absent are left out; a missing parallax maps to None.
    An error column without its magnitude column is kept, so that :func:`read_table`
    refuses it by name (a band would otherwise vanish silently).
    """
    cmap: dict[str, Any] = {
        "mag": {b: f"mag_{b}" for b in bands.names},
        "mag_err": {b: f"mag_err_{b}" for b in bands.names},
        "parallax": "parallax", "parallax_err": "parallax_err",
        "teff": "teff", "logg": "logg", "feh": "feh",
        "cov": {f"{LABEL_NAMES[i]}_{LABEL_NAMES[j]}": f"cov_{LABEL_NAMES[i]}_{LABEL_NAMES[j]}"
                for i, j in _COV_PAIRS},
        "E_prior": "E_prior", "E_prior_err": "E_prior_err",
        "l": "l", "b": "b", "id": "id",
    }
    if columns is None:
        return cmap
    have = set(columns)
    cmap["mag"] = {b: c for b, c in cmap["mag"].items() if c in have}
    # an error column whose magnitude column is absent stays, so that read_table reports it
    cmap["mag_err"] = {b: c for b, c in cmap["mag_err"].items() if cmap["mag"].get(b) or c in have}
    if "parallax" not in have:
        cmap["parallax"] = cmap["parallax_err"] = None
    for block in (("teff", "logg", "feh"), ("E_prior", "E_prior_err"), ("l", "b"), ("id",)):
        if block[0] not in have:
            for k in block:
                cmap.pop(k)
    if "teff" in cmap:  # label errors: <label>_err columns and/or the full covariance (which wins)
        cmap.update({f"{k}_err": f"{k}_err" for k in LABEL_NAMES if f"{k}_err" in have})
    if "teff" not in cmap or not all(c in have for c in cmap["cov"].values()):
        cmap.pop("cov")
    else:  # lower-triangle columns, written only for non-symmetric covariances
        for i, j in _COV_PAIRS:
            key = f"{LABEL_NAMES[j]}_{LABEL_NAMES[i]}"
            if i != j and f"cov_{key}" in have:
                cmap["cov"][key] = f"cov_{key}"
    return cmap


def _check_map(cmap: Mapping, colnames, bands: BandSet, require_labels: bool) -> tuple[list, dict, dict]:
    """Structural problems of a column map; returns (problems, mag idx->col, err idx->col)."""
    problems: list[str] = []
    have = set(colnames)
    avail = f"available columns: {', '.join(colnames)}"
    unknown_keys = [k for k in cmap if k not in COLUMN_MAP_KEYS]
    if unknown_keys:
        problems.append(f"[column_map] unknown key(s) {unknown_keys}; allowed: {', '.join(COLUMN_MAP_KEYS)}")
    resolved = {}
    for key in ("mag", "mag_err"):
        sub = cmap.get(key) or {}
        if not isinstance(sub, Mapping):
            problems.append(f"[column_map {key!r}] must be a dict band -> column, got {type(sub).__name__}")
            sub = {}
        try:
            idx = bands.resolve(list(sub))
        except UnknownBandError as e:
            problems.append(f"[column_map {key!r}] {e}")
            idx = [bands.index(b) if _known(bands, b) else None for b in sub]
        out: dict[int, str] = {}
        for (b, col), i in zip(sub.items(), idx):
            if i is None:
                continue
            if i in out:
                problems.append(f"[column_map {key!r}] band {bands.names[i]} given twice ({b!r})")
            out[i] = col
        resolved[key] = out
    mags, errs = resolved["mag"], resolved["mag_err"]
    if not mags:
        problems.append("[mag] column_map has no photometry: give 'mag': {band: column, ...}")
    for i in sorted(set(mags) - set(errs)):
        problems.append(f"[mag_err] no error column for band {bands.names[i]}")
    for i in sorted(set(errs) - set(mags)):
        problems.append(f"[mag] error column given but no magnitude column for band {bands.names[i]}")
    if "parallax" not in cmap:
        problems.append("[parallax] column_map has no 'parallax' key (use 'parallax': None if there are none)")
    pairs = [("parallax", "parallax_err"), ("E_prior", "E_prior_err"), ("l", "b"), ("ra", "dec")]
    for a, b in pairs:
        if (cmap.get(a) is None) != (cmap.get(b) is None):
            given, absent = (a, b) if cmap.get(a) is not None else (b, a)
            problems.append(f"[{absent}] column_map gives {given!r} but not {absent!r}")
    labels = [k for k in LABEL_NAMES if cmap.get(k) is not None]
    cov = cmap.get("cov") or {}
    if labels or require_labels:
        for k in LABEL_NAMES:
            if cmap.get(k) is None:
                problems.append(f"[{k}] label column missing from column_map"
                                + (" (labels required)" if require_labels else ""))
            elif cmap.get(f"{k}_err") is None and f"{k}_{k}" not in cov:
                problems.append(f"[{k}_err] no error for label {k}: give '{k}_err' or cov '{k}_{k}'")
    for pk in cov:
        if _cov_pair(pk) is None:
            problems.append(f"[cov] unknown covariance key {pk!r}; use e.g. 'teff_logg'")
    referenced = [(f"mag {bands.names[i]}", c) for i, c in mags.items()]
    referenced += [(f"mag_err {bands.names[i]}", c) for i, c in errs.items()]
    referenced += [(k, cmap[k]) for k in _SCALAR_KEYS if cmap.get(k) is not None]
    referenced += [(f"cov {k}", c) for k, c in cov.items()]
    for key, col in referenced:
        if col not in have:
            problems.append(f"[{key}] column {col!r} not in table; {avail}")
    return problems, mags, errs


def _check_photometry_names(colnames, bands: BandSet) -> None:
    """With the default column names, a ``mag_<x>`` / ``mag_err_<x>`` column whose x is not a band's
    name is a typo, an alias or a band the model lacks: raise naming it (aliases: the column name to
    use), so that no photometry is left out silently. Pass a ``column_map`` to read other names."""
    names = set(bands.names)
    problems = []
    for c in colnames:
        prefix = "mag_err_" if c.startswith("mag_err_") else "mag_" if c.startswith("mag_") else None
        x = None if prefix is None else c[len(prefix):]
        if x is None or x in names:
            continue
        if _known(bands, x):
            band = bands.names[bands.index(x)]
            problems.append(f"[{c}] {x!r} is an alias of band {band!r}: name the column {prefix}{band} or pass "
                            "a column_map")
        else:
            problems.append(f"[{c}] looks like photometry but {x!r} is no band of this model's band set "
                            f"({', '.join(bands.names)}): rename it, drop it, or pass a column_map that "
                            "leaves it out")
    if problems:
        raise CatalogError(f"photometry column problems ({len(problems)}):\n  - " + "\n  - ".join(problems),
                           problems)


def _known(bands: BandSet, name: str) -> bool:
    try:
        bands.index(name)
        return True
    except UnknownBandError:
        return False


def _cov_pair(key: str):
    """'teff_logg' -> (0, 1); None if malformed."""
    parts = key.split("_")
    if len(parts) != 2 or not all(p in LABEL_NAMES for p in parts):
        return None
    return LABEL_NAMES.index(parts[0]), LABEL_NAMES.index(parts[1])
