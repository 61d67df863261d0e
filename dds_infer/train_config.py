"""Training configuration and schedule of Green et al. (2021), §4.

:class:`TrainConfig` (hyper-parameters, defaults = the paper's), the seeded
train/validation/test split, the χ²/dof outlier-cut and learning-rate
schedules, and the epochs per iteration. Used by :mod:`dds_infer.training`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["TrainConfig", "split_indices", "check_split", "chi2_threshold", "learning_rate", "epochs_of_iteration",
           "RESUME_KEYS"]


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
    label_shrinkage: "none" or "tweedie": before training, replace each
        usable star's label θ̂ by θ̂ + C_θ ∇ log p(θ̂), its posterior mean under
        the density p of the training split's labels (Tweedie's formula,
        :func:`dds_infer.label_noise.tweedie_label_means`): the regression
        dilution of noisy labels, to first order. With ``label_update="joint"``
        the shrunk labels are the prior mean. Measured on the physical mock
        (RMS(M_learned − M_true) per band): none 0.086-0.098 mag; tweedie
        0.062-0.071; joint 0.059-0.063; both 0.042-0.046 (offset +0.03 mag).
        The shift is capped at 3σ per star (counted: ``n_labels_shrink_capped``
        in the history and the bundle's provenance).
    label_shrinkage_groups: with "tweedie", estimate the label density
        separately in this many parallax-quantile groups of the training split
        (:func:`dds_infer.label_noise.grouped_tweedie_label_means`; 1 = one
        pooled density). The θ population of a magnitude-limited sample
        depends on distance; on the physical mock with the joint update and
        the linearized parallax, 4 groups give RMS(M_learned − M_true)
        0.033-0.035 mag and a median offset of +0.002..+0.005 mag, against
        0.038-0.040 and +0.014..+0.019 mag pooled.
    label_shrinkage_bandwidth: σ of the Gaussian that smooths the label
        histogram, in units of the median label σ (default 1;
        smaller resolves sharper features such as the red clump but is
        noisier). On the physical mock, with 4 groups, the joint update and the
        linearized parallax: 1.0 → RMS(M) 0.033-0.035 mag (383 shifts capped),
        0.5 → 0.032-0.034 (2,636 capped; median offset +0.010..+0.014).
    parallax_likelihood: "inverted" (the paper's: μ̂ = 10 - 5 log10 ϖ̂ with
        σ_μ = (5/ln 10) σ_ϖ/ϖ̂, c_0 modelled only where ϖ̂/σ_ϖ > min_parallax_snr)
        or "linearized": from iteration 2 on, the parallax likelihood is
        Gaussian in ϖ, linearised once per iteration about each star's
        photometric μ under the current network at its labels
        (:func:`dds_infer.evaluate.with_linearized_parallax`), and every star
        with a parallax has c_0 modelled (no cut on the noisy ϖ̂/σ_ϖ). The
        inverted parallax is biased low in μ at low S/N (≈ -(ln 10/10) σ_μ²), and
        the S/N cut on ϖ̂ selects stars whose parallax scattered high: on the
        physical mock the stars kept have mean μ̂ - μ = -0.024 to -0.028 mag at the
        turn-off (-0.073 at S/N 5-7), which the fit turns into M(θ) too faint.
    label_update_centring: with "joint", remove the population-mean shift of
        the updated labels from their prior means after every update, per
        parallax group (``label_shrinkage_groups``;
        :func:`dds_infer.label_noise.centre_label_shifts`). Averaged over the
        stars, posterior means return their prior means (law of total
        expectation), so a mean shift is the labels drifting with the
        network's zero-point along the flat direction of the joint fit. The
        removed shifts are in the history (``label_shift_removed``).
    l2_hidden, l1_reddening: the weights of Eq. 15's L2 (hidden kernels) and
        L1 (R kernel) terms, the paper's 1e-4 and 1e-2. The L2 term smooths
        M(θ) against the χ² of stars whose c_0 errors are ~0.3 mag: on the
        physical mock with exact labels it costs 0.026 vs 0.018 mag RMS(M)
        (giant branch); with noisy labels and all the options above 1e-5 did
        best (0.031-0.034; with label_shrinkage_bandwidth 0.5: 0.028-0.030 at
        seed 0, but 0.028-0.035 and 0.058-0.072 at seeds 1 and 2).
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
    label_shrinkage: str = "none"
    label_shrinkage_groups: int = 1
    label_shrinkage_bandwidth: float = 1.0
    label_update_centring: bool = False
    parallax_likelihood: str = "inverted"
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
RESUME_KEYS = ("epochs", "epochs_first", "batch_size", "lr", "lr_decay", "seed", "hidden", "split", "l2_hidden",
                "l1_reddening", "chi2_start", "chi2_end", "chi2_end_iteration", "max_sigma_E_first",
                "n_fitted", "min_parallax_snr", "parallax_zero_point", "max_stars", "min_steps_first", "min_steps", "max_epoch_factor",
                "loss_reddening", "label_update", "label_shrinkage", "label_shrinkage_groups", "label_shrinkage_bandwidth",
                "label_update_centring",
                "parallax_likelihood", "r_kernel_init", "r_init",
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


def check_split(split, n: int) -> dict[str, np.ndarray]:
    """An explicit split (mapping with "train", "validation", "test": integer index arrays into a
    catalogue of ``n`` stars), checked and sorted. Validation and test must not share stars with
    each other or with train (a leak); train may repeat indices (e.g. a bootstrap resample: each
    copy counts as one star). Raises ValueError naming the part and what is wrong."""
    out = {}
    for k in ("train", "validation", "test"):
        if k not in split:
            raise ValueError(f"split has no {k!r} indices (needs train, validation and test)")
        a = np.asarray(split[k])
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"split[{k!r}] must be a 1-D array of integer row indices, got {a.dtype} {a.shape}")
        bad = np.flatnonzero((a < 0) | (a >= n))
        if bad.size:
            raise ValueError(f"split[{k!r}] has {bad.size} indices outside 0..{n - 1} (first: {a[bad[0]]})")
        if k != "train" and np.unique(a).size != a.size:
            raise ValueError(f"split[{k!r}] repeats rows (only train may, e.g. a bootstrap)")
        out[k] = np.sort(a.astype(np.int64))
    for a, b in (("validation", "test"), ("train", "validation"), ("train", "test")):
        both = np.intersect1d(out[a], out[b])
        if both.size:
            raise ValueError(f"split: {both.size} stars are in both {a} and {b} (first row {both[0]})")
    return out


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
