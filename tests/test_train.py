"""Training (Green et al. 2021 §4): split, schedules, loss decrease, determinism, resume, bundle, CLI."""

import json
import math
from dataclasses import replace

import jax
import numpy as np
import pytest

from dds_infer.bundle import load_bundle
from dds_infer.catalog_io import read_green2020_h5
from dds_infer.training import TrainConfig, chi2_threshold, learning_rate, split_indices, train
from dds_infer.train_core import StarBatchData, make_eval_fn, star_loss
from dds_infer.train_io import save_training_bundle

TINY = TrainConfig(iterations=2, epochs=2, batch_size=32, max_stars=400, seed=3, progress=False,
                   min_steps_first=None, min_steps=None)


@pytest.fixture(scope="module")
def real_cat(anchor_dir):
    return read_green2020_h5(anchor_dir / "green2020_test_data_small.h5")


@pytest.fixture(scope="module")
def tiny_run(real_cat):
    return train(real_cat, TINY)


def _leaves(emu):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(emu.params)]


def test_split_is_disjoint_covers_all_and_seeded():
    s = split_indices(1003, seed=1)
    allidx = np.concatenate([s["train"], s["validation"], s["test"]])
    assert np.array_equal(np.sort(allidx), np.arange(1003))
    assert (s["train"].size, s["validation"].size) == (702, 201)
    assert not np.array_equal(s["train"], split_indices(1003, seed=2)["train"])
    assert all(np.array_equal(s[k], split_indices(1003, seed=1)[k]) for k in s)
    with pytest.raises(ValueError):
        split_indices(10, 0, (0.5, 0.2, 0.2))


def test_outlier_threshold_falls_log_uniformly_from_100_to_5_then_stays():
    t = np.array([chi2_threshold(i) for i in range(1, 21)])
    assert t[0] == pytest.approx(100.0) and t[14] == pytest.approx(5.0)
    assert np.allclose(t[14:], 5.0)
    steps = np.diff(np.log(t[:15]))
    assert np.allclose(steps, math.log(5 / 100) / 14)


def test_learning_rate_decays_by_exp_minus_one_fifth():
    assert learning_rate(1) == pytest.approx(1e-3)
    assert learning_rate(6) / learning_rate(5) == pytest.approx(math.exp(-0.2))


def test_star_loss_is_chi2_over_n_bands():
    """Eq. 15 with W = identity on 2 modelled entries: loss = Σ r² / n_bands."""
    from dds_infer.emulator import init_emulator

    emu = init_emulator(jax.random.PRNGKey(0))
    x = np.zeros((1, 3), np.float32)
    bm, R = emu.net.apply({"params": emu.params}, x)
    c_model = np.asarray(bm) + 0.5 * np.concatenate([R[:, :1], R[:, 1:] - R[:, :1]], axis=-1)
    c_obs = c_model + 0.3
    mask = np.zeros((1, 13), bool)
    mask[0, [1, 4]] = True
    W = np.eye(13, dtype=np.float32)[None] * mask[:, :, None]
    d = StarBatchData(x=x, E=np.array([0.5], np.float32), c_obs=c_obs.astype(np.float32), W=W, mask=mask,
                      weight=np.ones(1, np.float32))
    assert float(star_loss(emu.net, emu.params, d)[0]) == pytest.approx(2 * 0.09 / 13, rel=1e-4)


def test_training_lowers_loss_on_real_stars(tiny_run):
    emu, h = tiny_run
    ep = h["epochs"]
    assert len(ep) == 4 and len(h["iterations"]) == 2
    # same covariances within iteration 2: the second epoch beats the first
    assert ep[3]["train_loss"] < ep[2]["train_loss"]
    assert ep[1]["train_loss"] < ep[0]["train_loss"]
    it = h["iterations"]
    assert it[0]["chi2_threshold"] == pytest.approx(100.0)
    assert it[1]["lr"] == pytest.approx(1e-3 * math.exp(-0.2))
    assert emu.domain is not None and emu.provenance["n_train"] == 280
    # θ normalisation from the training stars
    th = np.asarray(emu.theta_med)
    assert 4000 < th[0] < 7000


