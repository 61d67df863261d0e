"""Truth model for mocks: isochrone population and synthetic photometry."""

import numpy as np
import pytest

pytest.importorskip("lachesis_grids")
pytest.importorskip("pyphot")
pytest.importorskip("dust_extinction")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from dds_infer.passbands import GREEN2020  # noqa: E402
from dds_infer.truth import build_truth_model, sample_population  # noqa: E402

IDX = {n: GREEN2020.index(n) for n in ("gaia_g", "gaia_bp", "gaia_rp", "ps1_g", "2mass_ks")}


@pytest.fixture(scope="module")
def truth():
    return build_truth_model()


def test_population_bounds_and_determinism():
    rng = np.random.default_rng(3)
    feh = rng.uniform(-2.0, 0.4, 3000)
    comp = rng.integers(0, 3, 3000)
    a = sample_population(7, feh, comp)
    b = sample_population(7, feh, comp)
    c = sample_population(8, feh, comp)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["teff"], c["teff"])
    np.testing.assert_array_equal(a["feh"], feh)
    assert np.all((a["teff"] >= 3500) & (a["teff"] <= 8500))
    assert np.all((a["logg"] > -1) & (a["logg"] < 5.8))
    assert np.all(np.isin(a["phase"], [0, 2, 3]))
    for k, (lo, hi) in {0: (0.1, 10), 1: (9, 12), 2: (11, 13)}.items():
        ages = a["age_gyr"][comp == k]
        assert ages.min() >= lo and ages.max() <= hi
    # the isochrones' own luminosity agrees with Stefan-Boltzmann from (M, Teff, logg)
    logl = np.log10(a["mass"]) + 4 * np.log10(a["teff"] / 5772) - (a["logg"] - 4.438)
    assert np.median(np.abs(logl - a["logL"])) < 0.02


def test_population_imf_dwarfs_and_old_giants():
    thin = sample_population(0, np.zeros(5000), np.zeros(5000, int))
    dwarfs = np.mean((thin["logg"] > 4.0) & (thin["phase"] == 0))
    assert dwarfs > 0.8
    halo = sample_population(1, np.full(5000, -1.5), np.full(5000, 2))
    giants = halo["logg"] < 3.5
    assert 0.001 < giants.mean() < 0.1
    assert np.all(halo["teff"][halo["phase"] == 0] < 7000)  # old: turn-off well below 7000 K
    assert np.all(halo["mass"] < 1.0)


def test_population_rejects_bad_component():
    with pytest.raises(ValueError, match="component"):
        sample_population(0, np.zeros(3), np.array([0, 1, 5]))


def test_zero_points_with_the_real_solar_spectrum():
    """Passbands + systems checked on pyphot's Kurucz solar spectrum (not Planck)."""
    import pyphot

    from dds_infer import synphot

    sun = pyphot.Sun(flavor="theoretical")
    lam = sun.wavelength.to("AA").value
    flam = sun.flux.to("flam").value * (1.495978707e13 / (10 * 3.0856775814913673e18)) ** 2
    zp = synphot.zero_point_flux()
    mags = np.array([-2.5 * np.log10(synphot.band_mean_flux(lam, flam, b) / z)
                     for b, z in zip(synphot.load_passbands(), zp)])
    # Casagrande & VandenBerg (2018): M_G = 4.67, M_BP = 5.03, M_RP = 4.18, M_Ks = 3.27 (Vega)
    assert abs(mags[IDX["gaia_g"]] - 4.67) < 0.05
    assert abs(mags[IDX["gaia_bp"]] - 5.03) < 0.06
    assert abs(mags[IDX["gaia_rp"]] - 4.18) < 0.06
    assert abs(mags[IDX["2mass_ks"]] - 3.27) < 0.06


def test_sun_planck_absolute_mags(truth):
    m = np.asarray(truth.absolute_mags(jnp.array([5772.0, 4.438, 0.0])))
    # Planck SED at 5772 K: optical within 0.1 mag; Ks is ~0.1 mag too faint (no H- opacity minimum)
    assert abs(m[IDX["gaia_g"]] - 4.67) < 0.15
    assert abs(m[IDX["2mass_ks"]] - 3.27) < 0.2


