"""The standard inference pipeline: grid modes → chain starts → batched NUTS → mode combination.

:func:`infer` is what ``dds-infer infer``, the demo and the benchmarks call:
it wires the Eq. 19 model (:mod:`dds_infer.inference`), the priors
(:mod:`dds_infer.priors`), the multimodal initialiser and chain combiner
(:mod:`dds_infer.modes`) into the resumable catalogue runner
(:mod:`dds_infer.runner`).
"""

from __future__ import annotations

import functools

import jax

from .inference import InferenceConfig, star_data_from_catalog, star_model, unconstrained_init
from .parallax_zp import check_not_corrected_twice
from .modes import combine_chain_modes, initial_params, make_theta_grid, star_modes
from .priors import default_prior

__all__ = ["mode_init_fn", "mode_combine_fn", "infer", "TARGET_ACCEPT", "WARMUP_MAX_TREE_DEPTH"]

TARGET_ACCEPT = 0.95  # NUTS target acceptance of the pipeline (see infer's docstring)
WARMUP_MAX_TREE_DEPTH = 4  # NUTS tree-depth cap during warmup (idem)


INIT_BLOCK = 8  # stars whose grid modes are found together (vmapped) in mode_init_fn's loop on a CPU


def mode_init_fn(emulator, prior, config: InferenceConfig, n_chains: int, theta_grid=None):
    """``init_fn(stars, keys) -> {site: (B, C, ...)}`` unconstrained chain starts of
    :func:`~dds_infer.inference.star_model` under ``config.parameterization``, one chain per
    grid mode first (:func:`dds_infer.modes.initial_params`, mapped by
    :func:`~dds_infer.inference.unconstrained_init`)."""
    grid = make_theta_grid(emulator) if theta_grid is None else theta_grid

    @jax.jit
    def init(stars, keys):
        def one(star, key):
            start = initial_params(star_modes(star, emulator, prior, config, grid), n_chains, key)
            return unconstrained_init(start, star, emulator, config)

        if jax.default_backend() != "cpu":  # (a GPU wants the whole batch at once)
            return jax.vmap(one)(stars, keys)
        # on a CPU, blocks of 8 stars in a loop: one star's grid has ~8,000 θ nodes, and a whole
        # chunk's intermediates at once overflow the caches (1,024 mock stars: 8.9 s vmapped at
        # once, 2.2 s in blocks of 8; 300 stars 0.98 → 0.64 s)
        return jax.lax.map(lambda a: one(*a), (stars, keys), batch_size=INIT_BLOCK)

    init.__qualname__ = f"mode_init_fn(n_chains={n_chains})"
    return init


def mode_combine_fn(weights: str = "gelfand_dey", n_sigma: float = 4.0):
    """``combine_fn(samples, log_prob)`` clustering non-mixing chains and weighting the modes
    by posterior mass (:func:`dds_infer.modes.combine_chain_modes`)."""
    fn = functools.partial(combine_chain_modes, weights=weights, n_sigma=n_sigma)
    fn.__qualname__ = f"combine_chain_modes(weights={weights},n_sigma={n_sigma})"
    return fn


