"""Spread a batch of stars over the local JAX devices, one share of the stars each.

On a CPU, XLA runs one program of many small kernels (the NUTS engines' loops) mostly on one
core. JAX can present the host's cores as separate CPU devices (``jax_num_cpu_devices``,
:func:`use_cpu_cores`); :func:`shard_stars` then runs a program on every device's share of the
stars at once (``jax.shard_map`` over a one-axis mesh, no communication between the shares).
Queue engine, 1,024 real stars, 4 × (500 + 500), 2 cores: 4.92 stars/s on one device, 8.06 on
two (``bench/infer_bench.py --cpu-devices``).

A star's draws depend on its own key and start, not on the other stars of its share; they are
the same bit for bit for the same number of devices. Another number of devices changes the
compiled program and so, through rounding that the early warmup amplifies, the individual draws
(not their distribution). On a GPU there is usually one device: nothing changes.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

__all__ = ["available_cores", "use_cpu_cores", "use_compilation_cache", "n_devices", "shard_stars", "padded_size",
           "shard_leading", "unshard", "first_rows", "balanced_layout", "rows_at"]

AXIS = "stars"
SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


CACHE_ENV = "DDS_JAX_CACHE"  # folder of the persistent compilation cache; "off" (or "0") disables it
CACHE_MAX_BYTES = 2**30  # least recently used programs are evicted beyond 1 GiB


def use_compilation_cache(folder: str | os.PathLike | None = None) -> str | None:
    """Keep compiled XLA programs on disk between runs (JAX's persistent compilation cache), so
    that the next run of the same model and settings (e.g. ``dds-infer infer`` on the next sky
    region's catalogue) loads its programs instead of compiling them again: ~24 s for the grid
    path on 2 devices, ~15 s for a NUTS chunk program (``dds-infer`` calls this at start).

    folder: default ``$DDS_JAX_CACHE``, else ``$XDG_CACHE_HOME/dds_infer/jax`` (``~/.cache/...``).
    ``DDS_JAX_CACHE=off`` (or ``0``) disables it. A cache already configured for JAX
    (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left as it is. Only programs that took
    ≥ 1 s to compile are stored (JAX's default), at most :data:`CACHE_MAX_BYTES` in all. Returns
    the folder in use, or None.
    """
    configured = os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir
    if configured:
        return str(configured)
    env = os.environ.get(CACHE_ENV, "")
    if folder is None and env.lower() in ("off", "0", "false", "no"):
        return None
    if folder is None:
        folder = env or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                     "dds_infer", "jax")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:  # e.g. a read-only home: run without the cache
        warnings.warn(f"no persistent compilation cache ({folder}: {exc})", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return str(folder)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_cpu_cores(n: int | None = None) -> int:
    """Ask JAX's CPU backend for ``n`` devices (default: :func:`available_cores`), one core each.

    With ``n > 1`` it also turns off XLA's intra-op threading on the CPU (``XLA_FLAGS``
    ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``, unless ``XLA_FLAGS``
    already sets ``xla_cpu_multi_thread_eigen``): with it on, the devices compete for the same
    thread pool. Measured on 1,024 real stars, queue engine, 2 cores: one device 4.92 stars/s
    (3.75 with the threading off), two devices 8.06 with it off and 4.85 with it on.

    Must run before JAX's first computation (the command line and the benchmarks call it at
    start); afterwards the backend is fixed and nothing changes (with a warning if ``n`` was given
    and differs). Returns the
    number of local devices of the default backend (a GPU's count where there is one: the CPU
    devices are then used only for what is placed on them explicitly).
    """
    asked, n = n is not None, available_cores() if n is None else int(n)
    if n < 1:
        raise ValueError(f"number of CPU devices must be >= 1, got {n}")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend is already up
        have = len(jax.devices("cpu"))
        if asked and have != n:
            warnings.warn(f"JAX already started with {have} CPU device(s); use_cpu_cores({n}) must run before "
                          "the first JAX computation", stacklevel=2)
        return len(jax.local_devices())
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {SINGLE_THREAD_FLAGS}".strip()
    return len(jax.local_devices())


def n_devices(requested: int | None = None) -> int:
    """How many local devices to spread a batch over: ``requested`` (checked), else all of them."""
    have = len(jax.local_devices())
    if requested is None:
        return have
    requested = int(requested)
    if not 1 <= requested <= have:
        raise ValueError(f"devices must be between 1 and the {have} local device(s), got {requested}")
    return requested


def padded_size(size: int, devices: int) -> int:
    """``size`` rounded up to a multiple of ``devices`` (every device gets the same share)."""
    return -(-int(size) // int(devices)) * int(devices)


def shard_leading(fn, devices: int, sharded: tuple[bool, ...]):
    """``jit(shard_map(fn))`` over the first ``devices`` local devices.

    Arguments flagged True in ``sharded`` are split along their leading (star) axis, the others
    are copied to every device; every output is concatenated along its leading axis (an output
    that is per call, such as a loop count, must be returned with a leading axis of 1 by ``fn``,
    giving one entry per device). ``fn`` must not communicate between devices: each share runs
    its own loops to their own ends. Not cached: for a function made afresh per call (e.g. one
    closing over data, as NumPyro's chain function does), where a cache would only keep it alive.
    """
    mesh = Mesh(np.asarray(jax.local_devices()[:devices]), (AXIS,))
    specs = tuple(PartitionSpec(AXIS) if s else PartitionSpec() for s in sharded)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(AXIS), check_vma=False))


shard_stars = lru_cache(maxsize=32)(shard_leading)
shard_stars.__doc__ = """:func:`shard_leading`, cached on (fn, devices, sharded): the engines' long-lived programs."""


def unshard(tree, n=None):
    """Every leaf of ``tree`` (outputs of a :func:`shard_stars` program) copied into one array on
    the default device, optionally cut to its first ``n`` rows (an int) or to the rows at ``n`` (an
    index array). The copy goes through the host (``np.asarray``), so no XLA program runs on the
    multi-device arrays: in one CI run, slicing such an output op by op (``a[:n]``) aborted the
    process inside XLA's CPU runtime."""
    import jax.numpy as jnp

    cut = slice(None) if n is None else slice(0, int(n)) if np.ndim(n) == 0 else np.asarray(n)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)[cut]), tree)


