"""Isochrone-based stellar populations for mock catalogues (truth model, part 1).

Stars are drawn from MIST v2.5 isochrones (v/v_crit = 0.4; Choi et al. 2016,
Dotter 2016 for the EEP scheme) as shipped in the ``lachesis-grids`` wheel
(no download at run time). The grid holds 15 [Fe/H] values (-4 ... +0.5) x
107 log ages (5.0 ... 10.3) x EEP; only phases up to the end of core-He
burning are kept: main sequence (MIST phase 0), subgiant + RGB (2) and core-He
burning / red clump (3, EEP <= 707 = terminal-age CHeB). Pre-main-sequence and
AGB points are dropped.

Sampling (one star per input element, [Fe/H] given per star):

* age from the component's star-formation history (Gyr, uniform in linear age):
  thin disc 0.1-10 (constant SFR), thick disc 9-12, halo 11-13 (``AGE_RANGES_GYR``);
* initial mass from the Kroupa (2001) IMF, implemented as a draw in EEP space:
  along each isochrone the number of stars per EEP interval is
  N_k = F(m_{k+1}) - F(m_k), F the cumulative Kroupa IMF. The cumulative counts
  of the four grid isochrones bracketing (age, [Fe/H]) are mixed with bilinear
  weights and inverted, so that a star is alive with the right probability
  (IMF number up to the end of CHeB over the IMF number 0.1-100 Msun) and
  lands on a fractional EEP; stars that are dead or outside ``teff_range``
  are redrawn (new age and mass, same [Fe/H]);
* properties (Teff, logg, log L, masses) are interpolated linearly in EEP and
  bilinearly in (log age, [Fe/H]) at fixed EEP, the EEP scheme that keeps
  phases aligned between isochrones.

Everything vectorised in numpy; the dense table is built once per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "AGE_RANGES_GYR",
    "COMPONENT_NAMES",
    "IsochroneTable",
    "load_isochrone_table",
    "kroupa_cumulative",
    "sample_population",
]

COMPONENT_NAMES = ("thin disc", "thick disc", "halo")
AGE_RANGES_GYR = {0: (0.1, 10.0), 1: (9.0, 12.0), 2: (11.0, 13.0)}
_GRID_FILE = "mist_v2.5_vvcrit0.4.h5"
_KEPT_PHASES = (0.0, 2.0, 3.0)
_MAX_EEP = 707  # MIST terminal-age core-He burning
_LOGAGE_RANGE = (7.9, 10.2)  # 0.08-15.8 Gyr, covers every component
_M_LO, _M_HI = 0.1, 100.0  # IMF normalisation range [Msun]
_COLUMNS = ("initial_mass", "star_mass", "log_Teff", "log_g", "log_L")


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"the truth model needs the optional package {module!r}; "
            'install it with: pip install "dds_infer[mock]"'
        ) from exc


def kroupa_cumulative(m) -> np.ndarray:
    """Cumulative Kroupa (2001) IMF number F(m) = ∫_0.08^m ξ dm (unnormalised).

    ξ ∝ m^-1.3 for 0.08 <= m < 0.5 Msun and m^-2.3 above, continuous at 0.5.
    """
    m = np.clip(np.asarray(m, dtype=float), 0.08, None)
    lo = np.minimum(m, 0.5)
    f_lo = (0.08 ** -0.3 - lo ** -0.3) / 0.3
    hi = np.maximum(m, 0.5)
    f_hi = 0.5 * (0.5 ** -1.3 - hi ** -1.3) / 1.3  # ξ = 0.5 m^-2.3 matches m^-1.3 at 0.5
    return f_lo + f_hi


@dataclass(frozen=True)
class IsochroneTable:
    """Dense MIST table on (feh, log age, EEP).

    values: dict column -> (n_feh, n_age, n_eep) float64, NaN where absent/dropped.
    phase: (n_feh, n_age, n_eep) MIST phase (-9 where absent/dropped).
    """

    feh: np.ndarray
    logage: np.ndarray
    eep: np.ndarray
    values: dict
    phase: np.ndarray


@lru_cache(maxsize=1)
def load_isochrone_table() -> IsochroneTable:
    """Read the MIST grid from the lachesis-grids wheel into a dense table (cached)."""
    lachesis_grids = _require("lachesis_grids")
    h5py = _require("h5py")
    with h5py.File(lachesis_grids.grid_path(_GRID_FILE), "r") as f:
        feh = f["feh_values"][:]
        logage = f["age_values"][:]
        lengths = f["lengths"][:]
        names = [c.decode() if isinstance(c, bytes) else str(c) for c in f.attrs["columns"]]
        vals = f["values"][:]
    if lengths.size != feh.size * logage.size:
        raise ValueError(f"{_GRID_FILE}: expected {feh.size}x{logage.size} isochrones, got {lengths.size}")
    col = {c: names.index(c) for c in (*_COLUMNS, "eep", "phase")}
    keep_age = (logage >= _LOGAGE_RANGE[0] - 1e-9) & (logage <= _LOGAGE_RANGE[1] + 1e-9)
    n_eep = _MAX_EEP + 1
    shape = (feh.size, int(keep_age.sum()), n_eep)
    out = {c: np.full(shape, np.nan) for c in _COLUMNS}
    phase = np.full(shape, -9.0)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ages_kept = np.flatnonzero(keep_age)
    for i in range(feh.size):
        for jj, j in enumerate(ages_kept):
            b = i * logage.size + j
            rows = vals[starts[b]: starts[b] + lengths[b]]
            rows = rows[np.isfinite(rows[:, col["eep"]])]
            e = rows[:, col["eep"]].astype(int)
            ok = (e <= _MAX_EEP) & np.isin(rows[:, col["phase"]], _KEPT_PHASES)
            ok &= np.isfinite(rows[:, col["initial_mass"]]) & np.isfinite(rows[:, col["log_Teff"]])
            e, rows = e[ok], rows[ok]
            for c in _COLUMNS:
                out[c][i, jj, e] = rows[:, col[c]]
            phase[i, jj, e] = rows[:, col["phase"]]
    return IsochroneTable(feh=feh.astype(float), logage=logage[keep_age].astype(float),
                          eep=np.arange(n_eep, dtype=float), values=out, phase=phase)


@lru_cache(maxsize=4)
def _cumulative_counts(teff_lo: float, teff_hi: float) -> np.ndarray:
    """Cumulative Kroupa number along EEP, counting only intervals touching teff range.

    Normalised by the IMF number between 0.1 and 100 Msun; flat where absent.
    Shape (n_feh, n_age, n_eep), cached per teff range.
    """
    tab = load_isochrone_table()
    m = tab.values["initial_mass"]
    lt = tab.values["log_Teff"]
    dn = np.abs(np.diff(kroupa_cumulative(np.nan_to_num(m, nan=0.08)), axis=-1))
    both = np.isfinite(m[..., 1:]) & np.isfinite(m[..., :-1])
    with np.errstate(invalid="ignore"):
        lo_t, hi_t = np.log10(teff_lo), np.log10(teff_hi)
        inside = lambda x: (x >= lo_t) & (x <= hi_t)  # noqa: E731
        touch = inside(lt[..., 1:]) | inside(lt[..., :-1])
    dn = np.where(both & touch, dn, 0.0)
    total = kroupa_cumulative(_M_HI) - kroupa_cumulative(_M_LO)
    shape = m.shape
    return np.concatenate([np.zeros(shape[:2] + (1,)), np.cumsum(dn, axis=-1)], axis=-1) / total


def _bracket(grid: np.ndarray, x: np.ndarray):
    """Lower index and linear weight of x on an increasing grid (clipped to the ends)."""
    x = np.clip(x, grid[0], grid[-1])
    i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, grid.size - 2)
    return i, (x - grid[i]) / (grid[i + 1] - grid[i])


def _draw_on_isochrones(tab: IsochroneTable, cum: np.ndarray, feh, logage, u01):
    """Invert the bilinearly mixed cumulative IMF count; NaN properties where rejected.

    u01 is uniform in [0, 1) and is scaled by the largest count over all ages at
    the star's [Fe/H] bracket, so the acceptance probability is proportional to
    the number of stars alive (in range) at the drawn age.
    """
    n_age, n_eep = cum.shape[1], cum.shape[2]
    i, wf = _bracket(tab.feh, feh)
    j, wa = _bracket(tab.logage, logage)
    totals = cum[..., -1]
    u = u01 * np.maximum(totals[i].max(axis=1), totals[i + 1].max(axis=1))
    corners = [((i * n_age + j) * n_eep, (1 - wf) * (1 - wa)),
               (((i + 1) * n_age + j) * n_eep, wf * (1 - wa)),
               ((i * n_age + j + 1) * n_eep, (1 - wf) * wa),
               (((i + 1) * n_age + j + 1) * n_eep, wf * wa)]
    cflat = cum.ravel()

    def cum_mix(k):
        return sum(w * cflat[base + k] for base, w in corners)

    alive = u < cum_mix(n_eep - 1)
    lo, hi = np.zeros(u.shape, np.int64), np.full(u.shape, n_eep - 1, np.int64)
    for _ in range(int(np.ceil(np.log2(n_eep)))):  # bisection: cum_mix(lo) <= u < cum_mix(hi)
        mid = (lo + hi) // 2
        below = cum_mix(mid) <= u
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    c0, c1 = cum_mix(lo), cum_mix(hi)
    t = np.clip((u - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.0, 1.0)
    props = {c: np.zeros(u.shape) for c in _COLUMNS}
    wsum = np.zeros(u.shape)
    best_w = np.full(u.shape, -1.0)
    phase = np.full(u.shape, -9.0)
    flat = {c: tab.values[c].ravel() for c in _COLUMNS}
    pflat = tab.phase.ravel()
    for base, w in corners:
        v0, v1 = flat["log_Teff"][base + lo], flat["log_Teff"][base + hi]
        wc = np.where(np.isfinite(v0) & np.isfinite(v1), w, 0.0)
        wsum += wc
        for c in _COLUMNS:
            x = (1 - t) * flat[c][base + lo] + t * flat[c][base + hi]
            props[c] += wc * np.nan_to_num(x)
        better = wc > best_w
        phase = np.where(better, pflat[base + np.where(t < 0.5, lo, hi)], phase)
        best_w = np.maximum(best_w, wc)
    good = alive & (wsum > 0)
    for c in _COLUMNS:
        props[c] = np.where(good, props[c] / np.where(wsum > 0, wsum, 1.0), np.nan)
    props["eep"] = np.where(good, lo + t, np.nan)
    props["phase"] = np.where(good, phase, np.nan)
    return props


def sample_population(seed_or_rng, feh, component, *, teff_range=(3500.0, 8500.0),
                      max_rounds: int = 200) -> dict:
    """Draw one star per element of ``feh`` from the isochrone population of ``component``.

    seed_or_rng: int seed or ``numpy.random.Generator`` (same seed -> same stars).
    feh: [Fe/H] per star (kept exactly in the output; clipped to the grid's
        -4 ... +0.5 only for the isochrone look-up).
    component: 0 thin disc, 1 thick disc, 2 halo (age ranges in ``AGE_RANGES_GYR``).
    teff_range: stars outside it are redrawn (the paper's training range).

    Returns a dict of float arrays shaped like ``feh``: teff [K], logg, feh,
    mass (current) and initial_mass [Msun], logL [Lsun], age_gyr, eep, phase
    (MIST: 0 MS, 2 SGB/RGB, 3 core-He burning).
    """
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)
    feh = np.asarray(feh, dtype=float)
    component = np.broadcast_to(np.asarray(component), feh.shape)
    if not np.all(np.isfinite(feh)):
        raise ValueError(f"feh has {int(np.sum(~np.isfinite(feh)))} non-finite value(s)")
    if not np.all(np.isin(component, list(AGE_RANGES_GYR))):
        bad = np.unique(component[~np.isin(component, list(AGE_RANGES_GYR))])
        raise ValueError(f"component must be 0 (thin), 1 (thick) or 2 (halo); got {bad.tolist()}")
    if not (teff_range[0] < teff_range[1]):
        raise ValueError(f"teff_range must be increasing, got {teff_range}")
    tab = load_isochrone_table()
    cum = _cumulative_counts(float(teff_range[0]), float(teff_range[1]))
    flat_feh, flat_comp = feh.ravel(), component.ravel().astype(int)
    lo_age = np.array([AGE_RANGES_GYR[c][0] for c in range(3)])[flat_comp]
    hi_age = np.array([AGE_RANGES_GYR[c][1] for c in range(3)])[flat_comp]
    n = flat_feh.size
    out = {k: np.full(n, np.nan) for k in (*_COLUMNS, "eep", "phase", "age_gyr")}
    todo = np.arange(n)
    lookup_feh = np.clip(flat_feh, tab.feh[0], tab.feh[-1])
    for _ in range(max_rounds):
        if todo.size == 0:
            break
        age = rng.uniform(lo_age[todo], hi_age[todo])
        u = rng.uniform(size=todo.size)
        p = _draw_on_isochrones(tab, cum, lookup_feh[todo], np.log10(age) + 9.0, u)
        teff = 10 ** p["log_Teff"]
        ok = np.isfinite(teff) & (teff >= teff_range[0]) & (teff <= teff_range[1])
        idx = todo[ok]
        for c in (*_COLUMNS, "eep", "phase"):
            out[c][idx] = p[c][ok]
        out["age_gyr"][idx] = age[ok]
        todo = todo[~ok]
    if todo.size:
        raise RuntimeError(f"{todo.size} star(s) could not be drawn inside teff_range={teff_range} "
                           f"after {max_rounds} rounds (check feh/component)")
    res = {
        "teff": 10 ** out["log_Teff"], "logg": out["log_g"], "feh": flat_feh.copy(),
        "mass": out["star_mass"], "initial_mass": out["initial_mass"], "logL": out["log_L"],
        "age_gyr": out["age_gyr"], "eep": out["eep"], "phase": out["phase"],
    }
    return {k: v.reshape(feh.shape) for k, v in res.items()}
