"""The signals comem treats as "interrupt", in one place, and how they are held while a run is recorded.

Ctrl-C (SIGINT), SIGTERM (`kill`, a supervisor), SIGHUP (the terminal closed, SSH dropped) and
SIGQUIT (Ctrl-\\) all end a run the same way: as a KeyboardInterrupt, which the agent loop and
`run.execute` turn into the status `interrupted`, with meta.json, patch.diff and the trajectory
written and no container left. Removing a container, taking the patch and writing the run's record
hold these signals (`signals_deferred`), so a second Ctrl-C cannot cut them short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _handled() -> list[signal.Signals]:
    """The interrupt signals not ignored by whoever started comem (`nohup` ignores SIGHUP so that a
    run outlives its terminal: comem keeps it that way)."""
    return [s for s in INTERRUPT_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]


def interrupt_on_signals() -> None:
    """Every interrupt signal raises KeyboardInterrupt in the main thread, as Ctrl-C does (the default
    action of SIGTERM, SIGHUP and SIGQUIT would kill the run raw: meta.json `running`, a container left)."""
    for s in _handled():
        signal.signal(s, _raise_keyboard_interrupt)


def default_on_signals() -> None:
    """The command is over and only exiting is left: a further signal ends the process at once
    (the default action) instead of raising a KeyboardInterrupt over the last message."""
    for s in _handled():
        signal.signal(s, signal.SIG_DFL)


@contextlib.contextmanager
def signals_deferred(reraise: bool = True) -> Iterator[list[int]]:
    """Hold the interrupt signals while cleaning up or recording a run, so a second Ctrl-C cannot leave
    a container behind or a record half written. The signals received are yielded (the list fills as
    they arrive); with `reraise` one of them ends the block as KeyboardInterrupt. Outside the main
    thread (benchmark workers) signals never arrive, and this does nothing."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    old = {s: signal.signal(s, lambda n, _f: received.append(n)) for s in _handled()}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)  # None: a handler set outside Python
        if received and reraise:
            raise KeyboardInterrupt
