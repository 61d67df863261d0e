"""Shared by the benchmark scripts: where the real anchor data is, and how figures are printed."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def anchor_dir() -> Path:
    """``DDS_ANCHOR_DIR``, default ``<repo>/../shared/anchors/green2020``."""
    return Path(os.environ.get("DDS_ANCHOR_DIR", REPO / ".." / "shared" / "anchors" / "green2020")).resolve()


def report(figures: dict, as_json: bool) -> None:
    """Print the figures: JSON (``--json``) or one ``key: value`` line each."""
    if as_json:
        from dds_infer.cli import emit_json

        emit_json(figures)
    else:
        for k, v in figures.items():
            print(f"{k}: {v}")
