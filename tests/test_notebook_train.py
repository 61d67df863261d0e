"""The training notebook runs end to end at small size (DDS_NB_SMALL=1) and draws its figures."""


import pytest

from conftest import REPO_ROOT

NB = REPO_ROOT / "notebooks" / "01_train_emulator.ipynb"


@pytest.mark.slow
def test_training_notebook_runs_small(anchor_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DDS_NB_SMALL", "1")
    monkeypatch.setenv("DDS_ANCHOR_DIR", str(anchor_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    figs = REPO_ROOT / "notebooks" / "figures"
    before = {p.name: p.stat().st_mtime_ns for p in figs.glob("*.png")} if figs.is_dir() else {}
    nb = nbformat.read(NB, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NB.parent)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "small run: True" in text
    assert "published: mean chi2/dof" in text
    last = nb.cells[-1]["outputs"][-1]["data"]["text/plain"]
    for name in ("train_history.png", "train_cmd.png", "train_reddening_vs_teff.png", "train_zscores.png"):
        assert name in last
    after = {p.name: p.stat().st_mtime_ns for p in figs.glob("*.png")} if figs.is_dir() else {}
    assert after == before  # the small run never overwrites the committed figures
