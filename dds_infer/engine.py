"""Batched NUTS: one compiled program samples B stars × C chains, each with its own adaptation.

Every (star, chain) pair runs an independent single-chain NUTS (Hoffman & Gelman 2014) built
with NumPyro's functional API (:func:`numpyro.infer.hmc.hmc`): its own dual-averaging step size
and its own (diagonal or dense) mass matrix from windowed Welford adaptation, exactly what
``numpyro.infer.MCMC(chain_method="vectorized")`` does for chains, here vmapped over stars too.
This is *not* one joint model with a shared step size.

The program is jitted once per (model, static arguments, B, C, settings) and reused across
batches; a short last batch is padded to B by repeating its last star (the padding is sliced
off). Randomness comes from one key per star, split into its chains inside the program, so a
star's draws do not depend on its batch neighbours or on padding. At another batch size (another
program) the star gets the same random numbers, but XLA may vectorise its arithmetic differently
(on AVX-512 CPUs it does), and NUTS amplifies a last-bit difference into other, equally valid
chains: the same posterior, not the same draws.

Opt-in, ``init_mass="laplace"``: each chain's warmup starts from the Laplace approximation at
the mode nearest its start (:func:`laplace_inverse_mass`) instead of NumPyro's identity mass
matrix, which NumPyro keeps for the first 100 warmup iterations: on 64 real stars those
iterations took 111 leapfrog steps per draw, 47 with the Laplace start, and a chain's total
fell from 31.2 to 24.5 steps per draw; the queue engine (:mod:`dds_infer.nuts_queue`) needed
12% fewer iterations on 200 stars. It is not the default: the wall-clock gain of the queue
engine was within the machine's run-to-run variation (2.44–2.92 stars/s against 2.46–2.60),
and the lockstep batch engine ran ~10% slower (1.56 against 1.71–1.79 stars/s, unexplained).

Note: vmapped NUTS runs in lockstep, so each step costs the largest tree in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Callable

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from flax import struct
from numpyro.infer.hmc import hmc
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import ParamInfo, constrain_fn, initialize_model, potential_energy

from .devices import first_rows, n_devices, padded_size, shard_stars
from .smallmat import cholesky, solve_lower

__all__ = ["NutsSettings", "BatchResult", "run_nuts_batch", "check_batch", "star_keys", "pad_batch",
           "laplace_inverse_mass", "split_static", "INIT_MASS"]

INIT_MASS = ("identity", "laplace")


@dataclass(frozen=True)
class NutsSettings:
    """Static NUTS settings (part of the compilation key)."""

    num_warmup: int = 500
    num_samples: int = 500
    num_chains: int = 4
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    init_mass: str = "identity"
    warmup_max_tree_depth: int | None = None

    def __post_init__(self):
        if self.init_mass not in INIT_MASS:
            raise ValueError(f"NutsSettings.init_mass must be one of {INIT_MASS}, got {self.init_mass!r}")
        for name in ("num_warmup", "num_samples", "num_chains", "max_tree_depth", "warmup_max_tree_depth"):
            v = getattr(self, name)
            if v is None and name == "warmup_max_tree_depth":
                continue
            if int(v) != v or v < (0 if name == "num_warmup" else 1):
                raise ValueError(f"NutsSettings.{name} must be a positive integer, got {v!r}")
        if not 0.0 < self.target_accept_prob < 1.0:
            raise ValueError(f"NutsSettings.target_accept_prob must be in (0, 1), got {self.target_accept_prob}")

    @property
    def tree_depths(self) -> tuple[int, int]:
        """(warmup, sampling) tree-depth caps, NumPyro's ``max_tree_depth=(d1, d2)``."""
        w = self.max_tree_depth if self.warmup_max_tree_depth is None else self.warmup_max_tree_depth
        return int(w), int(self.max_tree_depth)


