"""The training notebook runs end to end at small size (DDS_NB_SMALL=1) and draws its figures."""

import pytest

from conftest import run_notebook_small


@pytest.mark.slow
def test_training_notebook_runs_small(anchor_dir, monkeypatch, tmp_path):
    nb, text = run_notebook_small("01_train_emulator.ipynb", monkeypatch, timeout=300,
                                  anchor_dir=anchor_dir, tmp_path=tmp_path)
    assert "published: mean chi2/dof" in text
    last = nb.cells[-1]["outputs"][-1]["data"]["text/plain"]
    for name in ("train_history.png", "train_cmd.png", "train_reddening_vs_teff.png", "train_zscores.png"):
        assert name in last
