"""The stellar-model emulator: θ -> absolute magnitudes M(θ) and reddening vector R(θ).

Green et al. (2021), Eq. 2: m = M(θ) + μ + E R(θ). The network has two sectors:

* M sector: MLP on normalised θ (default 2 hidden layers × 32 sigmoid units)
  with a linear output giving B M = (M_ref, M_1 - M_ref, ..., M_{B-1} - M_ref),
  i.e. the absolute magnitude in the reference band (band 0, Gaia G for
  Green2020) and colours X - ref (the transform B of Eq. 5).
* R sector: one dense layer on normalised θ with exp activation (R > 0).

:class:`Emulator` is a pytree (flax ``struct.dataclass``): its methods are pure
functions of θ and E usable under ``jit``/``vmap``/``grad`` and inside NumPyro
models. Batched inputs broadcast: θ has shape (..., 3), E has shape (...).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
from flax import struct

from .domain import TrainingDomain
from .passbands import GREEN2020, BandSet

__all__ = ["StellarModelNet", "Emulator", "init_emulator", "apply_colour_transform", "model_colours", "THETA_NAMES"]

THETA_NAMES = ("teff", "logg", "feh")


class StellarModelNet(nn.Module):
    """Flax module of the paper's network; input is normalised θ (..., 3).

    Returns ``(BM, R)``: B M(θ) (reference magnitude + colours) and R(θ) > 0.
    """

    n_bands: int = 13
    hidden: Sequence[int] = (32, 32)

    @nn.compact
    def __call__(self, x):
        h = x
        for i, width in enumerate(self.hidden):
            h = nn.sigmoid(nn.Dense(width, name=f"hidden_{i + 1}")(h))
        bm = nn.Dense(self.n_bands, name="BM")(h)
        r = jnp.exp(nn.Dense(self.n_bands, name="R")(x))
        return bm, r


def _bm_to_m(bm):
    """Invert B (Eq. 5): (M_ref, M_j - M_ref) -> M."""
    ref = bm[..., :1]
    return jnp.concatenate([ref, bm[..., 1:] + ref], axis=-1)


def apply_colour_transform(m):
    """c = B m (Eq. 5) for m of shape (..., B): (m_ref, m_j - m_ref), without building B."""
    ref = m[..., :1]
    return jnp.concatenate([ref, m[..., 1:] - ref], axis=-1)


def model_colours(bm, R, E):
    """B[M(θ) + E R(θ)] = B M + E·B R (Eqs. 2 and 5) from the network outputs (B M, R)."""
    return bm + jnp.asarray(E)[..., None] * apply_colour_transform(R)


@struct.dataclass
class Emulator:
    """A trained stellar model: parameters + θ normalisation + band list.

    params: flax parameter pytree of :class:`StellarModelNet`.
    theta_med, theta_std: (3,) normalisation, x = (θ - med) / std.
    domain: optional :class:`TrainingDomain` (training density in θ).
    bands, hidden: static configuration.
    provenance_json: static JSON string (where the weights came from).
    """

    params: Any
    theta_med: jnp.ndarray
    theta_std: jnp.ndarray
    domain: TrainingDomain | None = None
    bands: BandSet = struct.field(pytree_node=False, default=GREEN2020)
    hidden: tuple[int, ...] = struct.field(pytree_node=False, default=(32, 32))
    provenance_json: str = struct.field(pytree_node=False, default="{}")

    # --- configuration -------------------------------------------------
    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def net(self) -> StellarModelNet:
        return StellarModelNet(n_bands=self.n_bands, hidden=tuple(self.hidden))

    @property
    def provenance(self) -> dict:
        return json.loads(self.provenance_json)

    def with_domain(self, domain: TrainingDomain | None) -> "Emulator":
        return self.replace(domain=domain)

    def with_provenance(self, **info) -> "Emulator":
        prov = self.provenance
        prov.update(info)
        return self.replace(provenance_json=json.dumps(prov, sort_keys=True, default=str))

    # --- θ normalisation ----------------------------------------------
    def normalize(self, theta):
        """Physical θ (Teff [K], logg, [Fe/H]) -> network input x."""
        return (jnp.asarray(theta) - self.theta_med) / self.theta_std

    def denormalize(self, x):
        return jnp.asarray(x) * self.theta_std + self.theta_med

    # --- forward model (Eq. 2) ----------------------------------------
    def _apply_x(self, x):
        return self.net.apply({"params": self.params}, x)

    def absolute_mag_colours_x(self, x):
        """B M(θ) from normalised input x: (M_ref, M_j - M_ref)."""
        return self._apply_x(x)[0]

    def absolute_mags_x(self, x):
        """M(θ) in band space from normalised input x."""
        return _bm_to_m(self._apply_x(x)[0])

    def reddening_vector_x(self, x):
        """R(θ) from normalised input x."""
        return self._apply_x(x)[1]

    def mags_and_reddening_x(self, x):
        """(M(θ), R(θ)) in band space from normalised input x, one forward pass (Eq. 2)."""
        bm, r = self._apply_x(x)
        return _bm_to_m(bm), r

    def predict_x(self, x, E):
        """M(θ) + E R(θ) (band space) from normalised input x."""
        M, r = self.mags_and_reddening_x(x)
        return M + jnp.asarray(E)[..., None] * r

    def network_outputs(self, theta):
        """(B M(θ), R(θ)) from one forward pass: the two sectors' raw outputs (Eqs. 2, 5)."""
        return self._apply_x(self.normalize(theta))

    def absolute_mags(self, theta):
        """M(θ): absolute magnitudes in each band (Eq. 2), shape (..., B)."""
        return self.absolute_mags_x(self.normalize(theta))

    def absolute_mag_colours(self, theta):
        """B M(θ): absolute reference magnitude and colours X - ref (Eq. 5)."""
        return self.absolute_mag_colours_x(self.normalize(theta))

    def reddening_vector(self, theta):
        """R(θ) > 0: extinction per unit reddening E in each band (Eq. 2)."""
        return self.reddening_vector_x(self.normalize(theta))

    def predict(self, theta, E):
        """M(θ) + E R(θ): extinguished absolute magnitudes; add μ for apparent (Eq. 2)."""
        return self.predict_x(self.normalize(theta), E)

    def predict_apparent(self, theta, mu, E):
        """m = M(θ) + μ + E R(θ) (Eq. 2)."""
        return self.predict(theta, E) + jnp.asarray(mu)[..., None]

    def predict_colours(self, theta, E):
        """B [M(θ) + E R(θ)]: what the published network outputs (``B_M_plus_A``)."""
        return model_colours(*self.network_outputs(theta), E)

    def in_domain(self, theta, threshold: float = 0.01, entry: int = 0):
        """True where the training density exceeds ``threshold`` (True if no domain)."""
        if self.domain is None:
            return jnp.ones(jnp.shape(theta)[:-1], dtype=bool)
        return self.domain.in_domain(theta, threshold, entry)


def init_emulator(key, *, bands: BandSet = GREEN2020, hidden=(32, 32),
                  theta_med=(5372.0, 4.07, -0.25), theta_std=(900.0, 0.9, 0.37)) -> Emulator:
    """A freshly initialised (untrained) emulator, e.g. as a training start point."""
    net = StellarModelNet(n_bands=len(bands), hidden=tuple(hidden))
    params = net.init(key, jnp.zeros((1, 3)))["params"]
    return Emulator(
        params=params,
        theta_med=jnp.asarray(theta_med, dtype=jnp.float32),
        theta_std=jnp.asarray(theta_std, dtype=jnp.float32),
        bands=bands,
        hidden=tuple(int(h) for h in hidden),
    )

