"""Per-band photometric zero-point offsets, calibrated from the stars themselves.

Eq. 2's model magnitudes carry an optional offset per band, m = M(θ) + μ + E R(θ) + δ
(:class:`~dds_infer.inference.InferenceConfig`'s ``band_offsets``). An emulator trained on one
photometric calibration and applied to another (a new data release, another survey's
cross-match, a model built from synthetic photometry) misses by a few hundredths of a magnitude
per band, and a 0.02 mag error in one band moves T_eff and E of every star the same way. Codes
that fit stellar models to survey photometry therefore calibrate such offsets from the stars
themselves (e.g. brutus, Speagle et al.): fit every star, take each band's typical residual, refit.

This module does the same:

1. infer every calibration star's posterior with the current offsets (the grid path by default,
   ~10³ stars/s; any :func:`dds_infer.pipeline.infer` method);
2. per star and band, the posterior mean residual r = m̂ − (M(θ) + μ + E R(θ) + δ)
   (:func:`posterior_mean_residuals`, chain weights respected; every run writes it to its summary
   as ``resid_<band>``);
3. per band, δ ← δ + median of r over the usable stars (flag 0: converged, in the domain, and a
   good fit, so outliers and misfits do not pull the offsets; :func:`estimate_offset_update`),
   with the median's standard error 1.2533 · 1.4826 MAD / √n;
4. repeat until no offset moves by more than ``tol`` (default 2 mmag) or ``iterations`` are done.

What the stars cannot tell apart: a change of δ along a direction that every star's own
(θ, μ, E) absorbs leaves every residual unchanged. Two such directions are shared by all stars:
a common offset of all bands trades against μ (only the parallaxes, and their zero-point, set
it), and an offset proportional to R trades against E (only the reddening prior sets it; R(θ) is
nearly the same for every star, Eq. 15's L1 term). Left free, the iteration wanders along them:
on 287 stars drawn from the shipped model's prior with offsets of +0.05, −0.04 and +0.03 mag
injected in three bands, six iterations left the offsets wrong by +0.031 − 0.0136 R̄ (a common
0.03 mag and an E shift of 0.014), and by ≤ 0.015 mag once that was removed. So by default each
update is projected onto the complement of span{1, R̄} (weighted by the updates' inverse
variances; R̄ the mean R(θ) of the usable stars at their posterior medians,
:func:`project_out`), and the offsets' components along those directions stay where they start:
the calibration fixes colours, and distances and reddenings keep the scale the parallax
zero-point and the reddening prior give them. ``free=("common",)`` (or both) lets a component
float, for catalogues whose parallaxes pin it.

On the shared Green2020 test stars, the published network's offsets are all within ±3 mmag
(3,000 stars, ``cd bench && python real_accuracy.py --json --method grid --calibrate-offsets 3000``;
README, "Photometric zero-point offsets"), as they should be for the photometry it was trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .atomic import atomic_path
from .inference import InferenceConfig, StarData, photometric_prediction
from .posterior import star_blocks, take_stars, thinned_draws

__all__ = ["BandOffsets", "posterior_mean_residuals", "residual_column", "band_residual_report", "estimate_offset_update", "project_out",
           "calibrate_band_offsets", "read_band_offsets", "GAUGE_DIRECTIONS"]

_STARS_PER_CALL = 256
MIN_STARS = 20  # a band observed in fewer usable stars keeps its offset (reported)
GAUGE_DIRECTIONS = ("common", "reddening")  # the offsets' directions that the stars cannot fix


@partial(jax.jit, static_argnames=("config",))
def _weighted_residuals(emulator, stars: StarData, teff, logg, feh, mu, E, weights, config: InferenceConfig):
    """(N, B) Σ_s w_s (m̂ − m(draw s)) for draws (N, S) and weights (N, S) summing to 1."""
    def one(star, t, g, f, m, e, w):
        theta = jnp.stack([t, g, f], axis=-1)  # (S, 3)
        M = jax.vmap(emulator.absolute_mags)(theta)
        R = jax.vmap(emulator.reddening_vector)(theta)
        pred = photometric_prediction(M, R, m[:, None], e[:, None], emulator, config)  # (S, B)
        r = jnp.where(jnp.isfinite(pred), star.mag[None, :] - pred, 0.0)
        return jnp.sum(w[:, None] * r, axis=0)

    return jax.vmap(one)(stars, teff, logg, feh, mu, E, weights)


def posterior_mean_residuals(emulator, stars: StarData, samples: dict, config: InferenceConfig,
                             chain_weights=None, max_draws: int = 256) -> np.ndarray:
    """(N, B) posterior mean of each star's residual m̂ − (M(θ) + μ + E R(θ) + δ) per band (Eq. 2
    with the configured offsets δ), NaN where the band is not observed. ``samples[v]`` are
    (N, C, S) draws of teff, logg, feh, mu, E; chain_weights (N, C) as in
    :class:`~dds_infer.posterior.Posterior`. At most ``max_draws`` draws per star are used,
    evenly spaced along each chain."""
    n = np.shape(samples["mu"])[0]
    flat, w = thinned_draws(samples, chain_weights, max_draws)
    out = np.empty((n, emulator.n_bands))
    for a, m, idx in star_blocks(n, _STARS_PER_CALL):
        st = take_stars(stars, idx)
        r = _weighted_residuals(emulator, st, *(flat[v][idx] for v in ("teff", "logg", "feh", "mu", "E")),
                                w[idx], config=config)
        out[a:a + m] = np.asarray(r)[:m]
    return np.where(np.asarray(stars.observed, bool), out, np.nan)


def residual_column(band: str) -> str:
    """Summary column of a star's posterior mean residual in ``band`` (every run writes them)."""
    return f"resid_{band}"


