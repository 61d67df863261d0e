"""Physically grounded truth model for mock catalogues (issue 4, item 1a).

Two parts, both needing the optional extra ``pip install "dds_infer[mock]"``
(``lachesis-grids``, ``pyphot``, ``dust-extinction``), imported lazily:

* :func:`sample_population` (re-exported from :mod:`dds_infer.isochrones`):
  stellar types from MIST isochrones × Kroupa IMF × per-component ages;
* :class:`TruthModel`: noiseless photometry m = M(θ) + μ + E R(θ) (Eq. 2 of
  Green et al. 2021) with the same method names as :class:`dds_infer.Emulator`.

M(θ) is a smooth deterministic function of θ = (Teff, logg, [Fe/H]), as the
paper assumes:

    log L = log M(θ) + 4 log(Teff/5772 K) - (logg - 4.438),
    M_bol = 4.74 - 2.5 log L,  M_X = M_bol + BC_X(Teff),

with log M(θ) the population-mean mass of the MIST isochrone points (Kroupa
IMF × constant SFR 0.1-13 Gyr) tabulated on a (log Teff, logg, [Fe/H]) grid,
smoothed and smoothly extended to empty cells (:func:`tabulate_log_mass`), and
interpolated with C² cubic B-splines (θ clamped to the grid beyond it). BC_X and R_X
come from :mod:`dds_infer.synphot` (Planck SED, real passbands, G23
extinction, E ≡ A_V/3.1), tabulated once on a fine log Teff grid and
interpolated with cubic B-splines in jnp (jit/vmap/grad-safe).
"""

from __future__ import annotations

from functools import lru_cache

import jax.numpy as jnp
import numpy as np
from flax import struct

from .passbands import GREEN2020, BandSet
from .isochrones import sample_population  # noqa: F401  (lazy deps inside)

__all__ = ["TruthModel", "build_truth_model", "sample_population", "tabulate_log_mass", "compare_to_emulator"]

TEFF_SUN, LOGG_SUN, MBOL_SUN = 5772.0, 4.438, 4.74
# log-mass table axes: log10 Teff, logg, [Fe/H] (start, step, n); covers the paper's θ domain
_MASS_AXES = ((np.log10(3000.0), 0.01, 54), (-0.6, 0.1, 64), (-3.0, 0.25, 16))
_SMOOTH_CELLS = (2.0, 2.0, 1.0)  # Gaussian σ of the finest smoothing, in cells
_WEIGHT_POWER = 0.5  # cells weigh (IMF×SFR number)^power when smoothed across cells
_FILL_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # multiples of _SMOOTH_CELLS, coarse fills
_FILL_LEVEL = 0.05  # smoothed cell weight [(Kroupa number x Gyr)^power] at which a scale takes over half
_TEFF_TABLE = (2500.0, 15000.0, 1024)  # BC / R table: min, max, n (uniform in log Teff)


