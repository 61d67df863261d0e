"""The dds-infer command line: import-keras -> evaluate, --json output, clear errors."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dds_infer.cli import main


@pytest.fixture(scope="module")
def bundle(anchor_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "green2020"
    rc = main(["import-keras", str(anchor_dir / "green2020_nn_model.h5"),
               "--normalization", str(anchor_dir / "green2020_theta_normalization.json"),
               "--density", str(anchor_dir / "green2020_input_density.h5"),
               "--out", str(out)])
    assert rc == 0
    return out


def test_import_keras_writes_loadable_bundle(bundle):
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["architecture"]["hidden"] == [32, 32]
    assert man["domain"] is not None
    assert len(man["bands"]["bands"]) == 13


def test_evaluate_json_reports_paper_figures(bundle, anchor_dir, capsys, tmp_path):
    out = tmp_path / "per_star.parquet"
    rc = main(["evaluate", "--model", str(bundle), "--catalog",
               str(anchor_dir / "green2020_test_data_small.h5"), "--json", "--out", str(out)])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    for key in ("n_stars", "chi2_dof_mean", "outlier_frac", "z_scores"):
        assert key in s
    assert s["n_stars"] == 10000
    assert abs(s["chi2_dof_mean"] - 0.87) <= 0.01
    assert abs(s["outlier_frac"] - 0.027) <= 0.003
    df = pd.read_parquet(out)
    assert len(df) == 10000
    # outlier fraction recomputed from the per-star file agrees with the summary
    ev = df["dof"] > 0
    assert np.isclose((df.loc[ev, "chi2_dof"] > 5).mean(), s["outlier_frac"])


def test_evaluate_one_part_of_a_split(bundle, anchor_dir, capsys, tmp_path):
    """--split-part evaluates only that part's rows (each star's result as in a full run), from a
    split file or the bundle's own extras/split.npz; a split past the catalogue or a missing split
    file is refused by name."""
    cat = str(anchor_dir / "green2020_test_data_small.h5")
    rows = np.random.default_rng(5).permutation(10000)
    split = {"train": rows[:300].tolist(), "validation": rows[300:400].tolist(), "test": rows[400:700].tolist()}
    (tmp_path / "split.json").write_text(json.dumps(split))
    base = ["evaluate", "--model", str(bundle), "--catalog", cat, "--json"]
    assert main(base + ["--out", str(tmp_path / "all.parquet")]) == 0
    capsys.readouterr()
    assert main(base + ["--split-part", "test", "--split", str(tmp_path / "split.json"),
                        "--out", str(tmp_path / "test.parquet")]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n_stars"] == 300 and s["split_part"] == "test"
    part, full = pd.read_parquet(tmp_path / "test.parquet"), pd.read_parquet(tmp_path / "all.parquet")
    pd.testing.assert_frame_equal(part.reset_index(drop=True),  # (float32 sums over another batch shape)
                                  full.iloc[np.sort(split["test"])].reset_index(drop=True), rtol=2e-3)
    assert main(base + ["--split-part", "test"]) == 2  # an imported bundle has no split of its own
    assert "extras/split.npz" in capsys.readouterr().err
    (tmp_path / "past.json").write_text(json.dumps(dict(split, test=[5, 10000])))
    assert main(base + ["--split-part", "test", "--split", str(tmp_path / "past.json")]) == 2
    assert "catalogue has 10000 rows" in capsys.readouterr().err
    assert main(base + ["--split", str(tmp_path / "split.json")]) == 2
    assert "--split needs --split-part" in capsys.readouterr().err


def test_evaluate_text_output_and_fit_mode(bundle, anchor_dir, capsys):
    rc = main(["evaluate", "--model", str(bundle), "--catalog",
               str(anchor_dir / "green2020_test_data_small.h5"), "--reddening", "fit"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mean chi2/dof" in text and "outlier fraction" in text


def test_errors_are_one_clear_line(bundle, tmp_path, capsys):
    rc = main(["evaluate", "--model", str(bundle), "--catalog", str(tmp_path / "nope.h5")])
    assert rc == 2
    assert "not found" in capsys.readouterr().err
    rc = main(["evaluate", "--model", str(tmp_path), "--catalog", str(tmp_path / "x.csv")])
    assert rc == 2


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "dds_infer.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("demo", "import-keras", "evaluate"):
        assert cmd in r.stdout
