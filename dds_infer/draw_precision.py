"""Bit rounding of stored posterior draws: fewer bytes per star at a stated relative precision.

A float32 draw carries 23 mantissa bits; the low ones are noise far below any posterior width,
and noise does not compress. :func:`bit_round` keeps ``keep_bits`` of them, rounding to nearest
(ties to even), so the relative error of a draw is at most 2^-(keep_bits+1) and the zeroed bits
compress away (HDF5's byte shuffle + zlib). This is the BitRound of Klöwer et al. (2021, Nature
Computational Science 1, 713, "Compressing atmospheric data into its real information content"),
as in netCDF-C's ``quantize_mode="BitRound"`` and numcodecs' ``BitRound``. On a 1,024-star
grid-path chunk (1,000 draws of 7 variables per star), 12 bits (relative error ≤ 1.2·10⁻⁴:
≤ 0.7 K in T_eff at 6,000 K, ≤ 0.002 mag in μ at 15) store 12.2 MB instead of 21.8 MB.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bit_round", "check_keep_bits", "MANTISSA_BITS"]

MANTISSA_BITS = 23  # float32


def check_keep_bits(keep_bits) -> int:
    """``keep_bits`` as an int in 1..23, else a ValueError saying what is allowed."""
    try:
        ok = not isinstance(keep_bits, bool) and int(keep_bits) == keep_bits and 1 <= int(keep_bits) <= MANTISSA_BITS
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"keep_bits must be an integer from 1 to {MANTISSA_BITS} (float32 mantissa bits), "
                         f"got {keep_bits!r}")
    return int(keep_bits)


def bit_round(x, keep_bits: int) -> np.ndarray:
    """float32 ``x`` with its mantissa rounded to ``keep_bits`` bits (nearest, ties to even); NaN and
    ±inf unchanged; 23 returns the values as they are. Pure numpy, any shape (a new array)."""
    keep = check_keep_bits(keep_bits)
    x = np.asarray(x, dtype=np.float32)
    if keep == MANTISSA_BITS:
        return x.copy()
    drop = np.uint32(MANTISSA_BITS - keep)
    b = x.view(np.uint32)
    half = np.uint32((1 << (int(drop) - 1)) - 1)
    r = ((b + half + ((b >> drop) & np.uint32(1))) & (np.uint32(0xFFFFFFFF) << drop)).view(np.float32)
    return np.where(np.isfinite(x), r, x)
