"""Emulator: import parity with the published network, bundles, jax transforms."""

import json

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dds_infer import load_bundle, save_bundle
from dds_infer.bundle import BundleError, read_manifest
from dds_infer.emulator import init_emulator
from dds_infer.keras_import import KerasImportError, import_keras_model

from reference import _reference_forward


@pytest.fixture(scope="module")
def published(anchor_dir):
    return import_keras_model(
        anchor_dir / "green2020_nn_model.h5",
        anchor_dir / "green2020_theta_normalization.json",
        density_path=anchor_dir / "green2020_input_density.h5",
    )


def _grid():
    teff = np.linspace(3500, 8500, 11)
    logg = np.linspace(0, 6, 9)
    feh = np.linspace(-2.5, 0.5, 7)
    E = np.linspace(0, 2, 5)
    g = np.stack(np.meshgrid(teff, logg, feh, E, indexing="ij"), -1).reshape(-1, 4)
    return g[:, :3], g[:, 3]


def test_import_parity_with_raw_keras_weights(published, anchor_dir):
    theta, E = _grid()
    ref = _reference_forward(anchor_dir / "green2020_nn_model.h5",
                             anchor_dir / "green2020_theta_normalization.json", theta, E)
    got = np.asarray(published.predict_colours(jnp.asarray(theta), jnp.asarray(E)), dtype=np.float64)
    assert got.shape == ref.shape == (theta.shape[0], 13)
    assert np.max(np.abs(got - ref)) <= 1e-5


def test_band_space_and_colour_space_agree(published):
    theta, E = _grid()
    m = np.asarray(published.predict(theta, E))
    c = np.asarray(published.predict_colours(theta, E))
    np.testing.assert_allclose(c[:, 0], m[:, 0], atol=1e-5)
    np.testing.assert_allclose(c[:, 1:], m[:, 1:] - m[:, :1], atol=1e-5)
    # M + E R decomposition
    M = np.asarray(published.absolute_mags(theta))
    R = np.asarray(published.reddening_vector(theta))
    np.testing.assert_allclose(m, M + E[:, None] * R, atol=1e-5)
    assert np.all(R > 0)


def test_published_R_is_nearly_constant_and_w2_collapsed(published):
    theta, _ = _grid()
    R = np.asarray(published.reddening_vector(theta))
    # paper: optical R(G) ~ 2-3, W2 reddening collapsed to ~0
    assert 1.5 < np.median(R[:, 0]) < 3.5
    assert np.median(R[:, 12]) < 0.05


def test_jit_vmap_grad_work(published):
    theta = jnp.array([5780.0, 4.44, 0.0])
    f = jax.jit(lambda t, e: published.predict(t, e))
    single = f(theta, 0.3)
    batch = jax.vmap(f, in_axes=(0, 0))(jnp.stack([theta, theta]), jnp.array([0.3, 0.3]))
    np.testing.assert_allclose(batch[0], single, atol=1e-5)
    g = jax.grad(lambda t: published.predict(t, 0.3)[0])(theta)
    assert g.shape == (3,) and np.all(np.isfinite(g))
    # a hotter star at fixed logg is brighter in G: dM_G/dTeff < 0 on the main sequence
    assert g[0] < 0


def test_domain_marks_trained_region(published):
    inside = published.in_domain(jnp.array([[5780.0, 4.44, 0.0], [4800.0, 2.5, -0.3]]), threshold=0.01)
    outside = published.in_domain(jnp.array([[3000.0, 0.5, 0.0], [8800.0, 6.5, 0.9]]), threshold=0.01)
    assert bool(inside.all()) and not bool(outside.any())


def test_bundle_round_trip_identical(published, tmp_path):
    out = save_bundle(published, tmp_path / "g20")
    loaded = load_bundle(out)
    theta, E = _grid()
    a = np.asarray(published.predict(theta, E))
    b = np.asarray(loaded.predict(theta, E))
    assert np.array_equal(a, b)
    assert loaded.bands == published.bands and loaded.hidden == published.hidden
    np.testing.assert_array_equal(np.asarray(loaded.domain.density), np.asarray(published.domain.density))
    man = read_manifest(out)
    assert man["format_version"] == 1
    assert man["provenance"]["source"].startswith("Green et al. (2021)")
    assert man["domain"]["bounds"]["teff"] == [2500.0, 9000.0]
    # no leftover temporary directories from the atomic write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g20"]


def test_bundle_overwrite_and_custom_architecture(tmp_path):
    emu = init_emulator(jax.random.PRNGKey(1), hidden=(16, 8, 8))
    save_bundle(emu, tmp_path / "b")
    save_bundle(emu, tmp_path / "b")  # overwrite in place
    loaded = load_bundle(tmp_path / "b")
    assert loaded.hidden == (16, 8, 8)
    th = jnp.array([[5000.0, 3.0, -0.5]])
    assert np.array_equal(np.asarray(emu.predict(th, jnp.array([0.1]))), np.asarray(loaded.predict(th, jnp.array([0.1]))))
    assert loaded.domain is None


def test_bundle_errors_are_clear(tmp_path):
    with pytest.raises(BundleError, match="manifest.json not found"):
        load_bundle(tmp_path)
    emu = init_emulator(jax.random.PRNGKey(0))
    save_bundle(emu, tmp_path / "b")
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    man["format_version"] = 99
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(tmp_path / "b")
    man["format_version"] = 1
    man["architecture"]["hidden"] = [32]
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="do not match architecture"):
        load_bundle(tmp_path / "b")


def test_import_rejects_non_keras_file(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("a", data=[1])
    with pytest.raises(KerasImportError):
        import_keras_model(p, {"theta_med": [0, 0, 0], "theta_std": [1, 1, 1]})


@pytest.mark.slow
def test_emulator_inside_numpyro_nuts(published):
    """The emulator is a differentiable likelihood inside a NumPyro model (Eq. 2)."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    true_theta = jnp.array([5200.0, 4.5, -0.1])
    true_mu, true_E = 9.0, 0.25
    sigma = 0.02
    m_obs = published.predict_apparent(true_theta, true_mu, true_E)
    plx_obs = 10 ** ((10 - true_mu) / 5)  # mas

    def model(m, plx):
        x = numpyro.sample("x", dist.Normal(jnp.zeros(3), 1.0).to_event(1))  # normalised θ
        mu = numpyro.sample("mu", dist.Uniform(5.0, 15.0))
        E = numpyro.sample("E", dist.Uniform(0.0, 2.0))
        pred = published.predict_x(x, E) + mu
        numpyro.sample("m", dist.Normal(pred, sigma).to_event(1), obs=m)
        numpyro.sample("plx", dist.Normal(10 ** ((10 - mu) / 5), 0.02), obs=plx)

    mcmc = MCMC(NUTS(model), num_warmup=100, num_samples=100, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), m_obs, plx_obs)
    s = mcmc.get_samples()
    assert np.all(np.isfinite(np.asarray(s["mu"])))
    # 13 noiseless bands + a 1.3% parallax pin the reddening, distance and Teff
    assert abs(float(jnp.median(s["E"])) - true_E) < 0.1
    assert abs(float(jnp.median(s["mu"])) - true_mu) < 0.1
    teff = np.asarray(published.denormalize(s["x"]))[:, 0]
    assert abs(np.median(teff) - 5200.0) < 300
