"""Checking a catalogue larger than memory before a run: block by block, every problem at once.

A catalogue of 10⁸ stars is inferred in shards (``dds-infer infer --shard K/N``), each read and
validated on its own (:func:`dds_infer.catalog.validate`). A bad row then stops only its own shard,
hours into a job array, and an id given to two rows in different shards is found only when their
runs are joined (``dds-infer dustmap``). :func:`scan_catalog` (``dds-infer check``) reads the file
in blocks of rows with the same reader and the same checks, in memory bounded by the block, and
collects what every block reports:

- each block's problems (a :class:`~dds_infer.catalog.CatalogError`'s messages, naming file rows),
  a problem about columns (the same in every block) once, with the number of blocks it is in;
  after two blocks with the same problems and no others, the scan stops (every block would repeat
  them);
- ids given to more than one row anywhere in the range, across blocks too (integer ids compared
  as they are; other ids by a 128-bit hash of their text);
- the blocks' :class:`~dds_infer.catalog.ValidationReport` counts summed into one, and their
  warnings, each prefixed with its block's rows.
"""

from __future__ import annotations

import warnings as _warnings
from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np

from .catalog_checks import MAX_ROWS_SHOWN, CatalogError, ValidationReport

__all__ = ["ScanResult", "block_ranges", "merge_reports", "scan_catalog", "DEFAULT_BLOCK_ROWS"]

DEFAULT_BLOCK_ROWS = 1_000_000  # ~1 kB per star in memory while a block is checked
MAX_WARNINGS = 20


@dataclass
class ScanResult:
    """What :func:`scan_catalog` found in rows ``[start, stop)``: ``problems`` (empty: valid),
    the summed ``report`` of the blocks that were valid (None if none was), the blocks read."""

    start: int
    stop: int
    n_blocks: int
    n_blocks_read: int
    problems: list[str] = field(default_factory=list)
    report: ValidationReport | None = None
    n_duplicate_ids: int = 0
    stopped_early: bool = False

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"valid": self.valid, "rows": [self.start, self.stop], "n_rows": self.stop - self.start,
                "n_blocks": self.n_blocks, "n_blocks_read": self.n_blocks_read, "stopped_early": self.stopped_early,
                "n_problems": len(self.problems), "problems": list(self.problems),
                "n_duplicate_ids": self.n_duplicate_ids,
                "report": None if self.report is None else self.report.to_dict()}


def block_ranges(start: int, stop: int, block_rows: int, edges=None) -> list[tuple[int, int]]:
    """Contiguous blocks covering ``[start, stop)``, each ≤ ``block_rows`` rows unless one piece
    between ``edges`` (e.g. a Parquet file's row-group bounds, which a block reads whole) is
    larger: block ends then fall on edges, so no row group is decoded twice."""
    if int(block_rows) < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    size, inner = int(block_rows), sorted({int(e) for e in (edges if edges is not None else ()) if start < e < stop})
    blocks, a = [], int(start)
    while a < stop:
        b = min(a + size, int(stop))
        if inner and b < stop:  # end on the last edge within the block, else on the first after it
            fit = [e for e in inner if a < e <= b]
            b = fit[-1] if fit else next((e for e in inner if e > a), int(stop))
        blocks.append((a, b))
        a = b
    return blocks


def merge_reports(reports: list[tuple[tuple[int, int], ValidationReport]]) -> ValidationReport | None:
    """One :class:`ValidationReport` for several blocks ((start, stop), report): counts summed,
    warnings prefixed with their block's file rows (at most :data:`MAX_WARNINGS`, then a count)."""
    if not reports:
        return None
    first = reports[0][1]
    merged = {}
    for f in fields(ValidationReport):
        vals = [getattr(r, f.name) for _, r in reports]
        if f.name == "bands":
            merged[f.name] = first.bands
        elif f.name == "warnings":
            msgs = [f"rows {a}:{b}: {m}" for (a, b), r in reports for m in r.warnings]
            more = len(msgs) - MAX_WARNINGS
            merged[f.name] = msgs[:MAX_WARNINGS] + ([f"... and {more} more warnings"] if more > 0 else [])
        elif isinstance(vals[0], dict):
            merged[f.name] = {k: int(sum(v[k] for v in vals)) for k in vals[0]}
        elif any(v is None for v in vals):
            merged[f.name] = None
        else:
            merged[f.name] = int(sum(vals))
    return ValidationReport(**merged)


def _id_keys(ids: np.ndarray) -> np.ndarray:
    """(n, 2) int64 keys equal for equal ids: integer ids themselves, other ids a 128-bit hash
    of their text (two 64-bit hashes, pandas.util.hash_array with two keys)."""
    import pandas as pd

    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return np.column_stack([ids.astype(np.int64), np.zeros(ids.size, np.int64)])
    text = ids.astype(str).astype(object)
    h = [pd.util.hash_array(text, hash_key=k, categorize=False) for k in ("dds_infer_ids_01", "dds_infer_ids_02")]
    return np.column_stack(h).view(np.int64)


