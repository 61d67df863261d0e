"""Train the stellar-model emulator with the iterative χ² procedure of Green et al. (2021).

Procedure (paper §2, §4), implemented by :func:`train`:

1. Seeded 70/20/10 train/validation/test split of the catalogue (:func:`split_indices`).
2. Iteration 1: covariance of Eqs. 4-6 without J C_θ Jᵀ and R Rᵀ σ_E² (∇M = 0,
   R = 0), E = Ê, stars with σ_E > 0.2 excluded. R(θ) starts θ-independent
   (zero kernel, R = 1 in every band; see :class:`TrainConfig`).
3. Each iteration: ``epochs`` passes of Adam over the loss of Eq. 15 (χ²/n_bands
   with the whitening matrix Lᵀ) + L2 1e-4 on the hidden kernels + L1 1e-2 on
   the R kernel.
4. After each iteration: E re-estimated per star (Eqs. 8-9, prior held fixed),
   covariances refreshed with the network's Jacobian and R Rᵀ σ_E², χ²/dof
   computed (dof = modelled entries - 1) and stars above :func:`chi2_threshold`
   excluded; learning rate × e^(-1/5). The re-estimated E enters the next
   iteration's loss (as in the authors' training script).
5. On small catalogues iterations run extra epochs up to a minimum number of
   Adam steps (:func:`epochs_of_iteration`); from ~3×10^4 stars on the
   schedule is exactly the paper's.

The state after every iteration is checkpointed atomically; ``resume=True``
continues from the last finished iteration and gives the same result as an
uninterrupted run. Compiled pieces live in :mod:`dds_infer.train_core`,
checkpoints and bundle writing in :mod:`dds_infer.train_io`, the configuration
and schedules in :mod:`dds_infer.train_config`.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from .catalog import CatalogError, StarCatalog
from .domain import density_from_samples
from .emulator import Emulator, init_emulator
from .evaluate import prepare_photometry, with_linearized_parallax
from .label_noise import centre_label_shifts, grouped_tweedie_label_means, quantile_groups, tweedie_label_means
from .train_config import (RESUME_KEYS, TrainConfig, check_split, chi2_threshold, epochs_of_iteration, learning_rate,
                           split_indices)
from .train_core import (StarBatchData, make_epoch_fn, make_eval_fn, make_optimizer, map_star_chunks,
                         refresh_star_terms)
from .train_io import checkpoint_path, load_checkpoint, save_checkpoint, save_training_bundle

__all__ = ["TrainConfig", "train", "split_indices", "check_split", "chi2_threshold", "learning_rate",
           "epochs_of_iteration", "save_training_bundle"]


def usable_stars(cat: StarCatalog, phot) -> np.ndarray:
    """Stars with finite labels, covariance, reddening prior (σ_E > 0) and ≥ 1 modelled colour entry."""
    ok = np.all(np.isfinite(cat.theta), axis=1) & np.all(np.isfinite(cat.theta_cov), axis=(1, 2))
    ok &= np.isfinite(cat.E_prior) & np.isfinite(cat.E_prior_err) & (cat.E_prior_err > 0)
    return ok & (np.asarray(phot.mask).sum(axis=1) > 0)


def _fit_inputs(cat: StarCatalog, usable: np.ndarray):
    """Finite float32 device arrays for the fit (unusable rows filled with harmless values)."""
    th = np.where(usable[:, None], cat.theta, np.nanmedian(cat.theta[usable], axis=0))
    cov = np.where(usable[:, None, None], cat.theta_cov, np.eye(3))
    E = np.where(usable, cat.E_prior, 0.0)
    Ee = np.where(usable, cat.E_prior_err, 1.0)
    return tuple(jnp.asarray(a, dtype=jnp.float32) for a in (th, cov, E, Ee))


def _shrunk_labels(th, cov, usable: np.ndarray, n_tr: int, parallax=None, groups: int = 1, bandwidth: float = 1.0):
    """Usable stars' labels → Tweedie posterior means under the training split's label density
    (in ``groups`` parallax-quantile groups if > 1), and the number of stars whose shift was
    capped (reported in the history)."""
    th_np, cov_np = np.asarray(th, dtype=float), np.asarray(cov, dtype=float)
    out = th_np.copy()
    if groups > 1:
        is_ref = np.zeros(len(th_np), bool)
        is_ref[:n_tr] = True
        out[usable], capped, _ = grouped_tweedie_label_means(
            th_np[usable], cov_np[usable], np.asarray(parallax, float)[usable], n_groups=groups,
            reference=is_ref[usable], bandwidth=bandwidth)
    else:
        ref = th_np[:n_tr][usable[:n_tr]]
        out[usable], capped = tweedie_label_means(th_np[usable], cov_np[usable], reference=ref, bandwidth=bandwidth)
    return jnp.asarray(out, dtype=th.dtype), int(capped.sum())


def _label_centring(cfg: TrainConfig, cat, usable: np.ndarray, n_tr: int, th_prior):
    """θ_cur → (θ_cur with the joint update's mean shift removed per parallax group, the removed
    shifts as a list (G × 3)) with ``label_update_centring``; the identity (and []) otherwise."""
    if not cfg.label_update_centring:
        return lambda t: (t, [])
    ref = usable.copy()
    ref[n_tr:] = False
    n_groups = max(int(cfg.label_shrinkage_groups), 1)
    group = quantile_groups(cat.parallax - cfg.parallax_zero_point, n_groups, ref) if n_groups > 1 \
        else np.zeros(len(usable), int)
    group = np.where(usable, group, -2)  # unusable stars: their own group, never a reference
    prior = np.asarray(th_prior, dtype=float)

    def centre(t):
        out, shifts = centre_label_shifts(np.asarray(t, dtype=float), prior, group, ref)
        return jnp.asarray(out, dtype=t.dtype), np.round(shifts, 6).tolist()

    return centre


def _with_output_bias(params, phot, usable: np.ndarray, n_tr: int):
    """Start the BM output bias at the median observed ĉ of the training stars.

    An initialisation choice (the paper does not specify one): it puts the
    untrained network's M_ref and colours at the sample median, so the
    first epochs fit the θ dependence instead of the overall offset.
    """
    c = np.asarray(phot.c_obs)[:n_tr][usable[:n_tr]]
    m = np.asarray(phot.mask)[:n_tr][usable[:n_tr]]
    med = np.array([np.median(c[m[:, j], j]) if m[:, j].any() else 0.0 for j in range(c.shape[1])])
    bm = dict(params["BM"])
    bm["bias"] = jnp.asarray(med, dtype=bm["bias"].dtype)
    return {**params, "BM": bm}


def _mean_reddening(emu, theta) -> list:
    """Mean R(θ) per band over the training stars' labels: how R settles from iteration to iteration
    (``history["iterations"][i]["R_mean"]``, :func:`dds_infer.plots.plot_history`)."""
    if len(theta) == 0:
        return [float("nan")] * emu.n_bands
    return np.asarray(emu.reddening_vector(jnp.asarray(theta, jnp.float32))).mean(axis=0).astype(float).tolist()


def _outlier_mask(chi2, n_mod, threshold: float, n_fitted: int) -> np.ndarray:
    """χ²/dof > threshold with dof = n_modelled - n_fitted (stars with dof ≤ 0 are kept)."""
    dof = np.asarray(n_mod) - n_fitted
    chi2_dof = np.where(dof > 0, np.asarray(chi2) / np.maximum(dof, 1), 0.0)
    return chi2_dof > threshold


def train(catalog: StarCatalog, config: TrainConfig = TrainConfig(), *, split=None) -> tuple[Emulator, dict]:
    """Train an emulator on a labelled catalogue (Green et al. 2021, §4). Returns (emulator, history).

    split: optional explicit train/validation/test index arrays into the catalogue (after
    ``config.max_stars``), e.g. a predefined test set or a bootstrap resample of the training
    stars (:func:`check_split`); default the seeded ``config.split`` fractions.

    history: ``epochs`` (per epoch: iteration, epoch, lr, running batch loss,
    train and validation loss at the end of the epoch — data term of Eq. 15 over
    the stars in the fit), ``iterations`` (per iteration: lr, χ²/dof threshold
    applied afterwards, outlier fractions, stars in the fit, median |ΔE|, ``R_mean``: the
    mean R per band over the training stars' labels), ``bands`` (their names), the
    ``split`` (index arrays into the catalogue), ``config`` and ``n_stars``.
    """
    if not catalog.has_labels or not catalog.has_reddening_prior:
        raise CatalogError("training needs spectroscopic labels (teff, logg, feh) and a reddening prior (E_prior)")
    cfg = config
    if cfg.max_stars is not None:
        catalog = catalog.subset(np.arange(min(cfg.max_stars, catalog.n_stars)))
    n = catalog.n_stars
    split = split_indices(n, cfg.seed, cfg.split) if split is None else check_split(split, n)
    fit_idx = np.concatenate([split["train"], split["validation"]])
    n_tr = split["train"].size
    if n_tr == 0 or split["validation"].size == 0:
        raise ValueError(f"catalogue of {n} stars too small for a train/validation split")
    cat = catalog.subset(fit_idx)
    phot = prepare_photometry(cat, min_parallax_snr=cfg.min_parallax_snr,
                              parallax_zero_point=cfg.parallax_zero_point)
    usable = usable_stars(cat, phot)
    th, cov, Ep, Epe = _fit_inputs(cat, usable)
    n_capped = 0
    if cfg.label_shrinkage not in ("none", "tweedie"):
        raise ValueError(f"label_shrinkage must be 'none' or 'tweedie', got {cfg.label_shrinkage!r}")
    if int(cfg.label_shrinkage_groups) < 1:
        raise ValueError(f"label_shrinkage_groups must be >= 1, got {cfg.label_shrinkage_groups!r}")
    if not float(cfg.label_shrinkage_bandwidth) > 0:
        raise ValueError(f"label_shrinkage_bandwidth must be > 0, got {cfg.label_shrinkage_bandwidth!r}")
    if cfg.label_update_centring and cfg.label_update != "joint":
        raise ValueError("label_update_centring centres the joint label update: it needs label_update='joint'")
    for key in ("l2_hidden", "l1_reddening"):
        if not float(getattr(cfg, key)) >= 0:
            raise ValueError(f"{key} must be >= 0 (a regularisation weight of Eq. 15), got {getattr(cfg, key)!r}")
    if cfg.label_shrinkage == "tweedie":
        th, n_capped = _shrunk_labels(th, cov, usable, n_tr, cat.parallax - cfg.parallax_zero_point,
                                      int(cfg.label_shrinkage_groups), float(cfg.label_shrinkage_bandwidth))
    theta_tr = cat.theta[:n_tr][usable[:n_tr]]
    if theta_tr.shape[0] < 2:
        raise ValueError("fewer than 2 usable training stars")
    if cfg.loss_reddening not in ("updated", "prior"):
        raise ValueError(f"loss_reddening must be 'updated' or 'prior', got {cfg.loss_reddening!r}")
    if cfg.label_update not in ("none", "joint"):
        raise ValueError(f"label_update must be 'none' or 'joint', got {cfg.label_update!r}")
    if cfg.label_update == "joint" and cfg.loss_reddening != "updated":
        raise ValueError("label_update='joint' re-estimates E with θ: it needs loss_reddening='updated'")
    if cfg.parallax_likelihood not in ("inverted", "linearized"):
        raise ValueError(f"parallax_likelihood must be 'inverted' or 'linearized', got {cfg.parallax_likelihood!r}")
    if cfg.r_kernel_init not in ("random", "zero"):
        raise ValueError(f"r_kernel_init must be 'random' or 'zero', got {cfg.r_kernel_init!r}")
    if cfg.init_from is not None:
        from .bundle import load_bundle

        emu = load_bundle(cfg.init_from).with_domain(None)
        if tuple(emu.bands.names) != tuple(catalog.bands.names) or tuple(emu.hidden) != tuple(cfg.hidden):
            raise ValueError(f"init_from bundle {cfg.init_from} has bands/hidden {emu.bands.names}/{emu.hidden}, "
                             f"the catalogue/config {catalog.bands.names}/{tuple(cfg.hidden)}")
    else:
        emu = init_emulator(jax.random.PRNGKey(cfg.seed), bands=catalog.bands, hidden=tuple(cfg.hidden),
                            theta_med=np.median(theta_tr, axis=0), theta_std=np.std(theta_tr, axis=0))
        emu = emu.replace(params=_with_output_bias(emu.params, phot, usable, n_tr))
        if not cfg.r_init > 0:
            raise ValueError(f"r_init must be > 0 (R = exp(bias) starts at r_init in every band), got {cfg.r_init}")
        r = dict(emu.params["R"])
        r["bias"] = jnp.full_like(r["bias"], math.log(cfg.r_init))
        if cfg.r_kernel_init == "zero":
            r["kernel"] = jnp.zeros_like(r["kernel"])
        emu = emu.replace(params={**emu.params, "R": r})
    joint = cfg.label_update == "joint"
    centre = _label_centring(cfg, cat, usable, n_tr, th)
    hidden = tuple(int(h) for h in cfg.hidden)
    epoch_kw = (catalog.n_bands, hidden, int(cfg.batch_size), float(cfg.l2_hidden), float(cfg.l1_reddening))
    epoch_fn = make_epoch_fn(*epoch_kw, False)
    epoch_fn_first = make_epoch_fn(*epoch_kw, bool(cfg.freeze_r_kernel_first))
    infl = tuple(float(v) for v in cfg.cov_inflation)
    eval_fn = make_eval_fn(catalog.n_bands, hidden)
    opt = make_optimizer()
    root_key = jax.random.PRNGKey(cfg.seed)

    ckpt = checkpoint_path(cfg.checkpoint_dir)
    state = None
    if cfg.resume and ckpt is not None and ckpt.is_file():
        state = load_checkpoint(ckpt)
        _check_resumable(state, cfg, split)
    if state is None:
        params, opt_state = emu.params, opt.init(emu.params)
        E, var = Ep, Epe**2
        lin = (th, Ep)  # where the next joint label update is linearised (label_update="joint")
        include = usable & (cat.E_prior_err <= cfg.max_sigma_E_first)  # iteration 1 only
        history = {"epochs": [], "iterations": []}
        start = 0
        first = cfg.init_from is None  # a warm start refreshes with the full covariance straight away
    else:
        params = jax.tree_util.tree_map(jnp.asarray, state["params"])
        opt_state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(opt.init(params)),
                                                 [jnp.asarray(a) for a in state["opt_state_leaves"]])
        E, var = jnp.asarray(state["E"]), jnp.asarray(state["var"])
        lin = (jnp.asarray(state["lin_theta"]), jnp.asarray(state["lin_E"])) if joint else (th, Ep)
        include = np.asarray(state["include"])
        history = state["history"]
        start = int(state["iterations_done"])
        first = False
    plx_args = (np.where(cat.observed[:, 0], cat.mag[:, 0], np.nan), cat.parallax, cat.parallax_err)

    def photometry_under(p, first_iteration):
        """The observed colours of the next iteration: the paper's μ̂, or the parallax linearised under ``p``."""
        if first_iteration or cfg.parallax_likelihood == "inverted":
            return phot
        return _linearized_photometry(emu.replace(params=p), th, cov, Ep, Epe, phot, *plx_args,
                                      zero_point=cfg.parallax_zero_point, chunk=cfg.chunk_size)

    # whitening matrices for the next iteration (deterministic function of params: identical on resume)
    # (with joint label updates: a function of params and the stored linearisation point)
    phot_cur = photometry_under(params, first)
    E_ref, var_ref, W, _, _, th_cur, cov_cur, _ = refresh_star_terms(
        emu.replace(params=params), th, cov, Ep, Epe, phot_cur, first=first, chunk_size=cfg.chunk_size,
        inflation=infl, labels=lin if joint else None)
    th_cur, _ = centre(th_cur)
    if state is None and not first and cfg.loss_reddening == "updated":
        E, var = E_ref, var_ref
    lin = (th_cur, E)

    bar = _progress(cfg, start, n_tr)
    t0 = time.perf_counter()
    for it in range(start, cfg.iterations):
        lr = learning_rate(it + 1, cfg.lr, cfg.lr_decay)
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, dtype=jnp.float32)
        data = StarBatchData(x=emu.normalize(th_cur), E=E, c_obs=phot_cur.c_obs, W=W, mask=phot_cur.mask,
                             weight=jnp.asarray(include, dtype=jnp.float32))
        d_tr = jax.tree_util.tree_map(lambda a: a[:n_tr], data)
        d_va = jax.tree_util.tree_map(lambda a: a[n_tr:], data)
        n_epochs = epochs_of_iteration(it + 1, cfg, n_tr)
        for ep in range(n_epochs):
            key = jax.random.fold_in(jax.random.fold_in(root_key, it), ep)
            fn = epoch_fn_first if it == 0 else epoch_fn
            params, opt_state, running = fn(params, opt_state, key, d_tr)
            rec = {"iteration": it + 1, "epoch": ep + 1, "lr": lr, "batch_loss": float(running),
                   "train_loss": float(eval_fn(params, d_tr)), "val_loss": float(eval_fn(params, d_va))}
            history["epochs"].append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(it=it + 1, train=f"{rec['train_loss']:.4f}", val=f"{rec['val_loss']:.4f}")
        # after the iteration: Eqs. 8-9, refreshed covariances, χ²/dof cut
        lin_used = lin
        phot_cur = photometry_under(params, False)
        E_new, var, W, chi2, n_mod, th_cur, cov_cur, capped = refresh_star_terms(
            emu.replace(params=params), th, cov, Ep, Epe, phot_cur, first=False, chunk_size=cfg.chunk_size,
            inflation=infl, labels=lin if joint else None)
        th_cur, shifts = centre(th_cur)
        thr = chi2_threshold(it + 1, cfg.chi2_start, cfg.chi2_end, cfg.chi2_end_iteration)
        out = _outlier_mask(chi2, n_mod, thr, cfg.n_fitted) & usable
        dE = np.abs(np.asarray(E_new) - np.asarray(E))[usable]
        E = E_new if cfg.loss_reddening == "updated" else Ep
        include = usable & ~out
        lin = (th_cur, E)
        dth = np.asarray(th_cur - th)[usable] / np.sqrt(np.diagonal(cat.theta_cov[usable], axis1=1, axis2=2))
        history["iterations"].append({
            "iteration": it + 1, "lr": lr, "chi2_threshold": thr,
            "outlier_frac_train": float(out[:n_tr][usable[:n_tr]].mean()),
            "outlier_frac_val": float(out[n_tr:][usable[n_tr:]].mean()),
            "n_fit_train": int(include[:n_tr].sum()), "n_fit_val": int(include[n_tr:].sum()),
            "median_abs_dE": float(np.median(dE)) if dE.size else float("nan"),
            "n_labels_capped": int(np.asarray(capped)[usable].sum()),
            "n_parallax_modelled": int(np.asarray(phot_cur.good_parallax)[usable].sum()),
            "label_shift_removed": shifts,
            "median_abs_dtheta_sigma": (np.median(np.abs(dth), axis=0).round(4).tolist() if dth.size
                                        else [float("nan")] * 3),
            "R_mean": _mean_reddening(emu.replace(params=params), th[:n_tr][usable[:n_tr]]),
            "train_loss": history["epochs"][-1]["train_loss"] if n_epochs else float("nan"),
            "val_loss": history["epochs"][-1]["val_loss"] if n_epochs else float("nan"),
            "seconds": time.perf_counter() - t0,
        })
        if ckpt is not None:
            save_checkpoint(ckpt, {
                "config": cfg.to_dict(), "iterations_done": it + 1, "split": split,
                "params": jax.device_get(params),
                "opt_state_leaves": [np.asarray(a) for a in jax.tree_util.tree_leaves(opt_state)],
                "E": np.asarray(E), "var": np.asarray(var), "include": np.asarray(include),
                "lin_theta": np.asarray(lin_used[0]), "lin_E": np.asarray(lin_used[1]),
                "history": history, "rng": {"seed": cfg.seed, "key": np.asarray(jax.random.key_data(root_key))},
            })
        if cfg.stop_after is not None and it + 1 >= cfg.stop_after:
            break
    if bar is not None:
        bar.close()

    emu = emu.replace(params=params).with_domain(density_from_samples(theta_tr)).with_provenance(
        source="trained by dds_infer.training (Green et al. 2021 iterative chi^2 procedure)",
        catalog=str(catalog.meta.get("source", "")), n_stars=n, n_train=int(n_tr),
        iterations_done=len(history["iterations"]), seed=cfg.seed, label_update=cfg.label_update,
        label_shrinkage=cfg.label_shrinkage, label_shrinkage_groups=int(cfg.label_shrinkage_groups),
        label_shrinkage_bandwidth=float(cfg.label_shrinkage_bandwidth),
        n_labels_shrink_capped=n_capped,
        parallax_likelihood=cfg.parallax_likelihood, label_update_centring=bool(cfg.label_update_centring),
        l2_hidden=float(cfg.l2_hidden),
        l1_reddening=float(cfg.l1_reddening),
        **_selection_record(cat.mag[:n_tr][usable[:n_tr], 0], cat.bands.names[0]))
    history = dict(history)
    history.update({
        "config": cfg.to_dict(), "n_stars": n, "split": split, "n_labels_shrink_capped": n_capped,
        "bands": list(catalog.bands.names),
        "E_fit": {"index": fit_idx, "E": np.asarray(E), "E_err": np.sqrt(np.asarray(var)),
                  "included": np.asarray(include), "theta": np.asarray(th_cur)},
    })
    return emu, history


