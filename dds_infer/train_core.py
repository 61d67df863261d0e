"""Compiled pieces of emulator training (Green et al. 2021, §2 and §4).

* :func:`star_loss` — the per-star term of the training loss, Eq. 15:
  ‖Lᵀ (B(M + Ê R) - B(m̂ - μ̂))‖² / n_bands, with Lᵀ = W the whitening matrix
  of the colour covariance C_c (Eqs. 4-6, 12-13).
* :func:`regularization` — L2 on the stellar-model (hidden) kernels, L1 on the
  reddening layer kernel (§4).
* :func:`make_epoch_fn` — one epoch as one compiled function: a ``lax.scan``
  of Adam steps over the minibatches of a per-epoch permutation (the last batch
  is padded with zero-weight rows, so shapes never change).
* :func:`refresh_star_terms` — once per iteration, vectorised and chunked over
  stars: updated reddening (Eqs. 8-9), whitening matrices with the network's
  Jacobian and the R Rᵀ σ_E² term (Eq. 4), and χ² (Eqs. 11-14).

Everything here is pure JAX and runs unchanged on CPU or GPU.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from .emulator import Emulator, StellarModelNet, model_colours
from .evaluate import PreparedPhotometry, fit_labels, fit_reddening, star_terms
from .likelihood import chi2_colours, whitening_matrix

__all__ = ["StarBatchData", "star_loss", "regularization", "weighted_mean_loss", "make_epoch_fn",
           "make_optimizer", "refresh_star_terms", "StarTerms", "map_star_chunks"]


@struct.dataclass
class StarBatchData:
    """Per-star training inputs (leading axis = star), all fixed during one iteration.

    x: (N, 3) normalised θ̂; E: (N,) current reddening estimate; c_obs: (N, B)
    observed colours ĉ (0 where unmodelled); W: (N, B, B) whitening matrix Lᵀ;
    mask: (N, B) modelled entries; weight: (N,) 1 for stars in the fit, else 0.
    """

    x: jnp.ndarray
    E: jnp.ndarray
    c_obs: jnp.ndarray
    W: jnp.ndarray
    mask: jnp.ndarray
    weight: jnp.ndarray


def star_loss(net: StellarModelNet, params, d: StarBatchData):
    """Eq. 15 per star: ‖W [B(M(θ̂) + E R(θ̂)) - ĉ]‖² / n_bands, shape (N,)."""
    c_model = model_colours(*net.apply({"params": params}, d.x), d.E)
    resid = jnp.where(d.mask, c_model - d.c_obs, 0.0)
    y = jnp.einsum("nij,nj->ni", d.W, resid)
    return jnp.sum(y * y, axis=-1) / c_model.shape[-1]


def regularization(params, l2_hidden: float, l1_reddening: float):
    """Regularisation terms of Eq. 15: L2 (``l2_hidden`` Σw²) on the stellar-model hidden kernels + L1 (Σ|w|) on the R kernel."""
    l2 = sum(jnp.sum(v["kernel"] ** 2) for k, v in params.items() if k.startswith("hidden_"))
    return l2_hidden * l2 + l1_reddening * jnp.sum(jnp.abs(params["R"]["kernel"]))


def weighted_mean_loss(net, params, d: StarBatchData, weight=None):
    """Σ wᵢ lossᵢ / Σ wᵢ (data term of Eq. 15 only), 0 if no weight."""
    w = d.weight if weight is None else weight
    return jnp.sum(w * star_loss(net, params, d)) / jnp.maximum(jnp.sum(w), 1.0)


def make_optimizer():
    """Adam with the learning rate as a traced hyper-parameter (changed per iteration without recompiling)."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)


