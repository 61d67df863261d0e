"""Dust-map output: (mu, E) images, HEALPix grouping, HDF5 round trip, the dustmap CLI."""

import json
import re

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import Galactic, SkyCoord
from astropy_healpix import HEALPix

from dds_infer.catalog import StarCatalog
from dds_infer.catalog_io import default_column_map, write_table
from dds_infer.cli import main
from dds_infer.dustmap_io import (ImageGrid, healpix_index, image_coverage, list_pixels, pdf_images,
                                  read_dustmap, read_pixel, write_dustmap, write_summary_table)
from dds_infer.passbands import GREEN2020
from dds_infer.posterior import Posterior

N, C, S = 20, 2, 100
NSIDE = 2


def _posterior(n=N, seed=0, ids=None):
    """Random draws around star-specific (mu, E); 2 chains with unequal weights; a few draws off-grid."""
    rng = np.random.default_rng(seed)
    loc = lambda lo, hi, sd: rng.uniform(lo, hi, n)[:, None, None] + sd * rng.normal(size=(n, C, S))  # noqa: E731
    s = {"teff": loc(4500, 6500, 80.0), "logg": loc(3.0, 4.6, 0.1), "feh": loc(-1, 0.2, 0.1),
         "mu": loc(6, 14, 0.3), "E": np.abs(loc(0.05, 1.0, 0.05))}
    s["mu"][0, 1, :30] = 25.0  # star 0: 30 draws of chain 1 beyond mu_max
    s["E"][1, 0, :10] = np.nan  # star 1: 10 NaN draws (outside)
    s = {k: v.astype(np.float32) for k, v in s.items()}
    s["distance_pc"] = 10 ** (s["mu"] / 5 + 1)
    s["A_G"] = 2.5 * s["E"]
    w = rng.uniform(0.2, 0.8, n)
    return Posterior(
        star_id=np.array(ids if ids is not None else [f"star{i:02d}" for i in range(n)]), samples=s,
        sample_stats={"diverging": rng.random((n, C, S)) < 0.01, "potential_energy": rng.normal(size=(n, C, S))},
        chain_stats={"init_valid": np.ones((n, C), bool), "step_size": rng.uniform(0.1, 0.3, (n, C))},
        chain_weights=np.column_stack([w, 1 - w]), n_modes=rng.integers(1, 3, n), mode_flag=np.zeros(n, int),
        in_domain_frac=rng.uniform(0.3, 1, n), attrs={"config_hash": "abc", "n_chunks": 1})


def _sky(n=N, seed=0):
    """Positions spread over 4 of the 12 base pixels so nside 2 has several groups."""
    rng = np.random.default_rng(seed + 1)
    l = rng.choice([10.0, 100.0, 200.0, 300.0], n) + rng.uniform(-5, 5, n)
    return l % 360, rng.uniform(-20, 20, n)