_with_linearized_parallax = jax.jit(with_linearized_parallax, static_argnames=("zero_point",))


def _linearized_photometry(emu, th, cov, Ep, Epe, phot, mag_ref, parallax, parallax_err, *, zero_point, chunk):
    """:func:`dds_infer.evaluate.with_linearized_parallax` at the labels and prior E, chunked over stars."""
    def chunk_fn(*sl):
        return _with_linearized_parallax(emu, *sl, zero_point=float(zero_point))

    return map_star_chunks(chunk_fn, (th, cov, Ep, Epe, phot, mag_ref, parallax, parallax_err), chunk)


def _check_resumable(state: dict, cfg: TrainConfig, split: dict) -> None:
    old = state["config"]
    new = cfg.to_dict()
    defaults = TrainConfig().to_dict()  # keys added since the checkpoint was written take their defaults
    bad = [k for k in RESUME_KEYS if old.get(k, defaults.get(k)) != new.get(k)]
    if bad:
        raise ValueError(f"cannot resume: checkpoint config differs in {bad} "
                         f"({ {k: old.get(k) for k in bad} } vs { {k: new.get(k) for k in bad} })")
    if any(not np.array_equal(state["split"][k], split[k]) for k in split):
        raise ValueError("cannot resume: the catalogue split differs from the checkpoint's (different catalogue?)")


def _progress(cfg: TrainConfig, start: int, n_train: int):
    if not cfg.progress:
        return None
    import sys

    from tqdm import tqdm

    per_it = [epochs_of_iteration(k, cfg, n_train) for k in range(1, cfg.iterations + 1)]
    total, done = sum(per_it), sum(per_it[:start])
    return tqdm(total=total, initial=done, desc="train", unit="epoch", file=sys.stderr,
                dynamic_ncols=True, leave=False)


def _selection_record(mags, band: str) -> dict:
    """Provenance entry of the training split's magnitude limit (the stars of its θ density):
    what ``default_prior(selection_limit="bundle")`` corrects that density for."""
    from .selection import magnitude_limit_estimate, selection_record

    limit = magnitude_limit_estimate(mags)
    if limit is None:
        return {}
    return selection_record(band, round(limit, 3), "95th percentile of the training split's magnitudes")

