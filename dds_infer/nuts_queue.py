"""NUTS without lockstep: every chain is a state machine that advances one leapfrog step per
iteration, and a chain that has drawn all its draws hands its slot to the next (star, chain)
job of a queue.

Why: :func:`dds_infer.engine.run_nuts_batch` vmaps NumPyro's NUTS kernel, whose tree building
is a set of nested ``while_loop`` s. Under ``vmap`` every loop runs until its slowest member is
done, so each draw costs the largest tree among all chains of the batch, and the batch costs
its slowest star: on real stars ~29% of that work is useful (``lockstep_efficiency`` in
``bench/infer_bench.py``). Here the loop is flat: one iteration = one leaf of the current
trajectory for every slot; a slot whose subtree, doubling or draw ends moves on within the
same iteration. Idle work is left only at the tail of the queue.

The algorithm is NumPyro's iterative NUTS (Hoffman & Gelman 2014, JMLR 15, 1593; multinomial
sampling and the generalised U-turn criterion of Betancourt 2017, arXiv:1701.02434; NumPyro's
iterative tree building, Phan et al. 2019, arXiv:1912.11554) and NumPyro's warmup adaptation
(dual averaging + windowed diagonal/dense mass matrix), re-sequenced: each iteration calls
NumPyro's building blocks (``_build_basetree``, ``_is_turning``, the transition kernels,
``_leaf_idx_to_ckpt_idxs``, ``warmup_adapter``, the ``hmc`` init kernel). Two deliberate
differences, neither of which changes the Markov chain's law:

* random numbers are counter-based (threefry-2x32 on (job key, position),
  :func:`dds_infer.nuts_leaf._uniforms`)
  instead of NumPyro's key splits, generated a block of iterations at a time: on CPU each
  threefry call is a rolled loop (~100 µs per call here) and a NUTS leaf needs several.
  A job's random numbers depend only on its key, not on the number of slots, the block size
  or which other stars share the call; its draws are then the same bit for bit (tested) as
  long as XLA rounds the same way at both batch widths (not guaranteed: with 2 slots instead
  of 4 we saw ~1e-6 differences, which the early warmup amplifies into different chains);
* the U-turn checks against the stored checkpoints are evaluated all at once instead of in a
  short loop that stops at the first U-turn (same result: "any").

With the same key splits (an earlier version) the chains matched ``run_nuts_batch`` draw by
draw, to rounding: in float64, 1e-13 after 20 warmup draws, the early dual averaging then
amplifying rounding ~2× per draw. The tests now compare the two engines' posteriors and
adaptation statistically.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.special import ndtri
from numpyro.infer.hmc import hmc
from numpyro.infer.hmc_util import euclidean_kinetic_energy, velocity_verlet, warmup_adapter
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import ParamInfo, constrain_fn, initialize_model, potential_energy

from . import progress as _progress
from .devices import balanced_layout, first_rows, n_devices, padded_size, rows_at, shard_stars
from .engine import BatchResult, NutsSettings, split_static, check_batch, laplace_inverse_mass
from .nuts_leaf import N_UNIFORMS, _leaf, _start_draw, _uniforms, make_slot, slot_packing, unpack

__all__ = ["run_nuts_queue", "queue_program", "sharded_queue_program", "default_slots", "DEFAULT_SLOTS_PER_DEVICE",
           "DEFAULT_BLOCK", "DEFAULT_CHUNK"]

# chains advanced together on each device: 64 ran fastest on 1,024 real stars on 2 cores (11.46
# stars/s; 128: 9.75 at the commit before); fewer leave less idle tail until the per-iteration
# overhead grows (scans: bench/RESULTS.md)
DEFAULT_SLOTS_PER_DEVICE = 64
# stars per chunk when a catalogue runs through this engine (runner.default_batch_size: dds-infer
# infer, the benches): slots are refilled only within a chunk, so small chunks leave them idle.
# 1,000 real stars end to end (bench/real_accuracy.py --engine queue): 114 s in one chunk, 171 s
# in 256-star chunks; the batch engine 169 s.
DEFAULT_CHUNK = 1024
DEFAULT_BLOCK = 32  # iterations per block of random numbers


@lru_cache(maxsize=16)
def queue_program(model: Callable, static, settings: NutsSettings, n_slots: int, has_init: bool, block: int,
                  progress: bool = False):
    """The jitted queue sampler ``run(stars, arrays, init, keys, active)`` for (model, static args,
    settings, slots), cached; what :func:`run_nuts_queue` calls. ``active`` (B,) bool: the stars
    to sample, a prefix of the batch (padding stars after it are never scheduled, so a batch
    padded to a larger compiled size costs no more iterations). Public so that benchmarks can
    compile it ahead of time (``.lower(...).compile()``) and time the compilation apart. progress:
    report finished chains to the host as they finish (:mod:`dds_infer.progress`; a chunk of 1,024
    stars takes minutes, and its chains finish all along)."""
    total = settings.num_warmup + settings.num_samples

    def run(stars, arrays, init, keys, active):
        static_args = static.merge(arrays)
        c = settings.num_chains
        n_jobs = keys.shape[0] * c
        live = jnp.sum(active).astype(jnp.result_type(int)) * c  # jobs of active stars: the first `live`
        job_star = jnp.repeat(jnp.arange(keys.shape[0]), c)
        job_keys = jax.vmap(lambda k: jax.random.split(k, c))(keys).reshape(-1)

        def star_of(j):
            return jax.tree_util.tree_map(lambda a: a[job_star[j]], stars)

        def job_z(j):  # every job's start as engine._one_chain (unconstrained sites, a dict)
            k_init = jax.random.split(job_keys[j])[0]
            if has_init:
                return jax.tree_util.tree_map(lambda a: a.reshape((n_jobs,) + a.shape[2:])[j], init)
            return initialize_model(k_init, model, init_strategy=init_to_uniform,
                                    model_args=(star_of(j), *static_args)).param_info.z

        z_sites = jax.vmap(job_z)(jnp.arange(n_jobs))
        _, unravel = ravel_pytree(jax.tree_util.tree_map(lambda a: a[0], z_sites))
        z0 = jax.vmap(lambda z: ravel_pytree(z)[0])(z_sites)  # NUTS runs on the flat vector
        latent_size = z0.shape[1]
        n_u = N_UNIFORMS + latent_size + (N_UNIFORMS + latent_size) % 2

        def pe_fn(star):
            return lambda zf: potential_energy(model, (star, *static_args), {}, unravel(zf))

        pe0, g0 = jax.vmap(lambda j: jax.value_and_grad(pe_fn(star_of(j)))(z0[j]))(jnp.arange(n_jobs))
        valid0 = jnp.isfinite(pe0) & jnp.all(jnp.isfinite(g0), axis=-1)
        imm0 = None  # every job's starting inverse mass matrix, computed once (not per slot load)
        if settings.init_mass == "laplace":
            imm0 = jax.vmap(lambda j: laplace_inverse_mass(pe_fn(star_of(j)), z0[j], settings.dense_mass))(
                jnp.arange(n_jobs))
        stream0 = jax.vmap(lambda k: jax.random.key_data(jax.random.split(k)[1]))(job_keys)
        _, wa_update = warmup_adapter(settings.num_warmup, dense_mass=settings.dense_mass,
                                      target_accept_prob=settings.target_accept_prob)

        def load(j):
            """A slot's state for job j (clamped: idle slots rerun the last job, unrecorded)."""
            jj = jnp.minimum(j, n_jobs - 1)
            star = star_of(jj)
            init_kernel, _ = hmc(potential_fn=pe_fn(star), algo="NUTS")
            state = init_kernel(ParamInfo(z0[jj], pe0[jj], g0[jj]), settings.num_warmup,
                                target_accept_prob=settings.target_accept_prob,
                                max_tree_depth=settings.tree_depths, dense_mass=settings.dense_mass,
                                inverse_mass_matrix=None if imm0 is None else imm0[jj], rng_key=jax.random.key(0))
            # no key in the adaptation state: its only random use (a step-size search) is off
            state = state._replace(adapt_state=state.adapt_state._replace(rng_key=None), rng_key=None,
                                   mean_accept_prob=jnp.zeros(()), accept_prob=jnp.zeros(()),
                                   num_steps=jnp.zeros((), jnp.result_type(int)), diverging=jnp.asarray(False),
                                   energy=jnp.zeros(()))
            u = _uniforms(stream0[jj], jnp.uint32(0), n_u)[0]
            traj = _start_draw(state, u[3], ndtri(u[N_UNIFORMS:N_UNIFORMS + latent_size]), settings, latent_size)
            return state, traj, star, stream0[jj]

        # the slots are carried packed (nuts_leaf.Packing): its layout, from the shapes alone
        packing = slot_packing(*jax.eval_shape(load, jnp.asarray(0))[:2])

        def load_slot(j):
            state, traj, star, key = load(j)
            return make_slot(jnp.asarray(j, jnp.result_type(int)), star, state, traj, key, jnp.asarray(1, jnp.uint32),
                             packing)

        def step_one(slot, u):
            _, vv_update = velocity_verlet(pe_fn(slot.star), euclidean_kinetic_energy)
            return _leaf(slot, u, vv_update, wa_update, settings, latent_size, packing)

        def states(slots):
            return jax.vmap(lambda p: unpack(p, packing)[0])(slots.packed)

        n_out = settings.num_samples
        # one packed row per draw: z (D), potential energy, diverging, leapfrog steps, acceptance
        bufs = dict(draws=jnp.zeros((n_jobs, n_out, latent_size + 4)), step_size=jnp.zeros(n_jobs),
                    inv_mm=jnp.zeros((n_jobs,) + ((latent_size, latent_size) if settings.dense_mass
                                                  else (latent_size,))))

        def finished(slots):
            return (states(slots).i >= total) & (slots.job < n_jobs)

        def inner(carry):  # up to `block` iterations, until some job has drawn all its draws
            slots, bufs, k, u = carry
            slots, (rec, i, z, pe, div, steps, acc) = jax.vmap(step_one)(slots, u[:, k])
            row = jnp.where(rec & (i >= settings.num_warmup) & (slots.job < n_jobs), slots.job, n_jobs)
            packed = jnp.concatenate([z, jnp.stack([pe, div, steps, acc], axis=-1).astype(z.dtype)], axis=-1)
            bufs = dict(bufs, draws=bufs["draws"].at[row, i - settings.num_warmup].set(packed, mode="drop"))
            return slots, bufs, k + 1, u

        def outer(carry):
            slots, next_job, bufs, it = carry
            u = jax.vmap(lambda key, ctr: _uniforms(key, ctr, n_u, block))(slots.key, slots.counter)
            slots, bufs, k, _ = jax.lax.while_loop(lambda c: (c[2] < block) & ~jnp.any(finished(c[0])), inner,
                                                   (slots, bufs, jnp.asarray(0, jnp.int32), u))
            done = finished(slots)
            if progress:
                n_done = jnp.sum(done)
                jax.lax.cond(n_done > 0, lambda n: jax.debug.callback(_progress.report, n), lambda n: None, n_done)
            jd = jnp.where(done, slots.job, n_jobs)  # finished jobs: their adapted step size and mass matrix
            adapt = states(slots).adapt_state
            bufs = dict(bufs, step_size=bufs["step_size"].at[jd].set(adapt.step_size, mode="drop"),
                        inv_mm=bufs["inv_mm"].at[jd].set(adapt.inverse_mass_matrix, mode="drop"))
            cand = next_job + jnp.cumsum(done) - 1
            fresh = jax.vmap(load_slot)(jnp.where(done & (cand < live), cand, n_jobs))
            slots = jax.tree_util.tree_map(
                lambda a, b: jnp.where(done.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), fresh, slots)
            return slots, next_job + jnp.sum(done), bufs, it + k

        first = jnp.arange(n_slots)
        slots = jax.vmap(load_slot)(jnp.where(first < live, first, n_jobs))
        carry = (slots, jnp.minimum(n_slots, live), bufs, jnp.zeros((), jnp.int32))
        _, _, bufs, n_iter = jax.lax.while_loop(lambda c: jnp.any(c[0].job < n_jobs), outer, carry)

        d = bufs["draws"]
        zs = jax.vmap(jax.vmap(unravel))(d[..., :latent_size])
        pe, div, steps, acc = (d[..., latent_size + k] for k in range(4))
        samples = jax.vmap(lambda j, z: jax.vmap(lambda zz: constrain_fn(model, (star_of(j), *static_args), {}, zz,
                                                                         return_deterministic=True))(z))(
            jnp.arange(n_jobs), zs)
        out = dict(samples=samples, potential_energy=pe, diverging=div > 0.5,
                   num_steps=jnp.round(steps).astype(jnp.result_type(int)), accept_prob=acc.mean(-1), step_size=bufs["step_size"], inverse_mass_matrix=bufs["inv_mm"],
                   init_valid=valid0)
        return jax.tree_util.tree_map(lambda a: a.reshape((-1, c) + a.shape[1:]), out), n_iter

    return jax.jit(run)


