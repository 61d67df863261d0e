"""A quick look at a catalogue run from its per-star summary rows (any size: histograms only).

:func:`plot_run_overview` takes the summary table (:meth:`dds_infer.posterior.Posterior.summary`,
a run's ``summary.parquet``, or :func:`dds_infer.run_status.summary_columns` over many runs) and
draws six panels: the Kiel diagram of the posterior medians, [Fe/H], reddening against distance,
the posterior widths of μ and E, the convergence diagnostic, and why stars are flagged. It
returns the matplotlib ``Figure``; ``dds-infer status --plot FILE`` saves it.
"""

from __future__ import annotations

import numpy as np

from .plots import _plt
from .posterior import FLAGS

__all__ = ["OVERVIEW_COLUMNS", "plot_run_overview"]

OVERVIEW_COLUMNS = ("teff_median", "logg_median", "feh_median", "mu_q16", "mu_q84", "E_median", "E_q16",
                    "E_q84", "distance_pc_median", "r_hat_max", "weight_ess", "flag")


def _hist2d(ax, x, y, bins, label_x, label_y):
    from matplotlib.colors import LogNorm

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() == 0:
        ax.text(0.5, 0.5, "no stars", ha="center", transform=ax.transAxes)
    else:
        h = ax.hist2d(x[ok], y[ok], bins=bins, norm=LogNorm(), cmap="viridis", cmin=1)
        ax.figure.colorbar(h[3], ax=ax, label="stars")
    ax.set_xlabel(label_x)
    ax.set_ylabel(label_y)


def _step_hist(ax, x, bins=60, value_range=None, **kw):
    """A step histogram of the finite values of ``x`` (none: nothing drawn; one value: a bin around it)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return
    lo, hi = value_range if value_range is not None else (x.min(), x.max())
    if not hi - lo > 1e-6 * max(1.0, abs(lo)):  # (one value, up to rounding)
        lo, hi = lo - 0.5, hi + 0.5
    ax.hist(x, bins=bins, range=(lo, hi), histtype="step", **kw)


def plot_run_overview(summary, *, title: str | None = None):
    """Six panels from the summary rows (columns :data:`OVERVIEW_COLUMNS`; ``r_hat_max`` or
    ``weight_ess`` may be all NaN): medians of flag-0 stars in the Kiel diagram and E against
    distance; [Fe/H] medians of flag-0 and flagged stars; the half widths of the 68% intervals of μ
    and E; R-hat (NUTS) or the importance weights' ESS (grid path); stars per flag reason."""
    plt = _plt()
    col = lambda c: np.asarray(summary[c], dtype=np.float64)  # noqa: E731
    flag = np.asarray(summary["flag"], dtype=np.int64)
    good = flag == 0
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    (a, b, c), (d, e, f) = axes

    _hist2d(a, col("teff_median")[good], col("logg_median")[good], 80, "Teff [K] (median)", "log g (median)")
    a.invert_xaxis()
    a.invert_yaxis()
    a.set_title("Kiel diagram, flag 0")

    feh = col("feh_median")
    rng = (np.nanmin(feh), np.nanmax(feh)) if np.isfinite(feh).any() else None
    for sel, name in ((good, "flag 0"), (~good, "flagged")):
        _step_hist(b, feh[sel], value_range=rng, label=f"{name} ({sel.sum()})")
    b.set_xlabel("[Fe/H] (median)")
    b.set_ylabel("stars")
    b.legend()

    dist = col("distance_pc_median")
    _hist2d(c, np.log10(np.where(dist > 0, dist, np.nan))[good], col("E_median")[good], 80,
            "log10 distance [pc] (median)", "E (median)")
    c.set_title("reddening against distance, flag 0")

    for name, lo, hi in (("μ [mag]", "mu_q16", "mu_q84"), ("E [mag]", "E_q16", "E_q84")):
        w = 0.5 * (col(hi) - col(lo))
        _step_hist(d, np.log10(w[np.isfinite(w) & (w > 0)]), label=name)
    d.set_xlabel("log10 half width of the 68% interval")
    d.set_ylabel("stars")
    d.legend()
    d.set_title("posterior widths")

    rhat = col("r_hat_max") if "r_hat_max" in summary else np.full(flag.size, np.nan)
    if np.isfinite(rhat).any():
        _step_hist(e, np.log10(np.clip(rhat[np.isfinite(rhat)] - 1.0, 1e-5, None)))
        e.axvline(np.log10(0.01), color="k", ls="--", lw=1)
        e.set_xlabel("log10(R-hat − 1), worst variable (dashed: R-hat = 1.01)")
        e.set_title(f"R-hat < 1.01: {np.mean(rhat[np.isfinite(rhat)] < 1.01):.1%}")
    else:
        ess = col("weight_ess") if "weight_ess" in summary else np.full(flag.size, np.nan)
        _step_hist(e, np.log10(ess[np.isfinite(ess) & (ess > 0)]))
        e.set_xlabel("log10 ESS of the importance weights")
        e.set_title("grid path: weight ESS")
    e.set_ylabel("stars")

    names = list(FLAGS)
    counts = [int(np.count_nonzero(flag & FLAGS[k])) for k in names]
    f.barh(names, counts)
    f.set_xlabel("stars (a star may have several reasons)")
    f.set_title(f"flagged: {int(np.count_nonzero(flag))} of {flag.size}")
    f.invert_yaxis()

    fig.suptitle(title or f"{flag.size} stars")
    fig.tight_layout()
    return fig
