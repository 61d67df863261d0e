"""Batched NUTS engine and the chunked runner, on the placeholder model (tests/_toy_model.py).

All engine calls share one compiled program (B=4 stars, C=2 chains, 100+100 steps); compiling
it takes ~20 s on a small CPU, hence the slow marks.
"""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _posterior_checks import same_posterior  # noqa: E402
from _toy_model import InferenceConfig, mock_catalog, star_data_from_catalog, star_model, toy_init_fn  # noqa: E402

from dds_infer import init_emulator  # noqa: E402
from dds_infer.engine import pad_batch, run_nuts_batch, star_keys  # noqa: E402
from dds_infer.posterior import Posterior  # noqa: E402
from dds_infer.runner import ManifestMismatchError, infer_catalog  # noqa: E402

B, C, W, S = 4, 2, 100, 100
RUN = dict(num_warmup=W, num_samples=S, num_chains=C)
SITES = ("teff", "logg", "feh", "mu", "E")


@pytest.fixture(scope="module")
def setup():
    emu = init_emulator(jax.random.key(0))
    cat, truth = mock_catalog(emu, 10, seed=1)
    return emu, cat, truth, star_data_from_catalog(cat)


def _take(stars, rows):
    return jax.tree_util.tree_map(lambda a: a[np.asarray(rows)], stars)


def _run(setup, rows, pad_to=None, seed=0):
    emu, _, _, stars = setup
    return run_nuts_batch(star_model, _take(stars, rows), (emu, None, InferenceConfig()), None,
                          star_keys(seed, rows), pad_to=pad_to, **RUN)


@pytest.fixture(scope="module")
def base(setup):
    return _run(setup, [0, 1, 2, 3])


def _same_star(a, i, b, j):
    return all(np.array_equal(np.asarray(a.samples[k])[i], np.asarray(b.samples[k])[j]) for k in SITES)


@pytest.mark.slow
def test_shapes_and_truth_recovery(setup, base):
    _, _, truth, _ = setup
    for k in SITES:
        assert base.samples[k].shape == (B, C, S)
    assert base.potential_energy.shape == base.diverging.shape == base.num_steps.shape == (B, C, S)
    assert base.step_size.shape == base.accept_prob.shape == (B, C)
    assert bool(np.all(base.init_valid))
    assert np.all(np.asarray(base.samples["E"]) >= 0)
    ref = {"teff": truth["theta"][:B, 0], "logg": truth["theta"][:B, 1], "feh": truth["theta"][:B, 2],
           "mu": truth["mu"][:B], "E": truth["E"][:B]}
    for k, t in ref.items():
        d = np.asarray(base.samples[k]).reshape(B, -1)
        z = np.abs(d.mean(1) - t) / d.std(1)
        assert np.all(z < 4), (k, z)
    # μ is pinned by the parallax (σ_ϖ = 0.05 mas at ϖ ~ 1 mas): posterior sd well below 0.3 mag
    assert np.all(np.asarray(base.samples["mu"]).reshape(B, -1).std(1) < 0.3)


@pytest.mark.slow
def test_each_star_and_chain_adapts_its_own_step_size(base):
    step = np.asarray(base.step_size)
    assert np.all(step > 0)
    for c in range(C):  # the same chain index of different stars has different step sizes
        assert np.unique(step[:, c]).size == B
    assert np.unique(step).size == B * C
    acc = np.asarray(base.accept_prob)
    assert np.all((acc > 0.5) & (acc <= 1.0))  # dual averaging towards 0.8 worked for every chain


@pytest.mark.slow
def test_same_key_same_draws_and_other_seed_differs(setup, base):
    again = _run(setup, [0, 1, 2, 3])
    assert all(_same_star(base, i, again, i) for i in range(B))
    other = _run(setup, [0, 1, 2, 3], seed=1)
    assert not np.array_equal(np.asarray(base.samples["mu"]), np.asarray(other.samples["mu"]))


