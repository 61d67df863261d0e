"""Shared by the benchmark scripts: where the real anchor data is, how figures are printed, the devices and the
sampler's command-line arguments."""

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


def add_sampler_args(parser) -> None:
    """The catalogue run's sampler arguments, as ``dds-infer infer`` takes them (real_accuracy.py, sbc.py):
    --num-warmup/--num-samples/--num-chains (the acceptance's 500/500/4), --batch-size, --seed,
    --target-accept, --method nuts|grid and --engine."""
    from dds_infer.runner import DEFAULT_ENGINE, ENGINES

    parser.add_argument("--num-warmup", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="stars per chunk (default dds_infer.runner.default_batch_size, as dds-infer infer: "
                        "1024, or 64 with --engine batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-accept", type=float, default=None,
                        help="NUTS target acceptance (default: the pipeline's, dds_infer.pipeline.TARGET_ACCEPT)")
    parser.add_argument("--method", choices=("nuts", "grid"), default="nuts")
    parser.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                        help="NUTS engine (dds_infer.runner.ENGINES): queue (default, as dds-infer infer) or batch "
                        "(lockstep)")


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (``ru_maxrss``; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(script: str, *argv: str) -> dict:
    """Run ``script`` (a bench file) with ``argv`` in a fresh Python process, from the bench folder,
    and return the JSON object its last stdout line holds: one step measured in its own process,
    so its peak memory is its own."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, script, *map(str, argv)], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    return json.loads(out.stdout.strip().splitlines()[-1])