def test_bundle_records_the_training_selection_limit(real_cat, tiny_run, tmp_path):
    """The 95th percentile of the training split's G (the stars of the θ density) is kept in the
    bundle and is what default_prior(selection_limit="bundle") corrects the θ prior for."""
    from dds_infer.priors import default_prior

    emu, h = tiny_run
    rec = emu.provenance["training_selection"]
    g_train = real_cat.subset(np.arange(TINY.max_stars)).mag[h["split"]["train"], 0]
    assert rec["band"] == real_cat.bands.names[0]
    assert rec["limit"] == pytest.approx(np.nanpercentile(g_train, 95), abs=0.05)
    save_training_bundle(emu, h, tmp_path / "b")
    back = load_bundle(tmp_path / "b")
    np.testing.assert_array_equal(np.asarray(default_prior(back, selection_limit="bundle").log_hr),
                                  np.asarray(default_prior(back, selection_limit=rec["limit"]).log_hr))
    with pytest.raises(ValueError, match="records no training selection limit"):
        default_prior(back.replace(provenance_json="{}"), selection_limit="bundle")


def test_explicit_split_is_used_and_checked(real_cat, tiny_run):
    """train(split=...) trains on the given stars (a bootstrap may repeat training rows) and
    refuses a split that leaks validation or test stars into training or points past the catalogue."""
    base = split_indices(400, TINY.seed, TINY.split)
    assert all(np.array_equal(base[k], tiny_run[1]["split"][k]) for k in base)  # the default split
    one = replace(TINY, iterations=1, epochs=1)
    default, _ = train(real_cat, one)
    same, _ = train(real_cat, one, split=base)
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(default), _leaves(same)))
    boot = dict(base, train=np.random.default_rng(0).choice(base["train"], base["train"].size))
    emu, h = train(real_cat, one, split=boot)
    assert np.array_equal(h["split"]["train"], np.sort(boot["train"]))
    assert np.array_equal(h["split"]["validation"], base["validation"])
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(default), _leaves(emu)))
    leak = dict(base, validation=np.r_[base["validation"], base["train"][:3]])
    with pytest.raises(ValueError, match="both train and validation"):
        train(real_cat, TINY, split=leak)
    with pytest.raises(ValueError, match=r"outside 0\.\.399"):
        train(real_cat, TINY, split=dict(base, test=np.r_[base["test"], 400]))
    with pytest.raises(ValueError, match="no 'test'"):
        train(real_cat, TINY, split={"train": base["train"], "validation": base["validation"]})


def test_same_seed_gives_identical_weights(real_cat, tiny_run):
    emu2, h2 = train(real_cat, TINY)
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(tiny_run[0]), _leaves(emu2)))
    assert h2["epochs"] == tiny_run[1]["epochs"]
    emu3, _ = train(real_cat, replace(TINY, seed=4))
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(tiny_run[0]), _leaves(emu3)))


