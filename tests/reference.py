"""Independent float64 numpy reference of the published Keras network (test helper)."""

import json

import h5py
import numpy as np


def _reference_forward(h5_path, norm_path, theta, E):
    """B(M + E R) computed in float64 numpy straight from the raw Keras weights.

    Follows the graph in the file's model_config: hidden_1 -> hidden_2 -> BM;
    R = exp(dense(x)); A = E * R; BA = A @ kernel(BA); output BM + BA.
    """
    with h5py.File(h5_path, "r") as f:
        w = f["model_weights"]

        def layer(name):
            g = w[name][name]
            return (np.asarray(g["kernel:0"], dtype=np.float64),
                    np.asarray(g["bias:0"], dtype=np.float64) if "bias:0" in g else None)

        k1, b1 = layer("stellar_model_hidden_1")
        k2, b2 = layer("stellar_model_hidden_2")
        kbm, bbm = layer("BM")
        kr, br = layer("R")
        kba, _ = layer("BA")
    norm = json.loads(open(norm_path).read())
    x = (theta - np.asarray(norm["theta_med"])) / np.asarray(norm["theta_std"])
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    h = sig(x @ k1 + b1)
    h = sig(h @ k2 + b2)
    bm = h @ kbm + bbm
    a = E[:, None] * np.exp(x @ kr + br)
    return bm + a @ kba


def reference_jacobian(h5_path, norm_path, theta, E, eps=(2.0, 2e-3, 2e-3)):
    """d[M + E R]/dθ (band space) by float64 central differences of the reference net."""
    nb = 13
    B_inv = np.eye(nb)
    B_inv[1:, 0] = 1.0  # band space from colour space
    J = np.zeros((theta.shape[0], nb, 3))
    for k in range(3):
        d = np.zeros(3)
        d[k] = eps[k]
        up = _reference_forward(h5_path, norm_path, theta + d, E) @ B_inv.T
        dn = _reference_forward(h5_path, norm_path, theta - d, E) @ B_inv.T
        J[:, :, k] = (up - dn) / (2 * eps[k])
    return J