def test_round_trip_every_array(tmp_path):
    post, (l, b) = _posterior(), _sky()
    grid = ImageGrid(mu_step=0.25, E_step=0.02, smooth_mu=1.5, smooth_E=0.5)
    path = write_dustmap(tmp_path / "map.h5", post, l, b, nside=NSIDE, grid=grid, attrs={"survey": "toy"})
    assert not (tmp_path / "map.h5.tmp").exists()
    # expected values, built independently of the writer
    mu, E = post.samples["mu"].reshape(N, -1), post.samples["E"].reshape(N, -1)
    w = np.repeat(post.chain_weights, S, axis=1)
    pdf = pdf_images(mu, E, w, grid)
    cov = image_coverage(mu, E, w, grid)
    pix = HEALPix(nside=NSIDE, order="nested", frame=Galactic()).skycoord_to_healpix(
        SkyCoord(l=l * u.deg, b=b * u.deg, frame="galactic"))
    summ = post.summary()
    attrs, pixels = read_dustmap(path)
    assert len(np.unique(pix)) >= 3
    assert sorted(pixels) == sorted(np.unique(pix).tolist()) == list_pixels(path).tolist()
    assert attrs["format"] == "dds_infer.dustmap" and attrs["format_version"] == 2 and attrs["nest"]
    assert attrs["nside"] == NSIDE and attrs["mu_step"] == 0.25 and attrs["smooth_E"] == 0.5
    assert attrs["survey"] == "toy" and json.loads(attrs["posterior_attrs"]) == post.attrs
    seen = []
    for p, d in pixels.items():
        rows = np.flatnonzero(pix == p)  # catalogue order within the pixel
        seen += rows.tolist()
        np.testing.assert_array_equal(d["star_id"], post.star_id[rows])
        np.testing.assert_array_equal(d["l"], l[rows])
        np.testing.assert_array_equal(d["b"], b[rows])
        np.testing.assert_array_equal(d["pdf"], pdf[rows])
        np.testing.assert_array_equal(d["coverage"], cov[rows])
        np.testing.assert_array_equal(d["mu_centers"], grid.mu_centers)
        np.testing.assert_array_equal(d["E_centers"], grid.E_centers)
        smp = np.stack([post.samples[k].reshape(N, -1)[rows] for k in ("teff", "logg", "feh", "mu", "E")], -1)
        np.testing.assert_array_equal(d["samples"], smp)
        np.testing.assert_array_equal(d["sample_weights"], w[rows] / w[rows].sum(axis=1, keepdims=True))
        for col in ("flag", "r_hat_max", "ess_bulk_min", "n_divergent", "n_modes", "in_domain_frac",
                    "teff_r_hat", "E_ess_bulk", "mu_median", "mu_q16", "mu_q84", "E_median", "E_q84"):
            np.testing.assert_array_equal(d[col], summ[col].to_numpy()[rows])
        assert "teff_median" not in d and d["nside"] == NSIDE and d["pixel"] == p
    assert sorted(seen) == list(range(N))
    # coverage: star 0 lost 30 draws of chain 1, star 1 lost 10 of chain 0
    np.testing.assert_allclose(cov[:2], [1 - 0.3 * post.chain_weights[0, 1], 1 - 0.1 * post.chain_weights[1, 0]])
    np.testing.assert_allclose(pdf.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    # thinning: every 4th pooled draw, deterministic
    p0 = int(pix[0])
    thin = read_pixel(write_dustmap(tmp_path / "thin.h5", post, l, b, nside=NSIDE, grid=grid, n_samples=50), p0)
    rows = np.flatnonzero(pix == p0)
    np.testing.assert_array_equal(thin["samples"][..., 3], mu[rows][:, ::4])
    np.testing.assert_allclose(thin["sample_weights"].sum(axis=1), 1.0)
    # a pixel outside the nside's range, and an empty one, are told apart
    with pytest.raises(KeyError, match=rf"pixel {12 * NSIDE**2} \(nside {NSIDE}, nested\) is outside 0..{12 * NSIDE**2 - 1}"):
        read_pixel(tmp_path / "thin.h5", 12 * NSIDE**2)
    empty = sorted(set(range(12 * NSIDE**2)) - set(pix.tolist()))[0]
    with pytest.raises(KeyError, match=f"pixel {empty} .* has no stars in this file; .* include "
                       + re.escape(str([int(p) for p in np.unique(pix)[:5]]))):
        read_pixel(tmp_path / "thin.h5", empty)


def test_version_1_files_still_read_and_future_versions_are_refused(tmp_path):
    """Format version 1 kept each diagnostic as its own dataset; version 2 keeps them in one
    table per pixel. A version-1 file (made here from a version-2 one) reads back the same."""
    import h5py

    post, (l, b) = _posterior(n=8), _sky(n=8)
    path = write_dustmap(tmp_path / "v2.h5", post, l, b, nside=NSIDE, grid=ImageGrid(E_step=0.05))
    attrs2, pixels2 = read_dustmap(path)
    v1 = tmp_path / "v1.h5"
    v1.write_bytes(path.read_bytes())
    with h5py.File(v1, "r+") as f:
        f.attrs["format_version"] = 1
        for name in [k for k in f if k.startswith("pixel_") and k != "pixel_index"]:
            table = f[name]["diagnostics"][()]
            del f[name]["diagnostics"]
            for c in table.dtype.names:
                f[name][c] = table[c]
    attrs1, pixels1 = read_dustmap(v1)
    assert attrs1["format_version"] == 1 and sorted(pixels1) == sorted(pixels2)
    for p, d in pixels2.items():
        assert set(pixels1[p]) == set(d) and {"flag", "r_hat_max", "mu_q84"} <= set(d)
        for k, v in d.items():
            np.testing.assert_array_equal(pixels1[p][k], v, err_msg=k)
    with h5py.File(v1, "r+") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(ValueError, match="format_version 3.*upgrade"):
        read_pixel(v1, next(iter(pixels2)))


def test_images_equal_the_smoothed_full_grid():
    """pdf_images builds and smooths each star's histogram inside the box its draws occupy; that
    equals smoothing the whole grid (mode="constant"), also for stars at the grid's edges, with
    draws outside it, bimodal, or with one axis unsmoothed."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(5)
    n, s = 12, 400
    mu = rng.normal(rng.uniform(4.5, 18.5, (n, 1)), 0.3, (n, s))
    E = np.abs(rng.normal(rng.uniform(0.0, 1.0, (n, 1)), 0.05, (n, s)))
    mu[0] = rng.normal(4.05, 0.2, s)  # across the μ edge: some draws outside
    E[1] = rng.uniform(0.0, 0.02, s)  # at E = 0
    mu[2, : s // 2] += 6.0  # two modes far apart
    E[3, :100] = np.nan  # NaN draws: outside
    w = rng.uniform(0.5, 1.5, (n, s))
    for grid in (ImageGrid(), ImageGrid(smooth_mu=0.0, smooth_E=2.5), ImageGrid(smooth_mu=0.0, smooth_E=0.0),
                 ImageGrid(mu_step=0.25, E_step=0.02, smooth_mu=1.5, smooth_E=0.5)):
        n_mu, n_E = grid.shape
        full = np.zeros((n, n_mu, n_E))
        for k in range(n):
            ok = np.isfinite(mu[k]) & np.isfinite(E[k])
            h, _, _ = np.histogram2d(mu[k][ok], E[k][ok], bins=(grid.mu_edges, grid.E_edges), weights=w[k][ok])
            full[k] = gaussian_filter(h, sigma=(grid.smooth_mu, grid.smooth_E), mode="constant")
            full[k] /= full[k].sum()
        got = pdf_images(mu, E, w, grid)
        np.testing.assert_allclose(got, full.astype(np.float32), rtol=1e-5, atol=1e-9)
        assert got.dtype == np.float32 and got.shape == (n, n_mu, n_E)


def test_future_summary_column_is_carried(tmp_path, monkeypatch):
    post, (l, b) = _posterior(n=4), _sky(n=4)
    orig = Posterior.summary
    monkeypatch.setattr(Posterior, "summary", lambda self, **kw: orig(self, **kw).assign(weight_ess=[1., 2, 3, 4]))
    _, pixels = read_dustmap(write_dustmap(tmp_path / "m.h5", post, l, b, nside=1, grid=ImageGrid(E_step=0.05)))
    got = {s: v for d in pixels.values() for s, v in zip(d["star_id"], d["weight_ess"])}
    assert got == {f"star{i:02d}": i + 1.0 for i in range(4)}


def test_pdf_images_peak_mass_weights_and_coverage():
    grid = ImageGrid()
    assert grid.shape == (120, 500) and grid.mu_edges[-1] == 19.0 and np.isclose(grid.E_edges[-1], 5.0)
    # all draws at one point: peak in pixel (floor((10.3 - 4) / 0.125), floor(0.257 / 0.01)) = (50, 25)
    img = pdf_images(np.full((1, 40), 10.3), np.full((1, 40), 0.257))
    assert img.dtype == np.float32 and img.shape == (1, 120, 500)
    assert np.unravel_index(np.argmax(img[0]), grid.shape) == (50, 25)
    assert np.isclose(img.sum(), 1.0, rtol=1e-5)
    # two clusters: 30 draws with total weight 0.8, 70 draws with total weight 0.2
    mu = np.r_[np.full(30, 8.06), np.full(70, 14.06)][None]
    E = np.r_[np.full(30, 0.505), np.full(70, 1.505)][None]
    w = np.r_[np.full(30, 0.8 / 30), np.full(70, 0.2 / 70)][None]
    sharp = pdf_images(mu, E, w, ImageGrid(smooth_mu=0, smooth_E=0))[0]
    assert np.isclose(sharp[32, 50], 0.8, atol=1e-6) and np.isclose(sharp[80, 150], 0.2, atol=1e-6)
    smooth = pdf_images(mu, E, w, ImageGrid(smooth_mu=2, smooth_E=3))[0]
    assert smooth[32, 50] < 0.1  # spread out, mass kept
    np.testing.assert_allclose([smooth[22:43, 35:66].sum(), smooth[70:91, 135:166].sum()], [0.8, 0.2], atol=2e-3)
    assert np.allclose(pdf_images(mu, E, None, ImageGrid(smooth_mu=0, smooth_E=0))[0][[32, 80], [50, 150]],
                       [0.3, 0.7])  # equal weights: counts
    # draws outside the grid are counted in the coverage, the image is renormalised on the grid
    mu2 = np.r_[np.full(6, 10.0), [3.0, 19.0], np.full(2, np.nan)][None]
    E2 = np.r_[np.full(4, 0.5), [-0.1, 5.0], np.full(4, 0.5)][None]
    np.testing.assert_allclose(image_coverage(mu2, E2), [0.4])
    np.testing.assert_allclose(image_coverage(mu2, E2, np.r_[np.full(4, 3.0), np.ones(6)][None]), [12 / 18])
    assert np.isclose(pdf_images(mu2, E2).sum(), 1.0, rtol=1e-5)
    assert pdf_images(np.full((1, 3), 30.0), np.zeros((1, 3))).sum() == 0  # nothing inside: all zero
    with pytest.raises(ValueError, match="weights shape"):
        pdf_images(mu, E, w[:, :10])


def test_healpix_index_matches_astropy_healpix_and_is_nested():
    rng = np.random.default_rng(3)
    l, b = rng.uniform(0, 360, 500), np.degrees(np.arcsin(rng.uniform(-1, 1, 500)))
    for nside in (1, 8, 64):
        ref = HEALPix(nside=nside, order="nested", frame=Galactic()).skycoord_to_healpix(
            SkyCoord(l=l * u.deg, b=b * u.deg, frame="galactic"))
        np.testing.assert_array_equal(healpix_index(l, b, nside), ref)
    p1 = healpix_index(l, b, 1)
    assert p1.dtype == np.int64 and set(p1.tolist()) == set(range(12))
    np.testing.assert_array_equal(healpix_index(l, b, 2) // 4, p1)  # children of p are 4p..4p+3
    np.testing.assert_array_equal(healpix_index(l, b, 64) // 4, healpix_index(l, b, 32))


def test_bad_input_errors(tmp_path):
    post, (l, b) = _posterior(n=5), _sky(n=5)
    l[3] = np.nan
    with pytest.raises(ValueError, match=r"rows \[3\].*star03"):
        write_dustmap(tmp_path / "x.h5", post, l, b, nside=2)
    with pytest.raises(ValueError, match="rows"):
        write_summary_table(tmp_path / "x.parquet", post, l, b)
    l[3] = 20.0
    with pytest.raises(ValueError, match="power of two"):
        write_dustmap(tmp_path / "x.h5", post, l, b, nside=3)
    with pytest.raises(ValueError, match="power of two"):
        healpix_index(l, b, 0)
    with pytest.raises(ValueError, match="5 stars"):
        write_dustmap(tmp_path / "x.h5", post, l[:4], b[:4])
    assert not list(tmp_path.iterdir())
    for kw, msg in (({"mu_step": 0}, "mu_step"), ({"E_max": -1.0}, "E_max"), ({"E_step": 0.03}, "multiple"),
                    ({"smooth_mu": -1}, "smooth_mu")):
        with pytest.raises(ValueError, match=msg):
            ImageGrid(**kw)


def _catalog(ids, l, b, path, radec=False):
    n = len(ids)
    mag = np.full((n, len(GREEN2020.names)), 15.0)
    mag[:, -2:] += (2.7, 3.3)  # unWISE in AB, as the model takes it (in Vega it would be refused)
    cat = StarCatalog.from_arrays(mag, np.full(mag.shape, 0.02), np.full(n, 1.0), np.full(n, 0.1), GREEN2020,
                                  ids=np.asarray(ids), l=l, b=b)
    t = write_table(cat, path)
    if not radec:
        return t, None
    from astropy.table import Table
    tab = Table.read(path)
    c = SkyCoord(l=tab["l"], b=tab["b"], frame="galactic").icrs
    tab["ra"], tab["dec"] = c.ra.deg, c.dec.deg
    tab.remove_columns(["l", "b"])
    tab.write(path, overwrite=True)
    cmap = default_column_map(GREEN2020, tab.colnames)
    cmap.update(ra="ra", dec="dec")
    (cmap_path := path.with_suffix(".json")).write_text(json.dumps(cmap))
    return path, cmap_path


def test_cli_end_to_end(tmp_path, capsys):
    post, (l, b) = _posterior(n=6), _sky(n=6)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    post.save(run_dir / "posterior.nc")
    # catalogue: reversed order plus one extra star
    ids = ["extra"] + [f"star{i:02d}" for i in range(6)][::-1]
    cat_path, _ = _catalog(ids, np.r_[50.0, l[::-1]], np.r_[0.0, b[::-1]], tmp_path / "cat.parquet")
    out = tmp_path / "map.h5"
    rc = main(["dustmap", "--posterior", str(run_dir), "--catalog", str(cat_path), "--out", str(out),
               "--nside", "2", "--E-step", "0.05", "--smooth-mu", "0", "--n-samples", "20",
               "--summary", str(tmp_path / "s.parquet"), "--json"])
    assert rc == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)  # the progress bar goes to stderr, the JSON alone to stdout
    assert "dust-map images" in cap.err and "6/6" in cap.err
    assert set(rep) == {"n_stars", "n_pixels", "nside", "out", "seconds", "mean_coverage", "n_posteriors",
                        "config_hashes"}
    assert rep["n_posteriors"] == 1 and rep["config_hashes"] == [str(post.attrs.get("config_hash"))]
    pix = healpix_index(l, b, 2)
    assert rep["n_stars"] == 6 and rep["nside"] == 2 and rep["n_pixels"] == len(np.unique(pix))
    attrs, pixels = read_dustmap(out)
    assert attrs["E_step"] == 0.05 and attrs["smooth_mu"] == 0.0
    got = {s: (lv, bv, c) for d in pixels.values() for s, lv, bv, c in zip(d["star_id"], d["l"], d["b"], d["coverage"])}
    for i in range(6):
        np.testing.assert_allclose(got[f"star{i:02d}"][:2], (l[i], b[i]))
    assert np.isclose(rep["mean_coverage"], np.mean([v[2] for v in got.values()]))
    assert next(iter(pixels.values()))["samples"].shape[1:] == (20, 5)
    summ = pd.read_parquet(tmp_path / "s.parquet")
    np.testing.assert_array_equal(summ["healpix"], pix)
    # a posterior file directly, positions given as ra/dec through --columns
    rd_path, cmap = _catalog(ids, np.r_[50.0, l[::-1]], np.r_[0.0, b[::-1]], tmp_path / "radec.ecsv", radec=True)
    rc = main(["dustmap", "--posterior", str(run_dir / "posterior.nc"), "--catalog", str(rd_path),
               "--columns", str(cmap), "--out", str(tmp_path / "m2.h5"), "--nside", "2", "--E-step", "0.05",
               "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0 and f"stars: 6 in {len(np.unique(pix))} pixels (nside 2)" in cap.out
    assert "dust-map images" not in cap.err
    assert list_pixels(tmp_path / "m2.h5").tolist() == np.unique(pix).tolist()
    # ids missing from the catalogue, catalogue without positions: one clear error line
    cat2, _ = _catalog(ids[:4], np.r_[50.0, l[::-1]][:4], np.r_[0.0, b[::-1]][:4], tmp_path / "c2.parquet")
    assert main(["dustmap", "--posterior", str(run_dir), "--catalog", str(cat2), "--out", str(out)]) == 2
    assert "star00" in capsys.readouterr().err
    cat3, _ = _catalog(ids, None, None, tmp_path / "c3.parquet")
    assert main(["dustmap", "--posterior", str(run_dir), "--catalog", str(cat3), "--out", str(out)]) == 2
    assert "no sky positions" in capsys.readouterr().err
