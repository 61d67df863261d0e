"""Training checkpoints and the trained-emulator bundle (history, split, provenance).

Checkpoints are one pickle of plain numpy/python objects written atomically
(temporary file + ``os.replace``), so an interrupted run always leaves the
last finished iteration readable.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np

from . import __version__
from .bundle import save_bundle
from .emulator import Emulator

__all__ = ["checkpoint_path", "save_checkpoint", "load_checkpoint", "save_training_bundle",
           "history_to_json", "read_split", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pkl"


def checkpoint_path(checkpoint_dir) -> Path | None:
    return None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically write ``state`` (numpy arrays, dicts, lists, numbers) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def read_split(path) -> dict[str, np.ndarray]:
    """An explicit train/validation/test split from a file: ``.npz`` with arrays ``train``,
    ``validation`` and ``test`` (a trained bundle's ``extras/split.npz`` reproduces that run's
    split) or ``.json`` with the same three lists of catalogue row indices. Only the three parts
    are read; :func:`dds_infer.train_config.check_split` checks them against the catalogue."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {str(path)!r} not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            parts = {k: z[k] for k in ("train", "validation", "test") if k in z.files}
    elif suffix == ".json":
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"split file {str(path)!r}: expected a JSON object with train, validation and test lists")
        parts = {k: np.asarray(raw[k]) for k in ("train", "validation", "test") if k in raw}
        for k, a in parts.items():
            if a.size == 0:  # json [] reads as float64: an empty part is still an integer index list
                parts[k] = a.astype(np.int64)
    else:
        raise ValueError(f"split file {str(path)!r}: unknown format {suffix or '(no suffix)'!r} (use .npz or .json)")
    missing = [k for k in ("train", "validation", "test") if k not in parts]
    if missing:
        raise ValueError(f"split file {str(path)!r} has no {missing} indices (needs train, validation and test)")
    return parts


def history_to_json(history: dict) -> dict:
    """The JSON-serialisable part of a training history (no per-star arrays)."""
    return {k: v for k, v in history.items() if k not in ("split", "E_fit")}


def save_training_bundle(emu: Emulator, history: dict, out_dir, *, catalog_path=None) -> Path:
    """Write the trained emulator as a bundle with ``extras/history.json`` and ``extras/split.npz``.

    split.npz holds the catalogue row indices of the train/validation/test split
    and the final per-star reddening (E, σ_E, in-fit flag) of the train+validation stars.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        hpath = Path(tmp) / "history.json"
        hpath.write_text(json.dumps(history_to_json(history), indent=1, default=float) + "\n")
        spath = Path(tmp) / "split.npz"
        arrays = {k: np.asarray(v) for k, v in history["split"].items()}
        for k, v in history.get("E_fit", {}).items():
            arrays[f"fit_{k}"] = np.asarray(v)
        np.savez(spath, **arrays)
        last = history["iterations"][-1] if history["iterations"] else {}
        training = dict(history["config"])
        training.update({
            "catalog": None if catalog_path is None else str(catalog_path),
            "n_stars": history["n_stars"],
            "n_train": int(history["split"]["train"].size),
            "n_validation": int(history["split"]["validation"].size),
            "n_test": int(history["split"]["test"].size),
            "iterations_done": len(history["iterations"]),
            "final_train_loss": last.get("train_loss"),
            "final_val_loss": last.get("val_loss"),
            "dds_infer_version": __version__,
            "procedure": "Green et al. (2021) section 4: iterative chi^2 training, Eqs. 4-9, 15",
        })
        return save_bundle(emu, out_dir, extras={"history.json": hpath, "split.npz": spath},
                           manifest_extra={"training": training})