@lru_cache(maxsize=1)
def tabulate_log_mass() -> tuple[np.ndarray, dict]:
    """Population-mean log10(current mass) on the (log Teff, logg, [Fe/H]) grid.

    Every kept MIST isochrone point (MS, RGB, CHeB; ages 0.1-13 Gyr) is binned
    into its nearest cell; the cell value is the mean weighted by the Kroupa
    number of its EEP interval × the width of its age bin (constant SFR).
    Occupied cells, weighted by (their summed weight)^_WEIGHT_POWER (tempered,
    so that the steep IMF does not drag dwarfs' means towards lower masses),
    are smoothed by normalised convolution with Gaussians of increasing width
    (σ = _SMOOTH_CELLS × 1 ... 32), blended from coarse to fine with weight
    n/(n + _FILL_LEVEL) (n the smoothed cell weight), which gives a smooth field that
    is the local weighted mean where there are stars and a smooth extrapolation
    elsewhere. Returns (table (n_T, n_g, n_feh), diagnostics: IMF×SFR-weighted
    rms of table - isochrone log mass over 3500-8500 K, [Fe/H] >= -2.5, for
    dwarfs (logg >= 3.8) and giants: the intrinsic spread at fixed θ plus smoothing).
    """
    from scipy.ndimage import gaussian_filter

    from .isochrones import kroupa_cumulative, load_isochrone_table

    tab = load_isochrone_table()
    v = tab.values
    age_gyr = 10 ** (tab.logage - 9)
    dage = np.gradient(age_gyr) * ((age_gyr >= 0.1) & (age_gyr <= 13.0))
    dn = np.abs(np.gradient(kroupa_cumulative(np.nan_to_num(v["initial_mass"], nan=0.08)), axis=-1))
    w = dn * dage[None, :, None]
    feh = np.broadcast_to(tab.feh[:, None, None], w.shape)
    x = np.stack([v["log_Teff"], v["log_g"], feh], axis=-1)
    ok = np.all(np.isfinite(x), axis=-1) & (w > 0) & np.isfinite(v["star_mass"])
    x, w, y = x[ok], w[ok], np.log10(v["star_mass"][ok])
    shape = tuple(n for _, _, n in _MASS_AXES)
    idx = np.stack([np.rint((x[:, k] - s0) / ds).astype(int) for k, (s0, ds, _) in enumerate(_MASS_AXES)], -1)
    inside = np.all((idx >= 0) & (idx < np.array(shape)), axis=-1)
    flat = np.ravel_multi_index(tuple(idx[inside].T), shape)
    cnt = np.bincount(flat, None, np.prod(shape)).reshape(shape).astype(float)
    sw = np.bincount(flat, w[inside], np.prod(shape)).reshape(shape)
    swy = np.bincount(flat, (w * y)[inside], np.prod(shape)).reshape(shape)
    occupied = np.where(cnt > 0, sw, 0.0) ** _WEIGHT_POWER  # tempered IMF×SFR weight per cell
    cell_mean = np.where(cnt > 0, swy / np.where(sw > 0, sw, 1.0), 0.0)  # IMF×SFR mean in a cell
    table = None
    for scale in _FILL_SCALES[::-1]:  # coarse -> fine
        sig = tuple(scale * c for c in _SMOOTH_CELLS)
        nn = gaussian_filter(occupied, sig, mode="nearest")  # occupied cells nearby
        yy = gaussian_filter(occupied * cell_mean, sig, mode="nearest") / np.maximum(nn, 1e-300)
        if table is None:
            table = yy
            continue
        alpha = nn / (nn + _FILL_LEVEL)
        table = alpha * yy + (1 - alpha) * table
    sel = (x[inside, 0] >= np.log10(3500.0)) & (x[inside, 0] <= np.log10(8500.0)) & (x[inside, 2] >= -2.5)
    flat_s, w_s, x_s = flat[sel], w[inside][sel], x[inside][sel]
    res = table.ravel()[flat_s] - y[inside][sel]
    giant = x_s[:, 1] < 3.8
    diag = {
        "n_points": int(sel.sum()),
        "rms_dex_dwarfs": float(np.sqrt(np.average(res[~giant] ** 2, weights=w_s[~giant]))),
        "rms_dex_giants": float(np.sqrt(np.average(res[giant] ** 2, weights=w_s[giant]))),
    }
    return table, diag


def _bspline_stencil(coord, n: int):
    """Indices (..., 4) and cubic B-spline weights (..., 4) at grid coordinate ``coord``.

    ``coord`` is clamped to [0, n-1]; stencil indices beyond the edge repeat the
    edge coefficient (the coefficient arrays are prefiltered with mode "nearest").
    """
    c = jnp.clip(coord, 0.0, n - 1.0)
    i = jnp.clip(jnp.floor(c), 0, n - 2)
    t = (c - i)[..., None]
    w = jnp.concatenate([(1 - t) ** 3, 3 * t ** 3 - 6 * t ** 2 + 4,
                         -3 * t ** 3 + 3 * t ** 2 + 3 * t + 1, t ** 3], axis=-1) / 6.0
    idx = jnp.clip(i.astype(jnp.int32)[..., None] + jnp.arange(-1, 3), 0, n - 1)
    return idx, w


def _spline_coefficients(table: np.ndarray, axes=None) -> np.ndarray:
    """Cubic B-spline coefficients of a gridded table (interpolating, C² smooth)."""
    from scipy.ndimage import spline_filter1d

    out = np.asarray(table, float)
    for ax in range(out.ndim) if axes is None else axes:
        out = spline_filter1d(out, order=3, axis=ax, mode="nearest")
    return out


