"""Per-star posteriors of (θ, μ, E): container, diagnostics, summary table, NetCDF I/O.

A :class:`Posterior` holds draws with shape (star, chain, draw) for T_eff, log g, [Fe/H],
μ, E and the derived distance d = 10^(μ/5 + 1) pc and A_G = E·R_G(θ) (Eq. 2, G band), plus
sampler statistics, optional chain weights from mode combination, and per-star flags.

Diagnostics (:mod:`dds_infer.diagnostics`, re-exported here) are vectorised over stars: the
rank-normalised split-R̂ and bulk ESS of Vehtari et al. (2021), computed from the unweighted
chains (chain weights only enter the quantiles).

Summary flag bits (:data:`FLAGS`), OR-ed per star:
 1 R̂ > r_hat_max (any of teff, logg, feh, mu, E); 2 bulk ESS < ess_min;
 4 divergent transitions after warmup; 8 several modes combined (chains weighted);
 16 fewer than half of the draws inside the emulator's training domain (density > 0.01);
 32 a chain started at a point with non-finite log density; 64 a draw of a fitted variable is
 not finite (NaN or ±inf; such a chain gets weight 0 from the mode combination); 128 the data
 are not fitted: posterior predictive p-value of the χ² below fit_p_min
 (:mod:`dds_infer.fit_check`; only where the run computed ``fit_p``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .atomic import atomic_path
from .diagnostics import (rank_diagnostics, rank_rhat_ess_bulk, rhat_pass_rate_reference,  # noqa: F401 (re-exported)
                          worst_rank_diagnostics)

__all__ = ["Posterior", "concat", "FLAGS", "VARIABLES", "flag_counts", "rank_diagnostics", "rank_rhat_ess_bulk",
           "rhat_pass_rate_reference", "weighted_quantiles", "worst_rank_diagnostics"]

VARIABLES = ("teff", "logg", "feh", "mu", "E", "distance_pc", "A_G")
FITTED = ("teff", "logg", "feh", "mu", "E")
FLAGS = {"r_hat": 1, "low_ess": 2, "divergent": 4, "multimodal": 8, "outside_domain": 16, "bad_init": 32,
         "nonfinite": 64, "poor_fit": 128}
FIT_P_MIN = 1e-3  # default fit_p_min of Posterior.summary (flag bit "poor_fit")
QUANTILES = (0.16, 0.5, 0.84)
# zlib after HDF5's byte shuffle: on a 1,024-star grid-path chunk 0.87 s and 21 MB to write,
# against 1.27 s and 24 MB for arviz's plain zlib (0.31 s and 40 MB uncompressed); a NUTS-shaped
# chunk of random draws (4 x 500) 51 KB per star against 57, in about the same time
NETCDF_ENCODING = {"zlib": True, "complevel": 4, "shuffle": True}
_STAR_INFO = ("chain_weights", "n_modes", "mode_flag", "in_domain_frac")


def flag_counts(flag) -> dict:
    """Stars per reason of a summary's ``flag`` column (:data:`FLAGS`; a star flagged for several
    reasons counts in each), plus ``"any"``: why stars are flagged, not only how many."""
    flag = np.asarray(flag, dtype=np.int64)
    return {"any": int(np.count_nonzero(flag)), **{k: int(np.count_nonzero(flag & bit)) for k, bit in FLAGS.items()}}


def derive_samples(samples: dict, emulator) -> np.ndarray:
    """Add distance_pc = 10^(μ/5 + 1) and A_G = E·R_G(θ) (Eq. 2, G band) to ``samples`` (arrays
    (N, ...)); return the per-star fraction of draws inside the emulator's training domain."""
    try:
        ref = emulator.bands.index("gaia_g")
    except KeyError:
        ref = 0
    samples["distance_pc"] = 10.0 ** (samples["mu"] / 5.0 + 1.0)
    a_g, in_dom = _extinction_and_domain(emulator, samples["teff"], samples["logg"], samples["feh"],
                                         samples["E"], ref=ref)
    samples["A_G"] = np.asarray(a_g)
    dom = np.asarray(in_dom)
    return dom.reshape(dom.shape[0], -1).mean(axis=1)


@partial(jax.jit, static_argnames=("ref",))
def _extinction_and_domain(emulator, teff, logg, feh, E, *, ref: int):
    """E·R_ref(θ) (Eq. 2) and whether θ is in the training domain, per draw: one compiled program per shape
    (XLA drops the unused M(θ) sector) instead of ~100 eager kernels compiled anew for every chunk
    shape (the grid path's derived values took 1.2 s per 1,000 stars)."""
    theta = jnp.stack([teff, logg, feh], axis=-1)
    return E * emulator.reddening_vector(theta)[..., ref], emulator.in_domain(theta)


