"""``dds-infer status``: where a catalogue's runs (one folder per shard) stand, what to resubmit, and
the diagnostics of the stars finished so far (:mod:`dds_infer.run_status`); exit status 1 until
every run is finished and consistent."""

from __future__ import annotations

MAX_LISTED = 30  # runs listed one per line in the text report (beyond: only the unfinished ones)


def register(sub) -> None:
    p = sub.add_parser(
        "status",
        help="progress of 'dds-infer infer' runs (shards): finished, part done, rows no run covers, shards to "
        "resubmit, and the finished stars' diagnostics",
        description="Read the run folders' manifests and chunk files (no draws are loaded) and report each run's "
        "state (finished, partial, not started, not a run) and finished stars; with --catalog, the catalogue "
        "rows no run covers and rows two runs cover; with --shards N as well, which of the N shards "
        "(infer --shard K/N) are missing or unfinished. The finished chunks' summary rows give the flag "
        "counts, median ESS and R-hat pass rate, as 'dds-infer infer --json'. Exit status: 0 when every run "
        "is finished, they cover the catalogue (when given) once and share one configuration; 1 otherwise.",
    )
    p.add_argument("--posterior", required=True, nargs="+", metavar="RUN",
                   help="'dds-infer infer' output folders (e.g. runs/*); a folder that does not exist yet counts as "
                   "not started")
    p.add_argument("--catalog", default=None,
                   help="the catalogue the runs infer (only its row count is read): report the rows no run covers")
    p.add_argument("--columns", default=None, help="JSON file with the column map for generic tables")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="the runs are shards K/N of --catalog (infer --shard K/N): list the shards to (re)submit")
    p.add_argument("--no-figures", action="store_true", help="skip reading the finished stars' summary rows")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw the finished stars' overview (dds_infer.run_plots: Kiel diagram, [Fe/H], E against "
                   "distance, posterior widths, R-hat or weight ESS, flag reasons) into this file")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.set_defaults(func=run)


def _ranges(ks) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (for a job array's --array option)."""
    out, ks = [], sorted(ks)
    i = 0
    while i < len(ks):
        j = i
        while j + 1 < len(ks) and ks[j + 1] == ks[j] + 1:
            j += 1
        out.append(str(ks[i]) if i == j else f"{ks[i]}-{ks[j]}")
        i = j + 1
    return ",".join(out)


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    from ..cli import emit_json
    from ..run_status import coverage, run_status, star_figures
    from ._common import catalog_n_rows

    t0 = time.perf_counter()
    if args.shards is not None and (args.catalog is None or args.shards < 1):
        raise ValueError("--shards N needs N >= 1 and --catalog (the shards' rows come from its row count)")
    statuses = [run_status(p) for p in args.posterior]
    n_rows = None
    if args.catalog is not None:
        cmap = None if args.columns is None else json.loads(Path(args.columns).read_text())
        n_rows = catalog_n_rows(Path(args.catalog), cmap)
    cov = coverage(statuses, n_rows, args.shards)
    figures = None if args.no_figures else star_figures(statuses)
    if args.plot is not None:
        from ..atomic import atomic_path
        from ..run_plots import OVERVIEW_COLUMNS, plot_run_overview
        from ..run_status import summary_columns

        done = sum(r.stars_done for r in statuses)
        fig = plot_run_overview(summary_columns(statuses, OVERVIEW_COLUMNS),
                                title=f"{done} finished stars in {len(statuses)} run(s)")
        with atomic_path(Path(args.plot)) as tmp:
            fig.savefig(tmp, dpi=100, format=Path(args.plot).suffix.lstrip(".") or "png")
    counts = {s: sum(r.state == s for r in statuses) for s in ("finished", "partial", "not started", "not a run")}
    hashes = sorted({r.config_hash for r in statuses if r.config_hash})
    complete = (counts["finished"] == len(statuses) and not cov["overlaps"] and len(hashes) <= 1
                and not cov.get("uncovered") and not cov.get("beyond_catalogue")
                and not cov.get("missing_shards") and not cov.get("unfinished_shards"))
    report = {"complete": complete, "n_runs": len(statuses), "runs_by_state": counts,
              "stars_finished": sum(r.stars_done for r in statuses),
              "stars_in_runs": sum(r.n_stars or 0 for r in statuses), "config_hashes": hashes,
              "coverage": cov, "figures": figures, "plot": args.plot, "runs": [r.to_dict() for r in statuses],
              "seconds": time.perf_counter() - t0}
    if args.json:
        emit_json(report)
        return 0 if complete else 1
    shown = statuses if len(statuses) <= MAX_LISTED else [r for r in statuses if r.state != "finished"]
    for r in shown[:MAX_LISTED]:
        what = (f"{r.chunks_done}/{r.n_chunks} chunks, {r.stars_done}/{r.n_stars} stars, rows {r.rows[0]}:{r.rows[1]}, "
                f"{r.method}" if r.rows is not None else r.problem)
        print(f"{r.state:11s}  {r.path}  ({what})")
    if len(shown) < len(statuses) or len(shown) > MAX_LISTED:
        print(f"({min(len(shown), MAX_LISTED)} of {len(statuses)} runs listed: the unfinished ones first; --json lists all)")
    print(f"{len(statuses)} run(s): " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
          + f"; {report['stars_finished']} of {report['stars_in_runs']} stars finished")
    if len(hashes) > 1:
        print(f"warning: the runs have {len(hashes)} different configurations (settings, model or prior)")
    for o in cov["overlaps"]:
        print(f"overlap: rows {o['rows'][0]}:{o['rows'][1]} are in {o['runs'][0]} and {o['runs'][1]}")
    if n_rows is not None:
        gaps = cov["uncovered"]
        print(f"catalogue: {n_rows} rows; " + ("every row is in a run" if not gaps else
              f"{sum(b - a for a, b in gaps)} rows in no run: " + ", ".join(f"{a}:{b}" for a, b in gaps[:20])
              + (" ..." if len(gaps) > 20 else "")))
    if args.shards is not None:
        todo = sorted(cov["missing_shards"] + cov["unfinished_shards"])
        print(f"shards of {args.shards}: {len(cov['missing_shards'])} missing, {len(cov['unfinished_shards'])} "
              f"unfinished" + (f"; (re)submit {_ranges(todo)}" if todo else "")
              + (f"; {len(cov['other_runs'])} run(s) are not one of these shards" if cov["other_runs"] else ""))
    if figures is not None and figures["n_stars"]:
        fc = figures["flag_counts"]
        why = ", ".join(f"{k} {v}" for k, v in fc.items() if k != "any" and v)
        rh = figures["frac_rhat_lt_1_01"]
        print(f"finished stars: {figures['n_stars']}, flagged {figures['n_flagged']}" + (f" ({why})" if why else "")
              + f", median ESS {figures['median_ess']:.0f}" + ("" if rh is None else f", R-hat < 1.01: {rh:.1%}"))
    return 0 if complete else 1