def _duplicates(keys: list[np.ndarray], firsts: list[int]) -> tuple[int, list[np.ndarray]]:
    """(number of ids on rows of more than one block, file rows of the first few such ids). An id
    repeated within one block only is that block's own problem (:func:`~dds_infer.catalog.validate`)."""
    if not keys:
        return 0, []
    k = np.concatenate(keys)
    rows = np.concatenate([f + np.arange(len(b)) for f, b in zip(firsts, keys)])
    block = np.repeat(np.arange(len(keys)), [len(b) for b in keys])
    order = np.lexsort((k[:, 1], k[:, 0]))
    ks = k[order]
    new = np.concatenate([[True], np.any(ks[1:] != ks[:-1], axis=1)])  # first row of each distinct id
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], ks.shape[0])
    blocks_of = block[order]
    multi = [(a, e) for a, e in zip(starts, ends) if e - a > 1 and (blocks_of[a:e] != blocks_of[a]).any()]
    return len(multi), [np.sort(rows[order[a:e]]) for a, e in multi[:MAX_ROWS_SHOWN]]


def scan_catalog(read_block: Callable, start: int, stop: int, *, block_rows: int = DEFAULT_BLOCK_ROWS,
                 edges=None, read_ids: Callable | None = None, on_rows: Callable | None = None) -> ScanResult:
    """Check file rows ``[start, stop)`` block by block (see the module docstring).

    read_block((a, b)) -> a validated :class:`~dds_infer.catalog.StarCatalog` of file rows
    [a, b) (ids: its id column or, without one, file rows), raising
    :class:`~dds_infer.catalog.CatalogError` with every problem. read_ids((a, b)) -> the id
    column's values of those rows or None (e.g. :func:`dds_infer.catalog_io.read_ids`): read for
    a block that fails, so that its ids still count in the check across blocks. edges: file rows
    where the blocks should preferably end (:func:`block_ranges`). on_rows(n): called after each block.
    """
    blocks = block_ranges(start, stop, block_rows, edges)
    result = ScanResult(start=int(start), stop=int(stop), n_blocks=len(blocks), n_blocks_read=0)
    seen: dict[str, list[int]] = {}  # problem message -> blocks it is in
    reports, keys, firsts, previous = [], [], [], None
    for i, (a, b) in enumerate(blocks):
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")  # the report's warnings are collected instead
            try:
                cat = read_block((a, b))
                problems = []
            except CatalogError as err:
                cat, problems = None, list(err.problems)
        result.n_blocks_read += 1
        repeated = bool(problems) and previous is not None and set(problems) == previous  # (columns, not rows)
        for m in problems:
            seen.setdefault(m, []).append(i)
        if cat is not None:
            rep = cat.meta.get("validation") or cat.validated().meta["validation"]
            reports.append(((a, b), ValidationReport(**{**rep, "bands": tuple(rep["bands"])})))
            if (cat.meta.get("column_map") or {}).get("id") is not None:  # (else the ids are file rows)
                keys.append(_id_keys(cat.star_ids()))
                firsts.append(a)
        elif read_ids is not None and not repeated:
            try:
                ids = read_ids((a, b))
            except (CatalogError, ValueError, KeyError):
                ids = None
            if ids is not None and len(ids) == b - a:
                keys.append(_id_keys(ids))
                firsts.append(a)
        if on_rows is not None:
            on_rows(b - a)
        if repeated and i + 1 < len(blocks):
            result.stopped_early = True  # the same problems again, none about rows: every block has them
            break
        previous = set(problems) if problems else None
    for m, where in seen.items():
        result.problems.append(m if len(where) == 1 else f"{m} (in {len(where)} blocks of rows)")
    if result.stopped_early:
        result.problems.append(f"stopped after {result.n_blocks_read} of {len(blocks)} blocks: the same "
                               "problems in consecutive blocks (columns, not rows); fix them and check again")
    n_dup, groups = _duplicates(keys, firsts)
    if n_dup:
        def id_text(row):  # the repeated id itself, read back from one of its rows (a few small reads)
            try:
                ids = None if read_ids is None else read_ids((int(row), int(row) + 1))
            except (CatalogError, ValueError, KeyError):
                ids = None
            return "" if ids is None or len(ids) != 1 else f" (id {str(ids[0])!r})"

        shown = "; ".join(f"file rows {g.tolist()}{id_text(g[0])}" for g in groups)
        result.problems.append(f"[id] {n_dup} id(s) given to rows of different blocks (outputs are keyed by id; "
                               f"shards would collide when joined): {shown}" + (" ..." if n_dup > len(groups) else ""))
    result.n_duplicate_ids = n_dup
    result.report = merge_reports(reports)
    return result
