"""Stars spread over JAX devices (dds_infer.devices): the suite runs on two CPU devices
(conftest), so the engines' default here is the two-device path that ``dds-infer`` takes on a
2-core machine. Each share runs alone: a star's draws must not depend on the other share, the
same call must give the same draws, and the posterior must be the right one on both paths."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from dds_infer.devices import balanced_layout, n_devices, padded_size, use_cpu_cores
from dds_infer.engine import run_nuts_batch, star_keys
from dds_infer.nuts_queue import run_nuts_queue

RUN = dict(num_warmup=150, num_samples=200, num_chains=2, max_tree_depth=6)


def exp_model(star):
    """y ~ Exponential(mean s), x ~ N(m, 1): posterior mean of y is s, of x is m."""
    numpyro.sample("y", dist.Exponential(1.0 / star["s"]))
    numpyro.sample("x", dist.Normal(star["m"], 1.0))


def _stars(m, s):
    return {"m": jnp.asarray(m, jnp.float32), "s": jnp.asarray(s, jnp.float32)}


def test_two_devices_in_the_suite_and_checks():
    assert len(jax.local_devices()) == 2 and n_devices() == 2 and n_devices(1) == 1
    with pytest.raises(ValueError, match="between 1 and the 2"):
        n_devices(3)
    assert [padded_size(k, 2) for k in (1, 2, 5)] == [2, 2, 6]
    with warnings.catch_warnings():  # after start: the count in effect, silently when none is asked
        warnings.simplefilter("error")
        assert use_cpu_cores() == 2
    with pytest.warns(UserWarning, match="already started with 2"):
        assert use_cpu_cores(3) == 2
    with pytest.raises(ValueError, match=">= 1"):
        use_cpu_cores(0)


@pytest.mark.parametrize("engine", ["batch", "queue"])
def test_a_share_runs_alone_and_reproducibly(engine):
    """5 stars on 2 devices (padded to 6: shares 0-2 and 3-5). Changing the stars of the second
    share leaves the first share's draws unchanged bit for bit; repeating the call repeats them."""
    run = run_nuts_batch if engine == "batch" else run_nuts_queue
    kw = dict(RUN, **({"n_slots": 4} if engine == "queue" else {}))
    keys = star_keys(3, np.arange(5))
    a = run(exp_model, _stars([0, 1, 2, 3, 4], [1, 2, 3, 4, 5]), (), None, keys, **kw)
    b = run(exp_model, _stars([0, 1, 2, 9, 9], [1, 2, 3, 0.5, 0.5]), (), None, keys, **kw)
    again = run(exp_model, _stars([0, 1, 2, 3, 4], [1, 2, 3, 4, 5]), (), None, keys, **kw)
    for k in ("x", "y"):
        xa, xb = np.asarray(a.samples[k]), np.asarray(b.samples[k])
        assert xa.shape == (5, 2, 200)
        np.testing.assert_array_equal(xa[:3], xb[:3])
        assert not np.array_equal(xa[3:], xb[3:])
        np.testing.assert_array_equal(xa, np.asarray(again.samples[k]))
    if engine == "queue":  # one loop count per device, each at least its longest job's sampling steps
        it = np.asarray(a.iterations)
        steps = np.asarray(a.num_steps).sum(-1)
        assert it.shape == (2,) and steps[:3].max() <= it[0] and steps[3:].max() <= it[1]


def test_balanced_layout_gives_every_device_an_equal_share_of_the_stars():
    for d in (1, 2, 3):
        for n in range(1, 40):
            for size in {padded_size(n, d), padded_size(2 * n, d), padded_size(n + 7, d)}:
                src, active = balanced_layout(n, size, d)
                counts = active.reshape(d, -1).sum(1)
                assert counts.sum() == n and counts.max() - counts.min() <= 1, (n, size, d)
                np.testing.assert_array_equal(src[active], np.arange(n))  # every star once, in order
                assert src.min() >= 0 and src.max() < n
                for share in active.reshape(d, -1):  # each share: its stars first, then padding
                    assert not np.any(share[1:] & ~share[:-1])
            if d <= 2:  # unpadded: the stars in order (the engines' layout before padding was spread)
                src, active = balanced_layout(n, padded_size(n, d), d)
                np.testing.assert_array_equal(src, np.minimum(np.arange(padded_size(n, d)), n - 1))
    with pytest.raises(ValueError, match="cannot lay out"):
        balanced_layout(9, 8, 2)


