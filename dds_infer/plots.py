"""Figures for training and validating an emulator (Green et al. 2021, Figs. 7-12 analogues).

All functions take plain data (history dicts, emulators, arrays), draw with
matplotlib and return the ``Figure``; nothing is saved or shown.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_history", "plot_cmd", "plot_reddening_vs_teff", "plot_zscores"]


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not _interactive():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _interactive() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


def plot_history(history: dict):
    """Loss per epoch (train/validation, log scale) and, per iteration, χ²/dof cut and outlier fraction,
    and (when the history records it) each band's mean R minus its final value."""
    plt = _plt()
    ep = history["epochs"]
    its = history["iterations"]
    has_r = bool(its) and all("R_mean" in r for r in its)
    fig, axes = plt.subplots(1, 4 if has_r else 3, figsize=(17 if has_r else 13, 3.6), constrained_layout=True)
    k = np.arange(1, len(ep) + 1)
    ax = axes[0]
    ax.plot(k, [r["train_loss"] for r in ep], label="train")
    ax.plot(k, [r["val_loss"] for r in ep], label="validation", ls="--")
    n_ep = max((r["epoch"] for r in ep), default=1)
    for i in range(1, len(its)):
        ax.axvline(i * n_ep + 0.5, color="0.85", lw=0.6, zorder=0)
    ax.set_yscale("log")
    ax.set_xlabel("epoch (all iterations)")
    ax.set_ylabel(r"loss: $\chi^2/n_{\rm bands}$ (Eq. 15)")
    ax.legend()
    it = [r["iteration"] for r in its]
    ax = axes[1]
    ax.plot(it, [r["chi2_threshold"] for r in its], "o-")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(r"$\chi^2$/dof cut applied after iteration")
    ax = axes[2]
    ax.plot(it, [r["outlier_frac_train"] for r in its], "o-", label="train outliers")
    ax.plot(it, [r["outlier_frac_val"] for r in its], "s--", label="validation outliers")
    ax.plot(it, [r["median_abs_dE"] for r in its], "^:", label=r"median $|\Delta E|$")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=8)
    if has_r:
        r = np.asarray([rec["R_mean"] for rec in its], dtype=float)
        ax = axes[3]
        names = history.get("bands") or [f"band {j}" for j in range(r.shape[1])]
        for j in range(r.shape[1]):
            ax.plot(it, r[:, j] - r[-1, j], lw=1, label=names[j] if j < len(names) else None)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xlabel("iteration")
        ax.set_ylabel(r"mean $R$ − final mean $R$")
        ax.legend(fontsize=6, ncol=2)
    return fig


def plot_cmd(models: dict, theta, *, colour=(1, 2), colour_by: int = 2):
    """Learned colour-magnitude diagram M_ref vs (band a - band b) at the stars' θ, one panel per model.

    models: {title: Emulator}; theta: (N, 3); colour: band indices (a, b);
    points coloured by θ[:, colour_by] ([Fe/H] by default).
    """
    plt = _plt()
    theta = np.asarray(theta)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.5), squeeze=False,
                             sharex=True, sharey=True, constrained_layout=True)
    for ax, (title, emu) in zip(axes[0], models.items()):
        M = np.asarray(emu.absolute_mags(theta))
        names = emu.bands.names
        sc = ax.scatter(M[:, colour[0]] - M[:, colour[1]], M[:, 0], c=theta[:, colour_by], s=2,
                        cmap="viridis", rasterized=True)
        ax.set_xlabel(f"{names[colour[0]]} - {names[colour[1]]}")
        ax.set_ylabel(f"M_{names[0]}")
        ax.set_title(title)
    axes[0][0].invert_yaxis()
    fig.colorbar(sc, ax=axes[0].tolist(), label=["Teff", "logg", "[Fe/H]"][colour_by])
    return fig


def plot_reddening_vs_teff(models: dict, theta, *, bands=None):
    """R(θ) vs Teff per band at the stars' θ (Fig. 10 analogue), one colour per model."""
    plt = _plt()
    theta = np.asarray(theta)
    first = next(iter(models.values()))
    names = first.bands.names
    bands = range(len(names)) if bands is None else bands
    bands = list(bands)
    ncol = 5
    nrow = -(-len(bands) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.1 * ncol, 2.6 * nrow), squeeze=False,
                             sharex=True, constrained_layout=True)
    for m, (title, emu) in enumerate(models.items()):
        R = np.asarray(emu.reddening_vector(theta))
        for ax, b in zip(axes.flat, bands):
            ax.scatter(theta[:, 0], R[:, b], s=1, alpha=0.4, color=f"C{m}", label=title, rasterized=True)
            ax.set_title(names[b], fontsize=9)
    for ax in axes.flat[len(bands):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("Teff [K]")
    for ax in axes[:, 0]:
        ax.set_ylabel("R")
    handles = [plt.Line2D([], [], marker="o", ls="", color=f"C{m}") for m in range(len(models))]
    fig.legend(handles, list(models), loc="lower right")
    return fig


def _binned_median(x, y, bins):
    idx = np.digitize(x, bins) - 1
    out = np.full(len(bins) - 1, np.nan)
    for i in range(len(bins) - 1):
        v = y[(idx == i) & np.isfinite(y)]
        if v.size >= 10:
            out[i] = np.median(v)
    return out


def plot_zscores(results: dict, theta, *, entries=None):
    """Median z-score (Eq. 18) per entry vs Teff, logg, [Fe/H] and E (Fig. 12 analogue).

    results: {title: EvaluationResult} (from :func:`dds_infer.evaluate.evaluate_catalog`
    on the same stars as ``theta``). One row per model, one column per variable,
    one line per entry of c.
    """
    plt = _plt()
    theta = np.asarray(theta)
    fig, axes = plt.subplots(len(results), 4, figsize=(15, 3.2 * len(results)), squeeze=False,
                             sharey=True, constrained_layout=True)
    for row, (title, res) in zip(axes, results.items()):
        names = res.entry_names
        ents = range(len(names)) if entries is None else entries
        xs = (theta[:, 0], theta[:, 1], theta[:, 2], res.E)
        labels = ("Teff [K]", "logg", "[Fe/H]", "E")
        for ax, x, lab in zip(row, xs, labels):
            lo, hi = np.nanpercentile(x, [1, 99])
            bins = np.linspace(lo, hi, 16)
            mid = 0.5 * (bins[1:] + bins[:-1])
            for j in ents:
                ax.plot(mid, _binned_median(x, res.z[:, j], bins), color=f"C{j % 10}",
                        ls="-" if j < 10 else "--", lw=1, label=names[j])
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xlabel(lab)
        row[0].set_ylabel(f"{title}\nmedian z")
        row[0].set_ylim(-3, 3)
    axes[0][-1].legend(fontsize=6, ncol=2)
    return fig