@functools.lru_cache(maxsize=16)
def make_epoch_fn(n_bands: int, hidden: tuple, batch_size: int, l2_hidden: float, l1_reddening: float,
                  freeze_r_kernel: bool = False):
    """Compiled ``epoch(params, opt_state, key, data) -> (params, opt_state, mean_batch_loss)``.

    One epoch = Adam steps over ceil(N / batch_size) minibatches of a random
    permutation of the N stars (a ``lax.scan``); padded rows have weight 0.
    Each step minimises the weighted mean of Eq. 15 over the batch plus the
    regularization terms. ``freeze_r_kernel``: the R-layer kernel gets zero
    gradient (R(θ) stays θ-independent). Cached, so repeated trainings reuse
    the compilation.
    """
    net = StellarModelNet(n_bands=n_bands, hidden=tuple(hidden))
    opt = make_optimizer()

    def loss_fn(p, batch, w):
        data_term = weighted_mean_loss(net, p, batch, w)
        return data_term + regularization(p, l2_hidden, l1_reddening), data_term

    def epoch(params, opt_state, key, data: StarBatchData):
        n = data.x.shape[0]
        steps = -(-n // batch_size)
        pad = steps * batch_size - n
        perm = jax.random.permutation(key, n)
        idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(steps, batch_size)
        valid = jnp.concatenate([jnp.ones((n,)), jnp.zeros((pad,))]).reshape(steps, batch_size)

        def step(carry, inp):
            p, s = carry
            i, v = inp
            batch = jax.tree_util.tree_map(lambda a: a[i], data)
            w = batch.weight * v
            (_, data_term), g = jax.value_and_grad(loss_fn, has_aux=True)(p, batch, w)
            if freeze_r_kernel:
                g = {**g, "R": {**g["R"], "kernel": jnp.zeros_like(g["R"]["kernel"])}}
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), (data_term, jnp.sum(w))

        (params, opt_state), (terms, ws) = jax.lax.scan(step, (params, opt_state), (idx, valid))
        return params, opt_state, jnp.sum(terms * ws) / jnp.maximum(jnp.sum(ws), 1.0)

    return jax.jit(epoch)


@functools.lru_cache(maxsize=16)
def make_eval_fn(n_bands: int, hidden: tuple):
    """Compiled ``loss(params, data)``: weighted mean data term of Eq. 15 over all stars."""
    net = StellarModelNet(n_bands=n_bands, hidden=tuple(hidden))
    return jax.jit(lambda p, d: weighted_mean_loss(net, p, d))


@functools.partial(jax.jit, static_argnames=("first", "joint"))
def _refresh_chunk(emu: Emulator, theta, theta_cov, E_prior, E_prior_err, phot: PreparedPhotometry, first: bool,
                   inflation, theta_cur, E_cur, joint: bool):
    capped = jnp.zeros(jnp.shape(E_prior), bool)
    if first:
        # iteration 1: ∇M = 0 and R = 0 in the covariance, E = Ê (prior)
        E, var = E_prior, E_prior_err**2
        c_model, cov_c, _ = star_terms(emu, theta, theta_cov, E, E_prior_err, phot,
                                       use_jacobian=False, use_reddening=False)
    elif joint:
        # (θ, E) re-estimated together from the photometry, priors held fixed (Eqs. 8-9 extended)
        theta, theta_cov, E, var, capped = fit_labels(emu, theta_cur, E_cur, theta, theta_cov, E_prior,
                                                      E_prior_err, phot)
        c_model, cov_c, _ = star_terms(emu, theta, theta_cov, E, jnp.sqrt(var), phot)
    else:
        # Eqs. 8-9 with the prior mean held fixed
        E, var = fit_reddening(emu, theta, theta_cov, E_prior, E_prior_err, phot)
        # Eq. 4 with the current Jacobian and R Rᵀ σ_E² at the updated (E, σ_E)
        c_model, cov_c, _ = star_terms(emu, theta, theta_cov, E, jnp.sqrt(var), phot)
    chi2, n_mod = chi2_colours(phot.c_obs - c_model, cov_c, phot.mask)
    W = whitening_matrix(inflate_diagonal(cov_c, inflation[0], inflation[1]), phot.mask)
    return E, var, W, chi2, n_mod, theta, theta_cov, capped


def inflate_diagonal(cov, absolute, relative):
    """C + diag(absolute + relative · diag C): the training-covariance floor of the authors' code."""
    d = jnp.diagonal(cov, axis1=-2, axis2=-1)
    return cov + jax.vmap(jnp.diag)(absolute + relative * d)


