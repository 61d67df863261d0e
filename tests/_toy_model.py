"""Placeholder single-star model with the interface of ``dds_infer.inference`` (Eq. 19 stand-in).

Only for the engine/posterior/runner tests and the toy benchmark: flat-ish priors,
x ~ N(0, 2) (normalised θ), μ ~ U(3, 20), E ~ HalfNormal(1); a Gaussian photometric
likelihood over the observed bands with m = M(θ) + μ + E R(θ) (Eq. 2) and
σ² = σ_m² + 0.02²; a Gaussian parallax likelihood ϖ ~ N(10^((10-μ)/5) mas, σ_ϖ).
Also a mock-star generator drawing θ near the training-density peak.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from dds_infer.catalog import StarCatalog

SIGMA_FLOOR = 0.02
# the real containers: only the model itself is a stand-in
from dds_infer.inference import InferenceConfig, StarData, star_data_from_catalog  # noqa: E402,F401


def star_model(star: StarData, emulator, prior=None, config: InferenceConfig = InferenceConfig()):
    x = numpyro.sample("x", dist.Normal(0.0, 2.0).expand([3]).to_event(1))
    mu = numpyro.sample("mu", dist.Uniform(3.0, 20.0))
    E = numpyro.sample("E", dist.HalfNormal(1.0))
    theta = emulator.denormalize(x)
    for k, name in enumerate(("teff", "logg", "feh")):
        numpyro.deterministic(name, theta[k])
    m = emulator.predict_apparent(theta, mu, E)
    sig = jnp.sqrt(star.mag_err**2 + config.sigma_floor**2)
    numpyro.sample("mag", dist.Normal(m, sig).mask(star.observed).to_event(1), obs=star.mag)
    has_plx = star.has_parallax & config.use_parallax
    plx_err = jnp.where(has_plx, star.parallax_err, 1.0)
    numpyro.sample("parallax", dist.Normal(10.0 ** ((10.0 - mu) / 5.0), plx_err).mask(has_plx),
                   obs=star.parallax)


def mock_catalog(emulator, n: int, seed: int = 0, *, mag_err: float = 0.03,
                 plx_err: float = 0.05) -> tuple[StarCatalog, dict]:
    """n mock stars: θ near the training-density peak (solar-type dwarfs), μ ∈ [8, 11], E ∈ [0.05, 0.5]."""
    rng = np.random.default_rng(seed)
    theta = np.column_stack([rng.uniform(5000, 6200, n), rng.uniform(4.1, 4.5, n), rng.uniform(-0.5, 0.1, n)])
    mu = rng.uniform(8.0, 11.0, n)
    E = rng.uniform(0.05, 0.5, n)
    m = np.asarray(emulator.predict_apparent(jnp.asarray(theta), jnp.asarray(mu), jnp.asarray(E)), dtype=np.float64)
    nb = m.shape[1]
    mag = m + rng.normal(0, mag_err, m.shape)
    plx = 10 ** ((10 - mu) / 5) + rng.normal(0, plx_err, n)
    cat = StarCatalog.from_arrays(mag, np.full((n, nb), mag_err), plx, np.full(n, plx_err),
                                  bands=emulator.bands, ids=np.array([f"s{seed}_{i}" for i in range(n)]))
    return cat, {"theta": theta, "mu": mu, "E": E}


def toy_init_fn(n_chains: int):
    """init_fn(stars, keys) -> unconstrained init params (B, C, ...): x ~ N(0, 0.5), μ and E near the middle."""

    def init_fn(stars, keys):
        def one(k):
            kx, km, ke = jax.random.split(k, 3)
            return {"x": 0.5 * jax.random.normal(kx, (n_chains, 3)),
                    "mu": jax.random.uniform(km, (n_chains,), minval=-0.5, maxval=0.5),
                    "E": jax.random.uniform(ke, (n_chains,), minval=-2.0, maxval=-1.0)}
        return jax.vmap(one)(keys)

    return init_fn


def default_prior(emulator, kind: str = "galactic", reddening: str = "flat"):
    """The toy model has its priors built in: no prior pytree."""
    return None
