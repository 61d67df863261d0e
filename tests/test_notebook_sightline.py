"""Notebook 03 (mock sightline → grid posteriors → HEALPix dust-map file → LOS cloud fit) runs end to
end at small size (DDS_NB_SMALL=1) and recovers the cloud (issue 6, acceptance 3 at small size)."""

import re

import pytest

from conftest import REPO_ROOT, run_notebook_small


@pytest.mark.slow
def test_sightline_notebook_runs_small(monkeypatch, tmp_path):
    _, text = run_notebook_small("03_sightline_dust.ipynb", monkeypatch, timeout=900, tmp_path=tmp_path)
    m = re.search(r"cloud distance: (\d+) pc \(68%: (\d+)-(\d+)\) vs truth 400 pc", text)
    assert m, text[-2000:]
    med, lo, hi = (float(v) for v in m.groups())
    assert abs(med - 400.0) < 0.10 * 400.0 and lo < med < hi
    m = re.search(r"cloud delta_E: ([\d.]+)", text)
    assert m and abs(float(m.group(1)) - 0.5) < 0.1
    for name in ("sightline_stack.png", "sightline_los.png"):
        assert (REPO_ROOT / "notebooks" / "figures" / name).is_file()
