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

* random numbers are counter-based (threefry-2x32 on (job key, position), :func:`_uniforms`)
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
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.extend.random import threefry_2x32
from jax.scipy.special import ndtri
from numpyro.infer.hmc import hmc
from numpyro.infer.hmc_util import (IntegratorState, TreeInfo, _biased_transition_kernel, _build_basetree,
                                    _get_leaf, _is_turning, _leaf_idx_to_ckpt_idxs,
                                    _uniform_transition_kernel, euclidean_kinetic_energy, velocity_verlet,
                                    warmup_adapter)
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import ParamInfo, constrain_fn, initialize_model, potential_energy

from . import progress as _progress
from .devices import first_rows, n_devices, padded_size, shard_stars
from .engine import BatchResult, NutsSettings, split_static, check_batch, laplace_inverse_mass, pad_batch

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

MAX_DELTA_ENERGY = 1000.0  # NumPyro's default: a leaf with ΔH above this is a divergence


class _Traj(NamedTuple):
    """Where a slot is inside its current draw's trajectory."""

    energy_current: jnp.ndarray  # H at the draw's start
    tree: TreeInfo  # the tree built so far (before the doubling in progress)
    going_right: jnp.ndarray  # direction of the doubling in progress
    sub: TreeInfo  # the doubling's subtree so far (num_proposals = leaves built)
    r_ckpts: jnp.ndarray  # (max_depth, D) U-turn checkpoints of the subtree
    r_sum_ckpts: jnp.ndarray


class _Slot(NamedTuple):
    job: jnp.ndarray  # (star, chain) job index; n_jobs = idle
    star: Any  # that job's star (model argument)
    state: Any  # NumPyro HMCState between draws (i, flat z, adaptation, ...)
    traj: _Traj
    key: jnp.ndarray  # (2,) uint32 threefry key of the job
    counter: jnp.ndarray  # iterations done by the job: the random stream's position


def _where(pred, a, b):
    """``jnp.where(pred, a, b)`` leaf by leaf for pytrees a, b of one structure and a scalar
    ``pred``, as one select per dtype: the leaves are packed into one flat vector per dtype,
    selected and unpacked (exact). Under ``vmap`` over slots XLA then runs one kernel over
    (slots, size) per dtype instead of one small kernel per leaf; the per-kernel cost, not the
    arithmetic, dominates the loop on CPU."""
    la, tdef = jax.tree_util.tree_flatten(a)
    lb = jax.tree_util.tree_leaves(b)
    la, lb = [jnp.asarray(x) for x in la], [jnp.asarray(y) for y in lb]
    out = list(la)
    groups: dict = {}
    for i, x in enumerate(la):
        key = jnp.result_type(x, lb[i]) if x.shape == lb[i].shape else i  # (broadcasts: alone)
        groups.setdefault(key, []).append(i)
    for key, idx in groups.items():
        if len(idx) == 1:
            out[idx[0]] = jnp.where(pred, la[idx[0]], lb[idx[0]])
            continue
        sel = jnp.where(pred, jnp.concatenate([jnp.ravel(la[i]).astype(key) for i in idx]),
                        jnp.concatenate([jnp.ravel(lb[i]).astype(key) for i in idx]))
        start = 0
        for i in idx:
            size = la[i].size
            out[i] = sel[start:start + size].reshape(la[i].shape)
            start += size
    return jax.tree_util.tree_unflatten(tdef, out)


def _tree_like(tree: TreeInfo, **kw) -> TreeInfo:
    """``tree`` with fields replaced, keeping every field an array of a fixed dtype (loop carry)."""
    tree = tree._replace(**kw)
    f, i = jnp.result_type(float), jnp.result_type(int)  # NumPyro's dtypes (x64 aware)
    return tree._replace(depth=jnp.asarray(tree.depth, i), weight=jnp.asarray(tree.weight, f),
                         turning=jnp.asarray(tree.turning, bool), diverging=jnp.asarray(tree.diverging, bool),
                         sum_accept_probs=jnp.asarray(tree.sum_accept_probs, f),
                         num_proposals=jnp.asarray(tree.num_proposals, i))


