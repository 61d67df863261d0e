"""Shared assertion: two Posteriors hold the same arrays (values and dtypes) and attributes."""

import numpy as np


def same_posterior(a, b):
    """Every field of two :class:`dds_infer.posterior.Posterior` equal, value and dtype (NaN == NaN)."""
    for name in ("samples", "sample_stats", "chain_stats", "star_stats"):
        x, y = getattr(a, name), getattr(b, name)
        assert set(x) == set(y), (name, sorted(x), sorted(y))
        for k in x:
            u, v = np.asarray(x[k]), np.asarray(y[k])
            assert u.dtype == v.dtype, (name, k, u.dtype, v.dtype)
            np.testing.assert_array_equal(u, v, err_msg=f"{name}[{k}]")
    for name in ("star_id", "chain_weights", "n_modes", "mode_flag", "in_domain_frac"):
        u, v = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert u.dtype == v.dtype, (name, u.dtype, v.dtype)
        np.testing.assert_array_equal(u, v, err_msg=name)
    assert a.attrs == b.attrs, (a.attrs, b.attrs)
