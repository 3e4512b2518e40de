"""The work each visitor has running, counted until it has really stopped.

Gradio frees a request's worker the moment its asyncio task is cancelled (``/gradio_api/cancel``, or
another event's ``cancels=``), but the model code runs in a thread that goes on until it returns:
a visitor who joins, cancels and joins again would otherwise run any number of requests at once.
So a handler computes only inside ``RunRegistry.computing``: while it is there it counts for its
visitor (the queue's per-visitor limit and its fair start read ``count``), and its ``Run.stop``
flag, set by a cancel or by a new image on the same page, stops it between models and inside the
slow methods (``dsnet.cam.service``'s ``should_stop``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Visitor:
    """Who a request comes from: the address (as ``app.gate.client_ip`` sees it) and the page's session."""

    ip: str
    session: str | None = None

    def same(self, ip: str | None, session: str | None) -> bool:
        return ip == self.ip or (session is not None and session == self.session)


@dataclass
class Run:
    """One request's computation; ``stop`` asks it to end at the next check."""

    visitor: Visitor
    stop: threading.Event = field(default_factory=threading.Event)

    def should_stop(self) -> bool:
        return self.stop.is_set()


class RunRegistry:
    """The runs computing now, per visitor (thread-safe: handlers run in worker threads)."""

    def __init__(self) -> None:
        self._runs: list[Run] = []
        self._lock = threading.Lock()

    @contextmanager
    def computing(self, run: Run) -> Iterator[Run]:
        """Count ``run`` for its visitor while the block runs (one model, one step of a stream)."""
        with self._lock:
            self._runs.append(run)
        try:
            yield run
        finally:
            with self._lock:
                self._runs.remove(run)

    def count(self, ip: str | None = None, session: str | None = None) -> int:
        """How many runs of this visitor (same address or same session) are computing."""
        with self._lock:
            return sum(1 for r in self._runs if r.visitor.same(ip, session))

    def cancel_session(self, session: str) -> int:
        """Ask every computing run of a page session to stop (``/gradio_api/cancel`` names the session)."""
        with self._lock:
            runs = [r for r in self._runs if r.visitor.session == session]
        for r in runs:
            r.stop.set()
        return len(runs)
