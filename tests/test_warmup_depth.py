"""The NUTS tree-depth cap during warmup (NutsSettings.warmup_max_tree_depth)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from dds_infer.engine import NutsSettings, run_nuts_batch
from dds_infer.nuts_queue import run_nuts_queue


def test_settings_validate_and_default_to_the_sampling_cap():
    assert NutsSettings(max_tree_depth=8).tree_depths == (8, 8)
    assert NutsSettings(max_tree_depth=8, warmup_max_tree_depth=4).tree_depths == (4, 8)
    for bad in (0, 2.5, -1):
        with pytest.raises(ValueError, match="warmup_max_tree_depth"):
            NutsSettings(warmup_max_tree_depth=bad)


def wide_model(star):
    """x ~ N(0, s²) with scales spanning 10³: at the identity start the warmup's trees are long."""
    numpyro.sample("x", dist.Normal(0.0, star).to_event(1))


SCALES = jnp.array([[0.01, 0.1, 1.0, 10.0]])
RUN = dict(num_warmup=200, num_samples=300, num_chains=1, max_tree_depth=10)
INIT = {"x": jnp.full((1, 1, 4), 0.01)}


@pytest.mark.slow
def test_queue_caps_warmup_trees_only():
    """One chain on one slot: the queue engine's iteration count is the chain's total number of
    leapfrog steps. A cap of 1 leaves exactly one leapfrog step per warmup draw; the sampling
    phase keeps its own cap, and the posterior is still right."""
    res = {w: run_nuts_queue(wide_model, SCALES, (), INIT, jax.random.key(5), n_slots=1,
                             warmup_max_tree_depth=w, devices=1, **RUN) for w in (None, 1, 3)}
    sampling = {w: int(np.asarray(r.num_steps).sum()) for w, r in res.items()}
    warmup = {w: int(r.iterations.sum()) - sampling[w] for w, r in res.items()}
    assert warmup[1] == RUN["num_warmup"], warmup
    assert warmup[3] <= (2 ** 3 - 1) * RUN["num_warmup"] < warmup[None], warmup
    for w in (1, 3):
        steps = np.asarray(res[w].num_steps)
        assert steps.max() > 2 ** 3 - 1  # sampling trees are not capped at the warmup depth
        x = np.asarray(res[w].samples["x"])[0, 0]
        np.testing.assert_allclose(x.std(axis=0) / np.asarray(SCALES[0]), 1.0, atol=0.3)


@pytest.mark.slow
def test_batch_engine_takes_the_warmup_cap():
    """NumPyro's own (warmup, sampling) depth pair: with the cap the adapted chain differs from the
    uncapped one, its sampling trees still exceed the warmup cap, and the posterior is right."""
    capped = run_nuts_batch(wide_model, SCALES, (), INIT, jax.random.key(5), warmup_max_tree_depth=2, **RUN)
    free = run_nuts_batch(wide_model, SCALES, (), INIT, jax.random.key(5), **RUN)
    assert float(capped.step_size[0, 0]) != float(free.step_size[0, 0])
    assert int(np.asarray(capped.num_steps).max()) > 2 ** 2 - 1
    x = np.asarray(capped.samples["x"])[0, 0]
    np.testing.assert_allclose(x.std(axis=0) / np.asarray(SCALES[0]), 1.0, atol=0.3)


def test_runner_fingerprint_keeps_earlier_runs_valid(tmp_path):
    """The cap enters a run's fingerprint only when it differs from the sampling cap, so output
    folders written before the option existed resume, and a capped run does not mix with them."""
    import json

    from _toy_model import InferenceConfig, mock_catalog, star_data_from_catalog, star_model
    from dds_infer import init_emulator
    from dds_infer.runner import MANIFEST, ManifestMismatchError, infer_catalog

    emu = init_emulator(jax.random.key(0))
    cat, _ = mock_catalog(emu, 3, seed=0)
    kw = dict(batch_size=2, num_chains=1, num_warmup=5, num_samples=5, max_tree_depth=6, model=star_model,
              star_data_fn=star_data_from_catalog, progress=False, stop_after_chunks=0)

    def fingerprint(name, **extra):
        assert infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / name, **kw, **extra) is None
        return json.loads((tmp_path / name / MANIFEST).read_text())["config_hash"]

    plain = fingerprint("a")
    assert fingerprint("b", warmup_max_tree_depth=6) == plain
    assert fingerprint("c", warmup_max_tree_depth=3) != plain
    with pytest.raises(ManifestMismatchError):
        infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "a", **kw, warmup_max_tree_depth=3)


def test_cli_reports_and_hands_the_warmup_cap(tmp_path, capsys, monkeypatch):
    import json

    from conftest import shipped_infer_cli
    from dds_infer.cli import main
    from dds_infer.pipeline import WARMUP_MAX_TREE_DEPTH

    calls, common = shipped_infer_cli(monkeypatch, tmp_path)
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert json.loads(capsys.readouterr().out)["warmup_max_tree_depth"] == WARMUP_MAX_TREE_DEPTH
    assert "warmup_max_tree_depth" not in calls[-1]  # the pipeline's default applies
    assert main([*common, "--out", str(tmp_path / "b"), "--warmup-max-tree-depth", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["warmup_max_tree_depth"] == 6
    assert calls[-1]["warmup_max_tree_depth"] == 6
    assert main([*common, "--out", str(tmp_path / "c"), "--method", "grid"]) == 0
    assert json.loads(capsys.readouterr().out)["warmup_max_tree_depth"] is None
