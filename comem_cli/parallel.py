"""Run a few blocking calls at once and collect their results (memory section requests, engine
calibration batches)."""

from __future__ import annotations

import threading
from typing import Any, Callable


def in_parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run `calls` at once (one daemon thread each but the first, run here); their results in
    order, or the first call's exception (in order) once all have returned."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as e:  # handed to the caller below
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(1, len(calls))]
    for t in threads:
        t.start()
    if calls:
        run(0)
    for t in threads:
        t.join()
    for e in errors:
        if e is not None:
            raise e
    return results
