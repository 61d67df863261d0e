"""The queue NUTS engine (dds_infer.nuts_queue): the same sampler as run_nuts_batch without
lockstep. Small NumPyro models with known posteriors; the schedule (slots, block size, which
stars share a call) must not change a single draw."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from dds_infer.engine import run_nuts_batch, star_keys
from dds_infer.nuts_queue import run_nuts_queue


def gauss_model(star, scale):
    """x ~ N(m, (scale s)²) in 3-D, y ~ Exponential(mean s), w ~ LogNormal(0, 1): known moments."""
    numpyro.sample("x", dist.Normal(star["m"], scale * star["s"]).expand([3]).to_event(1))
    numpyro.sample("y", dist.Exponential(1.0 / star["s"]))
    numpyro.sample("w", dist.LogNormal(0.0, 1.0))


def _stars(n):
    return {"m": jnp.linspace(-1.0, 1.0, n), "s": jnp.linspace(0.5, 3.0, n)}


SCALE = (jnp.asarray(1.0),)


def test_schedule_does_not_change_any_draw():
    stars, keys = _stars(5), star_keys(7, np.arange(5))
    run = dict(num_warmup=40, num_samples=30, num_chains=3, max_tree_depth=6)
    # on the suite's 2 devices: 4 and 16 slots per device (2 slots would round differently: see the module)
    ref = run_nuts_queue(gauss_model, stars, SCALE, None, keys, n_slots=8, block=8, **run)
    other = run_nuts_queue(gauss_model, stars, SCALE, None, keys, n_slots=32, block=3, **run)
    # other companions: stars 1-2 padded with copies of star 2 (pad_to: the same compiled program)
    sub = run_nuts_queue(gauss_model, jax.tree_util.tree_map(lambda a: a[1:3], stars), SCALE, None, keys[1:3],
                         n_slots=8, block=8, pad_to=5, **run)
    for k in ("x", "y", "w"):
        a = np.asarray(ref.samples[k])
        assert a.shape[:3] == (5, 3, 30)
        np.testing.assert_array_equal(a, np.asarray(other.samples[k]))
        np.testing.assert_array_equal(a[1:3], np.asarray(sub.samples[k]))
    np.testing.assert_array_equal(np.asarray(ref.num_steps), np.asarray(other.num_steps))
    np.testing.assert_array_equal(np.asarray(ref.step_size), np.asarray(other.step_size))
    # padding stars' chains are never started: padded to 16 instead of 5, the same draws in the same
    # number of iterations on every device (the runner pads its chunks to a power of two for free)
    wide = run_nuts_queue(gauss_model, jax.tree_util.tree_map(lambda a: a[1:3], stars), SCALE, None, keys[1:3],
                          n_slots=8, block=8, pad_to=16, **run)
    np.testing.assert_array_equal(np.asarray(wide.iterations), np.asarray(sub.iterations))
    for k in ("x", "y", "w"):
        np.testing.assert_array_equal(np.asarray(wide.samples[k]), np.asarray(sub.samples[k]))
    # chains differ from each other and from another seed
    a = np.asarray(ref.samples["y"])
    assert not np.array_equal(a[:, 0], a[:, 1])
    seed2 = run_nuts_queue(gauss_model, stars, SCALE, None, star_keys(8, np.arange(5)), n_slots=8, block=8, **run)
    assert not np.array_equal(a, np.asarray(seed2.samples["y"]))
    # the iteration count: at least the longest job's leapfrog steps, at most all jobs' in sequence
    steps = np.asarray(ref.num_steps).sum(-1)  # sampling phase only: a lower bound per job
    assert steps.max() <= int(np.asarray(ref.iterations).max())


@pytest.mark.slow
def test_same_posterior_and_adaptation_as_the_batch_engine():
    """Known moments, and the same step sizes / acceptance / tree sizes as NumPyro's kernel."""
    n = 16
    stars, keys = _stars(n), star_keys(1, np.arange(n))
    run = dict(num_warmup=300, num_samples=600, num_chains=4, target_accept_prob=0.8, max_tree_depth=8)
    q = run_nuts_queue(gauss_model, stars, SCALE, None, keys, n_slots=24, **run)
    b = run_nuts_batch(gauss_model, stars, SCALE, None, keys, **run)
    s, m = np.asarray(stars["s"]), np.asarray(stars["m"])
    for res in (q, b):
        x = np.asarray(res.samples["x"]).reshape(n, -1, 3)
        y = np.asarray(res.samples["y"]).reshape(n, -1)
        logw = np.log(np.asarray(res.samples["w"])).ravel()
        # pooled over stars: 16 × 2400 draws (ESS ~ 1/3 of that); tolerances ~5 MC standard errors
        assert np.mean((x.mean(1) - m[:, None]) / s[:, None]) == pytest.approx(0.0, abs=0.03)
        assert np.mean(x.std(1) / s[:, None]) == pytest.approx(1.0, abs=0.02)
        assert np.mean(y.mean(1) / s) == pytest.approx(1.0, abs=0.03)
        assert np.mean(y.std(1) / s) == pytest.approx(1.0, abs=0.05)
        assert logw.mean() == pytest.approx(0.0, abs=0.04) and logw.std() == pytest.approx(1.0, abs=0.03)
    for stat in ("step_size", "accept_prob", "num_steps"):
        qv, bv = float(np.mean(getattr(q, stat))), float(np.mean(getattr(b, stat)))
        assert qv == pytest.approx(bv, rel=0.05), stat
    assert float(np.mean(q.accept_prob)) > 0.75  # dual averaging reached (at least) the target
    assert bool(np.all(q.init_valid)) and not bool(np.any(q.diverging))