def thinned_draws(samples: dict, chain_weights=None, max_draws: int = 256,
                  variables=("teff", "logg", "feh", "mu", "E")) -> tuple[dict, np.ndarray]:
    """At most ``max_draws`` draws per star, evenly spaced along each chain, flattened over chains:
    ({v: (N, C·S') float32}, weights (N, C·S') float32 summing to 1 per star, from chain_weights
    (N, C), default equal). For posterior averages (goodness of fit, residuals) that do not need
    every draw."""
    n, c, s = np.shape(samples["mu"])
    keep = np.unique(np.round(np.linspace(0, s - 1, min(s, max(1, -(-int(max_draws) // c))))).astype(int))
    k = len(keep)
    flat = {v: np.asarray(samples[v], np.float32)[:, :, keep].reshape(n, c * k) for v in variables}
    w = np.full((n, c), 1.0 / c) if chain_weights is None else np.asarray(chain_weights, np.float64)
    return flat, np.repeat(w / k, k, axis=1).astype(np.float32)


def star_blocks(n: int, size: int):
    """(start, count, idx) over n stars in blocks of ``size``; idx has ``size`` entries, the last
    block padded with the last star (so one compiled program serves every block)."""
    for a in range(0, n, size):
        yield a, min(size, n - a), np.minimum(np.arange(a, a + size), n - 1)


def take_stars(stars, idx):
    """Rows ``idx`` of every array leaf of a per-star pytree (e.g. a ``StarData`` from one of
    :func:`star_blocks`' blocks); scalar leaves are kept as they are."""
    return jax.tree_util.tree_map(lambda x: x[idx] if getattr(x, "ndim", 0) else x, stars)


def weighted_quantiles(x, q, chain_weights=None) -> np.ndarray:
    """Quantiles q of each star's draws x (N, C, S) -> (len(q), N).

    Star by star: equal chain weights, ``np.quantile`` (linear interpolation); otherwise each
    draw has weight w_c / S and ``np.quantile(..., weights=, method="inverted_cdf")`` is used.
    A star's quantiles do not depend on the other stars (a chunk summarised alone gives the
    rows of the whole catalogue's summary).
    """
    n, c, s = x.shape
    flat = x.reshape(n, c * s)
    out = np.quantile(flat, q, axis=1)
    if chain_weights is None:
        return out
    cw = np.asarray(chain_weights, dtype=np.float64)
    uneven = ~np.all(np.isclose(cw, cw[:, :1]), axis=1)
    if uneven.any():
        w = np.repeat(cw[uneven] / s, s, axis=1)
        # draws of weight 0 never decide an inverted-CDF quantile: set to 0 (a broken chain may be NaN)
        x_u = np.where(w > 0, flat[uneven], 0.0)
        out[:, uneven] = np.quantile(x_u, q, axis=1, weights=w, method="inverted_cdf")
    return out


class StarRows:
    """``n_stars`` and ``len()`` from ``star_id``: what every per-star container here shares
    (:class:`Posterior`, :class:`~dds_infer.run_outputs.ChunkedPosterior`, ...)."""

    @property
    def n_stars(self) -> int:
        return int(self.star_id.shape[0])

    def __len__(self) -> int:
        return self.n_stars


@dataclass
class Posterior(StarRows):
    """Draws (N, C, S) of :data:`VARIABLES` and sampler statistics for N stars.

    sample_stats: per draw (N, C, S): potential_energy, diverging, num_steps.
    chain_stats: per chain (N, C): step_size, accept_prob, init_valid.
    chain_weights: (N, C) weights of the chains (sum 1 per star); uniform without mode combination.
    n_modes, mode_flag: (N,) from mode combination (1 and 0 without it).
    in_domain_frac: (N,) fraction of draws where the training density exceeds 0.01.
    attrs: provenance (JSON-serialisable).
    star_stats: further per-star diagnostics (N,), e.g. the grid path's ``weight_ess`` (Kish
    effective sample size of its importance weights, which then replaces the bulk ESS in the
    flag) and ``log_evidence``; carried into the summary, NetCDF and concatenation.
    """

    star_id: np.ndarray
    samples: dict
    sample_stats: dict
    chain_stats: dict
    chain_weights: np.ndarray
    n_modes: np.ndarray
    mode_flag: np.ndarray
    in_domain_frac: np.ndarray
    attrs: dict = field(default_factory=dict)
    star_stats: dict = field(default_factory=dict)

    # --- construction -------------------------------------------------
    @classmethod
    def from_batch(cls, result, star_id, emulator, mode_results=None, attrs=None) -> "Posterior":
        """From an engine :class:`~dds_infer.engine.BatchResult` and the emulator (for A_G, domain).

        mode_results: optional sequence (one per star) of objects with ``chain_weights`` (C,),
        ``n_modes`` and ``flag`` (e.g. ``modes.combine_chain_modes``'s ModeResult).
        """
        s = {k: np.asarray(v) for k, v in result.samples.items()}
        missing = [k for k in FITTED if k not in s]
        if missing:
            raise KeyError(f"model draws lack the sites {missing}; the model must sample 'mu', 'E' and "
                           "record deterministic 'teff', 'logg', 'feh'")
        samples = {k: s[k] for k in FITTED}
        in_dom = derive_samples(samples, emulator)
        n, c = samples["mu"].shape[:2]
        if mode_results is None:
            weights, n_modes, mflag = np.full((n, c), 1.0 / c), np.ones(n, int), np.zeros(n, int)
        else:
            if len(mode_results) != n:
                raise ValueError(f"got {len(mode_results)} mode results for {n} stars")
            weights = np.stack([np.asarray(m.chain_weights, dtype=np.float64) for m in mode_results])
            n_modes = np.array([int(m.n_modes) for m in mode_results])
            mflag = np.array([int(m.flag) for m in mode_results])
        return cls(
            star_id=np.asarray(star_id),
            samples=samples,
            sample_stats={"potential_energy": np.asarray(result.potential_energy),
                          "diverging": np.asarray(result.diverging),
                          "num_steps": np.asarray(result.num_steps)},
            chain_stats={"step_size": np.asarray(result.step_size),
                         "accept_prob": np.asarray(result.accept_prob),
                         "init_valid": np.asarray(result.init_valid)},
            chain_weights=weights, n_modes=n_modes, mode_flag=mflag, in_domain_frac=in_dom,
            attrs=dict(attrs or {}))

    def take(self, idx) -> "Posterior":
        """The stars ``idx`` (indices or a boolean mask), every per-star array subset alike."""
        from dataclasses import replace

        pick = lambda d: {k: np.asarray(v)[idx] for k, v in d.items()}  # noqa: E731
        return replace(self, star_id=np.asarray(self.star_id)[idx], samples=pick(self.samples),
                       sample_stats=pick(self.sample_stats), chain_stats=pick(self.chain_stats),
                       star_stats=pick(self.star_stats), chain_weights=np.asarray(self.chain_weights)[idx],
                       n_modes=np.asarray(self.n_modes)[idx], mode_flag=np.asarray(self.mode_flag)[idx],
                       in_domain_frac=np.asarray(self.in_domain_frac)[idx])

    def stars(self, ids) -> "Posterior":
        """The stars ``ids`` (star ids, in that order), as :meth:`ChunkedPosterior.stars
        <dds_infer.run_outputs.ChunkedPosterior.stars>`: a KeyError names ids not here."""
        from .run_outputs import stars_of

        return stars_of(self, ids)

    def with_draws_rounded(self, keep_bits: int) -> "Posterior":
        """The same posterior with every float32 value per draw (the variables' draws and the
        per-draw ``potential_energy``) bit-rounded to ``keep_bits`` mantissa bits
        (:func:`dds_infer.draw_precision.bit_round`; relative error ≤ 2^-(keep_bits+1)), recorded
        in ``attrs["keep_bits"]``: a third smaller chunk files at 12 bits."""
        from dataclasses import replace

        from .draw_precision import bit_round

        def rounded(d):
            return {k: bit_round(v, keep_bits) if np.asarray(v).dtype == np.float32 else v for k, v in d.items()}

        return replace(self, samples=rounded(self.samples), sample_stats=rounded(self.sample_stats),
                       attrs={**self.attrs, "keep_bits": int(keep_bits)})

    # --- shape (n_stars, len: StarRows) --------------------------------
    @property
    def n_chains(self) -> int:
        return int(self.samples["mu"].shape[1])

    @property
    def n_draws(self) -> int:
        return int(self.samples["mu"].shape[2])

    # --- arviz --------------------------------------------------------
    def to_inference_data(self):
        """arviz.InferenceData: posterior and sample_stats with dims (star, chain, draw), plus a
        ``star_info`` group (chain_weights, n_modes, mode_flag, in_domain_frac)."""
        import arviz as az
        import xarray as xr

        coords = {"star": self.star_id, "chain": np.arange(self.n_chains), "draw": np.arange(self.n_draws)}
        dims3, dims2 = ("star", "chain", "draw"), ("star", "chain")
        attrs = {"dds_infer_attrs": json.dumps(self.attrs, sort_keys=True, default=str)}
        post = xr.Dataset({k: (dims3, v) for k, v in self.samples.items()}, coords=coords, attrs=attrs)
        stats = {k: (dims3, v) for k, v in self.sample_stats.items()}
        stats.update({k: (dims2, v) for k, v in self.chain_stats.items()})
        star = {"chain_weights": (dims2, self.chain_weights), "n_modes": (("star",), self.n_modes),
                "mode_flag": (("star",), self.mode_flag), "in_domain_frac": (("star",), self.in_domain_frac)}
        star.update({k: (("star",), np.asarray(v)) for k, v in self.star_stats.items()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # star_info is not a standard arviz group
            return az.InferenceData(posterior=post, sample_stats=xr.Dataset(stats, coords=coords),
                                    star_info=xr.Dataset(star, coords=coords))

    @classmethod
    def from_inference_data(cls, idata) -> "Posterior":
        post, stats, star = idata.posterior, idata.sample_stats, idata["star_info"]
        sid = post["star"].values
        if sid.dtype.kind in "OU":
            sid = sid.astype(str)
        per_draw = [k for k in stats.data_vars if stats[k].dims == ("star", "chain", "draw")]
        per_chain = [k for k in stats.data_vars if stats[k].dims == ("star", "chain")]
        return cls(
            star_id=sid,
            samples={k: post[k].values for k in post.data_vars},
            sample_stats={k: stats[k].values for k in per_draw},
            chain_stats={k: stats[k].values for k in per_chain},
            chain_weights=star["chain_weights"].values, n_modes=star["n_modes"].values,
            mode_flag=star["mode_flag"].values, in_domain_frac=star["in_domain_frac"].values,
            attrs=json.loads(post.attrs.get("dds_infer_attrs", "{}")),
            star_stats={k: star[k].values for k in star.data_vars if k not in _STAR_INFO})

    # --- I/O ----------------------------------------------------------
    def save(self, path) -> Path:
        """Write NetCDF (HDF5 via h5netcdf) atomically (:func:`dds_infer.atomic.atomic_path`)."""
        path = Path(path)
        idata = self.to_inference_data()
        mode = "w"
        with atomic_path(path) as tmp:
            for group in idata.groups():  # as InferenceData.to_netcdf, with the byte shuffle before zlib
                data = idata[group]
                data.to_netcdf(str(tmp), mode=mode, group=group, engine="h5netcdf", encoding={
                    k: NETCDF_ENCODING for k, v in data.data_vars.items() if v.dtype.kind in "biuf"})
                mode = "a"
        return path

    @classmethod
    def load(cls, path) -> "Posterior":
        import arviz as az

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"posterior file {path} not found")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            idata = az.from_netcdf(str(path), engine="h5netcdf")
        return cls.from_inference_data(idata)

    # --- summary ------------------------------------------------------
    def flat_draws(self, name: str):
        """(draws (N, C·S), weights (N, C·S)) of one variable: chains pooled, each draw carrying
        its chain's weight (for weighted quantiles, coverage and ranks)."""
        x = np.asarray(self.samples[name])
        w = np.broadcast_to(np.asarray(self.chain_weights)[:, :, None], x.shape[:3])
        return x.reshape(self.n_stars, -1), w.reshape(self.n_stars, -1)

    def summary(self, r_hat_max: float = 1.01, ess_min: float = 100.0, fit_p_min: float = FIT_P_MIN):
        """One row per star: median, q16, q84 of each variable (chain weights respected),
        r_hat and ess_bulk of the fitted variables, n_divergent, n_modes, flag (see FLAGS),
        and the per-star statistics (e.g. ``fit_p``, :mod:`dds_infer.fit_check`)."""
        import pandas as pd

        cols = {"star_id": self.star_id}
        weights = self.chain_weights
        # the grid path's draws are i.i.d. (one "chain", weight ESS below): no R̂; a single MCMC chain
        # still gets the split-R̂ of its two halves and its ESS (Vehtari et al. 2021)
        iid = self.attrs.get("method") == "grid" or "weight_ess" in self.star_stats
        rhat_all, ess_all = [], []
        for k in VARIABLES:
            q16, med, q84 = weighted_quantiles(self.samples[k], QUANTILES, weights)
            cols[f"{k}_median"], cols[f"{k}_q16"], cols[f"{k}_q84"] = med, q16, q84
            if k in FITTED:
                if not iid and self.n_draws >= 4:
                    rhat, ess = rank_rhat_ess_bulk(self.samples[k])
                else:
                    rhat = ess = np.full(self.n_stars, np.nan)
                cols[f"{k}_r_hat"], cols[f"{k}_ess_bulk"] = rhat, ess
                rhat_all.append(rhat)
                ess_all.append(ess)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (one chain)
            rhat_max = np.nanmax(np.stack(rhat_all), axis=0) if rhat_all else np.full(self.n_stars, np.nan)
            ess_low = np.nanmin(np.stack(ess_all), axis=0)
        if "weight_ess" in self.star_stats:
            ess_low = np.asarray(self.star_stats["weight_ess"], dtype=np.float64)
        n_div = self.sample_stats["diverging"].sum(axis=(1, 2)).astype(int)
        nonfinite = ~np.all([np.isfinite(self.samples[k]).all(axis=(1, 2)) for k in FITTED], axis=0)
        flag = ((rhat_max > r_hat_max) * FLAGS["r_hat"] + (ess_low < ess_min) * FLAGS["low_ess"]
                + (n_div > 0) * FLAGS["divergent"] + (self.n_modes > 1) * FLAGS["multimodal"]
                + (self.in_domain_frac < 0.5) * FLAGS["outside_domain"]
                + (~self.chain_stats["init_valid"].all(axis=1)) * FLAGS["bad_init"]
                + nonfinite * FLAGS["nonfinite"])
        if "fit_p" in self.star_stats:  # NaN (a chunk from before the check existed) is not flagged
            flag = flag + (np.asarray(self.star_stats["fit_p"]) < fit_p_min) * FLAGS["poor_fit"]
        cols.update(r_hat_max=rhat_max, ess_bulk_min=ess_low, n_divergent=n_div, n_modes=self.n_modes,
                    mode_flag=self.mode_flag, in_domain_frac=self.in_domain_frac, flag=flag.astype(int))
        cols.update({k: np.asarray(v) for k, v in self.star_stats.items()})
        return pd.DataFrame(cols)

    def write_summary_parquet(self, path, **summary_kw) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            self.summary(**summary_kw).to_parquet(tmp, index=False)
        return path


def concat(posteriors) -> Posterior:
    """Concatenate posteriors of disjoint star sets (same chains, draws and variables) along stars."""
    posteriors = list(posteriors)
    if not posteriors:
        raise ValueError("concat needs at least one Posterior")
    first = posteriors[0]
    for p in posteriors[1:]:
        if (p.n_chains, p.n_draws) != (first.n_chains, first.n_draws) or set(p.samples) != set(first.samples):
            raise ValueError("cannot concat posteriors with different chains/draws/variables: "
                             f"{(first.n_chains, first.n_draws, sorted(first.samples))} vs "
                             f"{(p.n_chains, p.n_draws, sorted(p.samples))}")
    cat = lambda get: np.concatenate([get(p) for p in posteriors], axis=0)  # noqa: E731
    catd = lambda name: {k: cat(lambda p: getattr(p, name)[k]) for k in getattr(first, name)}  # noqa: E731
    stat_keys = list(dict.fromkeys(k for p in posteriors for k in p.star_stats))
    # a per-star statistic missing from some parts (e.g. chunks written before it existed): NaN there
    star_stats = {k: cat(lambda p: np.asarray(p.star_stats[k]) if k in p.star_stats
                         else np.full(p.n_stars, np.nan)) for k in stat_keys}
    return Posterior(star_id=cat(lambda p: p.star_id), samples=catd("samples"), sample_stats=catd("sample_stats"),
                     chain_stats=catd("chain_stats"), chain_weights=cat(lambda p: p.chain_weights),
                     n_modes=cat(lambda p: p.n_modes), mode_flag=cat(lambda p: p.mode_flag),
                     in_domain_frac=cat(lambda p: p.in_domain_frac), attrs=dict(first.attrs),
                     star_stats=star_stats)
