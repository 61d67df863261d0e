"""The fast grid path: per-star posteriors of (θ, μ, E) by importance sampling in θ and
quadrature in (μ, E), no Markov chains (issue 6; Eq. 19 of Green et al. 2021).

For fixed θ the forward model m = M(θ) + μ + E R(θ) (Eq. 2) is linear in (μ, E), so the
photometric likelihood is an exact 2-D Gaussian in (μ, E) whose mean and precision follow
from 2×2 normal equations. Per star:

1. **Coarse grid** (shared by all stars, network evaluated once): the nodes of the emulator's
   training density (> ``threshold``) and their cells (boxes of one grid step). Each node's
   Laplace mass (:func:`dds_infer.modes.grid_log_posterior`) locates the posterior.
2. **Proposal q₂**: a mixture of the cells, uniform inside each, with probabilities ∝ the
   tempered (``temper``) node masses dilated over the 26 neighbours, plus a defensive
   share ``defensive`` spread over all cells (Hesterberg 1995, Technometrics 37, 185);
   ``n_theta`` stratified draws.
3. **Proposal q₃** (adaptive importance sampling, population Monte Carlo: Cappé et al. 2004,
   JCGS 13, 907): Gaussian kernels at ``n_centres`` draws resampled by weight, with the
   weighted covariance × Silverman's factor (axes capped at one grid step); ``n_rounds``
   rounds of ``n_refine`` draws, each refitted to all weighted draws so far. All draws are
   weighted against the deterministic mixture of every proposal, q = Σ_r n_r q_r / Σ_r n_r
   (balance heuristic: Veach & Guibas 1995; Owen & Zhou 2000, JASA 95, 135), so the estimate
   is unbiased whatever the kernels turned out to be. (The 3×3 Cholesky factors are written
   out in closed form: jaxlib's batched LAPACK kernels are slow and can deadlock on CPU.)
4. **(μ, E) quadrature** for every θ draw: E is integrated in closed form given μ for the
   built-in reddening priors (flat on [0, E_max], half-normal, Gaussian dust-map value; E ≥ 0
   via the normal CDF); μ by the trapezoid rule on ``n_mu`` nodes over ±``mu_half_width``
   σ around the mode of μ's marginal (photometry with E integrated out and the exact parallax:
   Newton steps, :func:`dds_infer.theta_mass.theta_log_mass`), where the exact parallax
   likelihood (with zero-point and inflation), the distance prior and the [Fe/H] prior are
   evaluated. The θ weight is that integral over q(θ).
5. **Draws**: θ by systematic resampling of the weights (output in a fixed shuffled order);
   μ by the quadrature share of its node (uniform over the node's interval); E from its
   conditional truncated normal.

Diagnostics per star: Kish's effective sample size of the θ weights (``weight_ess``; flag
bit ``low_ess`` below ``ess_min``), the log evidence, and the number of grid modes
(:func:`dds_infer.modes.find_modes`, modes with > 5% of the mass). The result is the same
:class:`~dds_infer.posterior.Posterior` as the NUTS path, with one "chain" of i.i.d. draws.
Built-in prior kinds only (user-callable priors need NUTS: ``method="nuts"``).
Everything per star is pure JAX, vmapped over a chunk of stars; it runs unchanged on GPU.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.special import logsumexp

from .inference import InferenceConfig
from .modes import ThetaGrid, make_theta_grid
from .priors import Prior, log_hr_prior
from .theta_mass import coarse_log_mass, mu_prior_tables, reddening_integral, theta_log_mass, truncated_std_normal

__all__ = ["GridSettings", "CellGrid", "make_cell_grid", "star_grid_posterior", "grid_batch", "grid_batch_on_devices",
           "grid_posterior", "grid_batch_fn", "count_modes", "neighbour_max"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class GridSettings:
    """Static settings of the grid path (hashable; recorded in the run manifest)."""

    threshold: float = 0.002     # training density of the coarse-grid cells proposed
    stride: int = 2              # coarse cell = stride³ cells of the training-density grid
    temper: float = 0.5          # q₂ ∝ (node mass)^temper, dilated over neighbours
    defensive: float = 0.02      # share of q₂ spread uniformly over all cells
    n_theta: int = 128           # stage-2 draws (cells)
    n_refine: int = 64           # stage-3 draws per round (kernels)
    n_rounds: int = 8            # rounds of kernel proposals, each refitted to all weights so far
    n_centres: int = 16          # kernels of q₃
    n_mu: int = 8                # μ quadrature nodes per θ draw
    mu_half_width: float = 4.5   # node span: ± this many σ_μ around the optimum
    mu_table_step: float = 0.1   # spacing of the per-star tables of the distance / [Fe/H] priors
    n_draws: int = 1000          # posterior draws per star
    mode_min_mass: float = 0.05  # grid modes counted when they hold more than this share of the mass

    def __post_init__(self):
        for name in ("n_theta", "n_refine", "n_centres", "n_mu", "n_draws", "stride", "n_rounds"):
            if int(getattr(self, name)) < (1 if name in ("stride", "n_rounds") else 2):
                raise ValueError(f"GridSettings.{name} must be >= 2, got {getattr(self, name)}")
        if not 0.0 < self.temper <= 1.0:
            raise ValueError(f"GridSettings.temper must be in (0, 1], got {self.temper}")
        if not 0.0 < self.defensive < 1.0:
            raise ValueError(f"GridSettings.defensive must be in (0, 1), got {self.defensive}")


@struct.dataclass
class CellGrid:
    """The coarse grid: nodes (M, R precomputed, centred), cell size and the node index of every cell."""

    nodes: ThetaGrid
    lo: jnp.ndarray       # (3,) θ of grid index 0
    step: jnp.ndarray     # (3,) cell size
    index: jnp.ndarray    # (nT, ng, nf) node index of each cell, −1 if not a node
    ijk: jnp.ndarray      # (G, 3) cell index of each node
    M_c: jnp.ndarray      # (G, B) M − mean_B(M): centred so the normal equations stay exact in float32
    c_node: jnp.ndarray   # (G,) mean_B(M)


def make_cell_grid(emulator, threshold: float = 0.002, stride: int = 2) -> CellGrid:
    """Coarse cells of ``stride``³ training-grid cells that contain a node with density > ``threshold``."""
    from scipy.ndimage import maximum_filter

    dom = emulator.domain
    if dom is None:
        raise ValueError("the grid path needs an emulator with a training domain (bundle domain.h5)")
    dens = maximum_filter(np.asarray(dom.density[0]), size=2 * (stride // 2) + 1, mode="nearest")
    nodes = make_theta_grid(emulator, threshold=threshold, stride=(stride,) * 3, density=dens)
    axes = [np.asarray(a, dtype=np.float64)[::stride] for a in (dom.teff, dom.logg, dom.feh)]
    lo = np.array([a[0] for a in axes])
    step = np.array([(a[-1] - a[0]) / (len(a) - 1) for a in axes])
    ijk = np.rint((np.asarray(nodes.theta, dtype=np.float64) - lo) / step).astype(np.int64)
    index = np.full([len(a) for a in axes], -1, dtype=np.int32)
    index[tuple(ijk.T)] = np.arange(len(ijk))
    c = jnp.mean(nodes.M, axis=1)
    return CellGrid(nodes=nodes, lo=jnp.asarray(lo, jnp.float32), step=jnp.asarray(step, jnp.float32),
                    index=jnp.asarray(index), ijk=jnp.asarray(ijk, jnp.int32), M_c=nodes.M - c[:, None], c_node=c)


# --- proposals ---------------------------------------------------------------------------

def _cell_log_q(theta, grid: CellGrid, log_pi):
    """log q₂(θ): the cell's probability over its volume (−inf outside the node cells)."""
    ijk = jnp.round((theta - grid.lo) / grid.step).astype(jnp.int32)
    shape = jnp.asarray(grid.index.shape)
    inside = jnp.all((ijk >= 0) & (ijk < shape), axis=-1)
    node = grid.index[tuple(jnp.clip(ijk, 0, shape - 1).T)]
    ok = inside & (node >= 0)
    return jnp.where(ok, log_pi[jnp.maximum(node, 0)] - jnp.sum(jnp.log(grid.step)), -jnp.inf)


