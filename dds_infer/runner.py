"""Chunked, resumable NUTS inference over a catalogue.

The catalogue is processed in chunks of at most ``batch_size`` stars (one engine batch each): for
NUTS the fewest such chunks, of equal size (:func:`chunk_size`; the last one, shorter by fewer
stars than there are chunks, padded so that it reuses the compiled program). Padding stars cost
(the batch engine samples them; the queue engine does not start their chains, but sets them up
and maps their empty draws), so a 1,100-star catalogue runs as 2 × 550 stars, not 1,024 + 76
padded to 1,024. A catalogue of one chunk is padded to :func:`program_size` (a power of two) by
the queue engine (the default) and the grid path, so that catalogues of other sizes (a dust-map
pipeline's sky regions) share their compiled programs; the batch engine never pads past the
catalogue.
Each finished chunk is written atomically to ``out_dir/chunks/chunk_NNNNN.nc``, its summary
rows beside it, on a background thread while the next chunk is computed
(:class:`dds_infer.run_outputs.ChunkWriter`; a failed write stops the run); at the end :func:`dds_infer.run_outputs.assemble_run` writes the run's summary
(and, if small enough, all draws in one file) without holding every chunk in memory;
``out_dir/manifest.json`` records the run configuration hash and the catalogue fingerprint. A
rerun with the same manifest skips finished chunks; a different one refuses to mix results
unless ``overwrite=True``. Star k always gets the key fold_in(key(seed), k), so results do not
depend on resumption; at another batch size (another compiled program) XLA's rounding can
differ, so the draws are then of the same posterior but not bit-identical. The queue engine (the
default) reports finished chains to the progress bar as they finish, so a 1,024-star chunk shows
progress within it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, is_dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from .atomic import atomic_path
from .devices import n_devices
from .engine import pad_batch, run_nuts_batch, star_keys
from .inference import direct_log_density
from .posterior import Posterior
from .progress import chains_to_stars
from .run_outputs import COMBINE_CHOICES, RUN_OUTPUTS, ChunkedPosterior, ChunkWriter, assemble_run, should_combine

__all__ = ["infer_catalog", "catalog_fingerprint", "run_config_hash", "ManifestMismatchError", "ENGINES",
           "DEFAULT_ENGINE", "default_batch_size", "chunk_size"]

ENGINES = ("batch", "queue")  # NUTS engines: dds_infer.engine, dds_infer.nuts_queue
DEFAULT_ENGINE = "queue"  # 1.3x faster than "batch" end to end on 1,000 real stars, same posteriors

MANIFEST = "manifest.json"


class ManifestMismatchError(ValueError):
    """out_dir holds results of a different run (configuration or catalogue)."""


def _hash_arrays(h, tree) -> None:
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.asarray(leaf)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())


def catalog_fingerprint(catalog) -> dict:
    """n_stars and a SHA-256 of the ids, photometry, parallaxes and the declared error floor."""
    h = hashlib.sha256()
    h.update("\x00".join(map(str, catalog.star_ids())).encode())
    _hash_arrays(h, [catalog.mag, catalog.mag_err, catalog.parallax, catalog.parallax_err])
    if catalog.mag_err_floor is not None:
        _hash_arrays(h, [catalog.mag_err_floor])
    out = {"n_stars": int(catalog.n_stars), "sha256": h.hexdigest()}
    rows = catalog_rows(catalog)
    if rows is not None:  # a shard (absent otherwise: earlier runs' manifests stay valid)
        out["rows"] = rows
    return out


def catalog_rows(catalog) -> list | None:
    """[start, stop) file rows of a shard read with ``rows=`` (:mod:`dds_infer.catalog_rows`), else None."""
    rows = (catalog.meta or {}).get("rows")
    return None if rows is None else [int(rows[0]), int(rows[1])]


def _describe(obj):
    if obj is None:
        return None
    if is_dataclass(obj) and not isinstance(obj, type):
        try:
            return {"type": type(obj).__name__, **asdict(obj)}
        except TypeError:
            pass
    return repr(obj)


def run_config_hash(model, emulator, prior, config, settings: dict) -> tuple[str, dict]:
    """SHA-256 over the model name, NUTS settings, config, and the emulator/prior arrays."""
    desc = {"model": f"{getattr(model, '__module__', '?')}.{getattr(model, '__qualname__', repr(model))}",
            "settings": settings, "config": _describe(config), "prior_type": type(prior).__name__}
    h = hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode())
    _hash_arrays(h, emulator)
    _hash_arrays(h, prior)
    return h.hexdigest(), desc


def _flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _manifest_difference(old: dict, new: dict) -> str:
    """What differs between two run manifests, in words: each differing setting with its old and
    new value (e.g. ``settings.engine: absent -> 'queue'``), else the catalogue or the
    emulator/prior arrays (which enter the hash only)."""
    a = _flatten(old.get("description"))
    b = _flatten(json.loads(json.dumps(new.get("description"), sort_keys=True, default=str)))
    shown = lambda d, k: repr(d[k]) if k in d else "absent"  # noqa: E731
    parts = [f"{k}: {shown(a, k)} -> {shown(b, k)}" for k in sorted(set(a) | set(b))
             if shown(a, k) != shown(b, k)]
    oc, nc = old.get("catalog") or {}, new.get("catalog") or {}
    if oc.get("n_stars") != nc.get("n_stars"):
        parts.append(f"catalogue: {oc.get('n_stars')} -> {nc.get('n_stars')} stars")
    elif oc != nc:
        parts.append("catalogue: the same number of stars, other ids, photometry or parallaxes")
    if not parts and old.get("config_hash") != new.get("config_hash"):
        parts.append("the emulator's or the prior's arrays differ")
    return "; ".join(parts) or "the manifest differs"


def _check_manifest(out_dir: Path, manifest: dict, overwrite: bool) -> None:
    path = out_dir / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("config_hash") == manifest["config_hash"] and old.get("catalog") == manifest["catalog"]:
            return
        if not overwrite:
            raise ManifestMismatchError(
                f"{out_dir} holds results of a different run ({_manifest_difference(old, manifest)}); use "
                "the same settings to resume it, another output directory, or overwrite=True (--overwrite) "
                "to discard them")
        shutil.rmtree(out_dir / "chunks", ignore_errors=True)
        for name in RUN_OUTPUTS:  # the other run's assembled outputs would describe draws no longer there
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))


def default_batch_size(method: str = "nuts", engine: str = DEFAULT_ENGINE) -> int:
    """Stars per chunk by default: 1,024 for the grid path and for the queue engine (whose chains
    refill their slots only within a chunk, so small chunks leave slots idle at each chunk's end),
    64 for the batch engine (its chains run in lockstep with the batch's longest tree)."""
    from .nuts_queue import DEFAULT_CHUNK

    if method == "grid":
        return 1024
    return DEFAULT_CHUNK if engine == "queue" else 64


def program_size(n: int, cap: int) -> int:
    """Stars a small catalogue's chunk of ``n`` is padded to by the grid path and the queue engine,
    where padding is nearly free: the next power of two, at least 8, at most ``cap`` (the batch
    size). Catalogues of different sizes then share a few compiled programs (kept on disk between runs by
    :func:`dds_infer.devices.use_compilation_cache`) instead of compiling one per size (~17-45 s
    each): a dust-map pipeline's sky regions each have their own."""
    size = 8
    while size < n:
        size *= 2
    return max(1, min(size, int(cap)))


def chunk_size(n: int, batch_size: int) -> int:
    """Stars per NUTS chunk for ``n`` stars and at most ``batch_size`` per chunk: ceil(n / k) for the
    fewest chunks k = ceil(n / batch_size), so that no chunk is mostly padding (``n`` if smaller)."""
    if n <= batch_size:
        return max(int(n), 1)
    k = -(-n // batch_size)
    return -(-n // k)


def _default_model():
    from .inference import star_data_from_catalog, star_model

    return star_model, star_data_from_catalog


def _with_fit_statistics(post: Posterior, emulator, stars, config) -> Posterior:
    """``post`` with the goodness of fit of every star (:func:`dds_infer.fit_check.fit_statistics`:
    chi2_median, n_data, fit_p) and its posterior mean residual per band
    (:func:`dds_infer.band_offsets.posterior_mean_residuals`: ``resid_<band>``, NaN where not
    observed) in its ``star_stats``, where the stars are Eq. 19's StarData."""
    from .band_offsets import posterior_mean_residuals, residual_column
    from .fit_check import fit_statistics
    from .inference import StarData

    if isinstance(stars, StarData):
        post.star_stats.update(fit_statistics(emulator, stars, post.samples, config, post.chain_weights))
        res = posterior_mean_residuals(emulator, stars, post.samples, config, post.chain_weights)
        post.star_stats.update({residual_column(b): res[:, j] for j, b in enumerate(emulator.bands.names)})
    return post


def _sample_chunk(sample: Callable, stars, keys, star_id, emulator, init_fn, combine_fn, size: int, n_dev: int,
                  live: dict) -> Posterior:
    """One chunk's NUTS posterior: chain starts from ``init_fn`` (on the batch padded to ``size``,
    one compiled program per size), ``sample(stars, init, keys, **live)`` over ``n_dev`` devices,
    then each star's chain modes combined by ``combine_fn`` (if given)."""
    split = jax.vmap(jax.random.split)(keys)  # (B, 2): initialiser key, sampler key
    init_keys, nuts_keys = split[:, 0], split[:, 1]
    init = None
    if init_fn is not None:
        init = jax.tree_util.tree_map(lambda a: a[:len(star_id)], init_fn(*pad_batch((stars, init_keys), size)))
    res = sample(stars, init, nuts_keys, **live)
    modes = None
    if combine_fn is not None:
        samples = {key: np.asarray(v) for key, v in res.samples.items()}
        logp = direct_log_density(-np.asarray(res.potential_energy), samples)  # of (x, μ, log E)
        modes = [combine_fn({key: v[i] for key, v in samples.items()}, logp[i]) for i in range(len(star_id))]
    return Posterior.from_batch(res, star_id, emulator, modes, attrs={"devices": n_dev})


def infer_catalog(catalog, emulator, prior, config, out_dir, *, batch_size: int | None = None, num_chains: int = 4,
                  num_warmup: int = 500, num_samples: int = 500, seed: int = 0,
                  model: Callable | None = None, star_data_fn: Callable | None = None,
                  init_fn: Callable | None = None, combine_fn: Callable | None = None,
                  target_accept_prob: float = 0.8, max_tree_depth: int = 10, dense_mass: bool = False,
                  progress: bool = True, batch_fn: Callable | None = None,
                  overwrite: bool = False, stop_after_chunks: int | None = None, engine: str = DEFAULT_ENGINE,
                  n_slots: int | None = None, init_mass: str = "identity",
                  warmup_max_tree_depth: int | None = None, devices: int | None = None,
                  combine: str = "auto", keep_bits: int | None = None) -> Posterior | ChunkedPosterior | None:
    """NUTS posteriors for every star of ``catalog``, chunk by chunk, resumable.

    model, star_data_fn: the single-star NumPyro model ``model(star, emulator, prior, config)``
        and ``catalog -> StarData`` (default: ``dds_infer.inference``'s Eq. 19 model).
    init_fn(stars, keys) -> {site: (B, C, ...)} unconstrained initial values for a batch, given
        one key per star (e.g. from the multimodal initialiser); None: NumPyro init_to_uniform.
    combine_fn(samples {site: (C, S, ...)}, log_prob (C, S)) -> object with chain_weights (C,),
        n_modes, flag (e.g. ``modes.combine_chain_modes``); None: equal chain weights.
    batch_fn(stars, star_id, keys) -> Posterior: replaces NUTS for each chunk (e.g. the grid path,
        :func:`dds_infer.gridpath.grid_batch_fn`); the NUTS settings are then unused.
    stop_after_chunks: stop after computing this many new chunks and return None (simulates an
        interruption; a rerun resumes).
    batch_size: at most this many stars per chunk (None: :func:`default_batch_size`); NUTS chunks
        are balanced (:func:`chunk_size`), the grid path's are ``batch_size`` stars.
    engine: "queue" (default, :func:`dds_infer.nuts_queue.run_nuts_queue`: no lockstep; its chunk
        of ``batch_size`` stars is a queue of ``batch_size × num_chains`` chains on ``n_slots``
        slots, default min(64 per device, that); 1.3× faster than "batch" end to end in a
        1,000-star chunk, no faster in 256-star ones, whose slots idle at each chunk's end) or
        "batch" (:func:`dds_infer.engine.run_nuts_batch`, vmapped NumPyro NUTS in lockstep, the
        default before 2026-12-01). The two draw different random numbers, so the engine is part
        of the run's fingerprint (n_slots is not: it does not change draws); a run started with
        the batch engine resumes with ``engine="batch"``.
    init_mass: the mass matrix each chain's warmup starts from: "identity" (default, NumPyro's;
        absent from the fingerprint, so runs from before the option existed resume) or "laplace"
        (the curvature at the mode nearest the start, :func:`dds_infer.engine.laplace_inverse_mass`).
    warmup_max_tree_depth: the NUTS tree-depth cap during warmup (None: ``max_tree_depth``; in the
        fingerprint only when set).
    devices: spread each chunk's stars over this many local devices (default: all of them; on a
        CPU, :func:`dds_infer.devices.use_cpu_cores` makes one device per core). Not in the
        fingerprint: it changes individual draws (rounding) but not their distribution, so a run
        may resume on another machine; each chunk records its ``devices`` in its attributes.
    combine: write the combined ``out_dir/posterior.nc`` "always", "never", or ("auto", default)
        when the run has at most :data:`dds_infer.run_outputs.COMBINE_MAX_DRAWS` star-draws (10,000
        stars at 4 x 500); not in the fingerprint.
    keep_bits: store the draws bit-rounded to this many float32 mantissa bits (1..23;
        :mod:`dds_infer.draw_precision`; relative error ≤ 2^-(keep_bits+1)); the summary and fit
        statistics are computed from the stored draws. None (default): exact float32. In the
        fingerprint when set.
    Returns the combined :class:`Posterior`, or a :class:`~dds_infer.run_outputs.ChunkedPosterior`
    over the chunk files when not combined (same ``n_stars``, ``star_id``, ``summary()``; draws
    chunk by chunk); writes ``out_dir/summary.parquet`` (streamed chunk by chunk) and
    ``out_dir/outputs.json`` (:func:`dds_infer.run_outputs.assemble_run`).
    """
    if combine not in COMBINE_CHOICES:
        raise ValueError(f"combine must be one of {COMBINE_CHOICES}, got {combine!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if batch_size is None:
        batch_size = default_batch_size("grid" if batch_fn is not None else "nuts", engine)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    if model is None or star_data_fn is None:
        dm, ds = _default_model()
        model, star_data_fn = model or dm, star_data_fn or ds
    out_dir = Path(out_dir)
    settings = dict(batch_size=int(batch_size), num_chains=int(num_chains), num_warmup=int(num_warmup),
                    num_samples=int(num_samples), seed=int(seed), target_accept_prob=float(target_accept_prob),
                    max_tree_depth=int(max_tree_depth), dense_mass=bool(dense_mass),
                    init_fn=None if init_fn is None else getattr(init_fn, "__qualname__", repr(init_fn)),
                    combine_fn=None if combine_fn is None else getattr(combine_fn, "__qualname__", repr(combine_fn)),
                    batch_fn=None if batch_fn is None else getattr(batch_fn, "__qualname__", repr(batch_fn)))
    if engine != "batch":  # (absent for "batch": fingerprints of earlier runs stay valid)
        settings["engine"] = engine
    if init_mass != "identity":  # (absent for "identity", idem)
        settings["init_mass"] = init_mass
    if warmup_max_tree_depth is not None and int(warmup_max_tree_depth) != int(max_tree_depth):  # (idem)
        settings["warmup_max_tree_depth"] = int(warmup_max_tree_depth)
    if keep_bits is not None:  # (idem)
        from .draw_precision import check_keep_bits

        settings["keep_bits"] = keep_bits = check_keep_bits(keep_bits)
    n = catalog.n_stars
    chunk = batch_size if batch_fn is not None else chunk_size(n, batch_size)  # (grid: padded to min(batch_size, n))
    if batch_fn is None and chunk != min(batch_size, n):  # (absent where the chunks are as before the
        settings["chunk"] = chunk  # balancing: earlier runs' fingerprints stay valid)
    n_dev = n_devices(devices)
    # stars per compiled program: the queue engine never starts its padding stars' chains and
    # spreads the padding over the devices, so a small catalogue is padded to program_size and
    # shares its programs with catalogues of other sizes; the batch engine samples padding stars
    pads_free = engine == "queue" and batch_fn is None and chunk == n
    size = program_size(chunk, batch_size) if pads_free else min(chunk, n)
    if engine == "queue":
        from .nuts_queue import default_slots, run_nuts_queue

        slots = min(default_slots(n_dev), size * int(num_chains)) if n_slots is None else int(n_slots)
        sampler = partial(run_nuts_queue, n_slots=slots)
    else:
        sampler = run_nuts_batch
    nuts_kw = dict(num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                   target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth, dense_mass=dense_mass,
                   init_mass=init_mass, warmup_max_tree_depth=warmup_max_tree_depth, pad_to=size, devices=n_dev)

    def sample(stars, init, keys, **live):
        return sampler(model, stars, (emulator, prior, config), init, keys, **nuts_kw, **live)

    chash, desc = run_config_hash(model, emulator, prior, config, settings)
    manifest = {"config_hash": chash, "catalog": catalog_fingerprint(catalog), "description": desc}
    _check_manifest(out_dir, manifest, overwrite)
    chunk_dir = out_dir / "chunks"
    chunk_dir.mkdir(exist_ok=True)
    chunk_path = lambda k: chunk_dir / f"chunk_{k:05d}.nc"  # noqa: E731

    n_chunks = -(-n // chunk)
    ids = catalog.star_ids()
    first_row = int((catalog.meta or {}).get("first_row", 0) or 0)  # a shard's stars keep their file row's keys
    todo = [k for k in range(n_chunks) if not chunk_path(k).exists()]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=n - sum(min(chunk, n - k * chunk) for k in todo),
                   unit="star", desc="NUTS" if batch_fn is None else "grid")
    held = {}  # chunks of a run that will be combined: kept, not read back from disk at the end
    with ChunkWriter() as writer:  # chunk k is written while chunk k + 1 is sampled
        for done, k in enumerate(todo):
            if stop_after_chunks is not None and done >= stop_after_chunks:
                break
            rows = np.arange(k * chunk, min((k + 1) * chunk, n))
            stars = star_data_fn(catalog.subset(rows))  # per chunk: memory bounded by the chunk size
            keys = star_keys(seed, rows + first_row)
            shown = [0]  # stars of this chunk already on the progress bar (the queue engine reports chains)
            if batch_fn is not None:
                post = batch_fn(stars, ids[rows], keys)
            else:
                live = ({"on_finished": chains_to_stars(bar, shown, len(rows), num_chains)}
                        if bar is not None and engine == "queue" else {})
                post = _sample_chunk(sample, stars, keys, ids[rows], emulator, init_fn, combine_fn, size, n_dev, live)
            if keep_bits is not None:  # (the summary and fit statistics then describe the stored draws)
                post = post.with_draws_rounded(keep_bits)
            post = _with_fit_statistics(post, emulator, stars, config)
            post.attrs.update({"config_hash": chash, "rows": [int(rows[0]), int(rows[-1]) + 1]})
            writer.submit(post, chunk_path(k))
            if should_combine(combine, n * post.n_chains * post.n_draws):
                held[chunk_path(k)] = post
            if bar is not None:
                bar.update(len(rows) - shown[0])
    if bar is not None:
        bar.close()
    missing = [k for k in range(n_chunks) if not chunk_path(k).exists()]
    if missing:  # only after stop_after_chunks
        return None
    attrs = {"config_hash": chash, "n_chunks": n_chunks}
    if manifest["catalog"].get("rows") is not None:  # a shard: dustmap reads only these rows for positions
        attrs["catalog_rows"] = manifest["catalog"]["rows"]
    return assemble_run(out_dir, [chunk_path(k) for k in range(n_chunks)], attrs=attrs, combine=combine, held=held)
