"""Small-matrix Cholesky / forward substitution (workaround for a jaxlib CPU LAPACK deadlock)."""

import jax
import jax.numpy as jnp
import numpy as np

from dds_infer.smallmat import cholesky, solve_lower, solve_lower_vec


def _spd(key, batch, n):
    a = jax.random.normal(key, (batch, n, n))
    return a @ jnp.swapaxes(a, -1, -2) + n * jnp.eye(n)


def test_cholesky_matches_lapack():
    a = _spd(jax.random.PRNGKey(0), 64, 13)
    L = cholesky(a)
    np.testing.assert_allclose(np.asarray(L), np.asarray(jnp.linalg.cholesky(a)), rtol=1e-4, atol=1e-5)
    assert np.allclose(np.triu(np.asarray(L), 1), 0)
    np.testing.assert_allclose(np.asarray(L @ jnp.swapaxes(L, -1, -2)), np.asarray(a), rtol=1e-4, atol=1e-4)


def test_forward_substitution_matches_lapack():
    a = _spd(jax.random.PRNGKey(1), 32, 13)
    L = jnp.linalg.cholesky(a)
    b = jax.random.normal(jax.random.PRNGKey(2), (32, 13, 4))
    ref = jax.scipy.linalg.solve_triangular(L, b, lower=True)
    np.testing.assert_allclose(np.asarray(solve_lower(L, b)), np.asarray(ref), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(solve_lower_vec(L, b[..., 0])), np.asarray(ref[..., 0]),
                               rtol=1e-4, atol=1e-5)


def test_gradients_match_lapack():
    a = _spd(jax.random.PRNGKey(3), 8, 5)
    r = jax.random.normal(jax.random.PRNGKey(4), (8, 5))

    def chi2_ours(m):
        return jnp.sum(solve_lower_vec(cholesky(m), r) ** 2)

    def chi2_ref(m):
        return jnp.sum(jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(m), r[..., None], lower=True) ** 2)

    np.testing.assert_allclose(float(chi2_ours(a)), float(chi2_ref(a)), rtol=1e-5)
    g1, g2 = jax.grad(chi2_ours)(a), jax.grad(chi2_ref)(a)
    # LAPACK's cholesky gradient symmetrises; compare the symmetric parts
    sym = lambda g: 0.5 * (g + jnp.swapaxes(g, -1, -2))  # noqa: E731
    np.testing.assert_allclose(np.asarray(sym(g1)), np.asarray(sym(g2)), rtol=1e-3, atol=1e-5)