def test_queue_padding_is_spread_over_the_devices():
    """5 stars padded to 16 on 2 devices: stars 0-2 on the first, 3-4 on the second, as without
    padding (not all 5 on the first), and the same draws: padding stars' chains never start."""
    keys = star_keys(3, np.arange(5))
    stars = _stars([0, 1, 2, 3, 4], [1, 2, 3, 4, 5])
    a = run_nuts_queue(exp_model, stars, (), None, keys, n_slots=4, **RUN)
    b = run_nuts_queue(exp_model, stars, (), None, keys, n_slots=4, pad_to=16, **RUN)
    it, steps = np.asarray(b.iterations), np.asarray(b.num_steps).sum(-1)
    assert it.shape == (2,) and steps[:3].max() <= it[0] and steps[3:].max() <= it[1]
    np.testing.assert_array_equal(it, np.asarray(a.iterations))
    for k in ("x", "y"):
        assert np.asarray(b.samples[k]).shape == (5, 2, 200)
        np.testing.assert_array_equal(np.asarray(a.samples[k]), np.asarray(b.samples[k]))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["batch", "queue"])
def test_one_and_two_devices_sample_the_same_posterior(engine):
    """Known posterior means (y: s, x: m) on 1 and on 2 devices, and the two agree with each
    other within the Monte Carlo error (the draws themselves differ by rounding)."""
    run = run_nuts_batch if engine == "batch" else run_nuts_queue
    n = 8
    stars = _stars(np.linspace(-2, 2, n), np.linspace(0.5, 2.0, n))
    keys = star_keys(11, np.arange(n))
    kw = dict(RUN, num_warmup=300, num_samples=1000)
    means = {}
    for d in (1, 2):
        res = run(exp_model, stars, (), None, keys, devices=d, **kw)
        y, x = (np.asarray(res.samples[k]).reshape(n, -1) for k in ("y", "x"))
        # Monte Carlo error of a mean from 2,000 draws, allowing an ESS of 500
        np.testing.assert_allclose(y.mean(1), np.asarray(stars["s"]), atol=float(4 * 2.0 / np.sqrt(500)))
        np.testing.assert_allclose(x.mean(1), np.asarray(stars["m"]), atol=4 / np.sqrt(500))
        means[d] = np.stack([y.mean(1), x.mean(1)])
    assert np.abs(means[1] - means[2]).max() < 4 * 2.0 / np.sqrt(500) * np.sqrt(2)