def _uniforms(key, counter, n: int, k: int = 1):
    """(k, n) uniforms in (0, 1) at positions counter … counter + k − 1 of a job's random stream
    (n even, n per position) from ONE threefry-2x32 call. Threefry is counter-based: the words of a
    position depend only on the key and the position (pair index p → threefry(key, (p, p | 2³¹))),
    so a job's draws do not depend on the schedule or the block size. One call per block matters
    on CPU, where each threefry call is a rolled loop costing ~100 µs per iteration here."""
    h = n // 2
    p = counter.astype(jnp.uint32) * jnp.uint32(h) + jnp.arange(h * k, dtype=jnp.uint32)
    bits = threefry_2x32(key, jnp.concatenate([p, p | jnp.uint32(1 << 31)]))
    bits = jnp.stack([bits[: h * k].reshape(k, h), bits[h * k:].reshape(k, h)], axis=-1).reshape(k, n)
    return ((bits >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 23))


def _combine(current: TreeInfo, new: TreeInfo, inverse_mass_matrix, going_right, u, biased: bool) -> TreeInfo:
    """NumPyro's ``_combine_tree`` with the transition drawn as ``u < p`` from a given uniform u
    (NumPyro's ``bernoulli(key, p)`` is ``uniform(key) < p``)."""
    left, right = _where(going_right, current, new), _where(going_right, new, current)
    r_sum = current.r_sum + new.r_sum
    if biased:
        prob = _biased_transition_kernel(current, new)
        turning = new.turning | _is_turning(inverse_mass_matrix, left.r_left, right.r_right, r_sum)
    else:
        prob = _uniform_transition_kernel(current, new)
        turning = current.turning
    pick = _where(u < prob, new, current)
    return _tree_like(TreeInfo(left.z_left, left.r_left, left.z_left_grad, right.z_right, right.r_right,
                               right.z_right_grad, pick.z_proposal, pick.z_proposal_pe, pick.z_proposal_grad,
                               pick.z_proposal_energy, current.depth + 1, jnp.logaddexp(current.weight, new.weight),
                               r_sum, turning, new.diverging, current.sum_accept_probs + new.sum_accept_probs,
                               current.num_proposals + new.num_proposals))


def _start_doubling(energy_current, tree: TreeInfo, u_direction, max_depth: int, latent_size: int) -> _Traj:
    """build_tree's loop body up to the subtree: a direction, an empty subtree, no checkpoints."""
    zeros = jnp.zeros((max_depth, latent_size))
    return _Traj(energy_current, tree, u_direction < 0.5, _tree_like(tree, num_proposals=0), zeros, zeros)


def _start_draw(state, u_direction, eps, settings: NutsSettings, latent_size: int) -> _Traj:
    """NumPyro's sample_kernel up to build_tree: momentum r ~ N(0, M) from normals ``eps``, the
    energy H, the one-point tree and its first doubling."""
    adapt = state.adapt_state
    sq = adapt.mass_matrix_sqrt
    r = sq * eps if sq.ndim == 1 else sq @ eps
    energy = state.potential_energy + euclidean_kinetic_energy(adapt.inverse_mass_matrix, r)
    z, g, pe = state.z, state.z_grad, state.potential_energy
    tree = _tree_like(TreeInfo(z, r, g, z, r, g, z, pe, g, energy, depth=0, weight=0.0, r_sum=r, turning=False,
                               diverging=False, sum_accept_probs=0.0, num_proposals=0))
    return _start_doubling(energy, tree, u_direction, max(settings.tree_depths), latent_size)


def _any_turning(inverse_mass_matrix, r, r_sum, r_ckpts, r_sum_ckpts, idx_min, idx_max):
    """NumPyro's _is_iterative_turning (a loop over checkpoints idx_max → idx_min that stops at the
    first U-turn), evaluated for all checkpoints at once: True if any in [idx_min, idx_max] turns."""
    idx = jnp.arange(r_ckpts.shape[0])
    turn = jax.vmap(lambda rc, rsc: _is_turning(inverse_mass_matrix, rc, r, r_sum - rsc + rc))(r_ckpts, r_sum_ckpts)
    return jnp.any(turn & (idx >= idx_min) & (idx <= idx_max))


N_UNIFORMS = 4  # per iteration: leaf transition, merge transition, two doubling directions (+ D normals)


