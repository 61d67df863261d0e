"""Where NUTS diverges: replay leapfrog trajectories and find the stiff places of Eq. 19's posterior.

Stars are drawn from the prior and observed as in ``bench/sbc.py`` (seed 0, the shipped mock
model, half-normal E prior). For each chosen star this runs NumPyro's NUTS with the pipeline's
model, chain starts, target acceptance and tree depths (4 chains × (500 + 500)). Then, from every
posterior draw, it replays one 256-step leapfrog trajectory with a fresh momentum and the chain's
adapted step size ε and diagonal mass. It reports:
- the trajectories whose energy error passes 20 (NumPyro calls a transition divergent at 1000);
- where they were one step before (T_eff, log g, [Fe/H], μ, E percentiles, against the draws');
- which term of log p is stiff there: the largest eigenvalue λ of each term's Hessian in the
  sampled coordinates, scaled by the adapted mass. The leapfrog is unstable where ε²λ > 4.

    python bench/divergence_sites.py [--stars 34,280,33] [--json]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from _common import REPO, report

TERMS = ("photometry", "parallax", "hr", "feh", "distance", "reddening", "jacobian")
N_STEPS, BLOWUP = 256, 20.0


def _term_fn(star, emu, prior, cfg):
    """(terms, physical) of a flat sampled point v = (x (3), z_μ, z_E) of the whitened model:
    log p's terms (TERMS) and (T_eff, log g, [Fe/H], μ, E)."""
    import jax.numpy as jnp

    from dds_infer.inference import conditional_mu_E, log_likelihood, whitened_to_mu_E
    from dds_infer.priors import log_distance_prior, log_hr_prior, log_metallicity_prior, log_reddening_prior

    def point(v):
        M, R = emu.mags_and_reddening_x(v[:3])
        mu, E, log_jac = whitened_to_mu_E(v[3], v[4], conditional_mu_E(M, R, star, emu, cfg))
        return emu.denormalize(v[:3]), mu, E, log_jac

    def terms(v):
        th, mu, E, log_jac = point(v)
        phot, plx = log_likelihood(v[:3], mu, E, star, emu, cfg)
        return jnp.stack([phot, plx, log_hr_prior(th, prior), log_metallicity_prior(th[2], mu, star, prior),
                          log_distance_prior(mu, star, prior), log_reddening_prior(E, star, prior), log_jac])

    def physical(v):
        th, mu, E, _ = point(v)
        return jnp.concatenate([th, jnp.stack([mu, E])])

    return terms, physical


def _replay(potential, z, inv_mass, eps, rng):
    """Energy error (n, N_STEPS) and positions (n, N_STEPS, 5) of leapfrog runs from draws z (n, 5)."""
    import jax
    import jax.numpy as jnp

    grad = jax.grad(potential)
    minv = jnp.asarray(inv_mass)

    def run(z0, p0):
        def step(carry, _):
            q, p = carry
            p = p - 0.5 * eps * grad(q)
            q = q + eps * minv * p
            p = p - 0.5 * eps * grad(q)
            return (q, p), (q, potential(q) + 0.5 * jnp.sum(minv * p * p))

        h0 = potential(z0) + 0.5 * jnp.sum(minv * p0 * p0)
        _, (qs, hs) = jax.lax.scan(step, (z0, p0), None, length=N_STEPS)
        return qs, hs - h0

    p0 = rng.normal(size=z.shape) / np.sqrt(np.asarray(inv_mass))
    qs, dh = jax.jit(jax.vmap(run))(jnp.asarray(z), jnp.asarray(p0))
    return np.asarray(dh), np.asarray(qs)


def abs_energy_error(dh):
    """|energy error|, with inf where the trajectory overflowed (NaN): that one has diverged too."""
    return np.where(np.isfinite(dh), np.abs(dh), np.inf)


def _stiffness(terms, pts, inv_mass):
    """Largest mass-scaled Hessian eigenvalue of −(each term) at pts (n, 5) → (n, len(TERMS))."""
    import jax
    import jax.numpy as jnp

    hess = np.asarray(jax.vmap(jax.hessian(terms))(jnp.asarray(pts)))  # (n, T, 5, 5)
    s = np.sqrt(np.asarray(inv_mass))
    return np.linalg.eigvalsh(-hess * s[:, None] * s[None, :])[..., -1]


