"""``dds-infer`` command line.

Each sub-command lives in a module that exposes ``register(subparsers)``; the
module is listed in ``COMMAND_MODULES``. Commands that report numbers accept
``--json`` (machine-readable JSON on stdout, nothing else on stdout).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from . import __version__

COMMAND_MODULES = (
    "dds_infer.commands.demo",
    "dds_infer.commands.import_keras",
    "dds_infer.commands.evaluate",
    "dds_infer.commands.train",
    "dds_infer.commands.mock",
    "dds_infer.commands.check",
    "dds_infer.commands.to_parquet",
    "dds_infer.commands.sort_sky",
    "dds_infer.commands.infer",
    "dds_infer.commands.calibrate_offsets",
    "dds_infer.commands.status",
    "dds_infer.commands.dustmap",
    "dds_infer.commands.los",
)

SPREAD_COMMANDS = ("infer", "calibrate-offsets", "demo", "los")  # spread stars (los: chains) over the CPU devices
CPU_DEVICES_ARG = dict(type=int, default=None, metavar="N",
                       help="JAX CPU devices, one per core, over which inference spreads its stars (default for "
                       "infer, calibrate-offsets, demo and los (its chains): the cores this process may use; otherwise and "
                       "with 1: one device with XLA's own threading)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dds-infer",
        description="Data-driven stellar models (Green et al. 2021): train the emulator, "
        "evaluate it, infer stellar parameters, distances and reddening.",
    )
    parser.add_argument("--version", action="version", version=f"dds_infer {__version__}")
    parser.add_argument("--cpu-devices", **CPU_DEVICES_ARG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != name:
                raise
            continue
        mod.register(sub)
    for sp in sub.choices.values():  # also accepted after the command name
        sp.add_argument("--cpu-devices", **{**CPU_DEVICES_ARG, "default": argparse.SUPPRESS})
    return parser


def emit_json(obj) -> None:
    """Print ``obj`` as JSON (NaN -> null) on stdout."""
    print(json.dumps(_clean(obj), indent=2, sort_keys=False))


def _clean(o):
    if isinstance(o, float) and o != o:
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return _clean(o.item())
    if hasattr(o, "tolist"):
        return _clean(o.tolist())
    return o


def _start_devices(argv) -> None:
    """Before any JAX computation (which fixes the device count): one CPU device per core
    (:func:`dds_infer.devices.use_cpu_cores`) for the commands that spread stars over devices
    (``SPREAD_COMMANDS``), or as many as ``--cpu-devices`` asks for any command. Other commands
    (training, evaluation) keep JAX's single device and XLA's own multi-threading."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--cpu-devices", type=int, default=None)
    pre.add_argument("command", nargs="?")
    early, _ = pre.parse_known_args(argv)
    if early.cpu_devices is not None and early.cpu_devices < 1:
        raise SystemExit(f"dds-infer: error: --cpu-devices must be >= 1, got {early.cpu_devices}")
    if early.cpu_devices is not None or early.command in SPREAD_COMMANDS:
        from .devices import use_cpu_cores

        use_cpu_cores(early.cpu_devices)


def main(argv=None) -> int:
    _start_devices(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .devices import use_compilation_cache

    use_compilation_cache()  # before any compile: the next run with the same model and settings skips it
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # user errors (bad catalogue, missing file, unknown band): one clear line, exit 2
        print(f"dds-infer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
