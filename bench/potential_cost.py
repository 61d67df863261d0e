"""What one NUTS gradient costs: Eq. 19's potential and its parts, per star, on one CPU device.

Times the value and gradient of each function below for --n-stars real stars at once (vmap over
stars, as in one iteration of the queue engine's slots), --calls times inside one compiled
``fori_loop`` (so that dispatch is not timed), on ONE JAX CPU device with XLA's intra-op
threading off: the setting of each device when ``dds-infer`` runs one device per core.

- ``potential``: the engine's potential energy, −log p of :func:`dds_infer.inference.star_model`
  (published network, default Galactic prior, whitened (μ, E) sites);
- ``emulator``: M(θ) and R(θ) alone (:meth:`Emulator.mags_and_reddening_x`, the MLP and the R layer);
- ``prior``: :func:`dds_infer.priors.log_prior` alone (HR table, [Fe/H], distance, reddening).

Read ``potential_us_per_star`` against ``queue_us_per_slot_iteration`` of ``infer_bench.py``
(one leapfrog step of one slot, all of NUTS's bookkeeping included): the difference is what the
sampler itself costs.

    python bench/potential_cost.py [--n-stars 64] [--calls 2000] [--json]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _common import anchor_dir, report


def _timed(fn, stars, z0, calls: int) -> float:
    """Seconds per call of vmap(value_and_grad(fn)) over the stars, in a compiled loop."""
    import jax
    import jax.numpy as jnp

    vg = jax.vmap(jax.value_and_grad(fn, argnums=1))

    @jax.jit
    def loop(z):
        def body(_, c):
            z, acc = c
            v, g = vg(stars, z)
            # move z by the gradient (tiny step) so that no call can be hoisted out of the loop
            return jax.tree_util.tree_map(lambda a, b: a - 1e-6 * b, z, g), acc + jnp.sum(v)
        return jax.lax.fori_loop(0, calls, body, (z, jnp.zeros(())))

    jax.block_until_ready(loop(z0))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(loop(z0))
    return (time.perf_counter() - t0) / calls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-stars", type=int, default=64, help="stars per call (default 64: the queue engine's "
                    "slots per device)")
    ap.add_argument("--calls", type=int, default=2000, help="calls per timing (default 2000)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.n_stars < 1 or args.calls < 1:
        ap.error("--n-stars and --calls must be >= 1")
    from dds_infer.devices import SINGLE_THREAD_FLAGS, use_cpu_cores

    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_FLAGS}".strip()
    use_cpu_cores(1)  # (under pytest JAX has started already: then its first device is timed)
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import potential_energy

    from dds_infer.catalog_io import read_green2020_h5
    from dds_infer.priors import log_prior
    from infer_bench import load_emulator, load_model_source

    emu = load_emulator(None)  # the published network
    model, star_data_fn, prior, config = load_model_source("eq19", emu)
    cat = read_green2020_h5(anchor_dir() / "green2020_test_data_small.h5", require_labels=False,
                            require_reddening_prior=False)
    n = args.n_stars
    stars = star_data_fn(cat.subset(np.arange(n) % cat.n_stars))
    rng = np.random.default_rng(0)
    z0 = {"x": jnp.asarray(rng.normal(0.0, 0.3, (n, 3)), jnp.float32),
          "z_mu": jnp.asarray(rng.normal(0.0, 1.0, n), jnp.float32),
          "z_E": jnp.asarray(rng.normal(0.0, 1.0, n), jnp.float32)}

    def potential(star, z):
        return potential_energy(model, (star, emu, prior, config), {}, z)

    def emulator(star, z):
        M, R = emu.mags_and_reddening_x(z["x"])
        return jnp.sum(M) + z["z_E"] * jnp.sum(R) + z["z_mu"]

    def prior_only(star, z):
        return log_prior(emu.denormalize(z["x"]), 10.0 + z["z_mu"], jax.nn.softplus(z["z_E"]), star, prior)

    figures = {"n_stars": n, "calls": args.calls, "devices": 1, "xla_flags": os.environ["XLA_FLAGS"]}
    for name, fn in (("potential", potential), ("emulator", emulator), ("prior", prior_only)):
        sec = _timed(fn, stars, z0, args.calls)
        figures[f"{name}_us_per_call"] = sec * 1e6
        figures[f"{name}_us_per_star"] = sec * 1e6 / n
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
