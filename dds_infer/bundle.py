"""Emulator bundles: a portable directory holding one trained stellar model.

Layout (``FORMAT_VERSION`` 1)::

    <dir>/manifest.json     bands, θ normalisation, architecture, valid domain,
                            provenance, format version, file list
    <dir>/weights.msgpack   flax-serialised parameter pytree
    <dir>/domain.h5         optional training density in θ (TrainingDomain)
    <dir>/extras/...        optional extra files (training history, split, ...)

Loading needs only this module (no training code, no TensorFlow). Writes are
atomic: the bundle is assembled in a temporary sibling directory and renamed
into place, so a crash never leaves a half-written bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from . import __version__
from .domain import TrainingDomain
from .emulator import Emulator, StellarModelNet
from .passbands import BandSet

__all__ = ["save_bundle", "load_bundle", "read_manifest", "BundleError", "FORMAT_VERSION"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.msgpack"
DOMAIN = "domain.h5"


class BundleError(ValueError):
    """A bundle directory that cannot be read."""


def _manifest(emu: Emulator, extra: dict | None) -> dict:
    dom = None
    if emu.domain is not None:
        dom = {
            "file": DOMAIN,
            "kind": "training density (peak-normalised) on a regular theta grid",
            "maps": list(emu.domain.labels),
            "bounds": {n: list(map(float, b)) for n, b in zip(("teff", "logg", "feh"), emu.domain.bounds)},
            "recommended_threshold": [0.01, 0.1],
        }
    man = {
        "format": "dds_infer emulator bundle",
        "format_version": FORMAT_VERSION,
        "dds_infer_version": __version__,
        "inputs": {
            "theta": ["teff [K]", "logg [dex]", "feh [dex]"],
            "E": "reddening (SFD-like scale, as in Green et al. 2021)",
        },
        "outputs": {
            "absolute_mags": "M(theta) per band [mag]",
            "reddening_vector": "R(theta) per band [mag per unit E]",
            "reference_band": emu.bands.names[0],
        },
        "bands": emu.bands.to_dict(),
        "theta_normalization": {
            "theta_med": [float(v) for v in np.asarray(emu.theta_med)],
            "theta_std": [float(v) for v in np.asarray(emu.theta_std)],
            "rule": "x = (theta - theta_med) / theta_std",
        },
        "architecture": {
            "class": "StellarModelNet",
            "hidden": list(emu.hidden),
            "hidden_activation": "sigmoid",
            "M_output": "linear, B M = (M_ref, M_j - M_ref)",
            "R_layer": "dense on x, exp activation",
            "n_bands": emu.n_bands,
        },
        "domain": dom,
        "provenance": emu.provenance,
        "files": {"weights": WEIGHTS},
    }
    if extra:
        man.update(extra)
    return man


def save_bundle(emu: Emulator, out_dir: str | Path, *, extras: dict[str, str | Path] | None = None,
                manifest_extra: dict | None = None, overwrite: bool = True) -> Path:
    """Write ``emu`` as a bundle directory (atomically). Returns the path.

    extras: {name: file} copied into ``extras/`` (e.g. training history).
    manifest_extra: additional top-level manifest entries (JSON-serialisable).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (pass overwrite=True)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        params_np = {"params": jax.tree_util.tree_map(np.asarray, emu.params)}
        (tmp / WEIGHTS).write_bytes(serialization.msgpack_serialize(params_np))
        if emu.domain is not None:
            with h5py.File(tmp / DOMAIN, "w") as f:
                d = f.create_dataset("density", data=np.asarray(emu.domain.density), compression="gzip")
                d.attrs["axis_order"] = ["map", "teff", "logg", "feh"]
                d.attrs["labels"] = list(emu.domain.labels)
                for ax in ("teff", "logg", "feh"):
                    f.create_dataset(ax, data=np.asarray(getattr(emu.domain, ax)))
        man = _manifest(emu, manifest_extra)
        if extras:
            (tmp / "extras").mkdir()
            man["files"]["extras"] = {}
            for name, src in extras.items():
                shutil.copy2(src, tmp / "extras" / name)
                man["files"]["extras"][name] = f"extras/{name}"
        (tmp / MANIFEST).write_text(json.dumps(man, indent=2, sort_keys=False) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{path} is not an emulator bundle: {MANIFEST} not found")
    man = json.loads(mpath.read_text())
    ver = man.get("format_version")
    if ver is None or ver > FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: bundle format_version {ver!r} not supported by this dds_infer "
            f"(supports <= {FORMAT_VERSION}); upgrade dds_infer"
        )
    return man


def load_bundle(path: str | Path) -> Emulator:
    """Load an emulator bundle directory (see module docstring)."""
    path = Path(path)
    man = read_manifest(path)
    bands = BandSet.from_dict(man["bands"])
    arch = man["architecture"]
    hidden = tuple(int(h) for h in arch["hidden"])
    raw = serialization.msgpack_restore((path / man["files"]["weights"]).read_bytes())
    params = jax.tree_util.tree_map(jnp.asarray, raw["params"])
    # check the stored tree matches the architecture in the manifest
    net = StellarModelNet(n_bands=len(bands), hidden=hidden)
    ref = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3))))["params"]
    got_shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), params)
    ref_shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), ref)
    if got_shapes != ref_shapes:
        raise BundleError(f"{path}: weights do not match architecture {arch}: {got_shapes} vs {ref_shapes}")
    domain = None
    if man.get("domain"):
        with h5py.File(path / man["domain"]["file"], "r") as f:
            labels = tuple(s.decode() if isinstance(s, bytes) else str(s) for s in f["density"].attrs["labels"])
            domain = TrainingDomain(
                density=jnp.asarray(f["density"][()]),
                teff=jnp.asarray(f["teff"][()]),
                logg=jnp.asarray(f["logg"][()]),
                feh=jnp.asarray(f["feh"][()]),
                labels=labels,
            )
    norm = man["theta_normalization"]
    return Emulator(
        params=params,
        theta_med=jnp.asarray(norm["theta_med"], dtype=jnp.float32),
        theta_std=jnp.asarray(norm["theta_std"], dtype=jnp.float32),
        domain=domain,
        bands=bands,
        hidden=hidden,
        provenance_json=json.dumps(man.get("provenance", {}), sort_keys=True, default=str),
    )

