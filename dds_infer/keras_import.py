"""Import the published Green et al. (2021) Keras network (HDF5) without TensorFlow.

The Keras 2.2.4-tf file stores weights under
``model_weights/<layer>/<layer>/{kernel:0,bias:0}`` and the architecture as JSON
in the root attribute ``model_config``. Keras ``Dense`` computes ``x @ kernel +
bias``, exactly as flax ``nn.Dense``, so kernels map over unchanged. The fixed
``BA`` layer (kernel = B^T) is checked to be the colour transform of Eq. 5.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import jax.numpy as jnp
import numpy as np

from .domain import TrainingDomain
from .emulator import Emulator
from .passbands import GREEN2020, BandSet

__all__ = ["read_keras_weights", "import_keras_model", "read_input_density", "KerasImportError"]


class KerasImportError(ValueError):
    """The HDF5 file is not a network of the Green2020 architecture."""


def _layer_configs(f: h5py.File) -> dict[str, dict]:
    raw = f.attrs.get("model_config")
    if raw is None:
        raise KerasImportError("no 'model_config' attribute: not a Keras HDF5 model file")
    if isinstance(raw, bytes):
        raw = raw.decode()
    cfg = json.loads(raw)
    return {layer["config"]["name"]: layer for layer in cfg["config"]["layers"]}


def read_keras_weights(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """{layer: {"kernel": array, "bias": array}} for every layer with weights."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        if "model_weights" not in f:
            raise KerasImportError(f"{path}: no 'model_weights' group")
        mw = f["model_weights"]
        for layer in mw:
            if layer not in mw[layer]:
                continue
            g = mw[layer][layer]
            out[layer] = {k.split(":")[0]: np.asarray(g[k][()]) for k in g}
    return out


def _hidden_layer_names(configs: dict[str, dict]) -> list[str]:
    """Dense sigmoid layers of the M sector, in data-flow order (from 'theta' to 'BM')."""
    chain, current = [], "BM"
    while True:
        inbound = configs[current]["inbound_nodes"][0][0][0]
        if inbound == "theta":
            break
        chain.append(inbound)
        current = inbound
    return chain[::-1]


def import_keras_model(
    h5_path: str | Path,
    normalization: str | Path | dict,
    *,
    bands: BandSet = GREEN2020,
    density_path: str | Path | None = None,
) -> Emulator:
    """Build an :class:`Emulator` from the published Keras HDF5 network.

    normalization: path to the JSON with ``theta_med``/``theta_std`` (or the dict).
    density_path: optional input-density HDF5 (``rho_stars``) attached as the
    emulator's :class:`TrainingDomain`.
    """
    if not isinstance(normalization, dict):
        normalization = json.loads(Path(normalization).read_text())
    weights = read_keras_weights(h5_path)
    with h5py.File(h5_path, "r") as f:
        configs = _layer_configs(f)
        keras_version = f.attrs.get("keras_version", b"")
    keras_version = keras_version.decode() if isinstance(keras_version, bytes) else str(keras_version)

    for needed in ("BM", "R", "BA"):
        if needed not in weights:
            raise KerasImportError(f"{h5_path}: layer {needed!r} missing; layers: {sorted(weights)}")
    hidden_names = _hidden_layer_names(configs)
    for name in hidden_names:
        act = configs[name]["config"].get("activation")
        if act != "sigmoid":
            raise KerasImportError(f"hidden layer {name!r} has activation {act!r}, expected sigmoid")
    if configs["R"]["config"].get("activation") != "exponential":
        raise KerasImportError("layer 'R' must have exponential activation")

    n_bands = weights["BM"]["kernel"].shape[1]
    if n_bands != len(bands):
        raise KerasImportError(f"network has {n_bands} outputs but band set {bands.name!r} has {len(bands)}")
    expected_bt = np.eye(n_bands)
    expected_bt[0, 1:] = -1.0  # kernel = B^T, B = [[1,0..],[-1,1,0..],...]
    if not np.allclose(weights["BA"]["kernel"], expected_bt):
        raise KerasImportError("layer 'BA' kernel is not B^T of the colour transform (Eq. 5)")

    params = {}
    for i, name in enumerate(hidden_names):
        params[f"hidden_{i + 1}"] = {
            "kernel": jnp.asarray(weights[name]["kernel"]),
            "bias": jnp.asarray(weights[name]["bias"]),
        }
    for name in ("BM", "R"):
        params[name] = {"kernel": jnp.asarray(weights[name]["kernel"]), "bias": jnp.asarray(weights[name]["bias"])}
    hidden = tuple(int(weights[n]["kernel"].shape[1]) for n in hidden_names)

    emu = Emulator(
        params=params,
        theta_med=jnp.asarray(normalization["theta_med"], dtype=jnp.float32),
        theta_std=jnp.asarray(normalization["theta_std"], dtype=jnp.float32),
        bands=bands,
        hidden=hidden,
    ).with_provenance(
        source="Green et al. (2021) published network, doi:10.5281/zenodo.3902382",
        imported_from=str(Path(h5_path).name),
        keras_version=keras_version,
        keras_layers={"hidden": hidden_names, "BM": "BM", "R": "R"},
    )
    if density_path is not None:
        emu = emu.with_domain(read_input_density(density_path))
    return emu


def read_input_density(path: str | Path) -> TrainingDomain:
    """The Green2020 training-density grid (``rho_stars``) as a :class:`TrainingDomain`."""
    with h5py.File(path, "r") as f:
        d = f["rho_stars"]
        order = [s.decode() if isinstance(s, bytes) else str(s) for s in d.attrs["axis_order"]]
        if order != ["band", "teff", "logg", "feh"]:
            raise KerasImportError(f"unexpected rho_stars axis order {order}")
        labels = tuple(s.decode() if isinstance(s, bytes) else str(s) for s in d.attrs["bands"])
        return TrainingDomain(
            density=jnp.asarray(d[()], dtype=jnp.float32),
            teff=jnp.asarray(d.attrs["teff"]),
            logg=jnp.asarray(d.attrs["logg"]),
            feh=jnp.asarray(d.attrs["feh"]),
            labels=labels,
        )
