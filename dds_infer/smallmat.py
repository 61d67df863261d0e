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

Our matrices are tiny (one B×B colour covariance per star, B = 13), so a
column-by-column factorisation vectorised over the leading (star) axes is
cheap, differentiable, and the same program on CPU and GPU. Accuracy is that
of the textbook algorithm (tests compare with ``jnp.linalg``).

Each column is one step of a ``lax.fori_loop`` over a full-size carry, unrolled
(``unroll=True``). The step works on the full n×n matrix (twice the flops of a
triangle), but the program is a short repeated body: on the training refresh
(Eqs. 4-9, 9·10⁴ stars) it compiles in 3-7 s instead of 9-17 s for the
earlier per-column Python unrolling over growing column lists, at the same run
time (session 24, RESULTS). Not unrolling compiles in ~1 s but runs 1.5-1.7×
slower.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = ["cholesky", "solve_lower", "solve_lower_vec"]


def cholesky(a):
    """Lower Cholesky factor L (L Lᵀ = a) of symmetric positive-definite a, shape (..., n, n)."""
    n = a.shape[-1]
    idx = jnp.arange(n)

    def column(j, L):
        # column j of L from column j of a and the columns k < j already in L (zero for k ≥ j)
        a_j = lax.dynamic_index_in_dim(a, j, axis=-1, keepdims=False)  # (..., n)
        l_row = lax.dynamic_index_in_dim(L, j, axis=-2, keepdims=False)  # L[j, :]
        d = jnp.sqrt(lax.dynamic_index_in_dim(a_j, j, axis=-1, keepdims=False) - jnp.sum(l_row * l_row, axis=-1))
        below = a_j - jnp.einsum("...ik,...k->...i", L, l_row)
        col = jnp.where(idx < j, 0.0, jnp.where(idx == j, d[..., None], below / d[..., None]))
        return lax.dynamic_update_index_in_dim(L, col, j, axis=-1)

    return lax.fori_loop(0, n, column, jnp.zeros_like(a), unroll=True)


def solve_lower(L, b):
    """x with L x = b for lower-triangular L (..., n, n) and b (..., n, k) (forward substitution)."""
    n = L.shape[-1]
    shape = jnp.broadcast_shapes(L.shape[:-2], b.shape[:-2]) + b.shape[-2:]

    def row(i, x):
        # row i of x from the rows < i already in x (zero for rows ≥ i)
        l_row = lax.dynamic_index_in_dim(L, i, axis=-2, keepdims=False)  # L[i, :]
        r = lax.dynamic_index_in_dim(b, i, axis=-2, keepdims=False) - jnp.einsum("...j,...jk->...k", l_row, x)
        l_ii = lax.dynamic_index_in_dim(l_row, i, axis=-1, keepdims=False)
        return lax.dynamic_update_index_in_dim(x, r / l_ii[..., None], i, axis=-2)

    return lax.fori_loop(0, n, row, jnp.zeros(shape, jnp.result_type(L, b)), unroll=True)


def solve_lower_vec(L, b):
    """x with L x = b for a right-hand side vector b (..., n)."""
    return solve_lower(L, b[..., None])[..., 0]
