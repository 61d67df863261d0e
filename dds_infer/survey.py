"""Observation model of the mock catalogues: what a survey does to true magnitudes.

Per band: magnitude-dependent errors, a saturation (bright) and detection (faint)
limit, and a random drop-out (sky coverage, quality cuts). Gaia DR2 parallax noise
with a zero-point, and noisy spectroscopic labels with per-star covariances.

The default :data:`GREEN2020_SURVEY` is calibrated to the 10,000 held-out real
stars of Green et al. (2021) (``green2020_test_data_small.h5``, measured with
this package's reader; figures quoted per parameter below):

* errors: σ(m) = sqrt(σ_floor² + (0.1 · 10^(k (m − m₁₀)))²), i.e. a calibration
  floor plus a noise term reaching 0.1 mag at m₁₀. The real catalogue's errors
  already include a ~0.02 mag floor (Gaia, PS1, unWISE) and ~0.03 (2MASS).
  m₁₀ is set from the median error in the faintest populated 1-mag bin (e.g.
  2MASS J: 0.055 at 15, 0.089 at 16 → m₁₀ = 16.1; Ks: 0.073 at 14 → 14.6).
* limits: bright = the real 1st percentile (PS1 saturation at ~13, unWISE as
  used by Green2020 only fainter than 15.4/14.7 AB); faint = about the 99.5th.
* drop-out: chosen so that a G-selected mock (10 < G < 17.5) has roughly the
  real missing fractions (real: G 0, BP/RP 0.1%, PS1 g/r/i/z/y 18/30/36/26/16%,
  J/H/Ks 5/7/11%, W1 71%, W2 35%).
* parallax: σ_ϖ = sqrt(0.03² + (0.1 · 10^(0.27 (G − 17)))²) mas (real σ_ϖ
  5/50/95th percentiles 0.020/0.041/0.121 mas; Gaia DR2 ≈ 0.04 mas at G < 15,
  0.1 at 17, 0.7 at 20, Lindegren et al. 2018), zero-point −0.029 mas
  (Lindegren et al. 2018, A&A 616, A2).
* labels: σ(Teff, logg, [Fe/H]) log-normal around the real medians 56 K,
  0.11 dex, 0.068 dex (real 5-95%: 23-148 K, 0.06-0.32, 0.03-0.17).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .passbands import GREEN2020, BandSet

__all__ = ["BandNoise", "SurveyModel", "GREEN2020_SURVEY", "photometric_errors",
           "observe_photometry", "parallax_errors", "observe_parallax", "observe_labels"]


@dataclass(frozen=True)
class BandNoise:
    """Noise and limits of one band (magnitudes in the band's own system)."""

    floor: float  # calibration floor [mag]
    m10: float  # magnitude where the noise term reaches 0.1 mag
    slope: float = 0.3  # k in 10^(k (m - m10)); 0.4 = background-limited, 0.2 = source-limited
    bright: float = -np.inf  # brighter than this: saturated (missing)
    faint: float = np.inf  # fainter than this: not detected (missing)
    dropout: float = 0.0  # random missing probability (coverage, quality)


@dataclass(frozen=True)
class SurveyModel:
    """Everything the observation model needs; one :class:`BandNoise` per band."""

    bands: BandSet
    noise: tuple[BandNoise, ...]
    parallax_floor: float = 0.03  # mas
    parallax_g17: float = 0.1  # mas, noise term at G = 17
    parallax_slope: float = 0.27
    parallax_zp: float = -0.029  # mas (Gaia DR2, Lindegren+2018)
    parallax_band: str = "gaia_g"
    label_sigma: tuple[float, float, float] = (56.0, 0.11, 0.068)
    label_sigma_scatter: float = 0.45  # dex-e of the log-normal spread of the label errors
    label_corr_teff_logg: float = 0.3
    selection_band: str = "gaia_g"
    selection: tuple[float, float] = (10.0, 17.5)  # observed-magnitude window
    selection_pivot: float = 13.0  # fainter than this, targets are kept with
    selection_slope: float = 0.12  # probability 10^(-slope (m - pivot)) (see mock.selection_probability)
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.noise) != len(self.bands):
            raise ValueError(f"{len(self.noise)} band noise models for {len(self.bands)} bands")


GREEN2020_SURVEY = SurveyModel(
    bands=GREEN2020,
    noise=(
        BandNoise(0.02, 21.0, 0.3, 6.0, 21.0, 0.0),  # Gaia G
        BandNoise(0.02, 20.6, 0.3, 6.0, 20.5, 0.001),  # BP
        BandNoise(0.02, 20.2, 0.3, 6.0, 20.0, 0.001),  # RP
        BandNoise(0.0203, 21.5, 0.3, 13.0, 21.5, 0.06),  # PS1 g
        BandNoise(0.0203, 21.5, 0.3, 13.0, 21.5, 0.08),  # PS1 r
        BandNoise(0.0202, 21.3, 0.3, 13.0, 21.3, 0.12),  # PS1 i
        BandNoise(0.0204, 21.0, 0.3, 12.6, 21.0, 0.06),  # PS1 z
        BandNoise(0.0203, 20.8, 0.3, 11.8, 20.3, 0.04),  # PS1 y
        BandNoise(0.0297, 16.1, 0.3, 6.0, 16.5, 0.02),  # 2MASS J
        BandNoise(0.0305, 15.3, 0.3, 6.0, 15.6, 0.02),  # 2MASS H
        BandNoise(0.0283, 14.6, 0.3, 6.0, 15.0, 0.02),  # 2MASS Ks
        BandNoise(0.0202, 20.75, 0.3, 15.4, 19.0, 0.30),  # unWISE W1 (AB)
        BandNoise(0.0202, 19.5, 0.3, 14.7, 19.5, 0.15),  # unWISE W2 (AB)
    ),
)