def test_resume_after_interruption_matches_uninterrupted(real_cat, tiny_run, tmp_path):
    cfg = replace(TINY, checkpoint_dir=str(tmp_path / "ck"))
    part, hp = train(real_cat, replace(cfg, stop_after=1))
    assert len(hp["iterations"]) == 1 and (tmp_path / "ck" / "checkpoint.pkl").is_file()
    emu, h = train(real_cat, replace(cfg, resume=True))
    assert len(h["iterations"]) == 2
    for a, b in zip(_leaves(tiny_run[0]), _leaves(emu)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert [r["train_loss"] for r in h["epochs"]] == pytest.approx(
        [r["train_loss"] for r in tiny_run[1]["epochs"]], rel=1e-6)
    with pytest.raises(ValueError, match="resume"):
        train(real_cat, replace(cfg, resume=True, batch_size=64))


def test_joint_label_update_moves_labels_and_resumes_exactly(real_cat, tiny_run, tmp_path):
    """label_update="joint": θ re-estimated with E after each iteration (labels held as the prior);
    an interrupted run resumes to the uninterrupted result; the default run keeps θ̂."""
    cfg = replace(TINY, iterations=3, label_update="joint", checkpoint_dir=str(tmp_path / "ck"))
    emu, h = train(real_cat, cfg)
    idx = h["E_fit"]["index"]
    moved = h["E_fit"]["theta"] - real_cat.theta[idx]
    assert np.all(np.isfinite(h["E_fit"]["theta"]))
    assert np.median(np.abs(moved[:, 1])) > 1e-3  # labels moved ...
    assert [r["median_abs_dtheta_sigma"][1] for r in h["iterations"]][-1] < 3.0  # ... by a fraction of their σ
    assert all(0 <= r["n_labels_capped"] <= len(idx) for r in h["iterations"])
    assert np.array_equal(tiny_run[1]["E_fit"]["theta"], real_cat.theta[tiny_run[1]["E_fit"]["index"]])
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(tiny_run[0]), _leaves(emu)))
    part, _ = train(real_cat, replace(cfg, stop_after=2, checkpoint_dir=str(tmp_path / "ck2")))
    emu2, h2 = train(real_cat, replace(cfg, resume=True, checkpoint_dir=str(tmp_path / "ck2")))
    for a, b in zip(_leaves(emu), _leaves(emu2)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(h2["E_fit"]["theta"], h["E_fit"]["theta"], rtol=1e-6)
    with pytest.raises(ValueError, match="loss_reddening"):
        train(real_cat, replace(cfg, loss_reddening="prior"))


def test_centred_joint_update_keeps_the_training_labels_mean_and_resumes_exactly(real_cat, tmp_path):
    """label_update_centring: after every joint update the training stars' labels have the mean of
    their prior (here the catalogue's labels) in each parallax group; the removed shifts are in the
    history; an interrupted run resumes to the uninterrupted result."""
    cfg = replace(TINY, iterations=3, label_update="joint", label_update_centring=True, label_shrinkage_groups=2,
                  checkpoint_dir=str(tmp_path / "ck"))
    emu, h = train(real_cat, cfg)
    idx, th = h["E_fit"]["index"], h["E_fit"]["theta"]
    n_tr = h["split"]["train"].size
    d = (th - real_cat.theta[idx])[:n_tr]
    assert np.median(np.abs(d[:, 1])) > 1e-3  # the labels still move star by star ...
    from dds_infer.label_noise import quantile_groups
    group = quantile_groups(real_cat.parallax[idx], 2, np.arange(len(idx)) < n_tr)[:n_tr]
    for g in np.unique(group):  # ... but not on average (float32 labels)
        mean = d[group == g].mean(axis=0)
        assert np.all(np.abs(mean) <= [0.05, 1e-4, 1e-4]), mean  # K, dex, dex
    removed = [r["label_shift_removed"] for r in h["iterations"]]
    assert all(np.shape(r) == (len(np.unique(group)), 3) for r in removed)
    assert np.abs(np.array(removed[-1])[:, 1]).max() > 0  # there was a drift to remove
    part, _ = train(real_cat, replace(cfg, stop_after=2, checkpoint_dir=str(tmp_path / "ck2")))
    emu2, h2 = train(real_cat, replace(cfg, resume=True, checkpoint_dir=str(tmp_path / "ck2")))
    for a, b in zip(_leaves(emu), _leaves(emu2)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(h2["E_fit"]["theta"], th, rtol=1e-6)


def test_linearized_parallax_models_c0_beyond_the_snr_cut_and_resumes_exactly(real_cat, tiny_run, tmp_path):
    """parallax_likelihood="linearized": from iteration 2 every usable star with G and a parallax has c_0
    modelled (the inverted μ̂ keeps only ϖ̂/σ_ϖ > 5); the result differs from the paper's; resume is exact."""
    cfg = replace(TINY, iterations=3, parallax_likelihood="linearized", checkpoint_dir=str(tmp_path / "ck"))
    emu, h = train(real_cat, cfg)
    sub = real_cat.subset(h["E_fit"]["index"])
    usable = np.all(np.isfinite(sub.theta), axis=1) & np.isfinite(sub.E_prior) & (sub.E_prior_err > 0)
    has_plx = sub.observed[:, 0] & np.isfinite(sub.parallax) & (sub.parallax_err > 0)
    snr_ok = has_plx & (sub.parallax / np.where(has_plx, sub.parallax_err, 1.0) > 5)
    assert (has_plx & ~snr_ok & usable).sum() > 20  # the real stars below the cut
    assert all(r["n_parallax_modelled"] == int((has_plx & usable).sum()) for r in h["iterations"])
    assert tiny_run[1]["iterations"][-1]["n_parallax_modelled"] == int((snr_ok & usable).sum())
    assert emu.provenance["parallax_likelihood"] == "linearized"
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(tiny_run[0]), _leaves(emu)))
    train(real_cat, replace(cfg, stop_after=2, checkpoint_dir=str(tmp_path / "ck2")))
    emu2, _ = train(real_cat, replace(cfg, resume=True, checkpoint_dir=str(tmp_path / "ck2")))
    for a, b in zip(_leaves(emu), _leaves(emu2)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_tweedie_label_shrinkage_trains_on_shrunk_labels(real_cat):
    """label_shrinkage="tweedie": the fit uses θ̂ + C_θ ∇log p(θ̂) (label_noise.tweedie_label_means)."""
    from dds_infer.label_noise import tweedie_label_means

    cfg = replace(TINY, iterations=1, epochs=1, label_shrinkage="tweedie")
    emu, h = train(real_cat, cfg)
    idx = h["E_fit"]["index"]
    used = h["E_fit"]["theta"]
    raw = real_cat.theta[idx]
    ok = np.all(np.isfinite(raw), axis=1)
    n_tr = h["split"]["train"].size
    expected, capped = tweedie_label_means(raw[ok], real_cat.theta_cov[idx][ok], reference=raw[:n_tr][ok[:n_tr]])
    assert h["n_labels_shrink_capped"] == int(capped.sum()) and emu.provenance["label_shrinkage"] == "tweedie"
    np.testing.assert_allclose(used[ok], expected, rtol=1e-5, atol=1e-3)
    assert np.median(np.abs(used[ok] - raw[ok])[:, 1]) > 1e-3


def test_grouped_tweedie_shrinkage_uses_parallax_groups_of_the_training_split(real_cat):
    """label_shrinkage_groups=3: the fit uses label_noise.grouped_tweedie_label_means over the usable
    stars, parallax as the condition, the training split as the reference; recorded in the provenance."""
    from dds_infer.evaluate import prepare_photometry
    from dds_infer.label_noise import grouped_tweedie_label_means
    from dds_infer.training import usable_stars

    cfg = replace(TINY, iterations=1, epochs=1, label_shrinkage="tweedie", label_shrinkage_groups=3,
                  label_shrinkage_bandwidth=0.7)
    emu, h = train(real_cat, cfg)
    idx = h["E_fit"]["index"]
    sub = real_cat.subset(idx)
    ok = usable_stars(sub, prepare_photometry(sub))
    n_tr = h["split"]["train"].size
    is_ref = np.arange(len(idx)) < n_tr
    expected, capped, group = grouped_tweedie_label_means(sub.theta[ok], sub.theta_cov[ok], sub.parallax[ok],
                                                          n_groups=3, reference=is_ref[ok], bandwidth=0.7)
    assert set(np.unique(group[group >= 0])) == {0, 1, 2}
    np.testing.assert_allclose(h["E_fit"]["theta"][ok], expected, rtol=1e-5, atol=1e-3)
    pooled, _ = train(real_cat, replace(cfg, label_shrinkage_groups=1))
    assert emu.provenance["label_shrinkage_groups"] == 3 and h["n_labels_shrink_capped"] == int(capped.sum())
    assert emu.provenance["label_shrinkage_bandwidth"] == 0.7
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(pooled), _leaves(emu)))