def band_residual_report(summary, bands, min_stars: int = MIN_STARS) -> dict:
    """Per band, from a run's summary table (``resid_<band>`` and ``flag`` columns): the median
    posterior mean residual over the stars with flag 0, its standard error and the stars used
    (:func:`estimate_offset_update`), and ``suggest_calibration``: the bands whose median is both
    above 3 standard errors and 0.01 mag. Empty if the summary has no residual columns (a run
    from before they existed)."""
    cols = [residual_column(b) for b in bands]
    if not all(c in summary.columns for c in cols):
        return {}
    est = estimate_offset_update(summary[cols].to_numpy(float), summary["flag"].to_numpy() == 0, min_stars)
    out = {b: {"median": (float(est["update"][j]) if est["n"][j] >= min_stars else None),
               "error": (float(est["error"][j]) if np.isfinite(est["error"][j]) else None), "n": int(est["n"][j])}
           for j, b in enumerate(bands)}
    flagged = [b for b, v in out.items() if v["median"] is not None and abs(v["median"]) > max(3 * v["error"], 0.01)]
    return {"bands": out, "suggest_calibration": flagged}


def estimate_offset_update(residuals, usable, min_stars: int = MIN_STARS) -> dict:
    """Per band: ``update`` (median residual over the usable stars that observe it; 0 where fewer
    than ``min_stars`` do), ``error`` (1.2533 · 1.4826 MAD / √n, the median's standard error for
    Gaussian residuals; NaN there) and ``n`` (stars used). residuals (N, B) with NaN where a band
    is not observed; usable (N,) bool."""
    r = np.asarray(residuals, float)
    use = np.asarray(usable, bool)[:, None] & np.isfinite(r)
    n = use.sum(axis=0)
    upd, err = np.zeros(r.shape[1]), np.full(r.shape[1], np.nan)
    for b in np.flatnonzero(n >= min_stars):
        x = r[use[:, b], b]
        med = float(np.median(x))
        upd[b] = med
        err[b] = 1.2533 * 1.4826 * float(np.median(np.abs(x - med))) / np.sqrt(len(x))
    return {"update": upd, "error": err, "n": n.astype(int)}


def project_out(v, basis, weights) -> np.ndarray:
    """v minus its weighted least-squares fit by the columns of basis (B, K): the part of v that is
    W-orthogonal to span(basis), W = diag(weights). Bands with weight 0 (no estimate) are left as
    they are."""
    v, A, w = np.asarray(v, float), np.asarray(basis, float).reshape(len(v), -1), np.asarray(weights, float)
    if A.shape[1] == 0 or not np.any(w > 0):
        return v.copy()
    coef, *_ = np.linalg.lstsq(A * np.sqrt(w)[:, None], v * np.sqrt(w), rcond=None)
    return np.where(w > 0, v - A @ coef, v)