def _systematic(key, log_w, n):
    """n indices by systematic resampling of normalised exp(log_w)."""
    w = jnp.exp(log_w - logsumexp(log_w))
    u = (jnp.arange(n) + jax.random.uniform(key)) / n
    return jnp.minimum(jnp.searchsorted(jnp.cumsum(w), u), log_w.shape[0] - 1)


def _draw_order(n):
    """A fixed pseudo-random permutation of n (the output order of the resampled draws)."""
    return jnp.asarray(np.random.default_rng(20210128).permutation(n), jnp.int32)


def _kernel_log_q(x, centres, chol):
    """log of the equal-weight Gaussian mixture with centres (J, 3) and shared Cholesky factor, at x (K, 3)."""
    inv = _inv_lower3(chol)
    zx, zc = x @ inv.T, centres @ inv.T  # whitened: |L⁻¹(x − c)|² = |L⁻¹x − L⁻¹c|²
    maha = jnp.sum(zx * zx, 1)[:, None] - 2.0 * zx @ zc.T + jnp.sum(zc * zc, 1)[None, :]
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
    return (logsumexp(-0.5 * jnp.maximum(maha, 0.0), axis=1) - 0.5 * log_det - 1.5 * _LOG_2PI
            - math.log(centres.shape[0]))


def _inv_lower3(L):
    """Inverse of a 3×3 lower-triangular matrix in closed form (batched triangular solves are slow on CPU)."""
    a, b, c = L[0, 0], L[1, 1], L[2, 2]
    d, e, f = L[1, 0], L[2, 0], L[2, 1]
    z = jnp.zeros_like(a)
    return jnp.array([[1.0 / a, z, z], [-d / (a * b), 1.0 / b, z], [(d * f - b * e) / (a * b * c), -f / (b * c), 1.0 / c]])


