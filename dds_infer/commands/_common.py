"""Helpers shared by CLI commands: catalogue loading, model loading."""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from ..bundle import load_bundle
from ..catalog import StarCatalog
from ..catalog_io import read_green2020_h5, read_table
from ..emulator import Emulator


def is_green2020_h5(path: Path) -> bool:
    """True for the Green2020 test-data HDF5 layout (structured ``data`` with ``atm_param``)."""
    if path.suffix.lower() not in (".h5", ".hdf5", ".hdf"):
        return False
    with h5py.File(path, "r") as f:
        d = f.get("data")
        return isinstance(d, h5py.Dataset) and d.dtype.names is not None and "atm_param" in d.dtype.names


def read_catalog(path, column_map=None, **kw) -> StarCatalog:
    """Read a catalogue: Green2020 HDF5 layout, else any table via ``read_table``.

    column_map: dict, or path to a JSON file holding one (see ``read_table``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"catalogue {path} not found")
    if isinstance(column_map, (str, Path)):
        column_map = json.loads(Path(column_map).read_text())
    if column_map is None and is_green2020_h5(path):
        return read_green2020_h5(path, **kw)
    return read_table(path, column_map, **kw)


def read_model(path) -> Emulator:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model bundle {path} not found")
    return load_bundle(path)


def parse_selection_limit(text: str):
    """--selection-limit: None ("none"), "auto", "bundle" or a magnitude."""
    if text.lower() in ("none", "auto", "bundle"):
        return None if text.lower() == "none" else text.lower()
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--selection-limit must be a magnitude, 'auto', 'bundle' or 'none', got {text!r}") from None
