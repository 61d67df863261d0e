"""Mock Milky Way catalogues with known truth.

Each star: a sightline (given, or isotropic on the sky), a distance modulus from
the Galactic prior p(μ | l, b) ∝ n(d) d³, a component and [Fe/H] from
:mod:`dds_infer.galaxy`, a stellar type θ from a *population* and noiseless
magnitudes from a *truth model*, then reddening from :mod:`dds_infer.dust` and the
survey's observation model (:mod:`dds_infer.survey`): errors, limits, drop-outs,
Gaia parallax noise with its zero-point, noisy spectroscopic labels. Stars are
kept when their *observed* magnitude in the selection band falls in the survey's
window (a selection on observed data, which Bayesian inference may ignore).

Truth models (anything with ``predict_apparent(theta, mu, E)`` and ``bands``):

* (a) :class:`dds_infer.truth.TruthModel` — isochrones + synthetic photometry +
  a published extinction curve (needs ``pip install "dds_infer[mock]"``);
* (b) any :class:`~dds_infer.emulator.Emulator`, e.g. the shipped model, for
  simulation-based calibration.

Populations: ``"isochrone"`` (IMF × age × [Fe/H], from :mod:`dds_infer.truth`)
or ``"domain"`` (θ drawn from an emulator's training density in (Teff, logg)
at the star's [Fe/H], restricted to density ≥ ``domain_threshold`` — the θ prior
the inference uses, so mode (b) + ``"domain"`` draws from the priors).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import jax
import numpy as np
import pandas as pd

from .catalog import StarCatalog
from .domain import TrainingDomain
from .hr_table import hr_slice_mass
from .selection import resolve_selection_limit, selection_log_volume
from .dust import DustModel, true_and_prior_reddening
from .galaxy import (DEFAULT_GALAXY, GalaxyModel, distance_prior_grid, sample_components_and_feh,
                     sky_directions)
from .survey import GREEN2020_SURVEY, SurveyModel, observe_labels, observe_parallax, observe_photometry

__all__ = ["MockConfig", "MockCatalog", "make_mock", "sample_theta_from_domain",
           "isotropic_directions"]

TRUTH_PREFIX = "true_"
N_MU_DIRECTIONS = 12288  # isotropic sky: p(μ | l, b) tabulated on this many Fibonacci directions


@dataclass(frozen=True)
class MockConfig:
    n: int = 1000
    seed: int = 0
    population: str = "domain"  # "domain" | "isochrone"
    l: tuple | None = None  # sightlines (deg); None = isotropic sky
    b: tuple | None = None
    mu_range: tuple[float, float] = (4.0, 19.0)
    mu_grid_points: int = 481  # p(μ | l, b) grid per sightline (0.031 mag cells, linear inside)
    domain_threshold: float = 0.01
    domain_entry: int = 0
    survey: SurveyModel = GREEN2020_SURVEY
    dust: DustModel = DustModel()
    galaxy: GalaxyModel = DEFAULT_GALAXY
    labels: bool = True  # noisy spectroscopic labels (for training catalogues)
    label_noise_scale: float = 1.0  # scales the label errors (0.01: near-exact labels, for experiments)
    # population="domain": θ ~ density / selection volume of this limit ("auto": the truth bundle's
    # recorded limit, none if it records none; None: the density itself), as priors.default_prior
    selection_limit: float | str | None = "auto"
    max_rounds: int = 200


@dataclass
class MockCatalog:
    """A :class:`StarCatalog` plus the truth per star (``truth``: one row per star)."""

    catalog: StarCatalog
    truth: pd.DataFrame
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.catalog.n_stars


def isotropic_directions(rng: np.random.Generator, n: int):
    """(l, b) in degrees, uniform on the sphere."""
    l = rng.uniform(0.0, 360.0, n)
    b = np.rad2deg(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    return l, b


def sample_theta_from_domain(rng: np.random.Generator, domain: TrainingDomain, feh,
                             threshold: float = 0.01, entry: int = 0, *, edge_weight: bool = True,
                             slice_mass=None, log_volume=None):
    """θ = (Teff, logg, [Fe/H]) with (Teff, logg) ~ ρ(Teff, logg | [Fe/H]), or ~ ρ / V with
    ``log_volume`` = log V on the grid (:func:`dds_infer.selection.selection_log_volume`: the
    population behind a magnitude-limited training density, as the θ prior corrected for it).

    ρ is the training density map ``entry`` on its grid, zeroed below
    ``threshold`` (the valid domain), on the [Fe/H] slice nearest each star;
    a uniform offset within the cell makes the draws continuous. ``edge_weight``: a star
    is kept with probability equal to the θ prior's mass at its [Fe/H]
    (:func:`dds_infer.hr_table.hr_slice_mass`: below 1 only at the [Fe/H] edges of the
    training set, where the prior falls off), so that the mock follows that prior there too;
    ``slice_mass`` passes those masses in when they are already computed.
    Returns (theta (N, 3), ok (N,)) — ok False where the slice is empty or the star was
    not kept (the caller redraws).
    """
    dens = np.asarray(domain.density[entry], dtype=float)
    dens = np.where(dens >= threshold, dens, 0.0)
    if log_volume is not None:
        lv = np.asarray(log_volume, dtype=float)
        if lv.shape != dens.shape:
            raise ValueError(f"log_volume has shape {lv.shape}, the density {dens.shape}")
        dens = dens * np.exp(lv.max() - lv)  # ρ / V (up to a constant)
    teff, logg, fehax = (np.asarray(a, dtype=float) for a in (domain.teff, domain.logg, domain.feh))
    feh = np.asarray(feh, dtype=float)
    k = np.clip(np.rint((feh - fehax[0]) / (fehax[1] - fehax[0])).astype(int), 0, len(fehax) - 1)
    slices = dens.transpose(2, 0, 1).reshape(len(fehax), -1)  # (nf, nT*ng)
    mass = slices.sum(axis=1)
    cdf = np.cumsum(slices, axis=1) / np.where(mass > 0, mass, 1.0)[:, None]
    u = rng.random(feh.shape)
    cell = np.zeros(feh.shape, dtype=int)
    for kk in np.unique(k):  # one vectorised search per [Fe/H] slice
        sel = k == kk
        cell[sel] = np.searchsorted(cdf[kk], u[sel], side="right")
    cell = np.minimum(cell, slices.shape[1] - 1)
    it, ig = np.unravel_index(cell, (len(teff), len(logg)))
    dt, dg = teff[1] - teff[0], logg[1] - logg[0]
    theta = np.stack([teff[it] + dt * (rng.random(feh.shape) - 0.5),
                      logg[ig] + dg * (rng.random(feh.shape) - 0.5), feh], axis=-1)
    ok = mass[k] > 0
    if edge_weight:
        if slice_mass is None:
            slice_mass = hr_slice_mass(domain, entry=entry, threshold=threshold)
        ok &= rng.random(feh.shape) < np.interp(feh, fehax, slice_mass)
    return theta, ok


def selection_probability(mag_sel, survey: SurveyModel):
    """Target-selection probability of a star with observed magnitude ``mag_sel``:
    10^(−s · max(m − m_pivot, 0)) (spectroscopic surveys favour bright targets)."""
    excess = np.maximum(np.nan_to_num(np.asarray(mag_sel, float), nan=99.0) - survey.selection_pivot, 0.0)
    return 10.0 ** (-survey.selection_slope * excess)


def _population(rng, cfg: MockConfig, feh, comp, domain, slice_mass=None, log_volume=None):
    if cfg.population == "domain":
        if domain is None:
            raise ValueError('population="domain" needs a TrainingDomain (e.g. emulator.domain)')
        theta, ok = sample_theta_from_domain(rng, domain, feh, cfg.domain_threshold, cfg.domain_entry,
                                             slice_mass=slice_mass, log_volume=log_volume)
        return theta, ok, {}
    if cfg.population == "isochrone":
        from .truth import sample_population  # optional extra

        pop = sample_population(rng, feh, comp)
        theta = np.stack([pop["teff"], pop["logg"], pop["feh"]], axis=-1)
        extra = {k: np.asarray(v) for k, v in pop.items() if k not in ("teff", "logg", "feh")}
        return theta, np.all(np.isfinite(theta), axis=1), extra
    raise ValueError(f'unknown population {cfg.population!r}: use "domain" or "isochrone"')


@functools.lru_cache(maxsize=8)
def _mu_tables(galaxy: GalaxyModel, mu_range, n_grid: int, sightlines):
    """Per-direction CDF tables of p(μ | l, b) on a μ grid: (directions (D, 3) unit vectors,
    l (D,), b (D,), grid (G,), cdf (D, G) normalised to [0, 1])."""
    if sightlines is None:
        l, b = sky_directions(N_MU_DIRECTIONS)
    else:
        l, b = (np.asarray(v, dtype=float) for v in sightlines)
    grid = np.linspace(mu_range[0], mu_range[1], n_grid)
    p = np.asarray(distance_prior_grid(l, b, grid, galaxy), dtype=float)
    cdf = np.concatenate([np.zeros((p.shape[0], 1)),
                          np.cumsum(0.5 * (p[:, 1:] + p[:, :-1]) * np.diff(grid), axis=1)], axis=1)
    cdf /= cdf[:, -1:]
    lr, br = np.deg2rad(l), np.deg2rad(b)
    vec = np.stack([np.cos(br) * np.cos(lr), np.cos(br) * np.sin(lr), np.sin(br)], axis=-1)
    return vec, np.asarray(l), np.asarray(b), grid, cdf


@functools.lru_cache(maxsize=8)
def _direction_tree(buf: bytes, shape):
    from scipy.spatial import cKDTree

    return cKDTree(np.frombuffer(buf).reshape(shape))


def _padded(fn, *arrays):
    """fn(*arrays) with the leading axis padded to a power of two (few shapes → few compiles)."""
    n = len(arrays[0])
    size = 1 << max(int(np.ceil(np.log2(max(n, 1)))), 8)
    pad = [np.concatenate([a, np.repeat(a[-1:] if n else np.zeros((1,) + a.shape[1:]), size - n, axis=0)])
           for a in (np.asarray(x, dtype=float) for x in arrays)]
    return np.asarray(fn(*pad), dtype=float)[:n]


def _sample_mu(rng, cfg: MockConfig, l, b, direction_index=None):
    """μ ~ p(μ | l, b) by inverse CDF (linear within grid cells) on the tabulated sightlines.

    With given sightlines the table is exact for each; on the isotropic sky each star uses
    the nearest of ``N_MU_DIRECTIONS`` directions (≤ 1.8° away, where n(R, Z) d³ barely changes).
    """
    sl = None if cfg.l is None else (tuple(cfg.l), tuple(cfg.b))
    vec, _, _, grid, cdf = _mu_tables(cfg.galaxy, tuple(cfg.mu_range), cfg.mu_grid_points, sl)
    if direction_index is None:
        lr, br = np.deg2rad(l), np.deg2rad(b)
        v = np.stack([np.cos(br) * np.cos(lr), np.cos(br) * np.sin(lr), np.sin(br)], axis=-1)
        direction_index = _direction_tree(vec.tobytes(), vec.shape).query(v)[1]
    k = np.asarray(direction_index)
    u = rng.random(k.shape)
    flat = (cdf + np.arange(cdf.shape[0])[:, None] * 2.0).ravel()  # rows offset: one sorted array
    j = np.searchsorted(flat, u + 2.0 * k, side="right") - 1
    j = np.clip(j - k * cdf.shape[1], 0, cdf.shape[1] - 2)
    c0, c1 = cdf[k, j], cdf[k, j + 1]
    t = np.where(c1 > c0, (u - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.5)
    return grid[j] + np.clip(t, 0.0, 1.0) * (grid[1] - grid[0])


def _draw_candidates(rng, key, cfg: MockConfig, m: int, truth, domain, sel: int, faint: float,
                     slice_mass=None, log_volume=None):
    """One round of m candidate stars (before selection), as a dict of arrays.

    Candidates whose unreddened true magnitude in the selection band is fainter than
    ``faint`` (the window's faint end + 0.5 mag, i.e. > 20σ of noise) cannot be selected:
    they are rejected before the costlier dust and photometry (counted as selection rejects).
    """
    if cfg.l is not None:
        idx = rng.integers(0, len(cfg.l), m)
        l, b = np.asarray(cfg.l, float)[idx], np.asarray(cfg.b, float)[idx]
        mu = _sample_mu(rng, cfg, l, b, idx)
    else:
        l, b = isotropic_directions(rng, m)
        mu = _sample_mu(rng, cfg, l, b)
    comp, feh = (np.asarray(a) for a in sample_components_and_feh(key, mu, l, b, cfg.galaxy))
    theta, ok, extra = _population(rng, cfg, feh, comp, domain, slice_mass, log_volume)
    theta_eval = np.where(ok[:, None], theta, np.nanmedian(theta[ok], axis=0) if ok.any() else 0.0)
    m_sel = _padded(truth.absolute_mags, theta_eval)[:, sel] + mu
    near = ok & (m_sel <= faint)
    c = dict(l=l, b=b, mu=mu, component=comp, theta=theta, **extra)
    c = {k: np.asarray(v)[near] for k, v in c.items()}
    e_true, e_prior, e_err, _ = true_and_prior_reddening(rng, c["l"], c["b"], c["mu"], cfg.dust, cfg.galaxy)
    mag_true = _padded(truth.predict_apparent, c["theta"], c["mu"], e_true)
    c.update(E=e_true, E_prior=e_prior, E_prior_err=e_err, mag_true=mag_true,
             ok=np.ones(near.sum(), dtype=bool))
    return c, int((~ok).sum()), int((ok & ~near).sum())


def make_mock(truth, config: MockConfig = MockConfig(), *, domain: TrainingDomain | None = None,
              progress=None) -> MockCatalog:
    """Draw ``config.n`` selected mock stars observed through ``config.survey``.

    truth: a truth model or an Emulator (see module docstring). domain: the θ
    density for ``population="domain"`` (default: ``truth.domain`` if present).
    Same config (incl. seed) → identical catalogue. ``report`` counts every
    candidate that was drawn and why it was not kept.
    """
    cfg = config
    if domain is None:
        domain = getattr(truth, "domain", None)
    survey = cfg.survey if cfg.survey.bands == truth.bands else replace(cfg.survey, bands=truth.bands)
    sel = survey.bands.index(survey.selection_band)
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.PRNGKey(cfg.seed)
    slice_mass = (hr_slice_mass(domain, entry=cfg.domain_entry, threshold=cfg.domain_threshold)
                  if cfg.population == "domain" and domain is not None else None)  # once, not per round
    limit, log_volume = _population_selection(cfg, truth, domain)
    kept: list[dict] = []
    n_kept = n_drawn = n_bad_theta = n_outside = n_surplus = 0
    rate = 0.2
    for _ in range(cfg.max_rounds):
        if n_kept >= cfg.n:
            break
        want = 1.3 * (cfg.n - n_kept) / max(rate, 1e-3)
        m = int(min(2 ** int(np.ceil(np.log2(max(want, 1024)))), 2**20))  # few shapes: few compiles
        key, sub = jax.random.split(key)
        c, n_bad, n_faint = _draw_candidates(rng, sub, cfg, m, truth, domain, sel,
                                             survey.selection[1] + 0.5, slice_mass, log_volume)
        mag, err, _ = observe_photometry(rng, c["mag_true"], survey)
        plx, plx_err = observe_parallax(rng, c["mu"], c["mag_true"][:, sel], survey)
        lo, hi = survey.selection
        g = mag[:, sel]
        keep = c["ok"] & np.isfinite(g) & (g >= lo) & (g <= hi)
        keep &= rng.random(g.shape) < selection_probability(g, survey)
        n_drawn += m
        n_bad_theta += n_bad
        n_outside += n_faint + int((~keep).sum())
        rate = max(keep.sum() / m, 1e-4)
        idx = np.flatnonzero(keep)
        n_surplus += max(len(idx) - (cfg.n - n_kept), 0)  # selected but not needed
        idx = idx[: cfg.n - n_kept]
        c.update(mag=mag, mag_err=err, parallax=plx, parallax_err=plx_err)
        kept.append({k: np.asarray(v)[idx] for k, v in c.items()})
        n_kept += len(idx)
        if progress is not None:
            progress(n_kept, cfg.n)
    else:
        if n_kept < cfg.n:
            raise RuntimeError(f"only {n_kept} of {cfg.n} stars passed the selection after "
                               f"{cfg.max_rounds} rounds ({n_drawn} drawn); widen survey.selection")
    s = {k: np.concatenate([d[k] for d in kept]) for k in kept[0]}
    missing = {name: int(np.isnan(s["mag"][:, j]).sum()) for j, name in enumerate(survey.bands.names)}
    ids = np.array([f"mock{cfg.seed}_{i:07d}" for i in range(cfg.n)])
    optional = dict(l=s["l"], b=s["b"], ids=ids,
                    meta={"mock": {"seed": cfg.seed, "population": cfg.population,
                                   "truth": type(truth).__name__},
                          # the survey's calibration floor is part of mag_err (and of the noise drawn)
                          "mag_err_floor": np.array([nz.floor for nz in survey.noise])})
    if cfg.labels:
        lab = replace(survey, label_sigma=tuple(cfg.label_noise_scale * v for v in survey.label_sigma))
        theta_hat, theta_cov = observe_labels(rng, s["theta"], lab)
        optional.update(theta=theta_hat, theta_cov=theta_cov, E_prior=s["E_prior"],
                        E_prior_err=s["E_prior_err"])
    cat = StarCatalog.from_arrays(s["mag"], s["mag_err"], s["parallax"], s["parallax_err"],
                                  survey.bands, **optional)
    truth_df = pd.DataFrame({"id": ids, "teff": s["theta"][:, 0], "logg": s["theta"][:, 1],
                             "feh": s["theta"][:, 2], "mu": s["mu"], "E": s["E"],
                             "E_smooth": s["E_prior"], "component": s["component"]})
    for k in s:
        if k not in ("l", "b", "mu", "component", "theta", "ok", "E", "E_prior", "E_prior_err",
                     "mag_true", "mag", "mag_err", "parallax", "parallax_err"):
            truth_df[k] = s[k]
    for j, name in enumerate(survey.bands.names):
        truth_df[f"mag_{name}"] = s["mag_true"][:, j]
    report = {"n_stars": cfg.n, "n_drawn": n_drawn, "n_rejected_selection": n_outside,
              "n_rejected_theta": n_bad_theta, "n_surplus": n_surplus, "selection": [survey.selection_band, *survey.selection],
              "n_missing_per_band": missing, "population_selection_limit": limit}
    return MockCatalog(cat, truth_df, report)


def _population_selection(cfg: MockConfig, truth, domain):
    """(limit, log V on the domain grid) for ``population="domain"``: the θ population is the
    training density divided by the selection volume of ``cfg.selection_limit`` ("auto": the
    limit the truth bundle records, as :func:`dds_infer.priors.default_prior` does), or (None, None)."""
    if cfg.population != "domain" or domain is None:
        return None, None
    limit = resolve_selection_limit(truth, cfg.selection_limit)
    if limit is None:
        return None, None
    return limit, selection_log_volume(truth, limit, threshold=cfg.domain_threshold, entry=cfg.domain_entry,
                                       galaxy_model=cfg.galaxy, mu_range=cfg.mu_range, domain=domain)


def mock_to_table(mock: MockCatalog):
    """The catalogue's table (:func:`~dds_infer.catalog_io.catalog_to_table`) plus the truth
    as ``true_<name>`` columns; write it with any astropy table format."""
    from .catalog_io import catalog_to_table

    t = catalog_to_table(mock.catalog)
    for col in mock.truth.columns:
        if col != "id":
            t[TRUTH_PREFIX + col] = np.asarray(mock.truth[col])
    return t


def write_mock(mock: MockCatalog, path, overwrite: bool = True):
    """Write :func:`mock_to_table` (format from the extension, as ``catalog_io.write_table``)."""
    from .catalog_io import write_astropy_table

    return write_astropy_table(mock_to_table(mock), path, overwrite=overwrite)


def read_mock(path) -> MockCatalog:
    """Read a file written by :func:`write_mock` (catalogue validated as any other)."""
    from pathlib import Path

    from astropy.table import Table

    from .catalog_io import _format_for, read_table

    kw = {"path": "catalog"} if _format_for(Path(path), None) == "hdf5" else {}
    t = Table.read(path, **kw)  # read once: catalogue columns and truth columns
    cat = read_table(t)
    truth = pd.DataFrame({c[len(TRUTH_PREFIX):]: np.asarray(t[c]) for c in t.colnames
                          if c.startswith(TRUTH_PREFIX)})
    truth.insert(0, "id", cat.star_ids())
    return MockCatalog(cat, truth, {"source": str(path)})