def _chol3(A):
    """Cholesky factor of a symmetric positive-definite 3×3 matrix in closed form."""
    l00 = jnp.sqrt(A[0, 0])
    l10, l20 = A[1, 0] / l00, A[2, 0] / l00
    l11 = jnp.sqrt(jnp.maximum(A[1, 1] - l10 ** 2, 1e-30))
    l21 = (A[2, 1] - l20 * l10) / l11
    l22 = jnp.sqrt(jnp.maximum(A[2, 2] - l20 ** 2 - l21 ** 2, 1e-30))
    z = jnp.zeros_like(l00)
    return jnp.array([[l00, z, z], [l10, l11, z], [l20, l21, l22]])


def neighbour_max(lp, grid: CellGrid):
    """max of lp over each node and its 26 neighbours (a 3×3×3 max-pool over the node cells): a
    gather from the nodes' neighbour table (:class:`~dds_infer.modes.ThetaGrid`), 3× faster on
    CPU than a dense-box reduce_window."""
    return jnp.maximum(lp, jnp.max(lp[grid.nodes.neighbours], axis=1))


def count_modes(lp, grid: CellGrid, *, min_mass: float = 0.05, dip: float = 0.5):
    """Number of separate log g modes (dwarf vs giant) of the coarse grid posterior.

    The node masses are summed onto the log g axis; a local maximum of that profile is a mode
    when the mass between it and the neighbouring valleys exceeds ``min_mass`` of the total and
    the valley towards any higher peak is below ``dip`` × its own height (a real gap, not a bump).
    """
    n_g = grid.index.shape[1]
    p = jnp.exp(lp - jnp.max(lp))
    p = jnp.where(jnp.isfinite(p), p, 0.0)
    prof = jax.ops.segment_sum(p, grid.ijk[:, 1], num_segments=n_g)
    prof = prof / jnp.maximum(jnp.sum(prof), 1e-30)
    i = jnp.arange(n_g)
    # for each bin: the lowest value between it and the nearest higher bin on each side
    higher = prof[None, :] > prof[:, None]                       # [a, b]: bin b higher than a
    left = jnp.max(jnp.where(higher & (i[None, :] < i[:, None]), i[None, :], -1), axis=1)
    right = jnp.min(jnp.where(higher & (i[None, :] > i[:, None]), i[None, :], n_g), axis=1)
    vals = jnp.where((i[None, :] > left[:, None]) & (i[None, :] < i[:, None]), prof[None, :], jnp.inf)
    valley_l = jnp.where(left >= 0, jnp.min(vals, axis=1), 0.0)
    vals = jnp.where((i[None, :] < right[:, None]) & (i[None, :] > i[:, None]), prof[None, :], jnp.inf)
    valley_r = jnp.where(right < n_g, jnp.min(vals, axis=1), 0.0)
    separated = (valley_l < dip * prof) & (valley_r < dip * prof)
    # mass of the bump: bins on each side down to the valleys (approximated by ±2 bins)
    bump = jnp.convolve(prof, jnp.ones(5), mode="same")
    is_peak = (prof > 0) & (prof >= jnp.roll(prof, 1).at[0].set(0.0)) & (prof >= jnp.roll(prof, -1).at[-1].set(0.0))
    return jnp.maximum(jnp.sum(is_peak & separated & (bump > min_mass)), 1)


