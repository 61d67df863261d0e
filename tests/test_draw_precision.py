"""Bit rounding of stored draws (dds_infer.draw_precision, infer --keep-bits): the error bound,
ties to even, special values, and a run whose stored draws are exactly the rounded draws of the
same run without it, with smaller chunk files and the setting in the run's fingerprint."""

import sys
from pathlib import Path

import numpy as np
import pytest

from dds_infer.draw_precision import bit_round, check_keep_bits

sys.path.insert(0, str(Path(__file__).parent))
from test_gridpath import FAST, emu, sbc_stars  # noqa: E402,F401  (module fixtures)


def _draws_bytes(run) -> int:
    """Stored (compressed) bytes of the draws in a run's chunk files."""
    import h5py

    total = 0
    for path in (run / "chunks").glob("*.nc"):
        with h5py.File(path, "r") as f:
            total += sum(d.id.get_storage_size() for d in f["posterior"].values() if d.ndim == 3)
    return total


@pytest.mark.parametrize("keep", [1, 5, 10, 12, 16, 22])
def test_error_bound_low_bits_and_idempotence(keep):
    rng = np.random.default_rng(keep)
    x = (rng.standard_normal(20000) * 10.0 ** rng.uniform(-6, 6, 20000)).astype(np.float32)
    r = bit_round(x, keep)
    assert r.dtype == np.float32 and r.shape == x.shape
    rel = np.abs(r.astype(np.float64) - x) / np.abs(x.astype(np.float64))
    assert rel.max() <= 2.0 ** -(keep + 1) * (1 + 1e-6)
    assert np.all(r.view(np.uint32) & np.uint32((1 << (23 - keep)) - 1) == 0)  # the dropped bits are zero
    np.testing.assert_array_equal(bit_round(r, keep), r)
    assert np.all(np.sign(r) == np.sign(x))


def test_ties_to_even_and_special_values():
    q = 2.0 ** -12  # the quantum of [1, 2) at 12 bits
    x = np.array([1 + q / 2, 1 + 1.5 * q, 1 + 0.49 * q, 6000.3, 0.0, -0.0, np.nan, np.inf, -np.inf], np.float32)
    r = bit_round(x, 12)
    assert r[0] == 1.0 and r[1] == np.float32(1 + 2 * q) and r[2] == 1.0  # halves go to the even neighbour
    assert r[3] == 6000.0 and r[4] == 0.0 and np.signbit(r[5])
    assert np.isnan(r[6]) and r[7] == np.inf and r[8] == -np.inf
    np.testing.assert_array_equal(bit_round(x[:6], 23), x[:6])


@pytest.mark.parametrize("bad", [0, 24, -3, 2.5, True, "twelve"])
def test_keep_bits_must_be_1_to_23(bad):
    with pytest.raises(ValueError, match="keep_bits must be an integer from 1 to 23"):
        check_keep_bits(bad)


def test_a_run_stores_the_rounded_draws_of_the_same_run(emu, sbc_stars, tmp_path):  # noqa: F811
    from dds_infer.pipeline import infer
    from dds_infer.posterior import Posterior

    cat, _, prior, config = sbc_stars
    cat = cat.subset(np.arange(12))
    kw = dict(prior=prior, config=config, batch_size=8, seed=3, progress=False, method="grid", grid_settings=FAST)
    exact = infer(cat, emu, tmp_path / "exact", **kw)
    rounded = infer(cat, emu, tmp_path / "r10", keep_bits=10, **kw)
    for v in exact.samples:  # same draws, rounded: the rounding comes after sampling, nothing else changes
        np.testing.assert_array_equal(rounded.samples[v], bit_round(exact.samples[v], 10))
    chunk = Posterior.load(tmp_path / "r10" / "chunks" / "chunk_00000.nc")
    assert chunk.attrs["keep_bits"] == 10
    np.testing.assert_array_equal(chunk.samples["mu"], rounded.samples["mu"][:8])
    assert _draws_bytes(tmp_path / "r10") < 0.7 * _draws_bytes(tmp_path / "exact")
    s_exact, s_round = exact.summary(), rounded.summary()  # the summary describes the stored draws
    np.testing.assert_allclose(s_round["teff_median"], s_exact["teff_median"], rtol=2.0 ** -10)
    assert (s_round["flag"] == s_exact["flag"]).all()
    with pytest.raises(ValueError, match="keep_bits: 10 -> 12"):  # a resume must use the same setting
        infer(cat, emu, tmp_path / "r10", keep_bits=12, **kw)


def test_cli_refuses_keep_bits_outside_1_to_23(tmp_path, capsys):
    from dds_infer.cli import main

    with pytest.raises(SystemExit) as exc:  # refused while parsing, before anything is read
        main(["infer", "--model", "m", "--catalog", "c", "--out", str(tmp_path), "--keep-bits", "30"])
    assert exc.value.code == 2 and "keep_bits must be an integer from 1 to 23" in capsys.readouterr().err
