"""Atomic file writes: write to a temporary file beside the target, then rename it over the target
(``os.replace``), so an interrupted write never leaves a partial output. The package's file writers
(chunks, summaries, run outputs, dust-map files, catalogues, manifests, reports) go through
:func:`atomic_path`; training checkpoints (:mod:`dds_infer.train_io`) and bundle directories
(:mod:`dds_infer.bundle`) are swapped in the same way by their own code."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(path, *, keep_extension: bool = False):
    """Yield a temporary path beside ``path``; on a clean exit rename it to ``path``; always remove
    it if it is left over. ``keep_extension``: name it ``.tmp-<pid>-<name>`` (same extension, for
    writers that choose the format or compression from the file name) instead of ``<name>.tmp``."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}" if keep_extension else path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
