"""Progress from inside compiled loops: a host sink that a jitted program reports to.

A chunk of the queue engine (:mod:`dds_infer.nuts_queue`) is one compiled ``while_loop`` that
runs for minutes; a program compiled with progress calls :func:`report` through
``jax.debug.callback`` each time some of its chains finish, and the host forwards the count to
the sink installed by :func:`reporting_to` (e.g. :func:`chains_to_stars` feeding a tqdm bar).
The callback returns nothing to the program, so the values it computes do not change.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable

_SINK: list = [None]  # the host function that counts go to
_LOCK = threading.Lock()  # devices call from their own threads


def report(n) -> None:
    """Host side of the callback: ``n`` units (e.g. chains) just finished."""
    with _LOCK:
        if _SINK[0] is not None:
            _SINK[0](int(n))


@contextmanager
def reporting_to(sink: Callable[[int], None]):
    """While active, programs compiled with progress call ``sink(n)`` (serialised) as work finishes.
    Keep it active until the (asynchronous) computation has finished."""
    with _LOCK:
        _SINK[0] = sink
    try:
        yield
    finally:
        with _LOCK:
            _SINK[0] = None


def chains_to_stars(bar, shown: list, n_rows: int, num_chains: int) -> Callable[[int], None]:
    """A sink that shows finished chains as stars on the tqdm ``bar``: chains // num_chains, at most
    ``n_rows`` (the queue engine never starts padding stars' chains; the cap is a guard);
    ``shown[0]`` tracks what was added."""
    chains = [0]

    def on_finished(n: int) -> None:
        chains[0] += n
        stars = min(chains[0] // num_chains, n_rows)
        if stars > shown[0]:
            bar.update(stars - shown[0])
            shown[0] = stars
    return on_finished