def _leaf(slot: _Slot, u, vv_update, wa_update, settings: NutsSettings, latent_size: int):
    """One iteration of one slot: build a leaf; close the subtree, doubling and draw if done.
    ``u``: this iteration's uniforms (the job's stream at position ``slot.counter``).

    Returns (new slot, record) where record = (recorded?, draw index, flat z, pe, diverging,
    num_steps, accept_prob) of a finished draw."""
    state, t = slot.state, slot.traj
    adapt = state.adapt_state
    inv_mm, step_size = adapt.inverse_mass_matrix, adapt.step_size
    # --- _iterative_build_subtree, one body iteration
    z, r, g = _get_leaf(t.sub, t.going_right)
    leaf = _tree_like(_build_basetree(vv_update, euclidean_kinetic_energy, z, r, g, inv_mm, step_size, t.going_right,
                                      t.energy_current, MAX_DELTA_ENERGY))
    leaf_idx = t.sub.num_proposals
    sub = _where(leaf_idx == 0, leaf, _combine(t.sub, leaf, inv_mm, t.going_right, u[0], False))
    idx_min, idx_max = _leaf_idx_to_ckpt_idxs(leaf_idx)
    # checkpoint idx_max takes the leaf's r and r_sum when leaf_idx is even (a mask, not a scatter:
    # batched scatters are slow on CPU)
    put = ((leaf_idx % 2 == 0) & (jnp.arange(t.r_ckpts.shape[0]) == idx_max))[:, None]
    r_ckpts = jnp.where(put, leaf.r_right, t.r_ckpts)
    r_sum_ckpts = jnp.where(put, sub.r_sum, t.r_sum_ckpts)
    turning = _any_turning(inv_mm, leaf.r_right, sub.r_sum, r_ckpts, r_sum_ckpts, idx_min, idx_max)
    sub_done = (sub.num_proposals >= 2 ** t.tree.depth) | turning | sub.diverging
    # --- _double_tree's merge and build_tree's loop condition
    finished_sub = _tree_like(sub, depth=t.tree.depth, turning=turning)
    merged = _combine(t.tree, finished_sub, inv_mm, t.going_right, u[1], True)
    d_warm, d_samp = settings.tree_depths
    depth_cap = d_samp if d_warm == d_samp else jnp.where(state.i < settings.num_warmup, d_warm, d_samp)
    draw_done = sub_done & ~((merged.depth < depth_cap) & ~merged.turning & ~merged.diverging)
    next_doubling = _start_doubling(t.energy_current, merged, u[2], max(settings.tree_depths), latent_size)
    # the checkpoints stay out of the selects below (80 numbers per slot): a subtree reads only
    # checkpoints it wrote itself (_leaf_idx_to_ckpt_idxs), so a new subtree need not clear them
    no_ckpts = dict(r_ckpts=None, r_sum_ckpts=None)
    traj = _where(sub_done, next_doubling._replace(**no_ckpts), t._replace(sub=sub, **no_ckpts))
    # --- sample_kernel after build_tree: the draw, adaptation, next draw's start
    accept_prob = merged.sum_accept_probs / merged.num_proposals
    z_info = IntegratorState(merged.z_proposal, r, merged.z_proposal_pe, merged.z_proposal_grad)
    adapt_new = _where(state.i < settings.num_warmup, wa_update(state.i, accept_prob, z_info, adapt), adapt)
    drawn = state._replace(i=state.i + 1, z=merged.z_proposal, z_grad=merged.z_proposal_grad,
                           potential_energy=merged.z_proposal_pe, adapt_state=adapt_new)
    new_traj = _start_draw(drawn, u[3], ndtri(u[N_UNIFORMS:N_UNIFORMS + latent_size]), settings, latent_size)
    state, traj = _where(draw_done, (drawn, new_traj._replace(**no_ckpts)), (state, traj))
    traj = traj._replace(r_ckpts=r_ckpts, r_sum_ckpts=r_sum_ckpts)
    record = (draw_done, state.i - 1, merged.z_proposal, merged.z_proposal_pe, merged.diverging,
              merged.num_proposals, accept_prob)
    return slot._replace(state=state, traj=traj, counter=slot.counter + 1), record


