"""Helpers shared by CLI commands: catalogue loading, model loading."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import h5py

from ..bundle import load_bundle
from ..catalog import StarCatalog
from ..catalog_io import is_green2020_h5, read_green2020_h5, read_table  # noqa: F401  (is_green2020_h5: here for the commands)
from ..emulator import Emulator


def read_catalog(path, column_map=None, *, parallax_unit="mas", **kw) -> StarCatalog:
    """Read a catalogue: Green2020 HDF5 layout, else any table via ``read_table``.

    column_map: dict, or path to a JSON file holding one (see ``read_table``). ``parallax_unit``:
    of unitless parallax columns (the Green2020 layout is in mas; another unit is an error there).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"catalogue {path} not found")
    if isinstance(column_map, (str, Path)):
        column_map = json.loads(Path(column_map).read_text())
    if column_map is None and is_green2020_h5(path):
        if str(parallax_unit).lower() != "mas":
            raise ValueError(f"{path} has the Green2020 HDF5 layout, whose parallaxes are in mas; "
                             f"parallax unit {parallax_unit!r} does not apply")
        return read_green2020_h5(path, **kw)
    return read_table(path, column_map, parallax_unit=parallax_unit, **kw)


def catalog_n_rows(path, column_map=None) -> int:
    """Rows of a catalogue file (Green2020 HDF5 or a table), from metadata where the format has it."""
    from ..catalog_io import _format_for
    from ..catalog_rows import count_rows

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"catalogue {path} not found")
    if column_map is None and is_green2020_h5(path):
        with h5py.File(path, "r") as f:
            return int(len(f["data"]))
    return count_rows(path, _format_for(path, None))


def row_range(args) -> tuple | None:
    """``--rows START:STOP`` or ``--shard K/N`` of ``args`` as (start, stop|None); None: all rows."""
    from ..catalog_rows import parse_rows, parse_shard, shard_rows

    rows, shard = getattr(args, "rows", None), getattr(args, "shard", None)
    if rows is not None and shard is not None:
        raise ValueError("give --rows or --shard, not both")
    if rows is not None:
        return parse_rows(rows)
    if shard is not None:
        k, n_shards = parse_shard(shard)
        n_rows = catalog_n_rows(args.catalog, args.columns)
        start, stop = shard_rows(k, n_shards, n_rows)
        if stop <= start:
            raise ValueError(f"--shard {shard}: the catalogue's {n_rows} rows leave shard {k} of {n_shards} empty "
                             "(use fewer shards)")
        return start, stop
    return None


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


@contextmanager
def progress_bar(args, total, desc: str, unit: str = "row"):
    """A tqdm bar on stderr (None with ``--no-progress``), closed on the way out; ``total`` may be a
    callable, called only when the bar is shown, and None (unknown)."""
    if getattr(args, "no_progress", False):
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total() if callable(total) else total, unit=unit, desc=desc)
    try:
        yield bar
    finally:
        bar.close()
