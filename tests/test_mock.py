"""Mock catalogues: determinism, truth consistency, and realism against the real test stars."""

import numpy as np
import pytest

from dds_infer.catalog_io import read_green2020_h5
from dds_infer.emulator import init_emulator
from dds_infer.mock import MockConfig, make_mock, read_mock, sample_theta_from_domain, write_mock
from dds_infer.survey import GREEN2020_SURVEY, photometric_errors


@pytest.fixture(scope="module")
def published(anchor_dir):
    from dds_infer.keras_import import import_keras_model

    return import_keras_model(anchor_dir / "green2020_nn_model.h5",
                              anchor_dir / "green2020_theta_normalization.json",
                              density_path=anchor_dir / "green2020_input_density.h5")


@pytest.fixture(scope="module")
def mock_pub(published):
    return make_mock(published, MockConfig(n=3000, seed=3))


def test_report_accounts_for_every_candidate(mock_pub):
    r = mock_pub.report
    assert r["n_stars"] == len(mock_pub) == 3000
    assert r["n_drawn"] == r["n_stars"] + r["n_rejected_selection"] + r["n_rejected_theta"] + r["n_surplus"]
    miss = np.isnan(mock_pub.catalog.mag).sum(axis=0)
    assert list(miss) == [r["n_missing_per_band"][b] for b in mock_pub.catalog.bands.names]


def test_same_seed_same_catalogue_and_truth(published):
    a = make_mock(published, MockConfig(n=200, seed=11))
    b = make_mock(published, MockConfig(n=200, seed=11))
    c = make_mock(published, MockConfig(n=200, seed=12))
    np.testing.assert_array_equal(a.catalog.mag, b.catalog.mag)
    np.testing.assert_array_equal(a.truth["E"], b.truth["E"])
    assert not np.allclose(np.nan_to_num(a.catalog.mag), np.nan_to_num(c.catalog.mag))


def test_truth_is_consistent_with_observations(mock_pub, published):
    t, cat = mock_pub.truth, mock_pub.catalog
    theta = t[["teff", "logg", "feh"]].to_numpy()
    m_true = np.asarray(published.predict_apparent(theta, t["mu"].to_numpy(), t["E"].to_numpy()))
    cols = [f"mag_{b}" for b in cat.bands.names]
    np.testing.assert_allclose(t[cols].to_numpy(), m_true, atol=1e-4)
    z = (cat.mag - m_true) / cat.mag_err
    z = z[np.isfinite(z)]
    assert abs(np.mean(z)) < 0.05 and 0.95 < np.std(z) < 1.05
    # the survey's calibration floor is part of mag_err (and of the noise): declared for inference
    np.testing.assert_array_equal(cat.meta["mag_err_floor"], [nz.floor for nz in GREEN2020_SURVEY.noise])
    assert np.all(np.nanmin(cat.mag_err, axis=0) >= cat.meta["mag_err_floor"] - 1e-12)
    # parallax: noise unbiased around truth + DR2 zero-point
    plx_true = 10 ** ((10 - t["mu"].to_numpy()) / 5)
    w = cat.parallax_err ** -2.0
    offset = np.sum(w * (cat.parallax - plx_true)) / np.sum(w)
    assert abs(offset - GREEN2020_SURVEY.parallax_zp) < 4.0 / np.sqrt(np.sum(w))
    zp = (cat.parallax - plx_true - GREEN2020_SURVEY.parallax_zp) / cat.parallax_err
    assert abs(np.mean(zp)) < 0.1 and 0.95 < np.std(zp) < 1.05
    # labels: scatter around truth consistent with their covariances
    zt = (cat.theta - theta) / np.sqrt(np.diagonal(cat.theta_cov, axis1=1, axis2=2))
    assert np.all(np.abs(np.std(zt, axis=0) - 1) < 0.06)
    # the prior reddening is a usable prior for the true E
    ze = (t["E"].to_numpy() - cat.E_prior) / cat.E_prior_err
    assert 0.5 < np.std(ze) < 1.5
    # selection window applied to the observed G
    assert np.nanmin(cat.mag[:, 0]) >= 10.0 and np.nanmax(cat.mag[:, 0]) <= 17.5


# Realism: stated ranges, measured on the real held-out stars in the test itself.
MISSING_FRAC_TOL = 0.12  # per band, |mock - real| missing fraction
ERR_RATIO_RANGE = (0.75, 1.35)  # mock/real median error in populated 1-mag bins
PLX_SNR_MEDIAN_RANGE = (0.4, 1.3)  # mock/real median parallax S/N (real 16.2)
PLX_ERR_MEDIAN_RANGE = (0.7, 1.3)  # mock/real median σ_ϖ (real 0.041 mas)