def star_grid_posterior(star, key, grid: CellGrid, emulator, prior: Prior, config: InferenceConfig,
                        settings: GridSettings = GridSettings(), log_hr_nodes=None):
    """One star's grid-path posterior: dict of draws (n_draws,) teff, logg, feh, mu, E and
    diagnostics weight_ess, log_evidence, n_modes (see the module docstring for the method)."""
    s = settings
    offsets = config.offsets(emulator.n_bands)
    k_prop, k_jit2, k_kern, k_pick, _, k_E = jax.random.split(key, 6)  # 5th key unused: streams kept
    if log_hr_nodes is None:
        log_hr_nodes = log_hr_prior(grid.nodes.theta, prior)
    tables = mu_prior_tables(star, prior, s.mu_table_step)
    mass = lambda th: theta_log_mass(star, th, emulator.absolute_mags(th), emulator.reddening_vector(th),  # noqa: E731
                                     prior, config, offsets, s, tables)
    # 1. coarse grid: node masses, modes
    lp, _, _ = coarse_log_mass(star, grid, log_hr_nodes, config, offsets)
    lp_dil = neighbour_max(lp, grid)
    n_modes = count_modes(lp, grid, min_mass=s.mode_min_mass)
    # 2. cell proposal
    log_pi = jax.nn.log_softmax(s.temper * jnp.where(jnp.isfinite(lp_dil), lp_dil, -1e30))
    G = lp.shape[0]
    log_pi = jnp.logaddexp(math.log1p(-s.defensive) + log_pi, math.log(s.defensive / G))
    cell = _systematic(k_prop, log_pi, s.n_theta)
    u = jax.random.uniform(k_jit2, (s.n_theta, 3)) - 0.5
    th2 = grid.nodes.theta[cell] + u * grid.step
    lm2, aux2 = mass(th2)
    lq2_at2 = _cell_log_q(th2, grid, log_pi)
    # 3. rounds of kernel proposals, each fitted to all weighted draws so far (population Monte Carlo)
    log_jac = jnp.sum(jnp.log(emulator.theta_std))  # q(θ) = q(x) / Π std
    cap = grid.step / emulator.theta_std
    th_all, lm_all, x_all, aux_all = th2, lm2, emulator.normalize(th2), aux2
    props = []  # (centres, chol) of each round
    # log Σ_r n_r q_r(x) over the proposals so far, at every draw so far (kept as a running sum)
    log_S = math.log(s.n_theta) + lq2_at2
    n_tot = s.n_theta
    log_n = math.log(s.n_refine)
    for kr in jax.random.split(k_kern, s.n_rounds):
        k_c, k_z = jax.random.split(kr)
        lw_r = jnp.where(jnp.isfinite(lm_all), lm_all - log_S, -jnp.inf)
        w = jnp.exp(lw_r - logsumexp(lw_r))
        mean = w @ x_all
        cov = ((x_all - mean) * w[:, None]).T @ (x_all - mean)
        centres = x_all[_systematic(k_c, lw_r, s.n_centres)]
        n_eff = 1.0 / jnp.sum(w ** 2)
        bw = (4.0 / 5.0) ** (1.0 / 7.0) * jnp.clip(n_eff, 1.0, s.n_centres) ** (-1.0 / 7.0)
        scale = jnp.minimum(1.0, cap / jnp.maximum(jnp.sqrt(jnp.diag(cov)) * bw, 1e-6))
        chol = _chol3((bw ** 2) * cov * jnp.outer(scale, scale) + jnp.diag((1e-3 * cap) ** 2))
        per = -(-s.n_refine // s.n_centres)
        z = jax.random.normal(k_z, (s.n_centres, per, 3))
        x_new = (centres[:, None, :] + z @ chol.T).reshape(-1, 3)[: s.n_refine]
        th_new = emulator.denormalize(x_new)
        lm_new, aux_new = mass(th_new)
        # the earlier proposals at the new draws; then the new proposal at every draw
        terms = [math.log(s.n_theta) + _cell_log_q(th_new, grid, log_pi)]
        terms += [log_n + _kernel_log_q(x_new, ce, ch) - log_jac for ce, ch in props]
        x_all = jnp.concatenate([x_all, x_new])
        lk = log_n + _kernel_log_q(x_all, centres, chol) - log_jac
        log_S = jnp.concatenate([log_S, logsumexp(jnp.stack(terms), axis=0)])
        log_S = jnp.logaddexp(log_S, lk)
        props.append((centres, chol))
        n_tot += s.n_refine
        th_all = jnp.concatenate([th_all, th_new])
        lm_all = jnp.concatenate([lm_all, lm_new])
        aux_all = jax.tree_util.tree_map(lambda u, v: jnp.concatenate([u, v]), aux_all, aux_new)
    # deterministic mixture of every proposal, q = Σ_r n_r q_r / Σ_r n_r (balance heuristic)
    lq_mix = log_S - math.log(n_tot)
    # 4. importance weights of all draws
    th, lm = th_all, lm_all
    lw = jnp.where(jnp.isfinite(lm), lm - lq_mix, -jnp.inf)
    lw_norm = lw - logsumexp(lw)
    weight_ess = 1.0 / jnp.sum(jnp.exp(2.0 * lw_norm))
    log_evidence = logsumexp(lw) - math.log(n_tot)
    # 5. draws: θ (systematic resampling), then the μ node, then E | μ
    # systematic resampling returns the draws sorted by index; put them in a fixed shuffled order
    # (one permutation shared by all stars: a per-star random permutation is a sort, 20% of the time)
    pick = _systematic(k_pick, lw, s.n_draws)[_draw_order(s.n_draws)]
    aux = jax.tree_util.tree_map(lambda a: a[pick], aux_all)
    kj, ke = jax.random.split(k_E)
    mu = aux["mu_mean"] + aux["mu_sd"] * jax.random.normal(kj, (s.n_draws,))
    g = aux["gauss"]
    m_E = g["E"] - g["a01"] / g["a11"] * (mu - g["mu"])
    _, mean_E, sd_E, upper = reddening_integral(m_E, g["a11"], star, prior)
    zE = truncated_std_normal(ke, -mean_E / sd_E, (upper - mean_E) / sd_E)  # exact in the far tails
    E = jnp.clip(mean_E + sd_E * zE, 0.0, upper)
    E = jnp.where(jnp.isfinite(E), E, 0.0)
    thp = th[pick]
    return dict(teff=thp[:, 0], logg=thp[:, 1], feh=thp[:, 2], mu=mu, E=E, weight_ess=weight_ess,
                log_evidence=log_evidence, n_modes=n_modes)


# stars evaluated together (vmapped) in each step of grid_batch's loop over the batch, on a CPU with
# one JAX device per core: a star's grid intermediates are ~100 kB, so 16 stars' fit the caches that a
# whole chunk's do not. 1,000 real stars padded to 1,024 on 2 devices: 0.72 s vmapped at once, 0.51 s
# in blocks of 16 (mock stars: 0.86 / 0.55 s; blocks of 32: 0.56, 64: 0.66). On ONE CPU device the
# blocks lose (0.81 → 0.88 s: XLA spreads a whole batch's large operations over the cores, a small
# block's not), and on a GPU the whole batch at once is the point; there the batch is vmapped whole.
STAR_BLOCK = 16


@partial(jax.jit, static_argnames=("config", "settings", "star_block"))
def grid_batch(stars, keys, grid: CellGrid, emulator, prior: Prior, config: InferenceConfig,
               settings: GridSettings = GridSettings(), star_block: int | None = None):
    """:func:`star_grid_posterior` over a batch of stars (leading axis of ``stars`` and ``keys``):
    vmapped over the whole batch, or over blocks of ``star_block`` stars in a loop over the batch
    (``jax.lax.map``; a batch that is not a multiple of it compiles a second, shorter block too)."""
    log_hr_nodes = log_hr_prior(grid.nodes.theta, prior)  # shared by all stars
    fn = lambda st, k: star_grid_posterior(st, k, grid, emulator, prior, config, settings, log_hr_nodes)  # noqa: E731
    if star_block is None:
        return jax.vmap(fn)(stars, keys)
    return jax.lax.map(lambda a: fn(*a), (stars, keys), batch_size=int(star_block))


def grid_batch_on_devices(config: InferenceConfig, settings: GridSettings = GridSettings(),
                          devices: int | None = None, star_block: int | None | str = "auto"):
    """(``run(stars, keys, grid, emulator, prior)``, ``multiple``): :func:`grid_batch` with each of
    ``devices`` local devices (default all, :mod:`dds_infer.devices`) computing its share of the
    stars, in blocks of ``star_block`` stars ("auto": :data:`STAR_BLOCK` on a CPU with several
    devices, else the whole share at once; None: the whole share). The batch must be a multiple of
    ``multiple`` (devices × block); what :func:`grid_batch_fn` runs and ``bench/_grid_compare.py``
    times."""
    from .devices import n_devices, shard_stars

    n_dev = n_devices(devices)
    if star_block == "auto":
        star_block = STAR_BLOCK if n_dev > 1 and jax.default_backend() == "cpu" else None
    block = None if star_block is None else int(star_block)
    if n_dev == 1:
        return partial(grid_batch, config=config, settings=settings, star_block=block), block or 1
    run = shard_stars(lambda st, k, g, e, p: grid_batch(st, k, g, e, p, config, settings, block), n_dev,
                      (True, True, False, False, False))
    return run, n_dev * (block or 1)


def grid_posterior(out: dict, star_id, emulator, settings: GridSettings, attrs=None):
    """A :class:`~dds_infer.posterior.Posterior` (one "chain" of i.i.d. draws per star) from
    :func:`grid_batch` output; ``weight_ess`` and ``log_evidence`` go to ``star_stats``."""
    from .posterior import Posterior, derive_samples

    out = {k: np.asarray(v) for k, v in out.items()}
    n, S = out["mu"].shape
    samples = {k: out[k][:, None, :].astype(np.float32) for k in ("teff", "logg", "feh", "mu", "E")}
    in_dom = derive_samples(samples, emulator)
    zeros = np.zeros((n, 1, S))
    return Posterior(
        star_id=np.asarray(star_id), samples=samples,
        sample_stats={"potential_energy": np.full((n, 1, S), np.nan), "diverging": zeros.astype(bool),
                      "num_steps": zeros.astype(np.int32)},
        chain_stats={"step_size": np.full((n, 1), np.nan), "accept_prob": np.full((n, 1), np.nan),
                     "init_valid": np.ones((n, 1), bool)},
        chain_weights=np.ones((n, 1)), n_modes=out["n_modes"].astype(int), mode_flag=np.zeros(n, int),
        in_domain_frac=in_dom, attrs={"method": "grid", **dataclasses.asdict(settings), **dict(attrs or {})},
        star_stats={"weight_ess": out["weight_ess"].astype(np.float64),
                    "log_evidence": out["log_evidence"].astype(np.float64)})


def grid_batch_fn(emulator, prior: Prior, config: InferenceConfig, settings: GridSettings = GridSettings(),
                  pad_to: int | None = None, devices: int | None = None):
    """``batch_fn(stars, star_id, keys) -> Posterior`` for :func:`dds_infer.runner.infer_catalog`:
    the coarse grid is built once; batches are padded to ``pad_to`` stars (one compilation), and
    to a multiple of ``devices`` (default: all local devices, :mod:`dds_infer.devices`), over
    which the stars are spread, times the stars of one block (:func:`grid_batch_on_devices`)."""
    from .devices import padded_size
    from .engine import pad_batch

    if not all(isinstance(k, str) for k in (prior.distance_kind, prior.feh_kind, prior.theta_kind,
                                            prior.reddening_kind)):
        raise NotImplementedError("the grid path supports the built-in prior kinds only; "
                                  "use method='nuts' for user-callable priors")
    grid = make_cell_grid(emulator, settings.threshold, settings.stride)
    run, multiple = grid_batch_on_devices(config, settings, devices)  # the grid, emulator, prior on every device

    def batch_fn(stars, star_id, keys):
        n = len(star_id)
        size = padded_size(max(n, pad_to or n), multiple)
        out = run(pad_batch(stars, size), pad_batch(keys, size), grid, emulator, prior)
        out = jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], out)
        return grid_posterior(out, star_id, emulator, settings)

    batch_fn.__qualname__ = f"grid_batch_fn({settings})"
    batch_fn.grid = grid
    return batch_fn