def test_reddening_vector_shape_with_teff(truth):
    r5 = np.asarray(truth.reddening_vector(jnp.array([5000.0, 4.5, 0.0])))
    by_wavelength = ("ps1_g", "gaia_bp", "ps1_r", "gaia_g", "ps1_i", "gaia_rp", "ps1_z", "ps1_y",
                     "2mass_j", "2mass_h", "2mass_ks", "unwise_w1", "unwise_w2")
    order = [GREEN2020.index(b) for b in by_wavelength]
    assert np.all(np.diff(r5[order]) < 0)
    r7 = np.asarray(truth.reddening_vector(jnp.array([7000.0, 4.0, 0.0])))
    r4 = np.asarray(truth.reddening_vector(jnp.array([4000.0, 4.5, 0.0])))
    assert r7[IDX["gaia_bp"]] > r4[IDX["gaia_bp"]] + 0.1
    assert r7[IDX["ps1_g"]] > r4[IDX["ps1_g"]] + 0.03
    assert r7[IDX["gaia_g"]] > r4[IDX["gaia_g"]] + 0.2  # broad G band: strongest Teff dependence


def test_predict_apparent_is_eq2(truth):
    theta = jnp.array([[5000.0, 4.5, 0.0], [4500.0, 2.5, -1.0], [6500.0, 4.0, -0.3]])
    mu, e = jnp.array([9.0, 12.0, 7.5]), jnp.array([0.0, 0.3, 1.2])
    m = truth.predict_apparent(theta, mu, e)
    expect = truth.absolute_mags(theta) + mu[:, None] + e[:, None] * truth.reddening_vector(theta)
    np.testing.assert_allclose(m, expect, rtol=0, atol=1e-5)
    assert m.shape == (3, truth.n_bands) and truth.n_bands == 13 and truth.bands is GREEN2020


def _second_derivative_along_line(truth, n_steps):
    s = np.linspace(0, 1, n_steps + 1)
    theta = jnp.asarray(np.stack([3600 + 4500 * s, 5.0 - 3.5 * s, -1.5 + 1.8 * s], -1), jnp.float32)
    m = np.asarray(jax.jit(truth.absolute_mags)(theta), float)
    assert np.all(np.isfinite(m))
    return np.diff(m, 2, axis=0) * n_steps ** 2  # d²M/ds² per band


def test_absolute_mags_smooth_along_theta_line(truth):
    """C² check: the finite-difference M'' stays bounded as the step shrinks.

    A kink (e.g. linear interpolation of a table) makes |ΔM|/h² grow like 1/h:
    ×4 when the step is 4× smaller; a smooth function's estimate converges.
    """
    coarse = np.abs(_second_derivative_along_line(truth, 200)).max()
    fine = np.abs(_second_derivative_along_line(truth, 800)).max()
    assert fine < 1.6 * coarse
    assert coarse < 500.0  # mag per unit s² along a line spanning 4500 K and 3.5 dex in logg
    # and giants are brighter than dwarfs at the same Teff, by roughly the logg difference
    g = np.asarray(truth.absolute_mags(jnp.array([[4800.0, 2.5, 0.0], [4800.0, 4.6, 0.0]])))
    assert 3.5 < g[1, 0] - g[0, 0] < 6.5


def test_log_mass_is_the_isochrone_mass_scale(truth):
    theta = jnp.array([[5772.0, 4.44, 0.0], [3800.0, 4.75, 0.0], [7000.0, 4.1, 0.0], [4700.0, 2.4, -0.5]])
    mass = 10 ** np.asarray(truth.log_mass(theta))
    assert 0.85 < mass[0] < 1.15  # the Sun
    assert mass[1] < 0.7  # an M0 dwarf
    assert mass[2] > 1.2  # an F dwarf
    assert 0.8 < mass[3] < 3.0  # a red-clump-like giant


@pytest.mark.anchors
def test_realism_against_the_published_network(truth, anchor_dir):
    """Over the real test stars' θ, the truth is near the paper's learned M(θ) and R(θ)."""
    import h5py

    from dds_infer.keras_import import import_keras_model
    from dds_infer.truth import compare_to_emulator

    emu = import_keras_model(anchor_dir / "green2020_nn_model.h5",
                             anchor_dir / "green2020_theta_normalization.json")
    with h5py.File(anchor_dir / "green2020_test_data_small.h5", "r") as f:
        theta = f["data"]["atm_param"][:2000]
    c = compare_to_emulator(truth, emu, theta)
    # Planck SED + isochrone mass: every band within 0.35 mag of the data-driven model
    assert np.all(np.abs(c["median_dM"]) < 0.35), c["median_dM"]
    # optical R agrees to 10% (E units differ: A_V/3.1 vs Bayestar19); NIR differs (curve)
    optical = [GREEN2020.index(b) for b in ("gaia_g", "gaia_bp", "gaia_rp", "ps1_g", "ps1_r", "ps1_i", "ps1_z")]
    assert np.all(np.abs(np.array(c["R_ratio"])[optical] - 1) < 0.1), c["R_ratio"]