@dataclass
class BandOffsets:
    """Calibrated offsets δ per band (mag, added to the model magnitudes), their standard errors,
    the stars used per band, the history per iteration and provenance."""

    bands: tuple
    offsets: np.ndarray
    errors: np.ndarray
    n_stars: np.ndarray
    history: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)

    @property
    def common(self) -> float:
        """Median of the offsets: the part degenerate with distance (set by the parallaxes)."""
        return float(np.median(self.offsets))

    def as_config_tuple(self) -> tuple:
        return tuple(float(v) for v in self.offsets)

    def to_dict(self) -> dict:
        return {"band_offsets": {b: float(v) for b, v in zip(self.bands, self.offsets)},
                "errors": {b: (None if not np.isfinite(e) else float(e)) for b, e in zip(self.bands, self.errors)},
                "n_stars": {b: int(k) for b, k in zip(self.bands, self.n_stars)},
                "common": self.common, "history": self.history, "attrs": self.attrs}

    def write(self, path) -> Path:
        """Write the JSON file ``dds-infer infer --band-offsets`` reads (atomically)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def read_band_offsets(path, bands) -> tuple:
    """Offsets for the emulator's ``bands`` (names, in order) from a JSON file: either the output of
    :meth:`BandOffsets.write` or a plain ``{band: offset}`` object. Bands the file does not name get
    0; a name that is not one of ``bands``, or a non-finite value, is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"band-offsets file {path} not found")
    data = json.loads(path.read_text())
    table = data.get("band_offsets", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object {{band: offset}} (or the output of "
                         "dds-infer calibrate-offsets)")
    names = list(bands)
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ValueError(f"{path}: unknown band name(s) {unknown}; the model's bands are {names}")
    out = []
    for b in names:
        v = table.get(b, 0.0)
        if not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(f"{path}: offset of band {b!r} must be a finite number (mag), got {v!r}")
        out.append(float(v))
    return tuple(out)


def calibrate_band_offsets(catalog, emulator, out_dir, *, prior=None, config: InferenceConfig | None = None,
                           iterations: int = 4, tol: float = 0.002, min_stars: int = MIN_STARS,
                           free: tuple = (), method: str = "grid", seed: int = 0, progress: bool = True,
                           callback=None, **infer_kw) -> BandOffsets:
    """Offsets δ per band from ``catalog``'s own photometry (module docstring), starting from
    ``config.band_offsets`` (zeros if None).

    free: which of :data:`GAUGE_DIRECTIONS` ("common", "reddening") the updates may move; by
    default neither (each update is projected onto their weighted complement).

    Each iteration's run goes to ``out_dir/iter_NN`` (:func:`dds_infer.pipeline.infer`, resumable:
    a rerun reuses finished iterations, whose inputs are the same). ``callback(record)`` is called
    after each iteration with its history record. infer_kw: passed on (e.g. ``batch_size``,
    ``grid_settings``, NUTS settings with ``method="nuts"``).
    """
    import dataclasses

    from .pipeline import infer

    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be > 0, got {tol!r}")
    unknown = set(free) - set(GAUGE_DIRECTIONS)
    if unknown:
        raise ValueError(f"free must name directions among {GAUGE_DIRECTIONS}, got {sorted(unknown)}")
    config = InferenceConfig() if config is None else config
    delta = np.asarray(config.offsets(emulator.n_bands), float)
    out_dir = Path(out_dir)
    history, est = [], None
    delta0 = delta.copy()
    for it in range(iterations):
        # δ − δ0 is applied to the data, not the model: the likelihood depends only on m̂ − δ, and a
        # fixed config keeps every iteration's compiled programs the same (the persistent cache
        # serves them; an offset in the config is a constant of the program)
        shifted = dataclasses.replace(catalog, mag=np.asarray(catalog.mag) - (delta - delta0))
        # only the summary is read back: the draws stay in the chunk files ("never" combines them,
        # so memory does not grow with the catalogue)
        post = infer(shifted, emulator, out_dir / f"iter_{it:02d}", prior=prior, config=config, method=method,
                     seed=seed, progress=progress, **{"combine": "never", **infer_kw})
        summ = post.summary()
        usable = summ["flag"].to_numpy() == 0
        res = summ[[residual_column(b) for b in emulator.bands.names]].to_numpy(float)  # written by the run
        est = estimate_offset_update(res, usable, min_stars)
        r_mean = _mean_reddening_vector(emulator, summ, usable)
        basis = [np.ones(emulator.n_bands)] * ("common" not in free) + [r_mean] * ("reddening" not in free)
        weights = np.where(np.isfinite(est["error"]), 1.0 / np.maximum(np.nan_to_num(est["error"]), 1e-6) ** 2, 0.0)
        update = project_out(est["update"], np.column_stack(basis) if basis else np.zeros((emulator.n_bands, 0)),
                             weights)
        record = {"iteration": it, "offsets_in": delta.tolist(), "median_residual": est["update"].tolist(),
                  "update": update.tolist(), "mean_R": r_mean.tolist(),
                  "n_usable": int(usable.sum()), "n_flagged": int((~usable).sum()),
                  "max_abs_update": float(np.max(np.abs(update)))}
        history.append(record)
        delta = delta + update
        if callback is not None:
            callback(record)
        if record["max_abs_update"] < tol:
            break
    return BandOffsets(bands=tuple(emulator.bands.names), offsets=delta, errors=est["error"], n_stars=est["n"],
                       history=history,
                       attrs={"method": method, "seed": seed, "n_catalog_stars": int(catalog.n_stars),
                              "iterations_run": len(history), "converged": history[-1]["max_abs_update"] < tol,
                              "tol": tol, "min_stars": min_stars, "free": list(free), "zp": str(config.zp),
                              "sigma_floor": config.sigma_floor})


def _mean_reddening_vector(emulator, summary, usable) -> np.ndarray:
    """Mean R(θ) (B,) over the usable stars at their posterior medians (all stars if none is)."""
    sel = usable if usable.any() else np.ones_like(usable)
    theta = np.column_stack([summary[f"{v}_median"].to_numpy()[sel] for v in ("teff", "logg", "feh")])
    R = np.asarray(jax.vmap(emulator.reddening_vector)(jnp.asarray(theta, jnp.float32)))
    return np.nanmean(R, axis=0)
