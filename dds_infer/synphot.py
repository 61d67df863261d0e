"""Synthetic photometry for the truth model: bolometric corrections and R(Teff).

Passbands (all from the ``pyphot`` wheel, no download): Gaia DR2 *revised*
G/BP/RP (``GaiaDR2v2_*``, Evans et al. 2018 revised curves), Pan-STARRS1
grizy (Tonry et al. 2012), 2MASS J/H/Ks (Cohen et al. 2003) and WISE W1/W2
relative spectral responses (Jarrett et al. 2011), in the order of
:data:`dds_infer.passbands.GREEN2020`. All are photon-counting detectors:
<F>_X = ∫ F_λ T λ dλ / ∫ T λ dλ.

Magnitude systems as used by Green et al. (2021): Gaia Vega (Vega = 0.03 mag
in G/BP/RP, Evans et al. 2018), PS1 AB, 2MASS Vega (Vega = -0.001/+0.019/-0.017
in J/H/Ks, Cohen et al. 2003), unWISE Vega (Vega = 0) converted to AB by
+2.699 / +3.339 mag (the paper's convention, not a synthetic AB magnitude).
The Vega spectrum is pyphot's CALSPEC alpha Lyr model.

SED: a **Planck spectrum** at Teff (no PyPI wheel found that ships a stellar
atmosphere library for offline use). Limitation: no line blanketing or
molecular bands, so blue colours (BP, PS1 g) are off by ~0.1-0.5 mag against
real stars, most for cool stars, and there is no log g / [Fe/H] dependence.

Extinction: Gordon et al. (2023) G23 curve at R(V) = 3.1 from ``dust_extinction``.
The reddening unit is **E ≡ A_V / 3.1**, A_V the monochromatic extinction at
0.55 μm (the curve's normalisation). R_X(Teff) = dA_X/dE at E → 0, i.e. the
photon-weighted mean of 3.1 · A_λ/A_V over SED × passband (exactly linear in E).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = [
    "PYPHOT_FILTER_NAMES",
    "VEGA_MAG_OFFSETS",
    "AB_FROM_VEGA",
    "R_V",
    "load_passbands",
    "planck_flam",
    "band_mean_flux",
    "zero_point_flux",
    "bolometric_corrections",
    "reddening_coefficients",
]

PYPHOT_FILTER_NAMES = (
    "GaiaDR2v2_G", "GaiaDR2v2_BP", "GaiaDR2v2_RP",
    "PS1_g", "PS1_r", "PS1_i", "PS1_z", "PS1_y",
    "2MASS_J", "2MASS_H", "2MASS_Ks",
    "WISE_RSR_W1", "WISE_RSR_W2",
)
# magnitude of Vega in each band of a Vega-based system (NaN: AB band)
VEGA_MAG_OFFSETS = np.array([0.03, 0.03, 0.03] + [np.nan] * 5 + [-0.001, 0.019, -0.017, 0.0, 0.0])
# added to the Vega magnitude to get the catalogue's "AB" (unWISE, Green et al. 2021)
AB_FROM_VEGA = np.array([0.0] * 11 + [2.699, 3.339])
R_V = 3.1

_C_AA = 2.99792458e18  # speed of light [Å/s]
_H = 6.62607015e-27  # erg s
_K = 1.380649e-16  # erg/K
_SIGMA = 5.670374419e-5  # erg/s/cm²/K⁴
_L_SUN = 3.828e33  # erg/s (IAU 2015 B3); M_bol,sun = 4.74
_PC = 3.0856775814913673e18  # cm
MBOL_SUN = 4.74


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            f"the truth model needs the optional package {module!r}; "
            'install it with: pip install "dds_infer[mock]"'
        ) from exc


@lru_cache(maxsize=1)
def load_passbands() -> tuple:
    """The 13 passbands as (wavelength [Å], photon transmission) numpy pairs."""
    pyphot = _require("pyphot")
    lib = pyphot.get_library()
    out = []
    for name in PYPHOT_FILTER_NAMES:
        f = lib[name]
        if f.dtype != "photon":
            raise ValueError(f"pyphot filter {name} is {f.dtype!r}-counting, expected photon")
        lam = f.wavelength.to("AA").value.astype(float)
        tr = np.clip(np.asarray(f.transmit, dtype=float), 0.0, None)
        order = np.argsort(lam)
        out.append((lam[order], tr[order]))
    return tuple(out)


@lru_cache(maxsize=1)
def _vega_spectrum():
    pyphot = _require("pyphot")
    v = pyphot.Vega()
    return v.wavelength.to("AA").value.astype(float), v.flux.to("flam").value.astype(float)


def planck_flam(lam_aa, teff):
    """π B_λ(T) / (σ T⁴) [Å⁻¹]: the Planck SED normalised to unit bolometric flux.

    lam_aa (..., L) wavelengths in Å, teff broadcastable against lam_aa[..., :1].
    """
    lam_cm = np.asarray(lam_aa, float) * 1e-8
    t = np.asarray(teff, float)
    x = np.clip(_H * _C_AA * 1e-8 / (lam_cm * _K * t), None, 700.0)
    b_lam = 2 * _H * (_C_AA * 1e-8) ** 2 / lam_cm ** 5 / np.expm1(x)  # erg/s/cm²/cm/sr
    return np.pi * b_lam * 1e-8 / (_SIGMA * t ** 4)


def band_mean_flux(lam_aa, flam, band) -> float:
    """Photon-weighted mean flux density <F>_X of a 1-D spectrum (flam on lam_aa [Å])."""
    lam_b, tr = band
    w = tr * lam_b
    f = np.interp(lam_b, np.asarray(lam_aa, float), np.asarray(flam, float), left=0.0, right=0.0)
    return float(np.trapezoid(f * w, lam_b) / np.trapezoid(w, lam_b))


def zero_point_flux() -> np.ndarray:
    """Flux density [erg/s/cm²/Å] of a 0-mag source in each band's catalogue system."""
    lam_v, f_v = _vega_spectrum()
    zp = np.empty(len(PYPHOT_FILTER_NAMES))
    for k, band in enumerate(load_passbands()):
        lam_b, tr = band
        if np.isnan(VEGA_MAG_OFFSETS[k]):  # AB: f_ν = 3631 Jy, photon-weighted
            w = tr * lam_b
            zp[k] = np.trapezoid(3631e-23 * _C_AA / lam_b ** 2 * w, lam_b) / np.trapezoid(w, lam_b)
        else:  # Vega has magnitude VEGA_MAG_OFFSETS in this system (+ AB shift for unWISE)
            fv = band_mean_flux(lam_v, f_v, band)
            zp[k] = fv * 10 ** (0.4 * (VEGA_MAG_OFFSETS[k] + AB_FROM_VEGA[k]))
    return zp