@lru_cache(maxsize=16)
def queue_program(model: Callable, static, settings: NutsSettings, n_slots: int, has_init: bool, block: int,
                  progress: bool = False):
    """The jitted queue sampler ``run(stars, arrays, init, keys)`` for (model, static args, settings,
    slots), cached; what :func:`run_nuts_queue` calls. Public so that benchmarks can compile it
    ahead of time (``.lower(...).compile()``) and time the compilation apart. progress: report
    finished chains to the host as they finish (:mod:`dds_infer.progress`; a chunk of 1,024 stars
    takes minutes, and its chains finish all along)."""
    total = settings.num_warmup + settings.num_samples

    def run(stars, arrays, init, keys):
        static_args = static.merge(arrays)
        c = settings.num_chains
        n_jobs = keys.shape[0] * c
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
            return _Slot(jnp.asarray(j, jnp.result_type(int)), star, state, traj, stream0[jj],
                         jnp.asarray(1, jnp.uint32))

        def step_one(slot, u):
            _, vv_update = velocity_verlet(pe_fn(slot.star), euclidean_kinetic_energy)
            return _leaf(slot, u, vv_update, wa_update, settings, latent_size)

        n_out = settings.num_samples
        # one packed row per draw: z (D), potential energy, diverging, leapfrog steps, acceptance
        bufs = dict(draws=jnp.zeros((n_jobs, n_out, latent_size + 4)), step_size=jnp.zeros(n_jobs),
                    inv_mm=jnp.zeros((n_jobs,) + ((latent_size, latent_size) if settings.dense_mass
                                                  else (latent_size,))))

        def finished(slots):
            return (slots.state.i >= total) & (slots.job < n_jobs)

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
            adapt = slots.state.adapt_state
            bufs = dict(bufs, step_size=bufs["step_size"].at[jd].set(adapt.step_size, mode="drop"),
                        inv_mm=bufs["inv_mm"].at[jd].set(adapt.inverse_mass_matrix, mode="drop"))
            fresh = jax.vmap(load)(jnp.where(done, next_job + jnp.cumsum(done) - 1, n_jobs))
            slots = jax.tree_util.tree_map(
                lambda a, b: jnp.where(done.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), fresh, slots)
            return slots, next_job + jnp.sum(done), bufs, it + k

        first = jnp.arange(n_slots)
        slots = jax.vmap(load)(jnp.where(first < n_jobs, first, n_jobs))
        carry = (slots, jnp.asarray(min(n_slots, n_jobs), jnp.result_type(int)), bufs, jnp.zeros((), jnp.int32))
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
    pad_to: pad the batch to this many stars by repeating the last (as ``run_nuts_batch``: one
    compiled program for a catalogue's short last chunk; here the padding stars do run).
    devices: spread the stars over this many local devices (default: all; :mod:`dds_infer.devices`),
    each with its own queue of ``n_slots / devices`` slots (rounded up); the batch is padded to a
    multiple of it. ``BatchResult.iterations`` then has one entry per device.
    n_slots: default :func:`default_slots` (64 per device).
    on_finished: called as ``on_finished(n)`` each time n chains finish during the call (progress
    within a call; padding stars' chains included); the draws do not depend on it.
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
    stars_p, keys_p, init_p = pad_batch((stars, keys, init_params), size)
    call = partial(fn, stars_p, split_static(tuple(static_args))[1], init_p, keys_p)
    if on_finished is None:
        out, n_iter = call()
    else:
        with _progress.reporting_to(on_finished):  # until the (asynchronous) computation has finished
            out, n_iter = jax.block_until_ready(call())
    out, n_iter = first_rows(out, n, n_dev), first_rows(n_iter, n_dev, n_dev)
    return BatchResult(**out, iterations=n_iter)


def default_slots(devices: int | None = None) -> int:
    """The default number of slots in all: ``DEFAULT_SLOTS_PER_DEVICE`` on each device."""
    return DEFAULT_SLOTS_PER_DEVICE * n_devices(devices)


def sharded_queue_program(model: Callable, static_args: tuple, settings: NutsSettings, n_slots: int, has_init: bool,
                          block: int = DEFAULT_BLOCK, devices: int | None = None, progress: bool = False):
    """(``run(stars, arrays, init, keys) -> (out, iterations (devices,))``, devices): the queue
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
    """``fn`` with its loop count given a leading axis (one entry per device), mapped over n_dev."""
    def run(stars, arrays, init, keys):
        out, n_iter = fn(stars, arrays, init, keys)
        return out, n_iter[None]
    return jax.jit(run) if n_dev == 1 else shard_stars(run, n_dev, (True, False, True, True))
