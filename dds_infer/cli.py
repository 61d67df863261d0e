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
    "dds_infer.commands.infer",
    "dds_infer.commands.dustmap",
    "dds_infer.commands.los",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dds-infer",
        description="Data-driven stellar models (Green et al. 2021): train the emulator, "
        "evaluate it, infer stellar parameters, distances and reddening.",
    )
    parser.add_argument("--version", action="version", version=f"dds_infer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != name:
                raise
            continue
        mod.register(sub)
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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # user errors (bad catalogue, missing file, unknown band): one clear line, exit 2
        print(f"dds-infer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