def _band_fluxes(teff: np.ndarray, weight=None) -> np.ndarray:
    """(n_T, 13) photon-weighted mean of the unit-bolometric Planck SED (× weight(λ))."""
    out = np.empty((teff.size, len(PYPHOT_FILTER_NAMES)))
    for k, (lam_b, tr) in enumerate(load_passbands()):
        sed = planck_flam(lam_b[None, :], teff[:, None])
        w = tr * lam_b
        if weight is not None:
            sed = sed * weight(lam_b)[None, :]
        out[:, k] = np.trapezoid(sed * w, lam_b, axis=-1) / np.trapezoid(w, lam_b)
    return out


def bolometric_corrections(teff) -> np.ndarray:
    """BC_X(Teff) = M_X - M_bol for a Planck SED, shape (n_T, 13), catalogue systems.

    A star of L = 1 Lsun at 10 pc has F_λ = Lsun/(4π(10 pc)²) · πB_λ/(σT⁴);
    M_X = -2.5 log10(<F>_X / ZP_X) and M_bol = 4.74 (IAU 2015 B2).
    """
    teff = np.atleast_1d(np.asarray(teff, float))
    fbol_10pc = _L_SUN / (4 * np.pi * (10 * _PC) ** 2)
    mags = -2.5 * np.log10(fbol_10pc * _band_fluxes(teff) / zero_point_flux()[None, :])
    return mags - MBOL_SUN


def _g23_a_lambda_over_a_v():
    """A_λ/A_V of the G23 curve at R(V) = 3.1, as a function of λ [Å]."""
    _require("dust_extinction")
    import astropy.units as u
    from dust_extinction.parameter_averages import G23

    curve = G23(Rv=R_V)
    return lambda lam_aa: np.asarray(curve(np.asarray(lam_aa) * u.AA), float)


def reddening_coefficients(teff) -> np.ndarray:
    """R_X(Teff) = dA_X/dE with E ≡ A_V/3.1 (G23, R(V)=3.1), Planck SED, (n_T, 13).

    R_X = 3.1 · ∫ F_λ T λ (A_λ/A_V) dλ / ∫ F_λ T λ dλ: the E → 0 limit of
    -2.5 log10 of the extinguished over the unextinguished band flux.
    """
    teff = np.atleast_1d(np.asarray(teff, float))
    k = _g23_a_lambda_over_a_v()
    return R_V * _band_fluxes(teff, weight=k) / _band_fluxes(teff)