@struct.dataclass
class BatchResult:
    """Draws and diagnostics of B stars × C chains × S draws.

    samples: dict of constrained latent and deterministic sites, (B, C, S, ...).
    potential_energy: (B, C, S) -log joint density of each draw (unconstrained space).
    diverging: (B, C, S) bool; num_steps: (B, C, S) leapfrog steps per draw
        (tree depth = floor(log2(num_steps)) + 1).
    accept_prob: (B, C) mean acceptance probability over the sampling phase.
    step_size: (B, C) adapted step size; inverse_mass_matrix: (B, C, D) or (B, C, D, D).
    init_valid: (B, C) bool, the initial point had finite potential and gradient.
    iterations: (devices,) loop iterations of :func:`dds_infer.nuts_queue.run_nuts_queue` on each
        device (one leapfrog step per slot each), None for :func:`run_nuts_batch`.
    """

    samples: dict
    potential_energy: jnp.ndarray
    diverging: jnp.ndarray
    num_steps: jnp.ndarray
    accept_prob: jnp.ndarray
    step_size: jnp.ndarray
    inverse_mass_matrix: jnp.ndarray
    init_valid: jnp.ndarray
    iterations: jnp.ndarray | None = None

    @property
    def num_divergent(self):
        """(B, C) number of divergent transitions after warmup."""
        return self.diverging.sum(-1)

    @property
    def tree_depth(self):
        return jnp.floor(jnp.log2(jnp.maximum(self.num_steps, 1))).astype(jnp.int32) + 1


def star_keys(seed: int, rows) -> jax.Array:
    """Per-star keys fold_in(key(seed), row): independent of batching and resumption."""
    base = jax.random.key(int(seed))
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.asarray(rows, dtype=jnp.uint32))


def pad_batch(tree, size: int):
    """Pad every leaf's leading axis to ``size`` by repeating its last entry."""
    def pad(a):
        n = a.shape[0]
        if n > size:
            raise ValueError(f"batch of {n} stars exceeds the batch size {size}")
        return a if n == size else jnp.concatenate([a, jnp.repeat(a[-1:], size - n, axis=0)])
    return jax.tree_util.tree_map(pad, tree)


class _Static:
    """The non-array leaves of the static model arguments: hashable, part of the jit key."""

    def __init__(self, treedef, leaves, is_array):
        self.treedef, self.leaves, self.is_array = treedef, tuple(leaves), tuple(is_array)
        try:
            self._hash = hash((treedef, self.leaves, self.is_array))
        except TypeError as exc:
            raise TypeError("the non-array parts of static_args (e.g. the inference config) must be "
                            f"hashable to key the compiled program: {exc}") from exc

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return (isinstance(other, _Static) and self.treedef == other.treedef
                and self.leaves == other.leaves and self.is_array == other.is_array)

    def merge(self, arrays):
        it = iter(arrays)
        leaves = [next(it) if a else s for s, a in zip(self.leaves, self.is_array)]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def split_static(static_args) -> tuple[_Static, list]:
    """(hashable key, array leaves) of a model's shared arguments: the key selects the compiled
    program (with the settings), the arrays are its traced inputs. Public for callers that
    compile an engine's program ahead of time (e.g. ``nuts_queue.queue_program``)."""
    leaves, treedef = jax.tree_util.tree_flatten(static_args)
    is_array = [isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in leaves]
    static = _Static(treedef, [None if a else x for x, a in zip(leaves, is_array)], is_array)
    return static, [x for x, a in zip(leaves, is_array) if a]


def _newton_system(potential_fn, z):
    """(value, gradient, L⁻¹ with H = L Lᵀ (NaN where H is not positive definite), diag H) at z."""
    value, grad = jax.value_and_grad(potential_fn)(z)
    hess = jax.hessian(potential_fn)(z)
    hess = 0.5 * (hess + hess.T)
    inv_chol = solve_lower(cholesky(hess), jnp.eye(z.shape[0], dtype=hess.dtype))
    return value, grad, inv_chol, jnp.diag(hess)