def test_runner_records_devices_and_resumes_on_another_count(tmp_path):
    """The device count is not in the run's fingerprint (draws differ only by rounding), so a run
    started on 2 devices resumes on 1; every chunk records the count it ran on."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _toy_model import InferenceConfig, mock_catalog, star_data_from_catalog, star_model

    from dds_infer import init_emulator
    from dds_infer.posterior import Posterior
    from dds_infer.runner import infer_catalog

    emu = init_emulator(jax.random.key(0))
    cat, _ = mock_catalog(emu, 5, seed=2)
    # the settings of test_nuts_queue.py::test_runner_with_the_queue_engine_resumes_and_is_fingerprinted:
    # the two-device program is compiled once for both (the session's compilation cache)
    kw = dict(batch_size=4, num_chains=2, num_warmup=40, num_samples=30, seed=0, model=star_model,
              star_data_fn=star_data_from_catalog, progress=False, engine="queue", n_slots=8)
    assert infer_catalog(cat, emu, None, InferenceConfig(), tmp_path, stop_after_chunks=1, **kw) is None
    post = infer_catalog(cat, emu, None, InferenceConfig(), tmp_path, devices=1, **kw)
    assert post.samples["mu"].shape == (5, 2, 30)
    chunks = [Posterior.load(tmp_path / "chunks" / f"chunk_{k:05d}.nc") for k in (0, 1)]
    assert [int(c.attrs["devices"]) for c in chunks] == [2, 1]


@pytest.mark.parametrize("argv, devices, single_thread", [
    (["infer"], "cores", True),  # inference: one CPU device per core, XLA's own threading off
    (["train", "--catalog", "x"], 1, False),  # training keeps one device and XLA's threading
    (["--cpu-devices", "3", "train"], 3, True),  # asked for explicitly, in either position
    (["infer", "--model", "m", "--cpu-devices", "1"], 1, False),
])
def test_cli_starts_the_devices_its_command_wants(argv, devices, single_thread):
    """In a fresh process (the device count is fixed once JAX starts): what ``dds-infer`` sets up
    before its first JAX computation."""
    import json
    import os
    import subprocess
    import sys

    from dds_infer.devices import SINGLE_THREAD_FLAGS, available_cores

    code = ("import json, os, sys, jax; from dds_infer.cli import _start_devices; _start_devices(sys.argv[1:]); "
            "print(json.dumps([len(jax.devices()), os.environ.get('XLA_FLAGS', '')]))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, check=True)
    n, flags = json.loads(out.stdout.strip().splitlines()[-1])
    assert n == (available_cores() if devices == "cores" else devices)
    assert (SINGLE_THREAD_FLAGS in flags) == (single_thread and n > 1)


def test_compilation_cache_keeps_programs_between_processes(tmp_path):
    """dds-infer's persistent compilation cache (devices.use_compilation_cache), in fresh processes:
    a folder from DDS_JAX_CACHE receives the compiled programs, and a second process loads them
    instead of compiling; "off" disables it; a cache JAX already has is left alone."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, jax, jax.numpy as jnp; from dds_infer.devices import use_compilation_cache; "
            "folder = use_compilation_cache(); "
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
            "from jax._src import monitoring; hits = []; "
            "monitoring.register_event_listener(lambda e, **kw: hits.append(e) if 'cache_hits' in e else None); "
            "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready(); "
            "print(json.dumps([folder, jax.config.jax_compilation_cache_dir, len(hits)]))")
    base = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "DDS_JAX_CACHE")}

    def run(**env):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**base, **env},
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    folder = tmp_path / "cache"
    first = run(DDS_JAX_CACHE=str(folder))
    assert first[:2] == [str(folder)] * 2 and first[2] == 0 and any(folder.iterdir())
    assert run(DDS_JAX_CACHE=str(folder))[2] >= 1  # the second process loads what the first compiled
    assert run(DDS_JAX_CACHE="off")[:2] == [None, None]
    other = str(tmp_path / "theirs")
    assert run(DDS_JAX_CACHE=str(folder), JAX_COMPILATION_CACHE_DIR=other)[:2] == [other, other]


def test_cli_rejects_a_bad_device_count():
    from dds_infer.cli import main

    with pytest.raises(SystemExit, match="--cpu-devices must be >= 1"):
        main(["infer", "--cpu-devices", "0"])


def test_cli_infer_reports_its_devices(tmp_path, capsys, monkeypatch):
    import json

    from conftest import shipped_infer_cli
    from dds_infer.cli import main

    _, common = shipped_infer_cli(monkeypatch, tmp_path)
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert json.loads(capsys.readouterr().out)["devices"] == 2  # the suite's (conftest)
    assert main([*common, "--out", str(tmp_path / "b"), "--method", "grid"]) == 0
    assert json.loads(capsys.readouterr().out)["devices"] == 2  # the grid path spreads its stars too


def test_shard_stars_and_unshard():
    """Shares are computed apart (a per-share sum differs from the global one); unshard gives one
    array on one device, cut to its first rows."""
    from dds_infer.devices import shard_stars, unshard

    x = jnp.arange(8.0)
    out = shard_stars(lambda a, b: (a * b, jnp.sum(a)[None]), 2, (True, False))(x, jnp.asarray(2.0))
    y, sums = unshard(out[0], 5), unshard(out[1])
    assert len(y.devices()) == 1 and len(sums.devices()) == 1
    np.testing.assert_array_equal(np.asarray(y), 2 * np.arange(5.0))
    np.testing.assert_array_equal(np.asarray(sums), [6.0, 22.0])
