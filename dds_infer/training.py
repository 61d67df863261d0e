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
checkpoints and bundle writing in :mod:`dds_infer.train_io`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .catalog import CatalogError, StarCatalog
from .domain import density_from_samples
from .emulator import Emulator, init_emulator
from .evaluate import prepare_photometry
from .train_core import StarBatchData, make_epoch_fn, make_eval_fn, make_optimizer, refresh_star_terms
from .train_io import checkpoint_path, load_checkpoint, save_checkpoint, save_training_bundle

__all__ = ["TrainConfig", "train", "split_indices", "chi2_threshold", "learning_rate", "save_training_bundle"]


@dataclass(frozen=True)
class TrainConfig:
    """Training schedule and hyper-parameters (defaults: the paper's, §4).

    Where the paper (and the authors' training script) is explicit, the
    default follows it: Adam, lr 1e-3 × e^(-1/5) per iteration, 25 epochs per
    iteration, χ²/dof cut falling log-uniformly 100 → 5, L2 1e-4 on the hidden
    kernels, L1 1e-2 on the R kernel, σ_E > 0.2 excluded in iteration 1, and
    ``loss_reddening="updated"``: from iteration 2 on, the E entering the loss
    (Eq. 15) is each star's Eqs. 8-9 re-estimate (prior mean held fixed), as in
    the authors' script (using the prior mean instead raised the test χ²/dof
    from 0.87 to 1.28 and biased R by -37% to +111%).

    Choices where the paper is silent (measured on the 7,000 real training
    stars, ``bench/train_real.py``):

    batch_size: 32 (the Keras default; the authors' script used 1024 on a GPU
        with ~10^5 stars; with 7,000 stars, 256 underfits: χ²/dof 1.18).
    r_kernel_init: "zero" starts R(θ) θ-independent (kernel 0), with R = r_init
        in every band (bias log r_init; the Keras default bias 0 gives 1). R(θ)
        is only weakly constrained by a few thousand stars (R-scale/E and
        R/M(θ) degeneracies) and keeps the imprint of its start: a random
        kernel ("random", flax's lecun-normal) left a spurious logg dependence
        (kernel ≈ -0.5, mean R -5% to -69% vs the published network, χ²/dof
        1.13); the zero kernel gives a θ dependence matching the published one.
    epochs_first: epochs of iteration 1 (None: ``epochs``).
    min_steps_first, min_steps: on small catalogues an iteration runs more
        epochs, enough for at least this many Adam steps (iteration 1 / later
        ones; None or 0: no floor), at most ``max_epoch_factor`` × the
        nominal epochs (so tiny test runs stay tiny). With >= ~30,000 training stars (batch 32)
        the paper's 25 epochs already exceed them, so the schedule is the
        paper's. The paper's 25 epochs of ~10^5 stars are ~8× more steps than
        25 epochs of 7,000 stars: R(θ) then stays near its start (the
        near-infrared R too high by 9-190%). The floors (≈ 100 and 50 epochs
        for 7,000 stars) bring every band's mean R but W1's within 3.1% of
        the published network's.
    freeze_r_kernel_first: R kernel gets zero gradient in iteration 1 (R a
        fitted constant there); measured to make no difference with the zero
        kernel, so off.
    cov_inflation: (a, b) adds a + b·diag(C_c) to the diagonal of the
        covariance whose Cholesky factor whitens the loss (the authors' script
        used (1e-4, 1e-3) "to ensure positive-definiteness"); the χ² cut does
        not use it. Measured effect negligible, so off.
    init_from: path of a bundle to warm-start from (its weights and θ
        normalisation; same bands and hidden layers). The first iteration then
        uses the full covariance and Eqs. 8-9 reddenings of that model.

    label_update: "none" (the paper's procedure: the loss is evaluated at the
        spectroscopic labels θ̂ throughout) or "joint": after each iteration
        every star's θ is re-estimated together with E from its photometry and
        parallax, θ̂ ~ N(θ, C_θ) and (Ê, σ_E) held fixed as the prior
        (:func:`dds_infer.evaluate.fit_labels`, Eqs. 8-9 extended to θ), and
        the next iteration's loss uses that θ and its posterior covariance.
        Noisy labels bias the learned M(θ) (errors-in-variables); measured on
        the 120,000-star physical mock (``bench/mock_recovery.py``):
        RMS(M_learned − M_true) 0.086-0.098 → 0.059-0.063 mag, colour errors
        about halved, median offset +0.015..+0.046 → +0.041 mag in every band,
        mean R +1..+6% (optical) → −5..−9%. Off by default (not the paper's).
    stop_after: stop (after checkpointing) once this many iterations are done
    (simulates an interruption; continue with ``resume=True``).
    checkpoint_dir: where ``checkpoint.pkl`` is written after each iteration
    (None: no checkpoints). max_stars: use only the first N catalogue rows.
    parallax_zero_point: ϖ_zp [mas] subtracted from the parallaxes before μ̂
    (0, as the paper's training; −0.029 for Gaia DR2 mocks made by dds_infer.mock).
    """

    iterations: int = 20
    epochs: int = 25
    epochs_first: int | None = None
    min_steps_first: int | None = 22000
    min_steps: int | None = 11000
    max_epoch_factor: float = 4.0
    batch_size: int = 32
    lr: float = 1e-3
    lr_decay: float = math.exp(-1.0 / 5.0)
    seed: int = 0
    hidden: tuple = (32, 32)
    split: tuple = (0.7, 0.2, 0.1)
    l2_hidden: float = 1e-4
    l1_reddening: float = 1e-2
    chi2_start: float = 100.0
    chi2_end: float = 5.0
    chi2_end_iteration: int = 15
    max_sigma_E_first: float = 0.2
    n_fitted: int = 1
    min_parallax_snr: float = 5.0
    parallax_zero_point: float = 0.0
    loss_reddening: str = "updated"
    label_update: str = "none"
    r_kernel_init: str = "zero"
    r_init: float = 1.0
    freeze_r_kernel_first: bool = False
    cov_inflation: tuple = (0.0, 0.0)
    init_from: str | None = None
    chunk_size: int = 16384
    max_stars: int | None = None
    stop_after: int | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["split"] = list(self.split)
        d["cov_inflation"] = list(self.cov_inflation)
        return d


