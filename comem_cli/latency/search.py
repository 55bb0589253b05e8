"""The one fitter of the latency package: a pattern search in log space, the loss given by the caller.

Both fits use it: the cost model's ten FITTED parameters against the paper's figures (paper.py)
and an engine's EngineParams against a request grid measured on it (engine_fit.py). Parameters
are positive scales (seconds, token counts), so each is tried multiplied and divided by a factor
rather than shifted: no gradient, no bounds, and a loss that is a whole simulation is cheap enough
to call a few hundred times.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence


def pattern_search(start: dict[str, Any], loss: Callable[[dict[str, Any]], float], *, names: Sequence[str] | None = None,
                   max_evals: int, min_factor: float, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Minimise `loss` over `names` (default: every key of `start`; the other keys ride along unchanged).

    Every parameter in turn is tried multiplied and divided by a factor; the first improvement of
    a parameter is kept and the sweep moves on to the next one; the factor starts at 2 and is
    square-rooted whenever a whole sweep finds no improvement, until it falls to `min_factor`; at
    most `max_evals` calls of `loss` (the one on `start` included). `log`, if given, hears the
    start, every improvement and the end.
    """
    current = dict(start)
    best, evals, factor = loss(current), 1, 2.0
    if log:
        log(f"start: loss {best:.4f}")
    while evals < max_evals and factor > min_factor:
        improved = False
        for name in list(names or current):
            for f in (factor, 1 / factor):
                if evals >= max_evals:
                    break
                trial = dict(current, **{name: current[name] * f})
                evals += 1
                value = loss(trial)
                if value < best:
                    best, current, improved = value, trial, True
                    if log:
                        log(f"eval {evals}: {name} x{f:.3f} -> loss {best:.4f}")
                    break
        if not improved:
            factor = math.sqrt(factor)
    if log:
        log(f"end: loss {best:.4f} after {evals} evaluations")
    return current
