"""bench/divergence_sites.py's instruments, checked without its NUTS runs: its per-term split of
log p adds up to NumPyro's potential of the pipeline's model, its leapfrog replay conserves energy
below the stability limit ε²λ < 4 and blows up above it, and its stiffness is the mass-scaled
Hessian eigenvalue."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import divergence_sites

    yield divergence_sites
    sys.modules.pop("divergence_sites", None)


def test_terms_add_up_to_the_models_potential(bench):
    from numpyro.infer.util import initialize_model

    from dds_infer import load_bundle
    from dds_infer.inference import InferenceConfig, star_data_from_catalog, star_model
    from dds_infer.priors import default_prior
    from dds_infer.simulate import draw_from_prior, simulate_observations

    emu = load_bundle(REPO_ROOT / "models" / "mock13-v1")
    prior = default_prior(emu, reddening="halfnormal", E_scale=0.3)
    cfg = InferenceConfig()
    cat, _ = simulate_observations(emu, draw_from_prior(prior, 40, seed=1), cfg, seed=1)
    stars = star_data_from_catalog(cat)
    rng = np.random.default_rng(0)
    for i in (0, 1):
        star = jax.tree_util.tree_map(lambda a: a[i], stars)
        _, potential_fn, _, _ = initialize_model(jax.random.PRNGKey(0), star_model, model_args=(star, emu, prior, cfg))
        terms, physical = bench._term_fn(star, emu, prior, cfg)
        v = np.column_stack([rng.normal(0, 0.7, (6, 3)), rng.normal(0, 1, (6, 2))])
        total = [float(jnp.sum(terms(jnp.asarray(p)))) for p in v]
        pot = [float(potential_fn({"x": jnp.asarray(p[:3]), "z_mu": p[3], "z_E": p[4]})) for p in v]
        assert np.all(np.isfinite(total)) and np.ptp(np.add(total, pot)) < 1e-3 * (1 + np.ptp(pot))
        assert np.ptp(pot) > 1.0  # the points differ, so the check has teeth
        phys = np.asarray(physical(jnp.asarray(v[0])))
        np.testing.assert_allclose(phys[:3], np.asarray(emu.denormalize(jnp.asarray(v[0, :3]))), rtol=1e-6)
        assert phys[4] > 0  # E


def test_replay_and_stiffness_on_a_gaussian(bench):
    lam = np.array([1.0, 4.0, 9.0, 16.0, 100.0])  # Hessian eigenvalues of the potential

    def potential(q):
        return 0.5 * jnp.sum(jnp.asarray(lam) * q ** 2)

    inv_mass = np.ones(5)
    z = np.random.default_rng(1).normal(size=(8, 5)) / np.sqrt(lam)
    dh, qs = bench._replay(potential, z, inv_mass, 0.1, np.random.default_rng(2))  # ε²λ_max = 1: stable
    assert dh.shape == (8, bench.N_STEPS) and qs.shape == (8, bench.N_STEPS, 5)
    assert np.abs(dh).max() < 5.0
    dh, _ = bench._replay(potential, z, inv_mass, 0.21, np.random.default_rng(2))  # ε²λ_max = 4.4: unstable
    assert not np.all(np.isfinite(dh))  # it overflows, and the bench counts that as divergent
    assert np.all(bench.abs_energy_error(dh).max(axis=1) > 1e3)
    # a mass that whitens the stiffest direction (inverse mass 1/λ) brings the scaled stiffness to 1
    m = np.where(lam == 100.0, 0.01, 1.0)
    got = bench._stiffness(lambda q: -jnp.stack([potential(q), 0.5 * q[0] ** 2]), z[:3], m)
    np.testing.assert_allclose(got[:, 0], 16.0, rtol=1e-5)
    np.testing.assert_allclose(got[:, 1], 1.0, rtol=1e-5)