# Fields that must agree between a checkpoint and the config resuming it.
_RESUME_KEYS = ("epochs", "epochs_first", "batch_size", "lr", "lr_decay", "seed", "hidden", "split", "l2_hidden",
                "l1_reddening", "chi2_start", "chi2_end", "chi2_end_iteration", "max_sigma_E_first",
                "n_fitted", "min_parallax_snr", "parallax_zero_point", "max_stars", "min_steps_first", "min_steps", "max_epoch_factor",
                "loss_reddening", "label_update", "r_kernel_init", "r_init",
                "freeze_r_kernel_first", "cov_inflation", "init_from")


def split_indices(n: int, seed: int, fractions=(0.7, 0.2, 0.1)) -> dict[str, np.ndarray]:
    """Seeded random partition of ``range(n)`` into train/validation/test (sorted indices)."""
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(f[0] * n))
    n_val = int(round(f[1] * n))
    parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
    return {k: np.sort(p) for k, p in zip(("train", "validation", "test"), parts)}


def chi2_threshold(iteration: int, start: float = 100.0, end: float = 5.0, end_iteration: int = 15) -> float:
    """χ²/dof outlier cut applied after (1-based) ``iteration`` (§4).

    Falls log-uniformly from ``start`` after iteration 1 to ``end`` after
    ``end_iteration``, then stays at ``end``.
    """
    if iteration < 1:
        raise ValueError("iteration is 1-based")
    frac = min(1.0, (iteration - 1) / max(end_iteration - 1, 1))
    return float(math.exp(math.log(start) + frac * (math.log(end) - math.log(start))))


def learning_rate(iteration: int, lr0: float = 1e-3, decay: float = math.exp(-1.0 / 5.0)) -> float:
    """Learning rate of (1-based) ``iteration``: lr0 × decay^(iteration - 1)."""
    return float(lr0 * decay ** (iteration - 1))