class StarTerms(NamedTuple):
    """Per-star results of :func:`refresh_star_terms` (leading axis = star)."""

    E: jnp.ndarray  # reddening for the loss (Eqs. 8-9, or the joint update)
    var_E: jnp.ndarray
    W: jnp.ndarray  # (N, B, B) whitening matrices Lᵀ of C_c (Eqs. 12-13)
    chi2: jnp.ndarray  # Eqs. 11-14
    n_modelled: jnp.ndarray
    theta: jnp.ndarray  # labels the loss uses next (the inputs, or the joint update's)
    theta_cov: jnp.ndarray
    capped: jnp.ndarray  # joint update pulled back to its trust region


def refresh_star_terms(emu: Emulator, theta, theta_cov, E_prior, E_prior_err, phot: PreparedPhotometry,
                       *, first: bool, chunk_size: int = 16384, inflation=(0.0, 0.0), labels=None):
    """Per-star :class:`StarTerms` (E, var_E, W, χ², n_modelled, θ, C_θ, capped) under ``emu``, chunked over stars.

    first=True: the iteration-1 terms (E = Ê, covariance without J C_θ Jᵀ and
    R Rᵀ σ_E²). Otherwise E, var_E from Eqs. 8-9 (prior held fixed) and the
    full covariance of Eqs. 4-6 at that E; θ, C_θ are the inputs. With
    ``labels=(θ_cur, E_cur)`` (not first): θ, C_θ, E, var_E are instead the
    joint re-estimate of :func:`dds_infer.evaluate.fit_labels` linearised at
    the current estimates, priors (θ, C_θ) and (Ê, σ_E) held fixed, and the
    covariance is taken there (``capped``: the estimate was pulled back to
    fit_labels' trust region; always False otherwise). The stars are padded to a multiple of the chunk
    size, so one compiled function serves every chunk and every iteration.
    Inputs must be finite (fill unusable stars beforehand). ``inflation`` =
    (a, b): W whitens C_c + diag(a + b diag C_c) (χ² does not).
    """
    joint = labels is not None and not first
    cur = labels if joint else (theta, E_prior)
    infl = jnp.asarray(inflation, dtype=jnp.float32)

    def chunk_fn(th, cov, Ep, Epe, ph, th_cur, E_cur):
        return _refresh_chunk(emu, th, cov, Ep, Epe, ph, first=first, inflation=infl, theta_cur=th_cur, E_cur=E_cur,
                              joint=joint)

    return StarTerms(*map_star_chunks(chunk_fn, (theta, theta_cov, E_prior, E_prior_err, phot, *cur), chunk_size))


def map_star_chunks(fn, args, chunk_size: int = 16384):
    """``fn(*args)`` over the stars (leading axis of every leaf) in chunks, results concatenated.

    The stars are padded (first row repeated) to a multiple of the chunk size,
    so one compiled ``fn`` serves every chunk and every call. Chunks are
    sliced on the host and each is waited for: long chains of queued async
    CPU dispatches can deadlock jaxlib (jax-ml/jax#25861, seen here at 1e5 stars).
    """
    args = jax.tree_util.tree_map(np.asarray, tuple(args))
    n = int(jax.tree_util.tree_leaves(args)[0].shape[0])
    chunk = int(min(chunk_size, max(256, -(-n // 256) * 256)))
    n_pad = -(-n // chunk) * chunk

    def padded(a):
        return a if n_pad == n else np.concatenate([a, np.broadcast_to(a[:1], (n_pad - n,) + a.shape[1:])])

    args = jax.tree_util.tree_map(padded, args)
    outs = []
    for s in range(0, n_pad, chunk):
        sl = jax.tree_util.tree_map(lambda a: a[s:s + chunk], args)
        outs.append(jax.device_get(jax.block_until_ready(fn(*sl))))
    return jax.tree_util.tree_map(lambda *a: jnp.asarray(np.concatenate(a)[:n]), *outs)