def photometric_errors(mag, survey: SurveyModel = GREEN2020_SURVEY) -> np.ndarray:
    """σ(m) per band, (N, B): floor ⊕ 0.1 · 10^(k (m − m₁₀))."""
    mag = np.asarray(mag, dtype=float)
    floor = np.array([n.floor for n in survey.noise])
    m10 = np.array([n.m10 for n in survey.noise])
    k = np.array([n.slope for n in survey.noise])
    return np.sqrt(floor**2 + (0.1 * 10.0 ** (k * (mag - m10))) ** 2)


def observe_photometry(rng: np.random.Generator, mag_true, survey: SurveyModel = GREEN2020_SURVEY):
    """Noisy magnitudes and errors with limits and drop-outs applied (NaN = missing).

    Returns (mag, mag_err, counts) where counts[band] = dict(saturated, undetected,
    dropout) — the reasons bands are missing, so nothing disappears uncounted.
    """
    mag_true = np.asarray(mag_true, dtype=float)
    err = photometric_errors(mag_true, survey)
    mag = mag_true + err * rng.standard_normal(mag_true.shape)
    bright = np.array([n.bright for n in survey.noise])
    faint = np.array([n.faint for n in survey.noise])
    drop = rng.random(mag.shape) < np.array([n.dropout for n in survey.noise])
    sat, undet = mag < bright, mag_true > faint  # detection is set by the true flux
    missing = sat | undet | drop
    counts = {name: {"saturated": int(sat[:, j].sum()), "undetected": int(undet[:, j].sum()),
                     "dropout": int((drop[:, j] & ~sat[:, j] & ~undet[:, j]).sum())}
              for j, name in enumerate(survey.bands.names)}
    return np.where(missing, np.nan, mag), np.where(missing, np.nan, err), counts


def parallax_errors(g_mag, survey: SurveyModel = GREEN2020_SURVEY) -> np.ndarray:
    """Gaia-like σ_ϖ [mas] from the G magnitude (see module docstring)."""
    g = np.asarray(g_mag, dtype=float)
    term = survey.parallax_g17 * 10.0 ** (survey.parallax_slope * (g - 17.0))
    return np.sqrt(survey.parallax_floor**2 + term**2)


def observe_parallax(rng: np.random.Generator, mu_true, g_mag, survey: SurveyModel = GREEN2020_SURVEY,
                     *, zero_point: float | None = None, inflation: float = 1.0):
    """ϖ̂ = 10^((10 − μ)/5) + ϖ_zp + f σ_ϖ ε [mas]; returns (parallax, parallax_err = σ_ϖ).

    zero_point: ϖ_zp (default ``survey.parallax_zp``); inflation: f, the noise actually drawn
    relative to the reported σ_ϖ.
    """
    plx_true = 10.0 ** ((10.0 - np.asarray(mu_true, dtype=float)) / 5.0)
    err = parallax_errors(g_mag, survey)
    zp = survey.parallax_zp if zero_point is None else zero_point
    return plx_true + zp + inflation * err * rng.standard_normal(plx_true.shape), err


def observe_labels(rng: np.random.Generator, theta_true, survey: SurveyModel = GREEN2020_SURVEY):
    """Spectroscopic labels θ̂ ~ N(θ, C_θ) with per-star C_θ; returns (theta_hat, theta_cov).

    The three σ are log-normal around ``label_sigma`` (shared factor plus
    per-label scatter); Teff and logg errors are correlated by
    ``label_corr_teff_logg`` (as in spectroscopic pipelines).
    """
    theta_true = np.asarray(theta_true, dtype=float)
    n = theta_true.shape[0]
    s = survey.label_sigma_scatter
    common = rng.standard_normal((n, 1))
    own = rng.standard_normal((n, 3))
    sig = np.asarray(survey.label_sigma) * np.exp(s * (0.8 * common + 0.6 * own))
    corr = np.eye(3)
    corr[0, 1] = corr[1, 0] = survey.label_corr_teff_logg
    cov = sig[:, :, None] * corr[None] * sig[:, None, :]
    chol = np.linalg.cholesky(cov)
    theta_hat = theta_true + np.einsum("nij,nj->ni", chol, rng.standard_normal((n, 3)))
    return theta_hat, cov