def epochs_of_iteration(iteration: int, cfg: TrainConfig, n_train: int) -> int:
    """Epochs of (1-based) ``iteration``: ``epochs`` (``epochs_first`` for iteration 1), raised on small
    catalogues so that the iteration makes at least ``min_steps`` (``min_steps_first``) Adam steps,
    but to at most ``max_epoch_factor`` times that."""
    first = iteration == 1
    base = cfg.epochs_first if (first and cfg.epochs_first is not None) else cfg.epochs
    floor = cfg.min_steps_first if first else cfg.min_steps
    if not floor or base == 0:
        return int(base)
    steps_per_epoch = -(-max(int(n_train), 1) // int(cfg.batch_size))
    raised = min(-(-int(floor) // steps_per_epoch), int(math.floor(cfg.max_epoch_factor * base)))
    return int(max(base, raised))


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


def _outlier_mask(chi2, n_mod, threshold: float, n_fitted: int) -> np.ndarray:
    """χ²/dof > threshold with dof = n_modelled - n_fitted (stars with dof ≤ 0 are kept)."""
    dof = np.asarray(n_mod) - n_fitted
    chi2_dof = np.where(dof > 0, np.asarray(chi2) / np.maximum(dof, 1), 0.0)
    return chi2_dof > threshold


def train(catalog: StarCatalog, config: TrainConfig = TrainConfig()) -> tuple[Emulator, dict]:
    """Train an emulator on a labelled catalogue (Green et al. 2021, §4). Returns (emulator, history).

    history: ``epochs`` (per epoch: iteration, epoch, lr, running batch loss,
    train and validation loss at the end of the epoch — data term of Eq. 15 over
    the stars in the fit), ``iterations`` (per iteration: lr, χ²/dof threshold
    applied afterwards, outlier fractions, stars in the fit, median |ΔE|), the
    ``split`` (index arrays into the catalogue), ``config`` and ``n_stars``.
    """
    if not catalog.has_labels or not catalog.has_reddening_prior:
        raise CatalogError("training needs spectroscopic labels (teff, logg, feh) and a reddening prior (E_prior)")
    cfg = config
    if cfg.max_stars is not None:
        catalog = catalog.subset(np.arange(min(cfg.max_stars, catalog.n_stars)))
    n = catalog.n_stars
    split = split_indices(n, cfg.seed, cfg.split)
    fit_idx = np.concatenate([split["train"], split["validation"]])
    n_tr = split["train"].size
    if n_tr == 0 or split["validation"].size == 0:
        raise ValueError(f"catalogue of {n} stars too small for a train/validation split")
    cat = catalog.subset(fit_idx)
    phot = prepare_photometry(cat, min_parallax_snr=cfg.min_parallax_snr,
                              parallax_zero_point=cfg.parallax_zero_point)
    usable = usable_stars(cat, phot)
    th, cov, Ep, Epe = _fit_inputs(cat, usable)
    theta_tr = cat.theta[:n_tr][usable[:n_tr]]
    if theta_tr.shape[0] < 2:
        raise ValueError("fewer than 2 usable training stars")
    if cfg.loss_reddening not in ("updated", "prior"):
        raise ValueError(f"loss_reddening must be 'updated' or 'prior', got {cfg.loss_reddening!r}")
    if cfg.label_update not in ("none", "joint"):
        raise ValueError(f"label_update must be 'none' or 'joint', got {cfg.label_update!r}")
    if cfg.label_update == "joint" and cfg.loss_reddening != "updated":
        raise ValueError("label_update='joint' re-estimates E with θ: it needs loss_reddening='updated'")
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
    # whitening matrices for the next iteration (deterministic function of params: identical on resume)
    # (with joint label updates: a function of params and the stored linearisation point)
    E_ref, var_ref, W, _, _, th_cur, cov_cur = refresh_star_terms(
        emu.replace(params=params), th, cov, Ep, Epe, phot, first=first, chunk_size=cfg.chunk_size,
        inflation=infl, labels=lin if joint else None)
    if state is None and not first and cfg.loss_reddening == "updated":
        E, var = E_ref, var_ref
    lin = (th_cur, E)

    bar = _progress(cfg, start, n_tr)
    t0 = time.perf_counter()
    for it in range(start, cfg.iterations):
        lr = learning_rate(it + 1, cfg.lr, cfg.lr_decay)
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, dtype=jnp.float32)
        data = StarBatchData(x=emu.normalize(th_cur), E=E, c_obs=phot.c_obs, W=W, mask=phot.mask,
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
        E_new, var, W, chi2, n_mod, th_cur, cov_cur = refresh_star_terms(
            emu.replace(params=params), th, cov, Ep, Epe, phot, first=False, chunk_size=cfg.chunk_size,
            inflation=infl, labels=lin if joint else None)
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
            "median_abs_dtheta_sigma": (np.median(np.abs(dth), axis=0).round(4).tolist() if dth.size
                                        else [float("nan")] * 3),
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
        iterations_done=len(history["iterations"]), seed=cfg.seed)
    history = dict(history)
    history.update({
        "config": cfg.to_dict(), "n_stars": n, "split": split,
        "E_fit": {"index": fit_idx, "E": np.asarray(E), "E_err": np.sqrt(np.asarray(var)),
                  "included": np.asarray(include), "theta": np.asarray(th_cur)},
    })
    return emu, history


def _check_resumable(state: dict, cfg: TrainConfig, split: dict) -> None:
    old = state["config"]
    new = cfg.to_dict()
    bad = [k for k in _RESUME_KEYS if old.get(k) != new.get(k)]
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