def run_nuts_queue(model: Callable, stars: Any, static_args: tuple, init_params: dict | None, keys, *,
                   num_warmup: int = 500, num_samples: int = 500, num_chains: int = 4,
                   target_accept_prob: float = 0.8, max_tree_depth: int = 10, dense_mass: bool = False,
                   init_mass: str = "identity", warmup_max_tree_depth: int | None = None,
                   n_slots: int | None = None, block: int = DEFAULT_BLOCK, pad_to: int | None = None,
                   devices: int | None = None, on_finished: Callable[[int], None] | None = None) -> BatchResult:
    """NUTS for B stars × C chains on ``n_slots`` chain slots fed from a queue of B × C jobs.

    Same arguments and result as :func:`dds_infer.engine.run_nuts_batch` (which see), plus
    ``BatchResult.iterations``. ``n_slots`` chains advance together, one leapfrog step each per
    iteration; random numbers come ``block`` iterations at a time. A star's draws depend on its
    key and start only: not on ``n_slots``, ``block`` or the other stars of the call. A call
    with many more jobs than slots wastes least (the idle tail is at most one job per slot).
    pad_to: pad the batch to this many stars (one compiled program for a catalogue's short last
    chunk, or for catalogues of several sizes); the padding stars' chains are never started, so
    padding costs no iterations, and it is spread over the devices so that each samples an equal
    share of the real stars (:func:`dds_infer.devices.balanced_layout`).
    devices: spread the stars over this many local devices (default: all; :mod:`dds_infer.devices`),
    each with its own queue of ``n_slots / devices`` slots (rounded up); the batch is padded to a
    multiple of it. ``BatchResult.iterations`` then has one entry per device.
    n_slots: default :func:`default_slots` (64 per device).
    on_finished: called as ``on_finished(n)`` each time n chains finish during the call (progress
    within a call); the draws do not depend on it.
    """
    settings = NutsSettings(num_warmup, num_samples, num_chains, target_accept_prob, max_tree_depth, bool(dense_mass),
                            init_mass, warmup_max_tree_depth)
    n, keys = check_batch(stars, keys, init_params, num_chains)
    n_slots = default_slots(devices) if n_slots is None else n_slots
    if int(n_slots) < 1 or int(block) < 1:
        raise ValueError(f"n_slots and block must be >= 1, got {n_slots}, {block}")
    fn, n_dev = sharded_queue_program(model, static_args, settings, int(n_slots), init_params is not None,
                                      int(block), devices, on_finished is not None)
    size = padded_size(n if pad_to is None else int(pad_to), n_dev)
    if n > size:
        raise ValueError(f"batch of {n} stars exceeds the batch size {size}")
    src, active = balanced_layout(n, size, n_dev)  # each device's share: its stars, then padding
    stars_p, keys_p, init_p = jax.tree_util.tree_map(lambda a: a[src], (stars, keys, init_params))
    call = partial(fn, stars_p, split_static(tuple(static_args))[1], init_p, keys_p, jnp.asarray(active))
    if on_finished is None:
        out, n_iter = call()
    else:
        with _progress.reporting_to(on_finished):  # until the (asynchronous) computation has finished
            out, n_iter = jax.block_until_ready(call())
    out, n_iter = rows_at(out, np.flatnonzero(active), n_dev), first_rows(n_iter, n_dev, n_dev)
    return BatchResult(**out, iterations=n_iter)