def test_history_records_how_R_settles(real_cat, tiny_run):
    """Per iteration, the mean R per band over the training stars' labels; the last is the trained model's."""
    emu, h = tiny_run
    assert h["bands"] == list(real_cat.bands.names)
    r = np.asarray([rec["R_mean"] for rec in h["iterations"]])
    assert r.shape == (TINY.iterations, real_cat.n_bands) and np.all(np.isfinite(r)) and np.all(r > 0)
    train_theta = real_cat.theta[h["split"]["train"]]
    ok = np.all(np.isfinite(train_theta), axis=1)
    np.testing.assert_allclose(r[-1], np.asarray(emu.reddening_vector(train_theta[ok])).mean(0), rtol=2e-3)
    assert not np.allclose(r[0], r[-1])  # R moves between iterations
    from dds_infer.plots import plot_history

    assert len(plot_history(h).axes) == 4


def test_validation_loss_and_updated_reddening_are_reported(real_cat):
    """Per-epoch validation loss; final E from Eqs. 8-9 (clipped ≥ 0, σ_E floored at 0.02)."""
    cfg = replace(TINY, iterations=1, epochs=1)
    emu, h = train(real_cat, cfg)
    assert np.isfinite(h["epochs"][0]["val_loss"]) and h["epochs"][0]["val_loss"] > 0
    fit = h["E_fit"]
    assert fit["E"].shape == fit["index"].shape == (360,)
    assert np.all(fit["E"] >= 0) and np.all(fit["E_err"] >= 0.02 - 1e-6)


