"""One leaf of NUTS for one slot of the queue engine (:mod:`dds_infer.nuts_queue`).

A slot is a (star, chain) job's NumPyro ``HMCState`` between draws plus where it is inside the
current draw's trajectory (:class:`_Traj`), carried packed: one flat vector per dtype
(:class:`Packing`). :func:`_leaf` advances it by one leapfrog step:
it extends the doubling in progress, merges a finished subtree (multinomial, biased at the top
level), checks the generalised U-turn against the stored checkpoints, and at the end of a draw
applies NumPyro's warmup adaptation. Every branch is computed and selected (:func:`_where`,
and the packed candidates for the next carry), so the step is branch-free under ``vmap`` over
slots. The random numbers are
counter-based (:func:`_uniforms`): a job's stream depends only on its key and position.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32
from jax.scipy.special import ndtri
from numpyro.infer.hmc_util import (IntegratorState, TreeInfo, _biased_transition_kernel, _build_basetree,
                                    _get_leaf, _is_turning, _leaf_idx_to_ckpt_idxs,
                                    _uniform_transition_kernel, euclidean_kinetic_energy)

from .engine import NutsSettings

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
    packed: dict  # NumPyro HMCState between draws and _Traj without checkpoints, packed (Packing)
    r_ckpts: jnp.ndarray  # (max_depth, D) U-turn checkpoints of the subtree in progress
    r_sum_ckpts: jnp.ndarray
    key: jnp.ndarray  # (2,) uint32 threefry key of the job
    counter: jnp.ndarray  # iterations done by the job: the random stream's position


class Packing(NamedTuple):
    """Where each leaf of a slot's (HMCState, _Traj) lives in the slot's packed form: one flat
    vector per dtype. The loop carries slots packed, so that a step's final select is one select
    per dtype and its result is the next carry as it is. Carried as separate leaves (~60 small
    arrays), every field of the select's result was a kernel of its own that copied a slice out
    (same draws; ``bench/infer_bench.py``: 133 → 106 µs per iteration, bench/RESULTS.md, session 22)."""

    treedef: Any
    fields: tuple  # per leaf: (dtype name, start, shape)
    sizes: tuple  # per dtype name: (name, length)


def packing_of(tree) -> Packing:
    """The :class:`Packing` of one slot's tree (arrays or ``jax.ShapeDtypeStruct`` s, no batch axis)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    sizes: dict = {}
    fields = []
    for x in leaves:
        name, size = jnp.dtype(x.dtype).name, int(np.prod(x.shape, dtype=int))
        fields.append((name, sizes.get(name, 0), tuple(x.shape)))
        sizes[name] = sizes.get(name, 0) + size
    return Packing(treedef, tuple(fields), tuple(sizes.items()))


def pack(tree, packing: Packing) -> dict:
    """One slot's tree as {dtype name: flat vector} (exact; the inverse of :func:`unpack`)."""
    leaves = jax.tree_util.tree_leaves(tree)
    groups: dict = {name: [] for name, _ in packing.sizes}
    for x, (name, _, shape) in zip(leaves, packing.fields):
        groups[name].append(jnp.ravel(jnp.broadcast_to(jnp.asarray(x, name), shape)))
    return {name: jnp.concatenate(v) for name, v in groups.items()}


def unpack(packed: dict, packing: Packing):
    """The tree of :func:`pack`'s output (the slices fuse into their consumers)."""
    leaves = [packed[name][start:start + int(np.prod(shape, dtype=int))].reshape(shape)
              for name, start, shape in packing.fields]
    return jax.tree_util.tree_unflatten(packing.treedef, leaves)


def _without_ckpts(traj: _Traj) -> _Traj:
    """The trajectory without its U-turn checkpoints: they are carried beside the packed state
    and stay out of the selects (80 numbers per slot; a subtree reads only checkpoints it wrote
    itself, :func:`_leaf_idx_to_ckpt_idxs`, so a new subtree need not clear them)."""
    return traj._replace(r_ckpts=None, r_sum_ckpts=None)


def slot_packing(state, traj: _Traj) -> Packing:
    """The :class:`Packing` of a slot's (HMCState, _Traj) (arrays or ``jax.eval_shape`` output)."""
    return packing_of((state, _without_ckpts(traj)))


def slot_state(slot: _Slot, packing: Packing):
    """A slot's (HMCState, _Traj), its checkpoints included."""
    state, traj = unpack(slot.packed, packing)
    return state, traj._replace(r_ckpts=slot.r_ckpts, r_sum_ckpts=slot.r_sum_ckpts)


def make_slot(job, star, state, traj: _Traj, key, counter, packing: Packing) -> _Slot:
    """A slot from its parts: (state, trajectory) packed, the checkpoints beside them."""
    return _Slot(job, star, pack((state, _without_ckpts(traj)), packing), traj.r_ckpts, traj.r_sum_ckpts, key,
                 counter)


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


def _leaf(slot: _Slot, u, vv_update, wa_update, settings: NutsSettings, latent_size: int, packing: Packing):
    """One iteration of one slot: build a leaf; close the subtree, doubling and draw if done.
    ``u``: this iteration's uniforms (the job's stream at position ``slot.counter``).

    Returns (new slot, record) where record = (recorded?, draw index, flat z, pe, diverging,
    num_steps, accept_prob) of a finished draw."""
    state, t = slot_state(slot, packing)
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
    # --- sample_kernel after build_tree: the draw, adaptation, next draw's start
    accept_prob = merged.sum_accept_probs / merged.num_proposals
    z_info = IntegratorState(merged.z_proposal, r, merged.z_proposal_pe, merged.z_proposal_grad)
    adapt_new = _where(state.i < settings.num_warmup, wa_update(state.i, accept_prob, z_info, adapt), adapt)
    drawn = state._replace(i=state.i + 1, z=merged.z_proposal, z_grad=merged.z_proposal_grad,
                           potential_energy=merged.z_proposal_pe, adapt_state=adapt_new)
    new_traj = _start_draw(drawn, u[3], ndtri(u[N_UNIFORMS:N_UNIFORMS + latent_size]), settings, latent_size)
    # the next carry, from three packed candidates (new draw, next doubling, same subtree) by one
    # select per dtype and candidate: nothing is unpacked
    a, b, c = (pack((st, _without_ckpts(tr)), packing)
               for st, tr in ((drawn, new_traj), (state, next_doubling), (state, t._replace(sub=sub))))
    packed = {k: jnp.where(draw_done, a[k], jnp.where(sub_done, b[k], c[k])) for k in a}
    record = (draw_done, state.i, merged.z_proposal, merged.z_proposal_pe,
              merged.diverging, merged.num_proposals, accept_prob)
    return slot._replace(packed=packed, r_ckpts=r_ckpts, r_sum_ckpts=r_sum_ckpts, counter=slot.counter + 1), record