def one_star(i, stars, emu, prior, cfg, init):
    import jax
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.util import initialize_model

    from dds_infer.inference import star_model
    from dds_infer.pipeline import TARGET_ACCEPT, WARMUP_MAX_TREE_DEPTH

    star = jax.tree_util.tree_map(lambda a: a[i], stars)
    start = jax.tree_util.tree_map(lambda a: a[0], init(jax.tree_util.tree_map(lambda a: a[None], star),
                                                        jax.random.PRNGKey(i)[None]))
    kernel = NUTS(star_model, target_accept_prob=TARGET_ACCEPT, max_tree_depth=(WARMUP_MAX_TREE_DEPTH, 8))
    mcmc = MCMC(kernel, num_warmup=500, num_samples=500, num_chains=4, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.PRNGKey(100 + i), star, emu, prior, cfg, init_params=start, extra_fields=("diverging",))
    n_div = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"]).sum(axis=1)
    adapt = mcmc.last_state.adapt_state
    eps = np.asarray(adapt.step_size)
    inv_mass = np.asarray(next(iter(adapt.inverse_mass_matrix.values())))  # (C, 5): x, z_mu, z_E
    s = mcmc.get_samples(group_by_chain=True)
    draws = np.concatenate([np.asarray(s["x"]), np.asarray(s["z_mu"])[..., None], np.asarray(s["z_E"])[..., None]], -1)
    _, potential_fn, _, _ = initialize_model(jax.random.PRNGKey(0), star_model, model_args=(star, emu, prior, cfg))

    def potential(v):
        return potential_fn({"x": v[:3], "z_mu": v[3], "z_E": v[4]})

    terms, physical = _term_fn(star, emu, prior, cfg)
    rng = np.random.default_rng(i)
    sites, n_blow, n_div_replay = [], 0, 0
    for c in range(draws.shape[0]):
        dh, qs = _replay(potential, draws[c], inv_mass[c], float(eps[c]), rng)
        err = abs_energy_error(dh)
        big = err > BLOWUP
        hit = np.flatnonzero(big.any(axis=1))
        n_blow += hit.size
        n_div_replay += int((err.max(axis=1) > 1000).sum())
        first = np.argmax(big[hit], axis=1)
        sites.append(qs[hit, np.maximum(first - 1, 0)])
    sites = np.concatenate(sites)
    flat = draws.reshape(-1, 5)
    phys_draws = np.asarray(jax.vmap(physical)(flat))
    out = {"star": int(i), "divergent_draws_per_chain": n_div.tolist(), "step_size": eps.round(4).tolist(),
           "trajectories": int(flat.shape[0]), "blowups": int(n_blow), "replay_divergent": n_div_replay,
           "draws_p5_p50_p95": np.percentile(phys_draws, [5, 50, 95], axis=0).round(3).tolist()}
    if len(sites):
        out["blowup_sites_p5_p50_p95"] = np.percentile(np.asarray(jax.vmap(physical)(sites)), [5, 50, 95],
                                                       axis=0).round(3).tolist()
        lam_sites = _stiffness(terms, sites[:200], inv_mass[0])
        lam_draws = _stiffness(terms, flat[::10], inv_mass[0])
        out["stiffness_median_at_blowups"] = dict(zip(TERMS, np.median(lam_sites, 0).round(2).tolist()))
        out["stiffness_median_at_draws"] = dict(zip(TERMS, np.median(lam_draws, 0).round(2).tolist()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models" / "mock13-v1"))
    ap.add_argument("--stars", default="34,280,33", help="indices among the observed prior draws (seed 0)")
    ap.add_argument("--n-draw", type=int, default=300, help="prior draws observed (the indices refer to them)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from dds_infer import load_bundle
    from dds_infer.inference import InferenceConfig, star_data_from_catalog
    from dds_infer.pipeline import mode_init_fn
    from dds_infer.priors import default_prior
    from dds_infer.simulate import draw_from_prior, simulate_observations

    emu = load_bundle(args.model)
    prior = default_prior(emu, reddening="halfnormal", E_scale=0.3)
    cfg = InferenceConfig()
    draws = draw_from_prior(prior, int(args.n_draw * 1.6) + 50, seed=0)
    cat, keep = simulate_observations(emu, draws, cfg, seed=0)
    cat = cat.subset(np.arange(min(args.n_draw, len(keep))))
    truth = np.column_stack([np.asarray(draws[v])[keep[: cat.n_stars]] for v in ("teff", "logg", "feh", "mu", "E")])
    stars = star_data_from_catalog(cat)
    init = mode_init_fn(emu, prior, cfg, 4)
    rows = []
    for i in (int(s) for s in args.stars.split(",")):
        r = one_star(i, stars, emu, prior, cfg, init)
        r["truth"] = truth[i].round(3).tolist()
        rows.append(r)
    report({"columns": ["teff", "logg", "feh", "mu", "E"], "terms": list(TERMS), "stars": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