def test_bundle_records_history_split_and_domain(real_cat, tiny_run, tmp_path):
    emu, h = tiny_run
    out = save_training_bundle(emu, h, tmp_path / "b", catalog_path="cat.h5")
    man = json.loads((out / "manifest.json").read_text())
    assert man["training"]["seed"] == 3 and man["training"]["n_train"] == 280
    assert man["training"]["catalog"] == "cat.h5" and man["domain"] is not None
    hist = json.loads((out / "extras" / "history.json").read_text())
    assert len(hist["epochs"]) == 4 and "chi2_threshold" in hist["iterations"][0]
    sp = np.load(out / "extras" / "split.npz")
    assert np.array_equal(sp["test"], h["split"]["test"])
    back = load_bundle(out)
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(emu), _leaves(back)))
    th = real_cat.theta[:5]
    np.testing.assert_allclose(back.absolute_mags(th), emu.absolute_mags(th), rtol=1e-6)


def test_eval_loss_weights_exclude_stars(tiny_run):
    emu, _ = tiny_run
    fn = make_eval_fn(13, (32, 32))
    x = np.zeros((2, 3), np.float32)
    W = np.broadcast_to(np.eye(13, dtype=np.float32), (2, 13, 13))
    mask = np.ones((2, 13), bool)
    c = np.zeros((2, 13), np.float32)
    c[1] += 100.0
    d = StarBatchData(x=x, E=np.zeros(2, np.float32), c_obs=c, W=W, mask=mask, weight=np.array([1.0, 0.0], np.float32))
    d_all = d.replace(weight=np.ones(2, np.float32))
    assert float(fn(emu.params, d)) < float(fn(emu.params, d_all))


