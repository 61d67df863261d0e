"""The single-star posterior notebook runs end to end at small size (DDS_NB_SMALL=1)."""

import pytest

from conftest import REPO_ROOT

NB = REPO_ROOT / "notebooks" / "02_single_star_posterior.ipynb"


@pytest.mark.slow
def test_posterior_notebook_runs_small(anchor_dir, monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DDS_NB_SMALL", "1")
    monkeypatch.setenv("DDS_ANCHOR_DIR", str(anchor_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    figs = REPO_ROOT / "notebooks" / "figures"
    before = {p.name: p.stat().st_mtime_ns for p in figs.glob("*.png")}
    nb = nbformat.read(NB, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NB.parent)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "small run: True" in text
    assert "max |obs − pred| / σ over observed bands" in text
    assert "grid posterior mass with logg < 3.5" in text
    for name in ("star_corner.png", "star_rank_trace.png", "star_ppc.png", "star_bimodal.png"):
        assert (figs / name).is_file()
    assert {p.name: p.stat().st_mtime_ns for p in figs.glob("*.png")} == before  # committed figures untouched
