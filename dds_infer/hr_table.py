"""The HR-diagram density table of the θ prior: log p(T_eff, log g | [Fe/H]) on the emulator's
training-density grid (:class:`~dds_infer.domain.TrainingDomain`), built once in numpy.

:func:`hr_density_table` is what :func:`dds_infer.priors.default_prior` interpolates
(:func:`dds_infer.priors.log_hr_prior`); :func:`hr_slice_mass` is the mass each [Fe/H] slice
keeps, which simulations drawing from that prior apply (:mod:`dds_infer.mock`). Both
normalise over the bilinear interpolant the prior actually evaluates.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["hr_density_table", "hr_slice_mass"]


def hr_density_table(domain, *, entry: int = 0, threshold: float = 0.01, softness: float = 0.5,
                     smooth_sigma: float = 0.5, floor: float = 1e-6, refine: int = 4,
                     min_slice_mass: float = 0.05, log_volume=None) -> np.ndarray:
    """log p(T_eff, log g | [Fe/H]) on the grid of ``domain`` (a TrainingDomain), float64 (nT, ng, nf).

    t = gaussian_filter(log(ρ + floor), smooth_sigma [bins]) + log σ((t - log threshold) / softness):
    ρ itself above ~10 × threshold, falling off smoothly (but finitely) below it. Each
    [Fe/H] slice is then normalised so that ∫∫ exp(t) dT_eff dlog g = 1, with the integral
    taken over the bilinear interpolant (``refine`` sub-cells per cell, trapezoid rule),
    i.e. over the function :func:`dds_infer.priors.log_hr_prior` actually evaluates. Slices holding less than
    ``min_slice_mass`` of the largest slice's mass (the [Fe/H] edges of the training set,
    e.g. [Fe/H] < −1.7 or > 0.5 for Green2020) are divided by that floor instead, so they
    keep a small total mass: the prior falls off outside the training [Fe/H] range instead
    of spreading an empty slice's floor over the whole HR diagram.

    log_volume: optional (nT, ng, nf) log selection volume V(θ) of a magnitude-limited
    training set (:func:`dds_infer.selection.selection_log_volume`): t − log V is used, the
    population density ρ / V, normalised per slice as above (the edge slices keep the
    deficit they have without the correction).
    """
    t, log_z, deficit = _hr_log_density(domain, entry, threshold, softness, smooth_sigma, floor, refine,
                                        min_slice_mass, log_volume)
    return t - (log_z + deficit)[None, None, :]


def hr_slice_mass(domain, *, entry: int = 0, threshold: float = 0.01, softness: float = 0.5,
                  smooth_sigma: float = 0.5, floor: float = 1e-6, refine: int = 4,
                  min_slice_mass: float = 0.05) -> np.ndarray:
    """Total mass (nf,) of each [Fe/H] slice of :func:`hr_density_table` (same arguments): 1, or
    less for the edge slices divided by the ``min_slice_mass`` floor — what a simulation drawing
    from this prior must apply (:mod:`dds_infer.mock`)."""
    _, _, deficit = _hr_log_density(domain, entry, threshold, softness, smooth_sigma, floor, refine,
                                    min_slice_mass, None)
    return np.exp(-deficit)


def _hr_log_density(domain, entry, threshold, softness, smooth_sigma, floor, refine, min_slice_mass, log_volume):
    """The smoothed, softly thresholded log density t (nT, ng, nf) (minus log_volume if given), each
    slice's log integral over its bilinear interpolant (nf,), and each slice's log deficit (nf,),
    ≥ 0: the slices below ``min_slice_mass`` of the uncorrected density's largest slice."""
    dens = np.asarray(domain.density, dtype=np.float64)
    if dens.ndim != 4 or not 0 <= entry < dens.shape[0]:
        raise ValueError(f"domain density has shape {dens.shape}; entry {entry} is not one of its maps")
    if not np.all(np.isfinite(dens)) or dens.min() < 0:
        raise ValueError("domain density must be finite and >= 0")
    if threshold <= 0 or softness <= 0 or floor <= 0:
        raise ValueError("threshold, softness and floor must be > 0")
    t = np.log(dens[entry] + floor)
    if smooth_sigma > 0:
        t = gaussian_filter(t, smooth_sigma, mode="nearest")
    z = (t - math.log(threshold)) / softness
    t = t + np.minimum(z, 0.0) - np.log1p(np.exp(-np.abs(z)))  # + log sigmoid(z), stable
    log_z = _slice_log_integrals(t, domain, refine)
    deficit = np.maximum(log_z.max() + math.log(min_slice_mass) - log_z, 0.0)
    if log_volume is not None:
        log_volume = np.asarray(log_volume, dtype=np.float64)
        if log_volume.shape != t.shape or not np.all(np.isfinite(log_volume)):
            raise ValueError(f"log_volume must be finite with the grid's shape {t.shape}, got {log_volume.shape}")
        t = t - log_volume
        log_z = _slice_log_integrals(t, domain, refine)
    return t, log_z, deficit


def _slice_log_integrals(t, domain, refine):
    """log ∫∫ exp(t) dT_eff dlog g (nf,) over the bilinear interpolant (``refine`` sub-cells, trapezoid)."""
    teff, logg = (np.asarray(a, dtype=np.float64) for a in (domain.teff, domain.logg))
    nT, ng = len(teff), len(logg)
    fT = np.linspace(0, nT - 1, (nT - 1) * refine + 1)
    fg = np.linspace(0, ng - 1, (ng - 1) * refine + 1)
    i0 = np.minimum(np.floor(fT).astype(int), nT - 2)
    j0 = np.minimum(np.floor(fg).astype(int), ng - 2)
    a, c = (fT - i0)[:, None, None], (fg - j0)[None, :, None]
    sub = ((1 - a) * (1 - c) * t[i0][:, j0] + a * (1 - c) * t[i0 + 1][:, j0]
           + (1 - a) * c * t[i0][:, j0 + 1] + a * c * t[i0 + 1][:, j0 + 1])
    mx = sub.max(axis=(0, 1))
    xT = teff[0] + fT * (teff[1] - teff[0])
    xg = logg[0] + fg * (logg[1] - logg[0])
    integ = np.trapezoid(np.trapezoid(np.exp(sub - mx), xg, axis=1), xT, axis=0)
    return mx + np.log(integ)