@struct.dataclass
class TruthModel:
    """Noiseless truth photometry with the :class:`dds_infer.Emulator` interface.

    log_mass_coef: (n_T, n_g, n_feh) cubic B-spline coefficients of the smoothed
        population-mean log10 mass [Msun] on the grid ``_MASS_AXES``
        (see :func:`tabulate_log_mass`).
    log_teff_grid: (n,) uniform grid in log10 Teff; bc_coef, r_coef: (n, B)
        cubic B-spline coefficients of the bolometric corrections and reddening
        coefficients on it (E ≡ A_V/3.1). Beyond the grids, θ is clamped.
    """

    log_mass_coef: jnp.ndarray
    log_teff_grid: jnp.ndarray
    bc_coef: jnp.ndarray
    r_coef: jnp.ndarray
    bands: BandSet = struct.field(pytree_node=False, default=GREEN2020)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    def _interp(self, coef, theta):
        """Cubic B-spline in log Teff of an (n, B) coefficient table -> (..., B)."""
        g = self.log_teff_grid
        pos = (jnp.log10(jnp.asarray(theta)[..., 0]) - g[0]) / (g[1] - g[0])
        idx, w = _bspline_stencil(pos, g.shape[0])
        return jnp.einsum("...k,...kb->...b", w, coef[idx])

    def log_mass(self, theta):
        """log10 M(θ) [Msun]: population-mean mass, C² smooth in θ (tricubic B-spline)."""
        theta = jnp.asarray(theta)
        x = (jnp.log10(theta[..., 0]), theta[..., 1], theta[..., 2])
        sten = [_bspline_stencil((xi - s0) / ds, n) for xi, (s0, ds, n) in zip(x, _MASS_AXES)]
        (ia, wa), (ib, wb), (ic, wc) = sten
        out = 0.0
        for a in range(4):
            for b in range(4):
                vals = self.log_mass_coef[ia[..., a, None], ib[..., b, None], ic]  # (..., 4)
                out = out + wa[..., a] * wb[..., b] * jnp.sum(vals * wc, axis=-1)
        return out

    def log_luminosity(self, theta):
        """log10 L/Lsun = log M + 4 log(Teff/Teff_sun) - (logg - logg_sun)."""
        theta = jnp.asarray(theta)
        return (self.log_mass(theta) + 4 * jnp.log10(theta[..., 0] / TEFF_SUN)
                - (theta[..., 1] - LOGG_SUN))

    def bolometric_mag(self, theta):
        return MBOL_SUN - 2.5 * self.log_luminosity(theta)

    def absolute_mags(self, theta):
        """M(θ) = M_bol(θ) + BC(Teff), shape (..., B) (Eq. 2)."""
        return self.bolometric_mag(theta)[..., None] + self._interp(self.bc_coef, theta)

    def reddening_vector(self, theta):
        """R(θ): extinction per unit E ≡ A_V/3.1 (G23, R(V)=3.1), shape (..., B)."""
        return self._interp(self.r_coef, theta)

    def predict(self, theta, E):
        """M(θ) + E R(θ) (Eq. 2 without μ)."""
        return self.absolute_mags(theta) + jnp.asarray(E)[..., None] * self.reddening_vector(theta)

    def predict_apparent(self, theta, mu, E):
        """m = M(θ) + μ + E R(θ) (Eq. 2)."""
        return self.predict(theta, E) + jnp.asarray(mu)[..., None]


@lru_cache(maxsize=1)
def build_truth_model() -> TruthModel:
    """Build (once per process) the truth model tables; needs the ``[mock]`` extra."""
    from . import synphot

    lo, hi, n = _TEFF_TABLE
    log_t = np.linspace(np.log10(lo), np.log10(hi), n)
    table, _ = tabulate_log_mass()
    return TruthModel(
        log_mass_coef=jnp.asarray(_spline_coefficients(table)),
        log_teff_grid=jnp.asarray(log_t),
        bc_coef=jnp.asarray(_spline_coefficients(synphot.bolometric_corrections(10 ** log_t), axes=(0,))),
        r_coef=jnp.asarray(_spline_coefficients(synphot.reddening_coefficients(10 ** log_t), axes=(0,))),
    )


def compare_to_emulator(truth: TruthModel, emulator, theta) -> dict:
    """Realism figures of the truth against a trained emulator over stars' θ (informational).

    Returns per band (lists in band order): ``median_dM`` = median of
    M_truth(θ) - M_emulator(θ), ``mean_R_truth``, ``mean_R_emulator`` and
    ``R_ratio`` = mean R_truth / mean R_emulator (the published network's E is
    in Bayestar19 units, the truth's is A_V/3.1, so the scale may differ).
    """
    theta = jnp.asarray(theta, jnp.float32)
    if theta.ndim != 2 or theta.shape[-1] != 3:
        raise ValueError(f"theta must have shape (n, 3) = (Teff, logg, [Fe/H]); got {theta.shape}")
    d_m = np.asarray(truth.absolute_mags(theta) - emulator.absolute_mags(theta))
    r_t = np.asarray(truth.reddening_vector(theta)).mean(0)
    r_e = np.asarray(emulator.reddening_vector(theta)).mean(0)
    with np.errstate(divide="ignore"):
        ratio = r_t / r_e
    return {"bands": list(truth.bands.names), "median_dM": np.median(d_m, 0).tolist(),
            "mean_R_truth": r_t.tolist(), "mean_R_emulator": r_e.tolist(), "R_ratio": ratio.tolist()}