@pytest.mark.slow
def test_star_independent_of_neighbours_and_padding(setup, base):
    neighbours = _run(setup, [0, 5, 6, 3])  # stars 0 and 3 with different neighbours
    assert _same_star(base, 0, neighbours, 0) and _same_star(base, 3, neighbours, 3)
    padded = _run(setup, [0, 1, 2], pad_to=B)  # short batch padded to the compiled size
    assert np.asarray(padded.samples["mu"]).shape[0] == 3
    assert all(_same_star(base, i, padded, i) for i in range(3))


def _mc_z(a, i, b, j, site):
    """|difference of the posterior means| of ``site`` over its Monte Carlo standard error."""
    from numpyro.diagnostics import effective_sample_size

    x, y = (np.asarray(r.samples[site])[k] for r, k in ((a, i), (b, j)))
    se2 = [v.var() / max(float(effective_sample_size(v)), 10.0) for v in (x, y)]
    return abs(x.mean() - y.mean()) / np.sqrt(sum(se2))


@pytest.mark.slow
def test_star_independent_of_batch_size(setup, base):
    """Another batch size is another compiled program (B=2). The star gets the same random
    numbers, but XLA may vectorise its arithmetic differently (it does with AVX-512 CPUs, and at
    one star per device), and NUTS amplifies a last-bit difference into different chains. So the
    draws are equal or they sample the same posterior: the means agree within Monte Carlo error,
    while another star's do not."""
    small = _run(setup, [2, 3])
    for i, j in ((2, 0), (3, 1)):
        if not _same_star(base, i, small, j):
            assert max(_mc_z(base, i, small, j, k) for k in SITES) < 5
    assert max(_mc_z(base, 2, small, 1, k) for k in SITES) > 5  # the comparison tells stars apart


@pytest.mark.slow
def test_init_params_are_used(setup):
    emu, _, _, stars = setup
    rows = [0, 1, 2, 3]
    sub = _take(stars, rows)
    keys = star_keys(0, rows)
    init = toy_init_fn(C)(sub, keys)
    res = run_nuts_batch(star_model, sub, (emu, None, InferenceConfig()), init, keys, **RUN)
    assert np.asarray(res.samples["mu"]).shape == (B, C, S) and bool(np.all(res.init_valid))
    with pytest.raises(ValueError, match="leading shape"):
        run_nuts_batch(star_model, sub, (emu, None, InferenceConfig()), {"x": init["x"][:, :1]}, keys, **RUN)


def test_bad_inputs_raise():
    emu = init_emulator(jax.random.key(0))
    cat, _ = mock_catalog(emu, 3, seed=0)
    stars = star_data_from_catalog(cat)
    with pytest.raises(ValueError, match="batch size"):
        pad_batch(stars, 2)
    with pytest.raises(ValueError, match="keys"):
        run_nuts_batch(star_model, stars, (emu, None, InferenceConfig()), None, star_keys(0, [0, 1]), **RUN)
    with pytest.raises(ValueError, match="num_samples"):
        run_nuts_batch(star_model, stars, (emu, None, InferenceConfig()), None, star_keys(0, [0, 1, 2]),
                       num_warmup=10, num_samples=0)