def default_slots(devices: int | None = None) -> int:
    """The default number of slots in all: ``DEFAULT_SLOTS_PER_DEVICE`` on each device."""
    return DEFAULT_SLOTS_PER_DEVICE * n_devices(devices)


def sharded_queue_program(model: Callable, static_args: tuple, settings: NutsSettings, n_slots: int, has_init: bool,
                          block: int = DEFAULT_BLOCK, devices: int | None = None, progress: bool = False):
    """(``run(stars, arrays, init, keys, active) -> (out, iterations (devices,))``, devices): the queue
    program of :func:`queue_program` with ``n_slots / devices`` slots (rounded up) per device,
    mapped over the devices (:func:`dds_infer.devices.shard_stars`; the batch must be a multiple
    of ``devices``). What :func:`run_nuts_queue` runs; public so that benchmarks can compile it
    ahead of time (``.lower(...).compile()``)."""
    n_dev = n_devices(devices)
    static, _ = split_static(tuple(static_args))
    fn = queue_program(model, static, settings, padded_size(n_slots, n_dev) // n_dev, has_init, int(block),
                       bool(progress))
    return _over_devices(fn, n_dev), n_dev


@lru_cache(maxsize=16)
def _over_devices(fn, n_dev: int):
    """``fn`` with its loop count given a leading axis (one entry per device), mapped over n_dev
    (each device samples the active stars of its share, which come first in it:
    :func:`dds_infer.devices.balanced_layout`)."""
    def run(stars, arrays, init, keys, active):
        out, n_iter = fn(stars, arrays, init, keys, active)
        return out, n_iter[None]
    return jax.jit(run) if n_dev == 1 else shard_stars(run, n_dev, (True, False, True, True, True))