def _newton_refine(potential_fn, z, n_steps: int):
    """``n_steps`` damped Newton steps towards the mode nearest z, each accepted only if it lowers
    the potential (step lengths 1, ½, ¼, ⅛; a diagonal Newton step where H is not positive
    definite). A fixed loop: vmap- and jit-friendly."""
    def body(_, z):
        value, grad, inv_chol, diag_h = _newton_system(potential_fn, z)
        full = -(inv_chol.T @ (inv_chol @ grad))
        step = jnp.where(jnp.all(jnp.isfinite(full)), full, -grad / jnp.maximum(jnp.abs(diag_h), 1.0))
        cand = z + jnp.array([1.0, 0.5, 0.25, 0.125], dtype=z.dtype)[:, None] * step
        vals = jax.vmap(potential_fn)(cand)
        ok = jnp.isfinite(vals) & (vals < value)
        best = jnp.argmax(ok)  # the longest step that lowers the potential
        return jnp.where(ok[best], cand[best], z)
    return jax.lax.fori_loop(0, n_steps, body, z)


def laplace_inverse_mass(potential_fn: Callable, z_flat, dense: bool = False, var_min: float = 1e-6,
                         var_max: float = 4.0, n_newton: int = 8, max_newton: float = 25.0):
    """Initial inverse mass matrix of a chain: the Laplace approximation at the mode nearest its start.

    NumPyro's warmup starts from the identity and keeps it for its first 100 iterations
    (75 of initial buffer + the first 25-iteration slow window); when the posterior's scales
    differ by ~10× between sites (normalised θ vs the whitened (μ, E)) those iterations
    take ~5× the leapfrog steps of the adapted chain. Here: ``n_newton`` damped Newton steps
    from the start (:func:`_newton_refine`; the chain itself still starts where it was put),
    then Σ = H⁻¹ there (H the Hessian of the potential), its diagonal clipped to [var_min,
    var_max] and rounded to powers of 2^(1/8) (a diagonal matrix for ``dense``: the windowed
    adaptation estimates the correlations), provided the point is a mode: H positive definite and the
    remaining Newton step's squared length gᵀH⁻¹g ≤ ``max_newton`` (≈ d for a draw from the
    Laplace approximation itself). Where H is not positive definite, each site's own
    curvature 1/H_ii where H_ii > 0 and g_i²/H_ii ≤ ``max_newton``. Otherwise the identity,
    NumPyro's own start (per site in the indefinite case). Only the
    adaptation's starting point changes: the windowed estimates replace it as usual, and
    the chain's law is NUTS's.

    potential_fn: flat (D,) → scalar; z_flat (D,). Returns (D,) or (D, D). vmap-safe (the
    Cholesky is :mod:`dds_infer.smallmat`'s, see there why not LAPACK's).
    """
    mode = _newton_refine(potential_fn, z_flat, n_newton)
    _, grad, inv_chol, diag_h = _newton_system(potential_fn, mode)
    cov = inv_chol.T @ inv_chol
    var_pd = jnp.diag(cov)
    pd = jnp.all(jnp.isfinite(cov)) & jnp.all(var_pd > 0)
    newton = jnp.sum((inv_chol @ grad) ** 2)  # gᵀ H⁻¹ g
    use = pd & jnp.isfinite(newton) & (newton <= max_newton)
    # H indefinite (e.g. the bilinear cross terms of an interpolated prior table): each site's own
    # curvature where it is positive and its Newton step short, the identity otherwise
    h_pos = jnp.isfinite(diag_h) & (diag_h > 0)
    var_site = 1.0 / jnp.where(h_pos, diag_h, 1.0)
    site_ok = ~pd & h_pos & jnp.isfinite(grad) & (grad ** 2 * var_site <= max_newton)
    var = jnp.where(use | site_ok, jnp.clip(jnp.where(use, var_pd, var_site), var_min, var_max), 1.0)
    # rounded to 2^(k/8) (±4.4%): XLA rounds the Newton steps and Hessian differently at
    # different batch widths (~1e-7 here), and NUTS would amplify that into different chains;
    # rounded, a star's draws stay independent of its batch (barring a value on a rounding edge)
    k = jnp.round(jnp.log2(var) * 8.0).astype(jnp.int32)
    frac = jnp.asarray([2.0 ** (i / 8) for i in range(8)], dtype=var.dtype)  # exact constants: no
    var = jnp.ldexp(frac[k % 8], k // 8)  # transcendental evaluated (it may differ by an ulp)
    return jnp.diag(var) if dense else var


def _one_chain(model, args, init_z, key, settings: NutsSettings):
    """Warmup + sampling of one NUTS chain on ``model(*args)``; returns constrained draws + stats."""
    pe_fn = partial(potential_energy, model, args, {})
    k_init, k_hmc = jax.random.split(key)
    if init_z is None:
        info = initialize_model(k_init, model, init_strategy=init_to_uniform, model_args=args).param_info
        valid = jnp.isfinite(info.potential_energy)
    else:
        pe, grad = jax.value_and_grad(pe_fn)(init_z)
        info = ParamInfo(init_z, pe, grad)
        valid = jnp.isfinite(pe) & jnp.all(jnp.isfinite(jax.flatten_util.ravel_pytree(grad)[0]))
    init_kernel, sample_kernel = hmc(potential_fn=pe_fn, algo="NUTS")
    imm = None
    if settings.init_mass == "laplace":
        flat, unravel = jax.flatten_util.ravel_pytree(info.z)
        imm = laplace_inverse_mass(lambda v: pe_fn(unravel(v)), flat, settings.dense_mass)
    state = init_kernel(info, settings.num_warmup, target_accept_prob=settings.target_accept_prob,
                        max_tree_depth=settings.tree_depths, dense_mass=settings.dense_mass,
                        inverse_mass_matrix=imm, rng_key=k_hmc)

    def step(s, _):  # one scan over warmup + sampling: the kernel is traced and compiled once
        s = sample_kernel(s)
        return s, (s.z, s.potential_energy, s.diverging, s.num_steps, s.accept_prob)

    state, trace = jax.lax.scan(step, state, None, length=settings.num_warmup + settings.num_samples)
    zs, pes, div, nsteps, acc = jax.tree_util.tree_map(lambda a: a[settings.num_warmup:], trace)
    samples = jax.vmap(lambda z: constrain_fn(model, args, {}, z, return_deterministic=True))(zs)
    return dict(samples=samples, potential_energy=pes, diverging=div, num_steps=nsteps,
                accept_prob=acc.mean(), step_size=state.adapt_state.step_size,
                inverse_mass_matrix=state.adapt_state.inverse_mass_matrix, init_valid=valid)


@lru_cache(maxsize=32)
def _compiled(model: Callable, static: _Static, settings: NutsSettings, has_init: bool):
    """jit of the (star × chain)-vmapped sampler; jax caches one executable per batch shape."""

    def run(stars, arrays, init, keys):
        static_args = static.merge(arrays)
        c = settings.num_chains
        # one flat vmap over (star, chain) pairs: nested vmaps re-batch NUTS's nested while
        # loops once per level and double the tracing time
        flat_stars = jax.tree_util.tree_map(lambda a: jnp.repeat(a, c, axis=0), stars)
        flat_keys = jax.vmap(lambda k: jax.random.split(k, c))(keys).reshape(-1)
        flat_init = jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), init)

        def chain(star, z, k):
            return _one_chain(model, (star, *static_args), z, k, settings)

        if has_init:
            out = jax.vmap(chain)(flat_stars, flat_init, flat_keys)
        else:
            out = jax.vmap(lambda st, k: chain(st, None, k))(flat_stars, flat_keys)
        return jax.tree_util.tree_map(lambda a: a.reshape((-1, c) + a.shape[1:]), out)

    return jax.jit(run)


