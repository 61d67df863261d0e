"""dds_infer: data-driven stellar models (Green et al. 2021) in JAX/NumPyro.

Train the stellar-model emulator on spectroscopic x photometric x Gaia
catalogues, and infer (Teff, logg, [Fe/H]), distance modulus and reddening
from photometry with the emulator as a differentiable likelihood.
"""

__version__ = "0.1.0"

from .passbands import GREEN2020, BandSet, Passband, get_bandset, register_bandset  # noqa: E402
from .catalog import CatalogError, StarCatalog  # noqa: E402
from .emulator import Emulator, StellarModelNet, init_emulator  # noqa: E402
from .bundle import load_bundle, save_bundle  # noqa: E402
from .evaluate import evaluate_catalog  # noqa: E402

_LAZY = {  # imported on first use, so loading and inference never import the training code
    "TrainConfig": "training", "train": "training",
    "infer": "pipeline", "InferenceConfig": "inference", "default_prior": "priors",
    "Posterior": "posterior", "open_run": "run_outputs", "MockConfig": "mock", "make_mock": "mock", "use_cpu_cores": "devices",
    "calibrate_band_offsets": "band_offsets", "read_band_offsets": "band_offsets",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "__version__",
    "GREEN2020",
    "BandSet",
    "Passband",
    "get_bandset",
    "register_bandset",
    "CatalogError",
    "StarCatalog",
    "Emulator",
    "StellarModelNet",
    "init_emulator",
    "load_bundle",
    "save_bundle",
    "evaluate_catalog",
    "use_cpu_cores",
    "TrainConfig",
    "train",
    "infer",
    "InferenceConfig",
    "default_prior",
    "Posterior",
    "open_run",
    "MockConfig",
    "make_mock",
    "calibrate_band_offsets",
    "read_band_offsets",
]
