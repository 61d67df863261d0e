"""Multimodal posteriors: find the modes on a θ grid before NUTS, combine chains after it.

Before sampling (jnp, vmap-able over stars):

1. :func:`make_theta_grid` fixes a θ grid shared by all stars: the training-density nodes
   with ρ > threshold (≈3,000 points for Green2020), with M(θ), R(θ) computed once.
2. :func:`grid_log_posterior`: for fixed θ, m = M(θ) + μ + E R(θ) is linear in (μ, E), so
   the weighted least-squares optimum solves a 2×2 system in closed form. A parallax with
   S/N > ``snr_linear`` enters as a Gaussian on μ (linearised: μ_ϖ = 10 − 5 log10 ϖ,
   σ_μ = 5 σ_ϖ / (ϖ ln 10)); otherwise its exact term is added at the solution. The
   Gaussian integral over μ ∈ ℝ, E ≥ 0 is exact (Laplace: 2π |A|^(-1/2) Φ(E*/σ_E)); the
   priors are evaluated at the constrained optimum (E clipped at 0, μ re-optimised).
3. :func:`find_modes`: basins of attraction on the grid graph (each node points to its
   best neighbour; pointer jumping finds the local maximum it climbs to), basin masses,
   then greedy merging of maxima closer than ΔT_eff < 500 K and Δlog g < 0.5 dex (dwarf vs
   giant stay apart): up to K modes with their relative posterior masses.
4. :func:`initial_params`: ≥ 1 chain per significant mode, the rest by mass, in NumPyro's
   unconstrained space.

After sampling (host numpy): :func:`combine_chain_modes` clusters chains whose means
disagree by more than ``n_sigma`` within-chain σ and weights the clusters by their
posterior mass, estimated per cluster from the chains' own samples and log densities
with the reciprocal-importance estimator of Gelfand & Dey (1994, JRSS B 56, 501) — or,
with ``weights="grid"``, by the grid/Laplace mass of the matching mode. This is the
"mass of each mode" weighting; Yao, Vehtari & Gelman (2022, JMLR 23, 79, "Stacking for
non-mixing Bayesian computations") discuss it next to stacking, which needs per-datum
predictive densities we do not keep. Flags: 0 one mode; 1 several modes, combined;
2 unresolved (a significant grid mode has no chain, or the masses are not finite).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.special import log_ndtr, logsumexp

from .inference import InferenceConfig, mu_E_normal_equations, parallax_model_mas, photometric_variance
from .priors import Prior, log_prior

__all__ = ["ThetaGrid", "Modes", "ModeResult", "make_theta_grid", "mu_E_normal_equations", "grid_log_posterior",
           "find_modes", "star_modes", "initial_params", "combine_chain_modes",
           "FLAG_OK", "FLAG_MULTIMODAL", "FLAG_UNRESOLVED"]

FLAG_OK, FLAG_MULTIMODAL, FLAG_UNRESOLVED = 0, 1, 2


@struct.dataclass
class ThetaGrid:
    """A θ grid shared by all stars: θ (G, 3), x (G, 3), M (G, B), R (G, B), neighbours (G, 26)."""

    theta: jnp.ndarray
    x: jnp.ndarray
    M: jnp.ndarray
    R: jnp.ndarray
    neighbours: jnp.ndarray


@struct.dataclass
class Modes:
    """Up to K modes, sorted by mass: θ (K, 3), x (K, 3) normalised, μ, E, log_mass (K,), valid (K,)."""

    theta: jnp.ndarray
    x: jnp.ndarray
    mu: jnp.ndarray
    E: jnp.ndarray
    log_mass: jnp.ndarray
    valid: jnp.ndarray


class ModeResult(NamedTuple):
    """chain_weights (C,) summing to 1; n_modes; mode_of_chain (C,) cluster id (−1: a chain with
    non-finite draws, weight 0); flag; log_mass per cluster."""

    chain_weights: np.ndarray
    n_modes: int
    mode_of_chain: np.ndarray
    flag: int
    log_mass: np.ndarray


def make_theta_grid(emulator, *, threshold: float = 0.01, entry: int = 0, stride=(1, 1, 1),
                    density=None) -> ThetaGrid:
    """Grid nodes of ``emulator.domain`` with training density > ``threshold`` (every ``stride``-th).

    density: optional replacement of the domain's density array (same shape), e.g. a
    max-filtered copy so that a strided node is kept when any neighbour passes the threshold.
    """
    dom = emulator.domain
    if dom is None:
        raise ValueError("emulator has no training domain; make_theta_grid needs one")
    dens = np.asarray(dom.density[entry]) if density is None else np.asarray(density)
    dens = dens[::stride[0], ::stride[1], ::stride[2]]
    axes = [np.asarray(a, dtype=np.float64)[::s] for a, s in zip((dom.teff, dom.logg, dom.feh), stride)]
    keep = dens > threshold
    if keep.sum() < 2:
        raise ValueError(f"fewer than 2 grid nodes have training density > {threshold}")
    index = np.full(keep.shape, -1, dtype=np.int64)
    index[keep] = np.arange(keep.sum())
    ijk = np.argwhere(keep)
    nb = []
    for d in np.ndindex(3, 3, 3):
        off = np.array(d) - 1
        if not off.any():
            continue
        q = ijk + off
        inside = np.all((q >= 0) & (q < np.array(keep.shape)), axis=1)
        j = np.where(inside, index[tuple(np.clip(q, 0, np.array(keep.shape) - 1).T)], -1)
        nb.append(np.where(j >= 0, j, np.arange(len(ijk))))
    theta = np.stack([axes[k][ijk[:, k]] for k in range(3)], axis=1)
    theta_j = jnp.asarray(theta, dtype=jnp.float32)
    return ThetaGrid(theta=theta_j, x=emulator.normalize(theta_j), M=emulator.absolute_mags(theta_j),
                     R=emulator.reddening_vector(theta_j),
                     neighbours=jnp.asarray(np.stack(nb, axis=1), dtype=jnp.int32))


def _as_grid(theta_grid, emulator) -> ThetaGrid:
    if isinstance(theta_grid, ThetaGrid):
        return theta_grid
    th = jnp.asarray(theta_grid)
    n = th.shape[0]
    return ThetaGrid(theta=th, x=emulator.normalize(th), M=emulator.absolute_mags(th),
                     R=emulator.reddening_vector(th), neighbours=jnp.tile(jnp.arange(n)[:, None], (1, 26)))


def grid_log_posterior(star, emulator, prior: Prior, config: InferenceConfig, theta_grid,
                       snr_linear: float = 3.0):
    """(log posterior mass (G,), μ̂ (G,), Ê (G,)) per θ node, (μ, E) marginalised by Laplace.

    ``theta_grid``: a :class:`ThetaGrid` (preferred: network outputs computed once) or a
    (G, 3) array of physical θ. Returns the log of ∫∫_{E≥0} p(θ, μ, E | data) dμ dE per node
    up to a per-star constant, with the Gaussian (photometry + linearised parallax) part
    exact and the priors (and a low-S/N parallax) evaluated at the constrained optimum.
    """
    g = _as_grid(theta_grid, emulator)
    w = jnp.where(star.observed, 1.0 / photometric_variance(star, config), 0.0)  # (B,)
    y = star.mag - g.M - config.offsets(emulator.n_bands)  # (G, B) = μ + E R + noise
    R = g.R
    # parallax: corrected ϖ_c = ϖ̂ − ϖ_zp
    s_plx = config.parallax_inflation * star.parallax_err
    plx_c = star.parallax - config.zero_point_mas
    use_plx = star.has_parallax & config.use_parallax
    linear = use_plx & (plx_c > snr_linear * s_plx)
    plx_pos = jnp.where(linear, plx_c, 1.0)
    mu_p = 10.0 - 5.0 * jnp.log10(plx_pos)
    w_p = jnp.where(linear, (plx_pos * math.log(10.0) / (5.0 * s_plx)) ** 2, 0.0)
    ne = mu_E_normal_equations(w, y, R, w_p, mu_p)
    a00, a01, b0, det, mu_s, E_s = ne["a00"], ne["a01"], ne["b0"], ne["det"], ne["mu"], ne["E"]
    sig_E = jnp.sqrt(a00 / det)
    E_c = jnp.maximum(E_s, 0.0)
    mu_c = (b0 - a01 * E_c) / a00
    # Gaussian part at its unconstrained optimum, and its integral over E >= 0
    r = y - mu_s[:, None] - E_s[:, None] * R
    chi2 = (r * r) @ w + w_p * (mu_s - mu_p) ** 2
    norm_phot = -0.5 * jnp.sum(jnp.where(star.observed, jnp.log(2.0 * math.pi / jnp.maximum(w, 1e-30)), 0.0))
    norm_plx = jnp.where(linear, -jnp.log(s_plx) - 0.5 * math.log(2.0 * math.pi), 0.0)
    log_gauss = -0.5 * chi2 + math.log(2.0 * math.pi) - 0.5 * jnp.log(det) + log_ndtr(E_s / sig_E)
    exact_plx = (-0.5 * ((plx_c - parallax_model_mas(mu_c)) / s_plx) ** 2 - jnp.log(s_plx)
                 - 0.5 * math.log(2.0 * math.pi))
    plx_term = jnp.where(use_plx & ~linear, exact_plx, 0.0)
    lp = jax.vmap(lambda th, m, e: log_prior(th, m, e, star, prior))(g.theta, mu_c, E_c)
    logp = log_gauss + norm_phot + norm_plx + plx_term + lp
    logp = jnp.where(jnp.isfinite(logp), logp, -jnp.inf)
    return logp, mu_c, E_c


def _basin_roots(logp, neighbours, n_jump: int):
    """Index of the local maximum each node climbs to (steepest ascent on the grid graph)."""
    cand = jnp.concatenate([jnp.arange(logp.shape[0])[:, None], neighbours], axis=1)
    lc = logp[cand]
    # highest neighbour; ties go to the smallest index, so plateaus drain to one node (no cycles)
    best = jnp.max(lc, axis=1, keepdims=True)
    parent = jnp.min(jnp.where(lc == best, cand, logp.shape[0]), axis=1)
    for _ in range(n_jump):
        parent = parent[parent]
    return parent


def find_modes(logp, mu_hat, E_hat, theta_grid: ThetaGrid, *, k_max: int = 4, dlogg: float = 0.5,
               dteff: float = 500.0, min_mass: float = 1e-3) -> Modes:
    """Up to ``k_max`` distinct modes of the grid posterior (sorted by mass).

    Two local maxima are the same mode when |ΔT_eff| < ``dteff`` and |Δlog g| < ``dlogg``.
    log_mass is the mode's share of the total grid mass (log); ``valid`` marks modes with
    share > ``min_mass`` (the top mode is valid whenever the posterior is finite anywhere).
    """
    G = logp.shape[0]
    roots = _basin_roots(logp, theta_grid.neighbours, int(math.ceil(math.log2(max(G, 2)))) + 1)
    seg_max = jax.ops.segment_max(logp, roots, num_segments=G)
    safe_max = jnp.where(jnp.isfinite(seg_max), seg_max, 0.0)
    seg_sum = jax.ops.segment_sum(jnp.exp(logp - safe_max[roots]), roots, num_segments=G)
    is_root = roots == jnp.arange(G)
    basin = jnp.where(is_root & (seg_sum > 0), safe_max + jnp.log(jnp.maximum(seg_sum, 1e-38)), -jnp.inf)
    th = theta_grid.theta
    total = logsumexp(logp)
    picks, masses, oks = [], [], []
    for _ in range(k_max):
        j = jnp.argmax(basin)
        ok = jnp.isfinite(basin[j])
        close = (jnp.abs(th[:, 0] - th[j, 0]) < dteff) & (jnp.abs(th[:, 1] - th[j, 1]) < dlogg)
        absorbed = close & jnp.isfinite(basin)
        masses.append(logsumexp(jnp.where(absorbed, basin, -jnp.inf)))
        basin = jnp.where(absorbed, -jnp.inf, basin)
        picks.append(j)
        oks.append(ok)
    picks, oks = jnp.stack(picks), jnp.stack(oks)
    lm = jnp.where(oks, jnp.stack(masses) - total, -jnp.inf)
    order = jnp.argsort(-lm)
    picks, oks, lm = picks[order], oks[order], lm[order]
    valid = oks & ((lm > math.log(min_mass)) | (jnp.arange(k_max) == 0))
    return Modes(theta=th[picks], x=theta_grid.x[picks], mu=mu_hat[picks], E=E_hat[picks],
                 log_mass=lm, valid=valid)


def star_modes(star, emulator, prior: Prior, config: InferenceConfig, theta_grid: ThetaGrid,
               **kwargs) -> Modes:
    """:func:`grid_log_posterior` then :func:`find_modes` for one star (vmap over stars)."""
    logp, mu, E = grid_log_posterior(star, emulator, prior, config, theta_grid)
    return find_modes(logp, mu, E, theta_grid, **kwargs)


def initial_params(modes: Modes, n_chains: int, key, *, jitter: float = 0.02, E_min: float = 0.01) -> dict:
    """Chain starts in NumPyro's unconstrained space: {"x": (C, 3), "mu": (C,), "E": (C,) = log E}.

    Chains 0..n_valid-1 start one in each valid mode (by mass); the others are spread over
    the valid modes by mass (systematic resampling). Each start gets a small Gaussian jitter
    (``jitter`` in x and μ, 5 × ``jitter`` in log E); E is floored at ``E_min``.
    """
    K = modes.log_mass.shape[0]
    valid = modes.valid
    n_valid = jnp.sum(valid)
    w = jnp.where(valid, jnp.exp(modes.log_mass - jnp.max(jnp.where(valid, modes.log_mass, -jnp.inf))), 0.0)
    cw = jnp.cumsum(w / jnp.sum(w))
    c = jnp.arange(n_chains)
    u = (c - n_valid + 0.5) / jnp.maximum(n_chains - n_valid, 1)
    by_mass = jnp.minimum(jnp.searchsorted(cw, u), K - 1)
    idx = jnp.where(c < n_valid, jnp.minimum(c, K - 1), by_mass)
    k1, k2, k3 = jax.random.split(key, 3)
    x = modes.x[idx] + jitter * jax.random.normal(k1, (n_chains, 3))
    mu = modes.mu[idx] + jitter * jax.random.normal(k2, (n_chains,))
    logE = jnp.log(jnp.maximum(modes.E[idx], E_min)) + 5.0 * jitter * jax.random.normal(k3, (n_chains,))
    return {"x": x, "mu": mu, "E": logE}


# --- after sampling (host side) ---------------------------------------------------------

def _chain_clusters(features: np.ndarray, n_sigma: float) -> np.ndarray:
    """Connected components of chains whose means agree within n_sigma pooled σ in every feature."""
    mean, sd = features.mean(axis=1), features.std(axis=1)  # (C, P)
    C = mean.shape[0]
    pooled = np.sqrt(0.5 * (sd[:, None] ** 2 + sd[None, :] ** 2)) + 1e-12
    same = np.all(np.abs(mean[:, None] - mean[None, :]) < n_sigma * pooled, axis=-1)
    label = np.arange(C)
    for _ in range(C):  # label propagation to the smallest index in each component
        label = np.min(np.where(same, label[None, :], C), axis=1)
        label = label[label]
    _, label = np.unique(label, return_inverse=True)
    return label


def _gelfand_dey_log_mass(z: np.ndarray, log_prob: np.ndarray, shrink: float = 0.8) -> float:
    """log ∫ p̃ over one mode: 1/Z = E_p[q(z)/p̃(z)], q a Gaussian fitted to the samples (covariance × shrink)."""
    z = z.reshape(-1, z.shape[-1])
    lp = log_prob.reshape(-1)
    m = z.mean(axis=0)
    cov = np.atleast_2d(np.cov(z, rowvar=False)) * shrink + 1e-10 * np.eye(z.shape[1])
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0:
        return -np.inf
    d = z - m
    maha = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
    log_q = -0.5 * maha - 0.5 * logdet - 0.5 * z.shape[1] * math.log(2.0 * math.pi)
    a = log_q - lp
    amax = a.max()
    return float(-(amax + math.log(np.mean(np.exp(a - amax)))))


def _features(samples: dict) -> np.ndarray:
    """(C, S, P) sample matrix in NumPyro's unconstrained space: x (3), μ, log E."""
    if "x" in samples:
        cols = [np.asarray(samples["x"], dtype=np.float64)]
    else:
        cols = [np.asarray(samples[k], dtype=np.float64)[..., None] for k in ("teff", "logg", "feh")]
    cols.append(np.asarray(samples["mu"], dtype=np.float64)[..., None])
    cols.append(np.log(np.maximum(np.asarray(samples["E"], dtype=np.float64), 1e-30))[..., None])
    return np.concatenate(cols, axis=-1)