@pytest.mark.slow
def test_cli_train_writes_bundle_and_resumes(anchor_dir, tmp_path, capsys):
    from dds_infer.cli import main

    cat = anchor_dir / "green2020_test_data_small.h5"
    out = tmp_path / "model"
    args = ["train", "--catalog", str(cat), "--out", str(out), "--iterations", "2", "--epochs", "1",
            "--max-stars", "300", "--batch-size", "32", "--no-progress", "--json"]
    assert main(args + ["--stop-after", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["iterations_done"] == 1
    assert main(args + ["--resume"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["iterations_done"] == 2 and s["n_train"] == 210
    assert load_bundle(out).hidden == (32, 32)
    assert s["selection_limit"] == load_bundle(out).provenance["training_selection"]["limit"]
    assert 14.0 < s["selection_limit"] < 19.0
    assert main(["train", "--catalog", str(cat), "--out", str(out), "--hidden", "a,b"]) == 2


def test_cli_train_split_file(anchor_dir, tmp_path, capsys):
    """--split FILE trains on the given rows (JSON) and records them in the bundle, whose
    extras/split.npz reads back as that split (the same split gives the same weights: test above);
    a leaking, incomplete, missing or unknown-format split file is refused by name."""
    from dds_infer.cli import main
    from dds_infer.train_io import read_split

    cat = anchor_dir / "green2020_test_data_small.h5"
    rows = np.random.default_rng(3).permutation(300)
    given = {"train": rows[:150].tolist(), "validation": rows[150:250].tolist(), "test": rows[250:].tolist()}
    (tmp_path / "split.json").write_text(json.dumps(given))
    args = ["train", "--catalog", str(cat), "--iterations", "1", "--epochs", "1", "--max-stars", "300",
            "--no-progress", "--json"]
    assert main(args + ["--out", str(tmp_path / "a"), "--split", str(tmp_path / "split.json")]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["n_train"], s["n_validation"], s["n_test"]) == (150, 100, 50)
    again = read_split(tmp_path / "a" / "extras" / "split.npz")  # the bundle's split reads back as given
    assert set(again) == set(given) and all(np.array_equal(again[k], np.sort(given[k])) for k in given)
    assert main(["evaluate", "--model", str(tmp_path / "a"), "--catalog", str(cat), "--split-part", "test",
                 "--json"]) == 0  # the bundle's own held-out stars
    assert json.loads(capsys.readouterr().out)["n_stars"] == 50
    leak = dict(given, test=given["test"] + given["train"][:2])
    (tmp_path / "leak.json").write_text(json.dumps(leak))
    assert main(args + ["--out", str(tmp_path / "c"), "--split", str(tmp_path / "leak.json")]) == 2
    assert "both train and test" in capsys.readouterr().err
    (tmp_path / "part.json").write_text(json.dumps({"train": given["train"]}))
    assert main(args + ["--out", str(tmp_path / "c"), "--split", str(tmp_path / "part.json")]) == 2
    assert "['validation', 'test']" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "c"), "--split", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert "none.json" in err and "not found" in err
    (tmp_path / "split.csv").write_text("train,0\n")
    assert main(args + ["--out", str(tmp_path / "c"), "--split", str(tmp_path / "split.csv")]) == 2
    assert "unknown format '.csv'" in capsys.readouterr().err


def test_cli_train_label_options_report_their_counts(anchor_dir, tmp_path, capsys):
    from dds_infer.cli import main

    cat = anchor_dir / "green2020_test_data_small.h5"
    args = ["train", "--catalog", str(cat), "--out", str(tmp_path / "m"), "--iterations", "2", "--epochs", "1",
            "--max-stars", "300", "--no-progress", "--label-update", "joint", "--label-shrinkage", "tweedie",
            "--parallax-likelihood", "linearized", "--label-shrinkage-groups", "2",
            "--label-shrinkage-bandwidth", "0.8", "--l2-hidden", "0", "--l1-reddening", "0.02",
            "--label-update-centring"]
    assert main(args + ["--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["label_update"] == "joint" and s["label_shrinkage"] == "tweedie"
    assert s["parallax_likelihood"] == "linearized" and 0 < s["final_n_parallax_modelled"] <= 300
    assert s["label_shrinkage_groups"] == 2 and s["label_shrinkage_bandwidth"] == 0.8
    assert s["l2_hidden"] == 0.0 and s["l1_reddening"] == 0.02 and s["label_update_centring"] is True
    assert 0 <= s["n_labels_shrink_capped"] <= s["n_train"] + s["n_validation"]
    assert 0 <= s["final_n_labels_capped"] <= s["n_train"] + s["n_validation"]
    hist = json.loads((tmp_path / "m" / "extras" / "history.json").read_text())
    assert hist["config"]["l2_hidden"] == 0.0 and hist["config"]["l1_reddening"] == 0.02
    assert hist["config"]["label_update"] == "joint" and hist["iterations"][-1]["n_labels_capped"] == s["final_n_labels_capped"]
    assert main(args + ["--out", str(tmp_path / "m2")]) == 0
    text = capsys.readouterr().out
    assert "shrinkage tweedie in 2 parallax groups" in text and "parallax: linearized likelihood" in text


def test_l2_weight_shrinks_the_hidden_kernels(real_cat, tiny_run):
    """Eq. 15's L2 term acts on the stellar-model hidden kernels: a larger weight gives smaller ones."""
    strong, _ = train(real_cat, replace(TINY, l2_hidden=10.0))  # dominant: ~40 Adam steps pull every weight in

    def sq(emu):
        return sum(float(np.sum(np.asarray(v["kernel"]) ** 2)) for k, v in emu.params.items()
                   if k.startswith("hidden_"))

    base = tiny_run[0]
    assert sq(strong) < 0.95 * sq(base)  # measured 0.87 (the default weight: 1.00)
    assert strong.provenance["l2_hidden"] == 10.0 and base.provenance["l2_hidden"] == TINY.l2_hidden


def test_epochs_first_sets_iteration_one_length(real_cat):
    cfg = replace(TINY, iterations=2, epochs=2, epochs_first=5)
    _, h = train(real_cat, cfg)
    per_it = [sum(1 for e in h["epochs"] if e["iteration"] == k) for k in (1, 2)]
    assert per_it == [5, 2]


def test_flat_r_start_keeps_R_theta_independent_in_iteration_one(real_cat, tiny_run):
    """r_kernel_init='zero' + freeze_r_kernel_first: R(θ) is a learned constant in iteration 1, θ-dependent after."""
    cfg = replace(TINY, iterations=1, r_kernel_init="zero", freeze_r_kernel_first=True, r_init=0.5)
    emu, _ = train(real_cat, cfg)
    assert np.all(np.asarray(emu.params["R"]["kernel"]) == 0.0)
    bias = np.asarray(emu.params["R"]["bias"])
    assert not np.allclose(bias, np.log(0.5))  # the constant R was fitted
    R = np.asarray(emu.reddening_vector(real_cat.theta[:50]))
    np.testing.assert_allclose(R, np.broadcast_to(np.exp(bias), R.shape), rtol=1e-6)
    two, _ = train(real_cat, replace(cfg, iterations=2))
    assert np.any(np.asarray(two.params["R"]["kernel"]) != 0.0)


def test_warm_start_from_a_bundle(real_cat, anchor_dir, tmp_path):
    from dds_infer.bundle import save_bundle
    from dds_infer.keras_import import import_keras_model

    pub = import_keras_model(anchor_dir / "green2020_nn_model.h5", anchor_dir / "green2020_theta_normalization.json")
    save_bundle(pub, tmp_path / "pub")
    emu, h = train(real_cat, replace(TINY, iterations=1, epochs=0, init_from=str(tmp_path / "pub")))
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(pub), _leaves(emu)))
    np.testing.assert_array_equal(np.asarray(emu.theta_med), np.asarray(pub.theta_med))
    # the warm start's first refresh is Eqs. 8-9 under the published model, not the prior
    assert np.all(h["E_fit"]["E"] >= 0) and not np.allclose(h["E_fit"]["E"], real_cat.E_prior[h["E_fit"]["index"]])
    with pytest.raises(ValueError, match="hidden"):
        train(real_cat, replace(TINY, hidden=(16,), init_from=str(tmp_path / "pub")))


@pytest.mark.parametrize("field, value", [("loss_reddening", "posterior"), ("r_kernel_init", "ones"), ("r_init", 0.0),
                                          ("label_update", "em"), ("label_shrinkage", "deconvolve"),
                                          ("parallax_likelihood", "bailer-jones"), ("label_shrinkage_groups", 0),
                                          ("label_shrinkage_bandwidth", 0.0), ("l2_hidden", -1e-4),
                                          ("l1_reddening", -0.01), ("label_update_centring", True)])
def test_bad_training_options_name_the_field(real_cat, field, value):
    with pytest.raises(ValueError, match=field):
        train(real_cat, replace(TINY, **{field: value}))


def test_small_catalogues_get_a_minimum_number_of_adam_steps():
    from dds_infer.training import epochs_of_iteration

    cfg = TrainConfig()  # 25 epochs, batch 32, floors 22,000 / 11,000 steps, at most 4x
    assert epochs_of_iteration(1, cfg, 100_000) == 25 and epochs_of_iteration(2, cfg, 100_000) == 25
    assert epochs_of_iteration(1, cfg, 10_000) == 71  # ceil(22000 / 313 steps per epoch)
    assert epochs_of_iteration(2, cfg, 7000) == 51  # ceil(11000 / 219)
    assert epochs_of_iteration(1, cfg, 7000) == 100  # ceil(22000 / 219) = 101, capped at 4 x 25
    assert epochs_of_iteration(1, cfg, 300) == 100
    assert epochs_of_iteration(3, replace(cfg, min_steps=None), 7000) == 25
    assert epochs_of_iteration(1, replace(cfg, epochs_first=5, max_epoch_factor=1.0), 7000) == 5
