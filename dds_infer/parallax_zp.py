"""Per-star Gaia (E)DR3 parallax zero-points (Lindegren et al. 2021, A&A 649, A4), applied to a catalogue.

Eq. 19's parallax term compares ϖ̂ − ϖ_zp with 10^((10 − μ)/5) mas. The global offsets
(DR2 −0.029 mas, Lindegren et al. 2018; DR3 −0.017 mas) are scalars of
:class:`~dds_infer.inference.InferenceConfig` (``zp``). For (E)DR3 the zero-point depends on
magnitude, colour and ecliptic latitude; Lindegren et al. (2021, their Appendix A; Z₅ for
5-parameter, Z₆ for 6-parameter solutions) give it as a function of ``phot_g_mean_mag``,
``nu_eff_used_in_astrometry`` (5p) or ``pseudocolour`` (6p), ``ecl_lat`` and
``astrometric_params_solved``. The registry package ``gaiadr3-zeropoint`` (Ramos & Brown,
from Lindegren's code and coefficient tables; ``pip install "dds_infer[gaia]"``) evaluates it,
and :func:`lindegren2021_zero_point` wraps it with the checks of this package.

The recipe is defined for 5p/6p solutions with 6 < G < 21, 1.1 < ν_eff < 1.9 (5p) and
1.24 < pseudocolour < 1.72 (6p). Elsewhere (2-parameter solutions, inputs outside those
ranges, missing inputs) a star gets the global DR3 value, and every such star is counted by
reason; nothing is dropped. :func:`correct_parallax` then subtracts the per-star values from
the catalogue's parallaxes and records that in ``meta["parallax_zero_point"]``; the inference
must then use ``zp="none"`` (:func:`check_not_corrected_twice` is called by
:func:`dds_infer.pipeline.infer`).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from .catalog import CatalogError, StarCatalog

__all__ = ["L21_COLUMNS", "DR3_GLOBAL_ZP", "lindegren2021_zero_point", "correct_parallax",
           "check_not_corrected_twice"]

L21_COLUMNS = ("phot_g_mean_mag", "nu_eff_used_in_astrometry", "pseudocolour", "ecl_lat",
               "astrometric_params_solved")
DR3_GLOBAL_ZP = -0.017  # mas (Lindegren et al. 2021, quasars)
_VALID = {"g": (6.0, 21.0), "nu_eff": (1.1, 1.9), "pseudocolour": (1.24, 1.72)}


def _zpt_module():
    try:
        from zero_point import zpt
    except ImportError as exc:  # optional extra
        raise ImportError("the Lindegren et al. (2021) zero-point needs the 'gaiadr3-zeropoint' package: "
                          'pip install "dds_infer[gaia]"') from exc
    zpt.load_tables()
    return zpt


def lindegren2021_zero_point(phot_g_mean_mag, nu_eff_used_in_astrometry, pseudocolour, ecl_lat,
                             astrometric_params_solved, *, fallback: float = DR3_GLOBAL_ZP):
    """Per-star (E)DR3 parallax zero-point [mas] (Lindegren et al. 2021, Appendix A: Z₅/Z₆).

    Arrays of shape (N,) with the Gaia archive's meanings (ν_eff, pseudocolour in μm⁻¹, ecl_lat
    in degrees; astrometric_params_solved 31 = 5p, 95 = 6p, 3 = 2p). Returns ``(zp, report)``:
    zp (N,) with ``fallback`` where the recipe is undefined, and report = {"n_stars",
    "n_recipe", "n_fallback", "fallback_mas", "fallback_reasons": {"two_parameter_or_unknown",
    "missing_input", "outside_validity"}, "median_mas"}. Use as ϖ̂ − zp.
    """
    g, nu, pc, beta = (np.asarray(a, dtype=np.float64) for a in (phot_g_mean_mag, nu_eff_used_in_astrometry,
                                                                  pseudocolour, ecl_lat))
    sol = np.asarray(astrometric_params_solved)
    n = g.shape[0]
    for name, a in (("phot_g_mean_mag", g), ("nu_eff_used_in_astrometry", nu), ("pseudocolour", pc),
                    ("ecl_lat", beta), ("astrometric_params_solved", sol)):
        if a.shape != (n,):
            raise ValueError(f"{name} has shape {a.shape}, expected ({n},) like phot_g_mean_mag")
    if not np.isfinite(fallback):
        raise ValueError(f"fallback must be finite, got {fallback!r}")
    sol_f = np.where(np.isfinite(sol.astype(np.float64)), sol.astype(np.float64), -1.0)
    five, six = sol_f == 31, sol_f == 95
    colour = np.where(five, nu, pc)
    missing = (five | six) & ~(np.isfinite(g) & np.isfinite(colour) & np.isfinite(beta))
    lo, hi = np.where(five, _VALID["nu_eff"][0], _VALID["pseudocolour"][0]), np.where(
        five, _VALID["nu_eff"][1], _VALID["pseudocolour"][1])
    inside = (g > _VALID["g"][0]) & (g < _VALID["g"][1]) & (colour > lo) & (colour < hi) & (np.abs(beta) <= 90.0)
    use = (five | six) & ~missing & inside
    zp = np.full(n, float(fallback))
    if use.any():
        zpt = _zpt_module()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its range warnings: the ranges are checked above
            val = zpt.get_zpt(g[use], np.where(five, nu, np.nan)[use], np.where(six, pc, np.nan)[use],
                              beta[use], sol_f[use].astype(int), _warnings=False)
        val = np.asarray(val, dtype=np.float64)
        bad = ~np.isfinite(val)
        idx = np.flatnonzero(use)
        zp[idx[~bad]] = val[~bad]
        use[idx[bad]] = False  # undefined by the package itself: counted as outside validity
    reasons = {"two_parameter_or_unknown": int((~(five | six)).sum()), "missing_input": int(missing.sum()),
               "outside_validity": int(((five | six) & ~missing & ~use).sum())}
    report = {"recipe": "lindegren2021", "n_stars": int(n), "n_recipe": int(use.sum()),
              "n_fallback": int(n - use.sum()), "fallback_mas": float(fallback), "fallback_reasons": reasons,
              "median_mas": float(np.median(zp)) if n else float("nan")}
    return zp, report


def correct_parallax(catalog: StarCatalog, zp_mas, report: dict | None = None) -> StarCatalog:
    """A copy of ``catalog`` with parallax ϖ̂ − zp (zp (N,) or a scalar, mas) and
    ``meta["parallax_zero_point"]`` recording it (``report`` merged in). Raises if the
    catalogue's parallaxes were already corrected."""
    if catalog.meta.get("parallax_zero_point") is not None:
        raise CatalogError(f"the parallaxes were already corrected: {catalog.meta['parallax_zero_point']}")
    zp = np.broadcast_to(np.asarray(zp_mas, dtype=np.float64), catalog.parallax.shape)
    bad = ~np.isfinite(zp)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise CatalogError(f"parallax zero-point is not finite in {bad.sum()} rows (first rows {rows[:10].tolist()})")
    info = {"recipe": "per-star", "median_mas": float(np.median(zp)) if zp.size else float("nan")}
    info.update(report or {})
    return dataclasses.replace(catalog, parallax=catalog.parallax - zp,
                               meta={**catalog.meta, "parallax_zero_point": info})


def check_not_corrected_twice(catalog: StarCatalog, zero_point_mas: float) -> None:
    """Raise if the catalogue's parallaxes carry a correction (``correct_parallax``) and the
    inference would subtract a zero-point again."""
    done = catalog.meta.get("parallax_zero_point")
    if done is not None and float(zero_point_mas) != 0.0:
        raise ValueError(f"the catalogue's parallaxes are already zero-point corrected ({done.get('recipe')}, "
                         f"median {done.get('median_mas')} mas): use zp='none', not {zero_point_mas} mas")