@pytest.mark.slow
def test_runner_resume_matches_uninterrupted_run(setup, base, tmp_path):
    emu, cat, _, _ = setup  # 10 stars in chunks of 4, 4, 2 (the last one padded)
    kw = dict(batch_size=B, num_chains=C, num_warmup=W, num_samples=S, seed=0, model=star_model,
              star_data_fn=star_data_from_catalog, progress=False, engine="batch")
    full = infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "a", **kw)
    assert infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "b", stop_after_chunks=1, **kw) is None
    assert sorted(p.name for p in (tmp_path / "b" / "chunks").glob("*.nc")) == ["chunk_00000.nc"]
    resumed = infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "b", **kw)
    assert list(resumed.star_id) == list(cat.star_ids())  # every star exactly once, in order
    for k in full.samples:
        assert np.array_equal(full.samples[k], resumed.samples[k]), k
    assert resumed.samples["mu"].shape == (10, C, S)
    on_disk = Posterior.load(tmp_path / "b" / "posterior.nc")
    assert np.array_equal(on_disk.samples["teff"], full.samples["teff"])
    same_posterior(full, Posterior.load(tmp_path / "a" / "posterior.nc"))  # combined from memory = the file
    same_posterior(resumed, on_disk)  # chunk 0 read back, the rest from memory
    assert (tmp_path / "b" / "summary.parquet").is_file()
    with pytest.raises(ManifestMismatchError, match="different run"):
        infer_catalog(cat, emu, None, InferenceConfig(sigma_floor=0.03), tmp_path / "b", **kw)


def test_runner_pads_only_the_last_chunk_and_never_past_the_catalogue(setup, tmp_path, monkeypatch):
    """Padding stars are sampled too (wasted work): a catalogue smaller than batch_size runs as
    one unpadded chunk; a larger one pads only its last chunk, to batch_size (one program)."""
    import dds_infer.runner as runner

    emu, cat, _, _ = setup  # 10 stars
    seen = []

    def spy(model, stars, *args, pad_to=None, **kw):
        seen.append((len(stars.mag), pad_to))
        return run_nuts_batch(model, stars, *args, pad_to=pad_to, **kw)

    monkeypatch.setattr(runner, "run_nuts_batch", spy)
    # the settings of base and test_runner_resume_matches_uninterrupted_run: the 4-star chunks below
    # load their compiled program instead of compiling another
    kw = dict(num_chains=C, num_warmup=W, num_samples=S, seed=0, model=star_model,
              star_data_fn=star_data_from_catalog, progress=False, engine="batch")
    post = infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "a", batch_size=64, **kw)
    assert seen == [(10, 10)] and post.samples["mu"].shape == (10, C, S)
    seen.clear()
    infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "b", batch_size=4, **kw)
    assert seen == [(4, 4), (4, 4), (2, 4)]
    seen.clear()  # at most 6 per chunk: 2 x 5 stars, not 6 + 4 padded to 6 (first chunk seen, not run)

    class Seen(Exception):
        pass

    def record_only(model, stars, *args, pad_to=None, **kw):
        seen.append((len(stars.mag), pad_to))
        raise Seen

    monkeypatch.setattr(runner, "run_nuts_batch", record_only)
    with pytest.raises(Seen):
        infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / "c", batch_size=6, **kw)
    assert seen == [(5, 5)]


def test_queue_engine_pads_a_small_catalogue_to_a_shared_program_size(setup, tmp_path, monkeypatch):
    """The queue engine does not start padding stars' chains, so a catalogue of one chunk is padded
    to runner.program_size (catalogues of 9-16 stars share one program), its chain starts computed
    on the padded batch too (their program is shared as well); a larger catalogue's chunks are not
    padded past the chunk size."""
    import dds_infer.nuts_queue as nq

    emu, cat, _, _ = setup  # 10 stars
    seen, inits = [], []

    class Seen(Exception):
        pass

    def record_only(model, stars, static_args, init, keys, *, pad_to=None, n_slots=None, **kw):
        seen.append((len(stars.mag), pad_to, n_slots, None if init is None else init.shape[0]))
        raise Seen

    def init_fn(stars, keys):
        inits.append(len(stars.mag))
        return np.zeros((len(stars.mag), C))

    monkeypatch.setattr(nq, "run_nuts_queue", record_only)
    kw = dict(num_chains=C, num_warmup=W, num_samples=S, seed=0, model=star_model, init_fn=init_fn,
              star_data_fn=star_data_from_catalog, progress=False, engine="queue")
    for bs, expect in ((64, (10, 16, 16 * C, 10)), (4, (4, 4, 4 * C, 4))):
        with pytest.raises(Seen):
            infer_catalog(cat, emu, None, InferenceConfig(), tmp_path / str(bs), batch_size=bs, **kw)
        assert seen.pop() == expect and inits.pop() == expect[1]