def combine_chain_modes(samples: dict, log_prob, modes: Modes | None = None, *, n_sigma: float = 4.0,
                        weights: str = "gelfand_dey", min_grid_mass: float = 0.05) -> ModeResult:
    """Cluster non-mixing chains into modes and weight the modes by posterior mass.

    samples: {"x": (C, S, 3), "mu": (C, S), "E": (C, S), ...} (constrained values, as MCMC returns);
    log_prob: (C, S) unnormalised log density in NumPyro's unconstrained space (−potential_energy),
    i.e. of (x, μ, log E). modes: the grid modes of this star (optional): used for
    ``weights="grid"`` and to flag significant grid modes (share > ``min_grid_mass``) no chain reached.
    weights: "gelfand_dey" (default), "grid" or "equal" (equal per chain).
    """
    if weights not in ("gelfand_dey", "grid", "equal"):
        raise ValueError(f"weights must be 'gelfand_dey', 'grid' or 'equal', got {weights!r}")
    z = _features(samples)
    if z.ndim != 3:
        raise ValueError(f"samples must have shape (chains, draws, ...), got {z.shape[:-1]}")
    C = z.shape[0]
    if weights == "gelfand_dey":
        if log_prob is None:
            raise ValueError("weights='gelfand_dey' needs log_prob (chains, draws)")
        log_prob = np.asarray(log_prob, dtype=np.float64)
        if log_prob.shape != z.shape[:2]:
            raise ValueError(f"log_prob has shape {log_prob.shape}, samples have {z.shape[:2]}")
    finite = np.all(np.isfinite(z), axis=(1, 2))
    if not finite.all():  # a broken chain (non-finite draws) is no mode: weight 0, mode −1, star unresolved
        return _without_broken_chains(samples, log_prob, modes, finite, n_sigma=n_sigma, weights=weights,
                                      min_grid_mass=min_grid_mass)
    label = _chain_clusters(z, n_sigma)
    n_modes = int(label.max()) + 1
    flag = FLAG_OK if n_modes == 1 else FLAG_MULTIMODAL
    theta_mean = None
    if modes is not None:
        ph = _physical(samples)
        theta_mean = np.stack([ph[label == k].reshape(-1, 2).mean(axis=0) for k in range(n_modes)])
        mth = np.asarray(modes.theta)[:, :2]
        dist = np.abs(theta_mean[:, None] - mth[None]) / np.array([500.0, 0.5])
        nearest = np.argmin(dist.max(axis=-1), axis=1)  # grid mode of each cluster
        lm_grid = np.asarray(modes.log_mass, dtype=np.float64)
        significant = np.asarray(modes.valid) & (lm_grid > math.log(min_grid_mass))
        reached = np.any(dist.max(axis=-1) < 1.0, axis=0)
        if np.any(significant & ~reached):
            flag = FLAG_UNRESOLVED
    if weights == "equal" or n_modes == 1:
        lm = np.log(np.bincount(label, minlength=n_modes) / C)
    elif weights == "grid":
        if modes is None:
            raise ValueError("weights='grid' needs the grid modes")
        lm = lm_grid[nearest]
        # clusters sharing one grid mode split its mass
        lm = lm - np.log(np.bincount(nearest, minlength=len(lm_grid))[nearest])
    else:
        lm = np.array([_gelfand_dey_log_mass(z[label == k], log_prob[label == k]) for k in range(n_modes)])
    if not np.all(np.isfinite(lm)):
        flag = FLAG_UNRESOLVED
        lm = np.log(np.bincount(label, minlength=n_modes) / C)
    w_mode = np.exp(lm - lm.max())
    w_mode /= w_mode.sum()
    per_chain = w_mode[label] / np.bincount(label, minlength=n_modes)[label]
    return ModeResult(chain_weights=per_chain, n_modes=n_modes, mode_of_chain=label, flag=int(flag),
                      log_mass=np.log(w_mode))