def balanced_layout(n: int, size: int, devices: int):
    """Where ``n`` stars sit in a batch padded to ``size`` (a multiple of ``devices``) so that every
    device's share holds as many of them as possible, each share's stars first and then its
    padding. Returns (``src`` (size,) int: the star at each position, padding repeating its share's
    last star; ``active`` (size,) bool: a real star). With padding at the batch's end instead, a
    300-star batch padded to 512 on 2 devices puts 256 stars on one device and 44 on the other.
    Without padding beyond :func:`padded_size` (n), on 1 or 2 devices, it is that layout: the stars
    in order, one padding star last if n is odd."""
    if size % devices or not 1 <= n <= size:
        raise ValueError(f"cannot lay out {n} stars in {size} positions on {devices} devices")
    share = size // devices
    counts = [n // devices + (d < n % devices) for d in range(devices)]
    starts = np.cumsum([0] + counts[:-1])
    j = np.arange(share)
    src = np.concatenate([s + np.minimum(j, max(c, 1) - 1) for s, c in zip(starts, counts)])
    active = np.concatenate([j < c for c in counts])
    return np.minimum(src, n - 1), active


def rows_at(tree, positions, devices: int):
    """The rows ``positions`` (ascending) of every leaf of an engine's output: :func:`first_rows`
    when they are the first rows, else a copy through the host (:func:`unshard`)."""
    positions = np.asarray(positions)
    if np.array_equal(positions, np.arange(len(positions))):
        return first_rows(tree, len(positions), devices)
    return unshard(tree, positions)


def first_rows(tree, n: int, devices: int):
    """The first ``n`` rows of every leaf of an engine's output: :func:`unshard` when it came from
    ``devices`` > 1, else a slice on its device (nothing when there are exactly ``n`` rows)."""
    if devices > 1:
        return unshard(tree, n)
    return jax.tree_util.tree_map(lambda a: a if a.shape[0] == n else a[:n], tree)