def infer(catalog, emulator, out_dir, *, prior=None, config: InferenceConfig | None = None,
          num_chains: int = 4, num_warmup: int = 500, num_samples: int = 500, batch_size: int | None = None,
          seed: int = 0, progress: bool = True, overwrite: bool = False, multimodal: bool = True,
          max_tree_depth: int = 8, target_accept_prob: float = TARGET_ACCEPT, method: str = "nuts",
          grid_settings=None, warmup_max_tree_depth: int | None = WARMUP_MAX_TREE_DEPTH, **runner_kw):
    """NUTS posteriors of θ, μ, E for every star of ``catalog`` (Eq. 19), resumable in ``out_dir``.

    prior: default :func:`dds_infer.priors.default_prior` (Galactic, flat E ≤ 5).
    multimodal: start chains in the grid modes and combine non-mixing chains (default);
    False uses NumPyro's default initialisation and equal chain weights.
    max_tree_depth: NUTS tree-depth cap (≤ 2^depth − 1 leapfrog steps per draw). 8 rather than
    NumPyro's 10: the vmapped batch runs in lockstep with its longest tree. With the direct
    coordinates, on 50 mock stars (4 × (250 + 250)) depth 8 ran 2.4× faster than depth 10 at
    the same median R-hat: twice the ESS per second. With the whitened coordinates (default)
    the mean tree is ~13 steps, and the cap only trims the rare long trees the batch waits for
    (64 real stars, 4 × (500 + 500): depth 6 is 1.6× faster than 8 but fewer stars reach R-hat
    < 1.01, 72% vs 81%).
    warmup_max_tree_depth: the tree-depth cap during warmup only (NumPyro's
    ``max_tree_depth=(warmup, sampling)``; None: ``max_tree_depth``). 4 (≤ 15 leapfrog steps per
    warmup draw): a chain's early warmup, before its step size and mass matrix are adapted,
    otherwise runs trajectories of up to 255 steps (~110 per draw over the first 100 draws on
    real stars). Warmup draws are discarded and the sampling phase keeps the depth-8 cap, so the
    posterior is the same; on 128 real stars (4 × (500 + 500), target 0.95) a chain's leapfrog
    steps fall from 32,400 to 17,400 (−46%) at the same median ESS (872 against 872) and
    sampling-phase steps per draw (21.2 against 22.5), with no more divergences or R-hat misses.
    target_accept_prob: NUTS dual-averaging target, 0.95 rather than NumPyro's 0.8. The whitened
    coordinates let the adapted step size grow until it meets the priors' sharp features in
    the posterior tails (low log g and [Fe/H], large μ). On 100 stars drawn from the prior
    (mock13-v1, 4 × (500 + 500)), the share of stars with divergent transitions was 88% at
    0.8, 33% at 0.9 and 9% at 0.95, for 92 / 99 / 105 s (the lockstep batch's cost is set by
    its longest trees, not by the mean step count: 8.4 / 12.2 / 17.1 steps per draw).
    method: "nuts" (default) or "grid": the importance-sampling grid path
    (:mod:`dds_infer.gridpath`, settings ``grid_settings``), ~10³ stars/s, same outputs.
    batch_size: stars per chunk (None: :func:`dds_infer.runner.default_batch_size`, 1,024 for the
    grid path and the queue engine, 64 for the batch engine).
    runner_kw: e.g. ``engine="batch"`` (:func:`dds_infer.runner.infer_catalog`; default "queue",
    NUTS without lockstep: 1.3× faster than "batch" end to end on 1,000 real stars, 1.5× in
    ``bench/infer_bench.py --vs-batch 200``, the same posteriors) or ``combine="never"`` (keep
    the draws in the chunk files; "auto", the default, combines them into ``posterior.nc`` up
    to 10,000 stars at 4 × 500 draws and returns a :class:`~dds_infer.run_outputs.ChunkedPosterior`
    beyond).
    """
    from .runner import infer_catalog

    config = InferenceConfig() if config is None else config
    prior = default_prior(emulator) if prior is None else prior
    if method not in ("nuts", "grid"):
        raise ValueError(f"method must be 'nuts' or 'grid', got {method!r}")
    check_not_corrected_twice(catalog, config.zero_point_mas)
    if method == "grid":
        from .gridpath import GridSettings, grid_batch_fn
        from .runner import default_batch_size, program_size

        batch_size = default_batch_size("grid") if batch_size is None else batch_size
        # every chunk padded to one size (one compilation); a catalogue smaller than a chunk to the
        # next power of two (runner.program_size), so that catalogues of other sizes share programs
        fn = grid_batch_fn(emulator, prior, config, grid_settings or GridSettings(),
                           pad_to=program_size(min(batch_size, catalog.n_stars), batch_size))
        return infer_catalog(catalog, emulator, prior, config, out_dir, batch_size=batch_size, seed=seed,
                             star_data_fn=star_data_from_catalog, model=star_model, batch_fn=fn,
                             progress=progress, overwrite=overwrite, **runner_kw)
    init = mode_init_fn(emulator, prior, config, num_chains) if multimodal else None
    combine = mode_combine_fn() if multimodal else None
    return infer_catalog(catalog, emulator, prior, config, out_dir, batch_size=batch_size,
                         num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples,
                         seed=seed, model=star_model, star_data_fn=star_data_from_catalog,
                         init_fn=init, combine_fn=combine, progress=progress, overwrite=overwrite,
                         max_tree_depth=max_tree_depth, target_accept_prob=target_accept_prob,
                         warmup_max_tree_depth=warmup_max_tree_depth, **runner_kw)