def test_program_sizes_are_few_powers_of_two_within_the_batch_size():
    from dds_infer.runner import program_size

    for cap in (1024, 100, 5):
        sizes = {program_size(n, cap) for n in range(1, cap + 1)}
        assert all(program_size(n, cap) >= n for n in range(1, cap + 1)) and max(sizes) == cap
        assert all(s == cap or (s >= 8 and s & (s - 1) == 0) for s in sizes)
        assert all(program_size(n, cap) < 2 * n or program_size(n, cap) == min(8, cap) for n in range(1, cap + 1))
    assert len({program_size(n, 1024) for n in range(1, 1025)}) == 8  # 8, 16, ..., 1024


def test_chunks_are_the_fewest_and_nearly_equal():
    from dds_infer.runner import chunk_size

    for n in range(1, 300, 7):
        for bs in (1, 4, 64, 100, 1024):
            c = chunk_size(n, bs)
            k = -(-n // c)
            assert c <= bs and k == -(-n // bs), (n, bs)  # never more chunks than batch_size implies
            assert k * c - n < k, (n, bs)  # the last chunk is short (padded) by fewer stars than chunks
    assert chunk_size(1100, 1024) == 550 and chunk_size(10_000, 1024) == 1000 and chunk_size(700, 1024) == 700


def test_manifest_mismatch_names_what_differs(tmp_path):
    """Resuming into a folder of another run fails with the differing settings spelled out."""
    from dds_infer.runner import _check_manifest

    def manifest(settings, config, n_stars=10, sha="a", chash="h1"):
        return {"config_hash": chash, "catalog": {"n_stars": n_stars, "sha256": sha},
                "description": {"model": "m", "settings": settings, "config": config, "prior_type": "Prior"}}

    first = manifest({"batch_size": 64, "seed": 0}, {"sigma_floor": 0.02})
    _check_manifest(tmp_path, first, overwrite=False)
    _check_manifest(tmp_path, first, overwrite=False)  # the same run: resumes
    with pytest.raises(ManifestMismatchError) as err:
        _check_manifest(tmp_path, manifest({"batch_size": 64, "seed": 0, "engine": "queue"}, {"sigma_floor": 0.03},
                                           chash="h2"), overwrite=False)
    msg = str(err.value)
    assert "settings.engine: absent -> 'queue'" in msg and "config.sigma_floor: 0.02 -> 0.03" in msg
    assert "batch_size" not in msg and "catalogue" not in msg
    with pytest.raises(ManifestMismatchError, match="catalogue: 10 -> 12 stars"):
        _check_manifest(tmp_path, manifest({"batch_size": 64, "seed": 0}, {"sigma_floor": 0.02}, n_stars=12),
                        overwrite=False)
    with pytest.raises(ManifestMismatchError, match="other ids, photometry or parallaxes"):
        _check_manifest(tmp_path, manifest({"batch_size": 64, "seed": 0}, {"sigma_floor": 0.02}, sha="b"),
                        overwrite=False)
    with pytest.raises(ManifestMismatchError, match="arrays differ"):
        _check_manifest(tmp_path, manifest({"batch_size": 64, "seed": 0}, {"sigma_floor": 0.02}, chash="h3"),
                        overwrite=False)
    # --overwrite discards the other run's chunks and its assembled outputs, nothing else
    from dds_infer.run_outputs import RUN_OUTPUTS

    (tmp_path / "chunks").mkdir()
    for name in (*RUN_OUTPUTS, "notes.txt"):
        (tmp_path / name).write_text("x")
    _check_manifest(tmp_path, manifest({"batch_size": 64, "seed": 0}, {"sigma_floor": 0.02}, chash="h3"),
                    overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "notes.txt"]
