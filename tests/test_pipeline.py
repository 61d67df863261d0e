"""End to end: the shipped model, `dds-infer infer` (resume), `dds-infer demo`, prior draws for SBC."""

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from dds_infer.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "mock13-v1"


def test_shipped_model_loads_without_training_code():
    code = (
        "import sys\n"
        "for m in ('dds_infer.training', 'dds_infer.train_core', 'dds_infer.train_io', 'optax'):\n"
        "    sys.modules[m] = None  # importing any of them now raises\n"
        "import numpy as np\n"
        "from dds_infer import load_bundle\n"
        f"e = load_bundle({str(SHIPPED)!r})\n"
        "m = np.asarray(e.predict_apparent(np.array([[5700., 4.4, 0.]]), np.array([10.]), np.array([0.1])))\n"
        "assert m.shape == (1, 13) and np.all(np.isfinite(m)) and 14 < m[0, 0] < 15.5, m\n"
        "assert e.domain is not None and bool(e.in_domain(np.array([5700., 4.4, 0.])))\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    card = (SHIPPED / "README.md").read_text()
    assert "dds-infer train --catalog" in card and "dds-infer mock --n" in card and "synthetic" in card.lower()


@pytest.fixture(scope="module")
def small_mock(tmp_path_factory):
    from dds_infer import load_bundle
    from dds_infer.mock import MockConfig, make_mock, write_mock

    emu = load_bundle(SHIPPED)
    mock = make_mock(emu, MockConfig(n=6, seed=4, labels=False))
    path = write_mock(mock, tmp_path_factory.mktemp("mock") / "m.parquet")
    return mock, path


@pytest.mark.slow
def test_cli_infer_json_and_resume(small_mock, tmp_path, capsys):
    mock, path = small_mock
    out = tmp_path / "run"
    argv = ["infer", "--model", str(SHIPPED), "--catalog", str(path), "--out", str(out),
            "--num-warmup", "60", "--num-samples", "60", "--num-chains", "2", "--batch-size", "3",
            "--seed", "1", "--no-progress", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_stars"] == 6 and res["stars_per_s"] > 0
    assert 0.0 <= res["frac_rhat_lt_1_01"] <= 1.0 and res["median_ess"] > 0
    # the mock's errors include its survey's floor: declared through the Parquet file, not added again
    assert res["sigma_floor"] == 0.02 and res["parameterization"] == "whitened" and res["engine"] == "queue"
    assert res["catalog_err_floor"] == pytest.approx(list(mock.catalog.meta["mag_err_floor"]))
    assert res["combined"] is True and Path(res["out"]["posterior"]).is_file()  # small: combined by default
    assert res["flag_counts"]["any"] == res["n_flagged"] and set(res["flag_counts"]) >= {"r_hat", "divergent"}
    chunks = sorted((out / "chunks").glob("*.nc"))
    assert len(chunks) == 2
    import pandas as pd

    s = pd.read_parquet(res["out"]["summary"])
    assert list(s["star_id"]) == list(mock.catalog.star_ids())
    # every star's truth lies in a sane neighbourhood of its posterior
    t = mock.truth.set_index("id").loc[s["star_id"]]
    assert np.all(np.abs(s["mu_median"].to_numpy() - t["mu"].to_numpy()) < 1.5)
    # rerun: nothing recomputed (chunk files untouched), same summary
    mtimes = [c.stat().st_mtime_ns for c in chunks]
    assert main(argv) == 0
    capsys.readouterr()
    assert [c.stat().st_mtime_ns for c in chunks] == mtimes
    assert pd.read_parquet(res["out"]["summary"]).equals(s)
    assert main(argv[:-4] + ["--num-samples", "0", "--json"]) == 2  # bad value: clear error
    # the batch engine (lockstep; the default before the queue) through the CLI: same outputs, sane posteriors
    argv_q = [a if a != str(out) else str(tmp_path / "batch") for a in argv] + ["--engine", "batch"]
    assert main(argv_q) == 0
    rq = json.loads(capsys.readouterr().out)
    assert rq["engine"] == "batch" and rq["n_stars"] == 6
    sq = pd.read_parquet(rq["out"]["summary"])
    assert list(sq["star_id"]) == list(s["star_id"])
    assert np.all(np.abs(sq["mu_median"].to_numpy() - t["mu"].to_numpy()) < 1.5)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    # the NUTS stage runs with test_cli_infer_json_and_resume's settings and chunk size (3 stars, 60 + 60,
    # 2 chains): the two share one compiled queue program (the pair: 167 -> 137 s in one process)
    argv = ["demo", "--out", str(tmp_path / "demo"), "--n-stars", "40", "--nuts-stars", "6", "--num-warmup", "60",
            "--num-samples", "60", "--num-chains", "2", "--batch-size", "3", "--no-progress", "--json"]
    assert main(argv) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_stars"] == 40 and set(rep["accuracy"]) == {"teff", "logg", "feh", "mu", "E"}
    assert rep["devices"] == 2  # the suite's two CPU devices (conftest)
    assert rep["nuts"]["n_stars"] == 6 and set(rep["nuts"]["accuracy"]) == set(rep["accuracy"])
    assert 0.0 <= rep["nuts"]["frac_agree_with_grid"] <= 1.0
    for name in ("recovery.png", "recovery_nuts.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 10_000
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["n_stars"] == 40
    # distances recovered to better than a magnitude; the grid path's 68% intervals are not empty
    assert rep["accuracy"]["mu"]["sigma"] < 1.0 and rep["nuts"]["accuracy"]["mu"]["sigma"] < 1.0
    assert 0.3 < rep["coverage68"]["mu"] <= 1.0


def test_prior_draws_follow_the_hr_table():
    """Rejection sampling from the HR table: a region with 4x the density gets 4x the draws."""
    from dds_infer.priors import Prior
    from dds_infer.simulate import draw_from_prior

    table = np.zeros((2, 2, 2))
    table[1] = np.log(4.0)  # hotter half (Teff index 1) 4x denser at the grid node
    prior = Prior(log_hr=jnp.asarray(table), grid_lo=jnp.asarray([4000.0, 1.0, -2.5]),
                  grid_step=jnp.asarray([2000.0, 4.0, 3.5]), grid_hi=jnp.asarray([6000.0, 5.0, 1.0]),
                  edge_scale=jnp.ones(3), reddening_kind="halfnormal", E_scale=0.2)
    d = draw_from_prior(prior, 4000, seed=3)
    # density ∝ exp(linear interpolation in log): p(t) ∝ 4^t on t ∈ [0, 1] -> mean of t
    t = (d["teff"] - 4000.0) / 2000.0
    expect = 1 / np.log(4) * (4 * np.log(4) - 4 + 1) / 3  # E[t] for p ∝ 4^t
    assert abs(t.mean() - expect) < 0.02
    assert abs(np.mean(d["E"]) - 0.2 * np.sqrt(2 / np.pi)) < 0.01
    assert d["mu"].min() >= 4.0 and d["mu"].max() <= 19.0
