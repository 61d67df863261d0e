"""Shared fixtures: the Green2020 anchor data (real stars, published network).

Tests that need it take the ``anchor_dir`` fixture. When the folder is missing
they skip with the reason, unless ``DDS_REQUIRE_ANCHORS=1`` (set by .ci/run),
in which case they fail.
"""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ANCHOR_FILES = (
    "green2020_nn_model.h5",
    "green2020_theta_normalization.json",
    "green2020_test_data_small.h5",
    "green2020_input_density.h5",
)


def _anchor_dir() -> Path:
    env = os.environ.get("DDS_ANCHOR_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT / ".." / "shared" / "anchors" / "green2020").resolve()


@pytest.fixture(scope="session")
def anchor_dir() -> Path:
    d = _anchor_dir()
    missing = [f for f in ANCHOR_FILES if not (d / f).is_file()]
    if missing:
        msg = (
            f"Green2020 anchor data not found in {d} (missing {missing}); "
            "set DDS_ANCHOR_DIR to the folder holding the published model and test stars"
        )
        if os.environ.get("DDS_REQUIRE_ANCHORS") == "1":
            pytest.fail(msg + " [DDS_REQUIRE_ANCHORS=1]")
        pytest.skip(msg)
    return d
