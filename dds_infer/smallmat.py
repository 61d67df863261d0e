"""Batched Cholesky factorisation and triangular solves for small matrices, in plain jnp ops.

Why not ``jnp.linalg.cholesky`` / ``jax.scipy.linalg.solve_triangular``: on
CPU, jaxlib 0.10 runs batched LAPACK kernels through ``ParallelBatchMap`` on
XLA's intra-op thread pool. When two such kernels run concurrently in one
program and every pool thread is waiting for its sub-tasks, the process hangs
for good. We saw this on 2 cores in training and evaluation: all threads in
futex waits, two inside ``ParallelBatchMap`` /
``TriMatrixEquationSolver::Kernel``, main thread in ``BlockUntilReady``. No
XLA flag we tried (``xla_cpu_multi_thread_eigen``, disabling async dispatch)
removed it.

Our matrices are tiny (one B×B colour covariance per star, B = 13), so an
unrolled column-by-column factorisation vectorised over the leading (star)
axes is cheap, differentiable, and the same program on CPU and GPU. Accuracy
is that of the textbook algorithm (tests compare with ``jnp.linalg``).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["cholesky", "solve_lower", "solve_lower_vec"]


def cholesky(a):
    """Lower Cholesky factor L (L Lᵀ = a) of symmetric positive-definite a, shape (..., n, n)."""
    n = a.shape[-1]
    cols = []
    for j in range(n):
        # row j of L so far: L[j, :j] = cols[k][j] for k < j
        lj = jnp.stack([c[..., j] for c in cols], axis=-1) if j else None
        d2 = a[..., j, j] - (jnp.sum(lj * lj, axis=-1) if j else 0.0)
        d = jnp.sqrt(d2)
        below = a[..., :, j]
        if j:
            lk = jnp.stack(cols, axis=-1)  # (..., n, j): L[:, :j]
            below = below - jnp.einsum("...ik,...k->...i", lk, lj)
        col = below / d[..., None]
        idx = jnp.arange(n)
        col = jnp.where(idx < j, 0.0, jnp.where(idx == j, d[..., None], col))
        cols.append(col)
    return jnp.stack(cols, axis=-1)


def solve_lower(L, b):
    """x with L x = b for lower-triangular L (..., n, n) and b (..., n, k) (forward substitution)."""
    n = L.shape[-1]
    xs = []
    for i in range(n):
        r = b[..., i, :]
        if i:
            x_prev = jnp.stack(xs, axis=-2)  # (..., i, k)
            r = r - jnp.einsum("...j,...jk->...k", L[..., i, :i], x_prev)
        xs.append(r / L[..., i, i][..., None])
    return jnp.stack(xs, axis=-2)


def solve_lower_vec(L, b):
    """x with L x = b for a right-hand side vector b (..., n)."""
    return solve_lower(L, b[..., None])[..., 0]
