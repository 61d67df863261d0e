"""Notebook 03 (mock sightline → grid posteriors → HEALPix dust-map file → LOS cloud fit) runs end to
end at small size (DDS_NB_SMALL=1) and recovers the cloud (issue 6, acceptance 3 at small size)."""

import re

import pytest

from conftest import REPO_ROOT

NB = REPO_ROOT / "notebooks" / "03_sightline_dust.ipynb"


@pytest.mark.slow
def test_sightline_notebook_runs_small(monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DDS_NB_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    figs = REPO_ROOT / "notebooks" / "figures"
    before = {p.name: p.stat().st_mtime_ns for p in figs.glob("*.png")}
    nb = nbformat.read(NB, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(NB.parent)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "small run: True" in text
    m = re.search(r"cloud distance: (\d+) pc \(68%: (\d+)-(\d+)\) vs truth 400 pc", text)
    assert m, text[-2000:]
    med, lo, hi = (float(v) for v in m.groups())
    assert abs(med - 400.0) < 0.10 * 400.0 and lo < med < hi
    m = re.search(r"cloud delta_E: ([\d.]+)", text)
    assert m and abs(float(m.group(1)) - 0.5) < 0.1
    for name in ("sightline_stack.png", "sightline_los.png"):
        assert (figs / name).is_file()
    assert {p.name: p.stat().st_mtime_ns for p in figs.glob("*.png")} == before  # committed figures untouched
