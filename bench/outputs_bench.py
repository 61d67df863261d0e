"""Memory and time of a catalogue run's outputs: assembling them and writing the dust-map file,
streamed chunk by chunk against combined in memory, in the same run.

The chunk files are synthetic (random draws with the dtypes and shapes the NUTS engines write:
float32 draws of the 7 variables, 4 chains x 500 draws, the per-draw and per-chain statistics),
so the measurement is the output code's alone. Each step runs in its own process, whose peak
resident memory (``ru_maxrss``) is reported with the process's memory after its imports:

* ``assemble_stream``: :func:`dds_infer.run_outputs.assemble_run` with ``combine="never"``
  (summary.parquet streamed chunk by chunk; what ``--combine auto`` does above 2e7 star-draws);
* ``assemble_combined``: the same with ``combine="always"`` (every chunk loaded, concatenated,
  posterior.nc written: what every run did before);
* ``dustmap_stream``: :func:`dds_infer.dustmap_io.write_dustmap` from the run folder
  (:func:`dds_infer.run_outputs.open_run`, one chunk at a time);
* ``dustmap_whole``: the same from the whole posterior loaded in memory.

    python bench/outputs_bench.py --json [--n-stars 16384 --chunk 1024 --work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import peak_rss_mb, report, run_worker

STEPS = ("assemble_stream", "assemble_combined", "dustmap_stream", "dustmap_whole")


def synthetic_chunk(rows, chains: int, draws: int, seed: int):
    """A :class:`~dds_infer.posterior.Posterior` of stars ``rows`` with the engines' dtypes."""
    from dds_infer.posterior import Posterior

    rng = np.random.default_rng(seed)
    n = len(rows)
    shape = (n, chains, draws)
    loc = lambda lo, hi, sd: (rng.uniform(lo, hi, n)[:, None, None]  # noqa: E731
                              + sd * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    s = {"teff": loc(4000, 7000, 80.0), "logg": loc(1.5, 4.8, 0.1), "feh": loc(-1.5, 0.3, 0.1),
         "mu": loc(6, 15, 0.3), "E": np.abs(loc(0.0, 1.5, 0.05))}
    s["distance_pc"] = (10 ** (s["mu"] / 5 + 1)).astype(np.float32)
    s["A_G"] = (2.5 * s["E"]).astype(np.float32)
    w = np.full((n, chains), 1.0 / chains)
    return Posterior(
        star_id=np.array([f"star{i:09d}" for i in rows]), samples=s,
        sample_stats={"potential_energy": rng.standard_normal(shape, dtype=np.float32),
                      "diverging": rng.random(shape, dtype=np.float32) < 1e-4,
                      "num_steps": rng.integers(3, 64, shape, dtype=np.int32)},
        chain_stats={"step_size": rng.uniform(0.1, 0.4, (n, chains)).astype(np.float32),
                     "accept_prob": rng.uniform(0.9, 1.0, (n, chains)).astype(np.float32),
                     "init_valid": np.ones((n, chains), bool)},
        chain_weights=w, n_modes=np.ones(n, int), mode_flag=np.zeros(n, int),
        in_domain_frac=rng.uniform(0.8, 1.0, n), attrs={"config_hash": "bench", "rows": [int(rows[0]),
                                                                                        int(rows[-1]) + 1]})


def make_run(work: Path, n_stars: int, chunk: int, chains: int, draws: int) -> list:
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    paths = []
    for k, a in enumerate(range(0, n_stars, chunk)):
        p = work / "chunks" / f"chunk_{k:05d}.nc"
        if not p.exists():
            synthetic_chunk(np.arange(a, min(a + chunk, n_stars)), chains, draws, seed=k).save(p)
        paths.append(p)
    return paths


def worker(step: str, work: Path, n_stars: int) -> dict:
    """One step in this process: seconds and peak RSS (MB), and the RSS after the imports."""
    from dds_infer.dustmap_io import write_dustmap
    from dds_infer.run_outputs import assemble_run, open_run

    paths = sorted((work / "chunks").glob("chunk_*.nc"))
    rng = np.random.default_rng(0)
    l, b = rng.uniform(0, 360, n_stars), rng.uniform(-60, 60, n_stars)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if step.startswith("assemble"):
        out = work / step
        out.mkdir(exist_ok=True)
        assemble_run(out, paths, attrs={"bench": step}, combine="never" if step == "assemble_stream" else "always")
    else:
        run = open_run(work / "assemble_stream")
        post = run if step == "dustmap_stream" else run.load()
        write_dustmap(work / f"{step}.h5", post, l, b, nside=8, n_samples=100)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "rss_mb_after_imports": base}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-stars", type=int, default=16384)
    p.add_argument("--chunk", type=int, default=1024, help="stars per chunk file (the queue engine's default)")
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--work-dir", default=None, help="keep the synthetic run here (default: a temporary folder)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--_worker", nargs=2, metavar=("STEP", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        print(json.dumps(worker(args._worker[0], Path(args._worker[1]), args.n_stars)))
        return 0
    for name in ("n_stars", "chunk", "num_chains", "num_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="outputs_bench_")
    work = Path(args.work_dir or tmp.name)
    t0 = time.perf_counter()
    paths = make_run(work, args.n_stars, args.chunk, args.num_chains, args.num_samples)
    figures = {"n_stars": args.n_stars, "chunk_stars": args.chunk, "n_chunks": len(paths),
               "draws_per_star": args.num_chains * args.num_samples,
               "chunk_files_mb": sum(q.stat().st_size for q in paths) / 2**20,
               "make_seconds": time.perf_counter() - t0}
    for step in STEPS:
        res = run_worker(__file__, "--_worker", step, work, "--n-stars", args.n_stars)
        figures.update({f"{step}_{k}": v for k, v in res.items()})
    for kind, whole in (("assemble", "combined"), ("dustmap", "whole")):
        # memory grown by the step itself, in memory against streamed
        grow = {m: figures[f"{kind}_{m}_peak_rss_mb"] - figures[f"{kind}_{m}_rss_mb_after_imports"]
                for m in ("stream", whole)}
        figures[f"{kind}_memory_growth_ratio"] = grow[whole] / max(grow["stream"], 1.0)
    if tmp is not None:
        tmp.cleanup()
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
