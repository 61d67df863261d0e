"""bench/infer_bench.py at toy size: the engine keys of issue 5's acceptance 3 are there and sane
for the default engine (the queue), with the batch engine beside it in the same run. (The
per-star baseline, ``--baseline-stars``, recompiles NumPyro's loop for every star, ~70 s even
for one: it is left to the benchmark runs.)"""

import json
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
def test_infer_bench_reports_the_default_engine_against_the_batch_engine(anchor_dir, monkeypatch, capsys):
    monkeypatch.setenv("DDS_ANCHOR_DIR", str(anchor_dir))
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import infer_bench

    argv = ["--json", "--n-stars", "4", "--num-warmup", "20", "--num-samples", "20", "--num-chains", "2",
            "--batch-size", "4", "--baseline-stars", "0", "--vs-batch", "4"]
    assert infer_bench.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["engine"] == "queue" and res["n_stars"] == 4 and res["batch_stars"] == 4
    for key in ("engine_stars_per_s", "batch_stars_per_s"):
        assert res[key] > 0, key
    assert "speedup" not in res  # no baseline was run
    assert res["speedup_vs_batch_engine"] == pytest.approx(res["engine_stars_per_s"] / res["batch_stars_per_s"])
    for key in ("frac_rhat_lt_1_01", "batch_frac_rhat_lt_1_01"):
        assert 0.0 <= res[key] <= 1.0, key
    assert res["median_ess"] > 0 and res["queue_iterations"] > 0
    slots_per_device = -(-res["queue_n_slots"] // len(res["queue_iterations_per_device"]))
    assert res["queue_us_per_slot_iteration"] == pytest.approx(res["queue_us_per_iteration"] / slots_per_device)
    assert res["queue_us_per_iteration"] == pytest.approx(
        res["seconds_engine"] / max(res["queue_iterations_per_device"]) * 1e6)
    halves = (res["frac_bulk_rhat_lt_1_01"], res["frac_folded_rhat_lt_1_01"])
    assert all(0.0 <= h <= 1.0 for h in halves) and res["frac_rhat_lt_1_01"] <= min(halves)
    with pytest.raises(SystemExit):  # the queue is already the engine under test
        infer_bench.main(argv + ["--queue", "4"])
    sys.modules.pop("infer_bench", None)


def test_rhat_ceiling_scores_an_ideal_gaussian_as_the_engine_scores_a_star(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import rhat_ceiling

    assert rhat_ceiling.main(["--json", "--n-stars", "12", "--num-warmup", "300", "--num-samples", "100"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_stars"] == 12 and res["draws_per_star"] == 400 and res["settings"]["target_accept"] == 0.95
    halves = (res["frac_bulk_rhat_lt_1_01"], res["frac_folded_rhat_lt_1_01"])
    assert res["frac_rhat_lt_1_01"] <= min(halves) <= 1.0
    # NUTS's draws of a Gaussian are anti-correlated in location (bulk ESS near or above the draw
    # count) but not in scale: the folded half is the one with the smaller ESS
    assert res["median_ess_bulk_min"] > 2 * res["median_ess_folded_min"] > 0
    sys.modules.pop("rhat_ceiling", None)


def test_potential_cost_times_the_potential_and_its_parts(anchor_dir, monkeypatch, capsys):
    monkeypatch.setenv("DDS_ANCHOR_DIR", str(anchor_dir))
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import potential_cost

    assert potential_cost.main(["--json", "--n-stars", "3", "--calls", "4"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_stars"] == 3 and res["calls"] == 4
    for part in ("potential", "emulator", "prior"):
        assert res[f"{part}_us_per_call"] > 0, part
        assert res[f"{part}_us_per_star"] == pytest.approx(res[f"{part}_us_per_call"] / 3), part
    sys.modules.pop("potential_cost", None)