def test_bad_arguments():
    stars, keys = _stars(2), star_keys(0, np.arange(2))
    with pytest.raises(ValueError, match="n_slots"):
        run_nuts_queue(gauss_model, stars, SCALE, None, keys, n_slots=0, num_warmup=2, num_samples=2)
    with pytest.raises(ValueError, match="keys"):
        run_nuts_queue(gauss_model, stars, SCALE, None, keys[:1], num_warmup=2, num_samples=2)
    with pytest.raises(ValueError, match="init_params"):
        run_nuts_queue(gauss_model, stars, SCALE, {"x": jnp.zeros((2, 3, 3))}, keys, num_chains=2,
                       num_warmup=2, num_samples=2)


@pytest.mark.slow
def test_runner_with_the_queue_engine_resumes_and_is_fingerprinted(tmp_path, capsys):
    """infer_catalog(engine="queue"): chunks (last one padded), resume = uninterrupted run (the
    resumed one with the progress bar, fed from inside the compiled loop), and a folder written by
    the batch engine is not silently resumed by the queue engine."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _toy_model import InferenceConfig, mock_catalog, star_data_from_catalog, star_model

    from dds_infer import init_emulator
    from dds_infer.runner import ManifestMismatchError, infer_catalog

    emu = init_emulator(jax.random.key(0))
    cat, _ = mock_catalog(emu, 6, seed=2)
    kw = dict(batch_size=4, num_chains=2, num_warmup=40, num_samples=30, seed=0, model=star_model,
              star_data_fn=star_data_from_catalog, progress=False, engine="queue", n_slots=8)
    full = infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "a", **kw)
    assert full.samples["mu"].shape == (6, 2, 30)
    assert infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "b", stop_after_chunks=1, **kw) is None
    capsys.readouterr()
    resumed = infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "b", **dict(kw, n_slots=16, progress=True))
    for k in full.samples:  # n_slots is not part of the fingerprint: it does not change the draws
        np.testing.assert_array_equal(full.samples[k], resumed.samples[k])
    assert "6/6" in capsys.readouterr().err  # the bar reached every star
    with pytest.raises(ManifestMismatchError, match="different run"):
        infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "b", **dict(kw, engine="batch"))
    with pytest.raises(ValueError, match="engine"):
        infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "c", **dict(kw, engine="fast"))


def test_packed_select_equals_a_select_per_leaf():
    """nuts_leaf._where packs each dtype's leaves into one vector before selecting; it must give
    exactly jnp.where leaf by leaf (values, dtypes, shapes), also under vmap and with a leaf
    whose shapes differ between the two trees (broadcast, selected alone)."""
    from dds_infer.nuts_leaf import _where

    rng = np.random.default_rng(0)
    a = dict(v=jnp.asarray(rng.normal(size=5), jnp.float32), s=jnp.float32(2.5), i=jnp.int32(3),
             m=jnp.asarray(rng.normal(size=(2, 3)), jnp.float32), b=jnp.asarray(True), k=jnp.arange(4, dtype=jnp.int32),
             w=jnp.float32(1.0))
    b = dict(v=jnp.asarray(rng.normal(size=5), jnp.float32), s=jnp.float32(-1.0), i=jnp.int32(-7),
             m=jnp.asarray(rng.normal(size=(2, 3)), jnp.float32), b=jnp.asarray(False), k=-jnp.arange(4, dtype=jnp.int32),
             w=jnp.asarray(rng.normal(size=3), jnp.float32))
    for pred in (True, False):
        got, want = _where(jnp.asarray(pred), a, b), jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)
        for key in a:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
            np.testing.assert_array_equal(got[key], want[key])
    preds = jnp.asarray([True, False, True])
    stack = lambda t: jax.tree_util.tree_map(lambda x: jnp.stack([x, x + 1, x * 2]), t)  # noqa: E731
    got = jax.vmap(_where)(preds, stack(a), stack(b))
    want = jax.vmap(lambda p, x, y: jax.tree_util.tree_map(lambda u, v: jnp.where(p, u, v), x, y))(
        preds, stack(a), stack(b))
    for key in a:
        np.testing.assert_array_equal(got[key], want[key])


def test_slot_packing_round_trips_exactly():
    """The queue carries each slot's state packed, one flat vector per dtype (nuts_leaf.pack):
    unpacking must give back every leaf exactly (values, dtypes, shapes; None leaves stay None),
    alone and under vmap, with the layout taken from shapes only (jax.eval_shape)."""
    from typing import NamedTuple

    from dds_infer.nuts_leaf import pack, packing_of, unpack

    class Inner(NamedTuple):
        z: jnp.ndarray
        n: jnp.ndarray
        gone: None

    rng = np.random.default_rng(1)
    tree = dict(v=jnp.asarray(rng.normal(size=5), jnp.float32), s=jnp.float32(-2.5), i=jnp.int32(-3),
                m=jnp.asarray(rng.normal(size=(2, 3)), jnp.float32), b=jnp.asarray(True),
                key=jnp.asarray([7, 2**32 - 1], jnp.uint32), inner=Inner(jnp.asarray(rng.normal(size=4), jnp.float32),
                                                                          jnp.arange(3, dtype=jnp.int32), None))
    packing = packing_of(jax.eval_shape(lambda: tree))
    packed = pack(tree, packing)
    assert {k: v.shape for k, v in packed.items()} == {"float32": (16,), "int32": (4,), "bool": (1,), "uint32": (2,)}
    back = unpack(packed, packing)
    assert back["inner"].gone is None
    for got, want in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(tree)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    # a scalar where the layout has a vector is broadcast (as jnp.where would)
    wide = unpack(pack(dict(tree, v=jnp.float32(3.0)), packing), packing)
    np.testing.assert_array_equal(wide["v"], np.full(5, 3.0, np.float32))
    stack = jax.tree_util.tree_map(lambda x: jnp.stack([x, ~x, x] if x.dtype == bool else [x, x + 1, x * 2]), tree)
    back = jax.vmap(lambda t: unpack(pack(t, packing), packing))(stack)
    for got, want in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(stack)):
        np.testing.assert_array_equal(got, want)


def test_queue_is_the_default_engine_with_large_chunks(tmp_path, monkeypatch, capsys):
    """dds-infer infer (and dds_infer.infer) sample with the queue engine in DEFAULT_CHUNK-star chunks
    unless told otherwise; --engine batch keeps the lockstep engine's 64-star batches; the grid
    path is not a NUTS engine."""
    import json

    from conftest import shipped_infer_cli
    from dds_infer.cli import main
    from dds_infer.nuts_queue import DEFAULT_CHUNK
    from dds_infer.runner import DEFAULT_ENGINE, default_batch_size

    assert DEFAULT_ENGINE == "queue"
    assert default_batch_size() == DEFAULT_CHUNK and default_batch_size("nuts", "batch") == 64
    calls, common = shipped_infer_cli(monkeypatch, tmp_path)
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "queue"
    assert calls[-1]["engine"] == "queue" and calls[-1]["batch_size"] == DEFAULT_CHUNK
    assert main([*common, "--out", str(tmp_path / "b"), "--engine", "batch"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "batch"
    assert calls[-1]["engine"] == "batch" and calls[-1]["batch_size"] == 64
    assert main([*common, "--out", str(tmp_path / "c"), "--method", "grid"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] is None
    assert "engine" not in calls[-1] and calls[-1]["batch_size"] == default_batch_size("grid")


def test_progress_reports_every_chain_without_changing_a_draw(capsys):
    """on_finished hears of every chain as it finishes, from inside the compiled loop (3 stars: on 2
    devices one padding star, whose chains never start), and the draws are those of the program
    without the callback."""
    stars, keys = _stars(3), star_keys(3, np.arange(3))
    run = dict(num_warmup=30, num_samples=20, num_chains=2, max_tree_depth=5, n_slots=4)
    heard = []
    with_cb = run_nuts_queue(gauss_model, stars, SCALE, None, keys, on_finished=heard.append, **run)
    plain = run_nuts_queue(gauss_model, stars, SCALE, None, keys, **run)
    for k in ("x", "y", "w"):
        assert np.array_equal(np.asarray(with_cb.samples[k]), np.asarray(plain.samples[k])), k
    assert all(n > 0 for n in heard) and len(heard) > 1  # as chains finish, not once at the end
    assert sum(heard) == 3 * run["num_chains"]
