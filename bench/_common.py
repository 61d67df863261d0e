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


def add_cpu_devices_arg(parser) -> None:
    """``--cpu-devices N``: JAX CPU devices, one per core (default: every core; as ``dds-infer``)."""
    parser.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                        help="JAX CPU devices over which inference spreads its stars (default: one per core, "
                        "as dds-infer; 1: one device with XLA's own threading)")


def start_devices(args) -> int:
    """Apply ``--cpu-devices`` before the first JAX computation; the number of devices in use."""
    from dds_infer.devices import use_cpu_cores

    return use_cpu_cores(args.cpu_devices)