def _without_broken_chains(samples, log_prob, modes, finite, **kw) -> ModeResult:
    """:func:`combine_chain_modes` over the chains with finite draws; the others get weight 0 and
    mode −1, and the star is flagged unresolved (all chains broken: equal weights, one "mode")."""
    C = finite.size
    label = np.full(C, -1)
    weights = np.zeros(C)
    if not finite.any():
        return ModeResult(chain_weights=np.full(C, 1.0 / C), n_modes=1, mode_of_chain=label, flag=FLAG_UNRESOLVED,
                          log_mass=np.zeros(1))
    sub = combine_chain_modes({k: np.asarray(v)[finite] for k, v in samples.items()},
                              None if log_prob is None else np.asarray(log_prob)[finite], modes, **kw)
    weights[finite], label[finite] = sub.chain_weights, sub.mode_of_chain
    return sub._replace(chain_weights=weights, mode_of_chain=label, flag=FLAG_UNRESOLVED)


def _physical(samples: dict) -> np.ndarray:
    """(C, S, 2) T_eff, log g draws (from the deterministic sites)."""
    if "teff" not in samples or "logg" not in samples:
        raise ValueError("modes given: samples need the 'teff' and 'logg' deterministic sites")
    return np.stack([np.asarray(samples["teff"], dtype=np.float64),
                     np.asarray(samples["logg"], dtype=np.float64)], axis=-1)
