"""The single-star posterior notebook runs end to end at small size (DDS_NB_SMALL=1)."""

import pytest

from conftest import REPO_ROOT, run_notebook_small


@pytest.mark.slow
def test_posterior_notebook_runs_small(anchor_dir, monkeypatch, tmp_path):
    _, text = run_notebook_small("02_single_star_posterior.ipynb", monkeypatch, timeout=600,
                                 anchor_dir=anchor_dir, tmp_path=tmp_path)
    assert "max |obs − pred| / σ over observed bands" in text
    assert "grid posterior mass with logg < 3.5" in text
    figs = REPO_ROOT / "notebooks" / "figures"
    for name in ("star_corner.png", "star_rank_trace.png", "star_ppc.png", "star_bimodal.png"):
        assert (figs / name).is_file()
