"""The emulator's valid θ domain: the density of its training set in θ.

Green et al. (2021, §4/§5) recommend trusting the model's absolute magnitudes
only where the training-set density exceeds ~0.01-0.1 of its peak. A
:class:`TrainingDomain` stores that density on a regular (Teff, logg, [Fe/H])
grid, per output entry (entry 0: the absolute magnitude, i.e. the parallax-
constrained entry; entries j > 0: colour j), and interpolates it linearly.
It is a pytree, so it can be closed over or passed into jitted code.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.ndimage import map_coordinates
from scipy.ndimage import gaussian_filter

__all__ = ["TrainingDomain", "density_from_samples"]


@struct.dataclass
class TrainingDomain:
    """Peak-normalised training density on a regular θ grid.

    density: (K, nT, ng, nf) with K density maps (K = 1 or one per band).
    teff, logg, feh: 1-D uniformly spaced grid axes.
    labels: names of the K maps (static).
    """

    density: jnp.ndarray
    teff: jnp.ndarray
    logg: jnp.ndarray
    feh: jnp.ndarray
    labels: tuple[str, ...] = struct.field(pytree_node=False, default=())

    @property
    def bounds(self) -> np.ndarray:
        """(3, 2) array of [min, max] of the grid per θ axis."""
        return np.array(
            [[float(a[0]), float(a[-1])] for a in (self.teff, self.logg, self.feh)]
        )

    def _fractional_index(self, theta):
        theta = jnp.asarray(theta)
        idx = []
        for k, ax in enumerate((self.teff, self.logg, self.feh)):
            step = (ax[-1] - ax[0]) / (ax.shape[0] - 1)
            idx.append((theta[..., k] - ax[0]) / step)
        return idx

    def density_at(self, theta, entry: int = 0):
        """Linearly interpolated density of map ``entry`` at θ (..., 3).

        Zero outside the grid. Pure jax: usable under jit/vmap/grad.
        """
        idx = self._fractional_index(theta)
        shape = idx[0].shape
        coords = [i.reshape(-1) for i in idx]
        val = map_coordinates(self.density[entry], coords, order=1, mode="constant", cval=0.0)
        return val.reshape(shape)

    def in_domain(self, theta, threshold: float = 0.01, entry: int = 0):
        """True where the training density of map ``entry`` exceeds ``threshold``."""
        return self.density_at(theta, entry) > threshold


def density_from_samples(theta: np.ndarray, *, bins=(50, 50, 50), ranges=None,
                         smooth_sigma: float = 1.0, label: str = "all") -> TrainingDomain:
    """Build a peak-normalised :class:`TrainingDomain` from training θ samples.

    theta: (N, 3) physical θ of the training stars. ``ranges`` defaults to the
    Green2020 grid (Teff 2500-9000 K, logg -2-7, [Fe/H] -2.5-1). The histogram
    is smoothed with a Gaussian of ``smooth_sigma`` bins and divided by its
    maximum.
    """
    theta = np.asarray(theta, dtype=float)
    theta = theta[np.all(np.isfinite(theta), axis=1)]
    if ranges is None:
        ranges = ((2500.0, 9000.0), (-2.0, 7.0), (-2.5, 1.0))
    # histogramdd edges such that bin centres are the grid axes
    axes = [np.linspace(lo, hi, n) for (lo, hi), n in zip(ranges, bins)]
    edges = []
    for ax in axes:
        d = ax[1] - ax[0]
        edges.append(np.concatenate([ax - d / 2, [ax[-1] + d / 2]]))
    hist, _ = np.histogramdd(theta, bins=edges)
    if smooth_sigma > 0:
        hist = gaussian_filter(hist, smooth_sigma, mode="constant")
    peak = hist.max()
    dens = hist / peak if peak > 0 else hist
    return TrainingDomain(
        density=jnp.asarray(dens[None], dtype=jnp.float32),
        teff=jnp.asarray(axes[0]),
        logg=jnp.asarray(axes[1]),
        feh=jnp.asarray(axes[2]),
        labels=(label,),
    )
