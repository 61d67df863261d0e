"""The warmup's starting mass matrix (dds_infer.engine.laplace_inverse_mass, init_mass=...):
the Laplace approximation at each chain's start instead of NumPyro's identity."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from dds_infer.engine import NutsSettings, laplace_inverse_mass, run_nuts_batch
from dds_infer.nuts_queue import run_nuts_queue


RTOL = 2 ** (1 / 16) - 1  # the variances are rounded to powers of 2^(1/8)


def _gauss_potential(cov):
    prec = jnp.linalg.inv(jnp.asarray(cov))
    return lambda z: 0.5 * z @ prec @ z


def test_marginal_variances_of_a_correlated_gaussian():
    cov = np.array([[0.04, 0.018, 0.0], [0.018, 0.09, -0.1], [0.0, -0.1, 2.0]])
    z0 = jnp.array([0.1, -0.2, 0.3])  # the Hessian of a Gaussian is the same everywhere
    var = laplace_inverse_mass(_gauss_potential(cov), z0)
    # the marginal variances (what windowed adaptation estimates), not the conditional 1/H_ii
    np.testing.assert_allclose(var, np.diag(cov), rtol=RTOL)
    assert not np.allclose(var, 1.0 / np.diag(np.linalg.inv(cov)), rtol=0.1)  # conditional: 2× smaller here
    np.testing.assert_array_equal(np.log2(var) * 8, np.round(np.log2(var) * 8))  # on the 2^(k/8) grid
    dense = laplace_inverse_mass(_gauss_potential(cov), z0, dense=True)
    np.testing.assert_allclose(dense, np.diag(var), rtol=1e-6)


def test_clipping_and_fallback_to_the_identity_away_from_a_mode():
    flat = laplace_inverse_mass(_gauss_potential(np.diag([1e-10, 1.0, 1e4])), jnp.zeros(3))
    np.testing.assert_allclose(flat, [1e-6, 1.0, 4.0], rtol=RTOL)  # clipped to [var_min, var_max]

    def saddle(z):  # H = diag(4, -2, 0.5) + an off-diagonal term: not positive definite
        return 2.0 * z[0] ** 2 - z[1] ** 2 + 0.25 * z[2] ** 2 + 0.1 * z[0] * z[2]
    # per site: 1/H_ii where the curvature is positive, the identity where it is not
    np.testing.assert_allclose(laplace_inverse_mass(saddle, jnp.zeros(3)), [0.25, 1.0, 2.0], rtol=RTOL)
    # ... and the identity for a site whose own Newton step is long (g²/H = 400 > 25 at z0 = 10)
    np.testing.assert_allclose(laplace_inverse_mass(saddle, jnp.array([10.0, 0.0, 0.0]), n_newton=0),
                               [1.0, 1.0, 2.0], rtol=RTOL)
    nan = laplace_inverse_mass(lambda z: jnp.sum(z) * jnp.nan, jnp.zeros(2))
    np.testing.assert_allclose(nan, [1.0, 1.0])
    # without Newton steps: far from the mode (gᵀH⁻¹g = 36 > 25) the identity, near it (16) Σ
    pot = _gauss_potential(np.diag([0.04, 0.09]))
    np.testing.assert_allclose(laplace_inverse_mass(pot, jnp.array([1.2, 0.0]), n_newton=0), 1.0)
    np.testing.assert_allclose(laplace_inverse_mass(pot, jnp.array([0.8, 0.0]), n_newton=0), [0.04, 0.09], rtol=RTOL)
    np.testing.assert_allclose(laplace_inverse_mass(pot, jnp.array([1.2, 0.0]), n_newton=0, dense=True), np.eye(2))
    # with them (the default), the far start is first moved to the mode
    np.testing.assert_allclose(laplace_inverse_mass(pot, jnp.array([1.2, 0.0])), [0.04, 0.09], rtol=RTOL)


def test_curvature_is_taken_at_the_mode_not_at_the_start():
    """exp(z) − 2z per site: mode at log 2 with curvature 2 (variance ½); at the start z = 2.5
    the curvature is e^2.5 ≈ 12 (variance 0.08). Damped Newton steps reach the mode first."""
    def pot(z):
        return jnp.sum(jnp.exp(z) - 2.0 * z)
    np.testing.assert_allclose(laplace_inverse_mass(pot, jnp.full(3, 2.5)), 0.5, rtol=RTOL)
    np.testing.assert_allclose(laplace_inverse_mass(pot, jnp.full(3, -1.0)), 0.5, rtol=RTOL)


def test_unknown_init_mass_is_rejected():
    with pytest.raises(ValueError, match="init_mass"):
        NutsSettings(init_mass="hessian")


def scaled_model(star):
    """x ~ N(0, s²) with scales spanning 10³: the identity is a poor start for the warmup."""
    numpyro.sample("x", dist.Normal(0.0, star).to_event(1))


SCALES = jnp.array([[0.01, 0.1, 1.0, 10.0]])
RUN = dict(num_warmup=200, num_samples=200, num_chains=1, max_tree_depth=10)


@pytest.mark.slow
def test_laplace_start_cuts_the_warmup_and_keeps_the_posterior():
    """One chain on one slot: the queue engine's iteration count is the chain's total number of
    leapfrog steps, warmup included."""
    init = {"x": jnp.full((1, 1, 4), 0.01)}
    res = {m: run_nuts_queue(scaled_model, SCALES, (), init, jax.random.key(3), n_slots=1, init_mass=m,
                              devices=1, **RUN)
           for m in ("identity", "laplace")}
    it = {m: int(r.iterations.sum()) for m, r in res.items()}
    sampling = {m: int(np.asarray(r.num_steps).sum()) for m, r in res.items()}
    warmup = {m: it[m] - sampling[m] for m in it}
    assert warmup["laplace"] < 0.5 * warmup["identity"], warmup
    x = np.asarray(res["laplace"].samples["x"])[0, 0]
    np.testing.assert_allclose(x.std(axis=0) / np.asarray(SCALES[0]), 1.0, atol=0.25)
    # the batch engine takes the same start (its compiled program differs: the setting is static)
    b = run_nuts_batch(scaled_model, SCALES, (), init, jax.random.key(3), init_mass="laplace", **RUN)
    np.testing.assert_allclose(np.asarray(b.samples["x"])[0, 0].std(axis=0) / np.asarray(SCALES[0]), 1.0, atol=0.25)


def test_cli_hands_init_mass_to_inference(tmp_path, capsys, monkeypatch):
    import json

    from conftest import shipped_infer_cli
    from dds_infer.cli import main

    calls, common = shipped_infer_cli(monkeypatch, tmp_path)
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert json.loads(capsys.readouterr().out)["init_mass"] == "identity"
    assert main([*common, "--out", str(tmp_path / "b"), "--init-mass", "laplace"]) == 0
    assert json.loads(capsys.readouterr().out)["init_mass"] == "laplace"
    assert [c["init_mass"] for c in calls] == ["identity", "laplace"]
    assert main([*common, "--out", str(tmp_path / "c"), "--method", "grid"]) == 0  # no NUTS: not passed
    assert json.loads(capsys.readouterr().out)["init_mass"] is None and "init_mass" not in calls[-1]