def test_mock_realism_against_real_stars(mock_pub, anchor_dir):
    real = read_green2020_h5(anchor_dir / "green2020_test_data_small.h5")
    mock = mock_pub.catalog
    miss_r, miss_m = np.isnan(real.mag).mean(0), np.isnan(mock.mag).mean(0)
    bad = {b: (round(r, 3), round(m, 3)) for b, r, m in zip(real.bands.names, miss_r, miss_m)
           if abs(r - m) > MISSING_FRAC_TOL}
    assert not bad, f"missing fractions (real, mock) off by > {MISSING_FRAC_TOL}: {bad}"
    for j, band in enumerate(real.bands.names):
        ok_r, ok_m = np.isfinite(real.mag[:, j]), np.isfinite(mock.mag[:, j])
        for lo in np.arange(8.0, 20.0):
            in_r = ok_r & (real.mag[:, j] >= lo) & (real.mag[:, j] < lo + 1)
            in_m = ok_m & (mock.mag[:, j] >= lo) & (mock.mag[:, j] < lo + 1)
            if in_r.sum() < 100 or in_m.sum() < 50:
                continue
            ratio = np.median(mock.mag_err[in_m, j]) / np.median(real.mag_err[in_r, j])
            assert ERR_RATIO_RANGE[0] < ratio < ERR_RATIO_RANGE[1], (band, lo, ratio)
    snr_ratio = np.nanmedian(mock.parallax / mock.parallax_err) / np.nanmedian(real.parallax / real.parallax_err)
    assert PLX_SNR_MEDIAN_RANGE[0] < snr_ratio < PLX_SNR_MEDIAN_RANGE[1], snr_ratio
    err_ratio = np.nanmedian(mock.parallax_err) / np.nanmedian(real.parallax_err)
    assert PLX_ERR_MEDIAN_RANGE[0] < err_ratio < PLX_ERR_MEDIAN_RANGE[1], err_ratio


def test_error_model_rises_with_magnitude_above_floor():
    m = np.tile(np.linspace(8, 22, 30)[:, None], (1, 13))
    e = photometric_errors(m)
    assert np.all(np.diff(e, axis=0) >= 0)
    floors = np.array([n.floor for n in GREEN2020_SURVEY.noise])
    assert np.all(e >= floors - 1e-12)


def test_domain_population_stays_in_valid_domain(published):
    rng = np.random.default_rng(0)
    feh = rng.normal(-0.3, 0.3, 4000)
    theta, ok = sample_theta_from_domain(rng, published.domain, feh, threshold=0.01)
    assert ok.mean() > 0.9
    dens = np.asarray(published.domain.density_at(theta[ok]))
    # cell-centre draws jittered within a cell: linear interpolation can dip below the
    # threshold only near the edge; the bulk is well inside
    assert np.mean(dens > 0.005) > 0.97
    np.testing.assert_array_equal(theta[:, 2], feh)


def test_domain_population_follows_the_prior_at_the_feh_edges(published):
    """Stars are kept with the θ prior's slice mass: all of them inside the training [Fe/H]
    range, a matching fraction where the prior falls off (the metal-poor edge)."""
    from dds_infer.hr_table import hr_density_table, hr_slice_mass

    dom = published.domain
    w = hr_slice_mass(dom, threshold=0.01)
    table = hr_density_table(dom, threshold=0.01)
    cell = float((dom.teff[1] - dom.teff[0]) * (dom.logg[1] - dom.logg[0]))
    mass = np.exp(table).sum(axis=(0, 1)) * cell  # cell sums: within ~25% of the bilinear integral
    np.testing.assert_allclose(mass / np.median(mass[w == 1.0]), w, rtol=0.35, atol=3e-3)
    assert w.max() == 1.0 and w.min() < 0.5  # the published set thins out at its [Fe/H] edges
    rng = np.random.default_rng(3)
    fehax = np.asarray(dom.feh)
    for f in (fehax[int(np.argmax(w))], fehax[int(np.argmin(np.abs(w - 0.3)))]):
        _, ok = sample_theta_from_domain(rng, dom, np.full(20000, f), threshold=0.01)
        _, ok0 = sample_theta_from_domain(rng, dom, np.full(20000, f), threshold=0.01, edge_weight=False)
        expect = ok0.mean() * np.interp(f, fehax, w)
        assert abs(ok.mean() - expect) < 0.02, (f, ok.mean(), expect)


def test_write_read_round_trip(tmp_path):
    emu = init_emulator(__import__("jax").random.PRNGKey(0))
    from dds_infer.domain import density_from_samples

    rng = np.random.default_rng(1)
    th = np.column_stack([rng.normal(5500, 600, 5000), rng.normal(4.2, 0.4, 5000), rng.normal(-0.2, 0.3, 5000)])
    emu = emu.with_domain(density_from_samples(th))
    from dataclasses import replace

    cfg = MockConfig(n=100, seed=2, survey=replace(GREEN2020_SURVEY, selection=(-50.0, 80.0)))
    mock = make_mock(emu, cfg)
    path = write_mock(mock, tmp_path / "m.parquet")
    back = read_mock(path)
    np.testing.assert_array_equal(back.catalog.mag, mock.catalog.mag)
    np.testing.assert_array_equal(back.catalog.meta["mag_err_floor"], mock.catalog.meta["mag_err_floor"])
    np.testing.assert_allclose(back.truth["mu"], mock.truth["mu"])
    assert list(back.truth["id"]) == list(mock.truth["id"])