def _leading(tree) -> set:
    return {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in jax.tree_util.tree_leaves(tree)}


def check_batch(stars, keys, init_params, num_chains: int):
    """(B, keys (B,)) after checking a batch's leading star axis, keys and (B, C) init shapes."""
    sizes = _leading(stars)
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(f"every leaf of `stars` needs the same leading star axis; got sizes {sorted(sizes)}")
    n = sizes.pop()
    keys = jnp.asarray(keys)
    typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
    if keys.ndim == (0 if typed else 1):  # one key for the batch
        keys = jax.random.split(keys, n)
    if keys.shape[0] != n:
        raise ValueError(f"got {keys.shape[0]} keys for {n} stars")
    if init_params is not None:
        bad = {k: np.shape(v) for k, v in init_params.items() if np.shape(v)[:2] != (n, num_chains)}
        if bad:
            raise ValueError(f"init_params leaves must have leading shape (B, C) = {(n, num_chains)}; got {bad}")
    return n, keys


def run_nuts_batch(model: Callable, stars: Any, static_args: tuple, init_params: dict | None, keys, *,
                   num_warmup: int = 500, num_samples: int = 500, num_chains: int = 4,
                   target_accept_prob: float = 0.8, max_tree_depth: int = 10, dense_mass: bool = False,
                   init_mass: str = "identity", warmup_max_tree_depth: int | None = None,
                   pad_to: int | None = None, devices: int | None = None) -> BatchResult:
    """NUTS for a batch of stars, each (star, chain) with its own step size and mass matrix.

    model: NumPyro model ``model(star, *static_args)`` for ONE star.
    stars: pytree whose leaves have a leading star axis B (e.g. a ``StarData`` batch).
    static_args: further model arguments shared by all stars (emulator, prior, config): array
        leaves are traced, other leaves must be hashable and select the compiled program.
    init_params: unconstrained initial values {site: (B, C, ...)}, or None for NumPyro's
        ``init_to_uniform`` (uniform in (-2, 2) in unconstrained space).
    keys: (B,) per-star PRNG keys (see :func:`star_keys`) or one key (split into B).
    pad_to: pad the batch to this many stars (reuses the program compiled for that B).
    dense_mass: dense mass matrices use a batched Cholesky (jnp.linalg) inside vmap, which can
        deadlock with jaxlib's CPU LAPACK on some machines; the default diagonal mass is safe.
    init_mass: the mass matrix the warmup starts from: "identity" (default, NumPyro's) or "laplace"
        (the curvature at the mode nearest each chain's start, :func:`laplace_inverse_mass`).
    warmup_max_tree_depth: the tree-depth cap during warmup (None: ``max_tree_depth``), NumPyro's
        ``max_tree_depth=(warmup, sampling)``. Warmup draws are discarded, so the cap changes only
        how much work the adaptation costs, not the sampling phase's Markov chain.
    devices: spread the stars over this many local devices (default: all of them; on a CPU see
        :func:`dds_infer.devices.use_cpu_cores`); the batch is padded to a multiple of it. Each
        device runs its share in its own lockstep, so the slowest chain holds up only its share.
    """
    settings = NutsSettings(num_warmup, num_samples, num_chains, target_accept_prob, max_tree_depth,
                            bool(dense_mass), init_mass, warmup_max_tree_depth)
    n, keys = check_batch(stars, keys, init_params, num_chains)
    n_dev = n_devices(devices)
    static, arrays = split_static(tuple(static_args))
    size = padded_size(n if pad_to is None else int(pad_to), n_dev)
    stars_p, keys_p, init_p = pad_batch((stars, keys, init_params), size)
    fn = _compiled(model, static, settings, init_params is not None)
    if n_dev > 1:
        fn = shard_stars(fn, n_dev, (True, False, True, True))
    return BatchResult(**first_rows(fn(stars_p, arrays, init_p, keys_p), n, n_dev))
