"""Connections, below the HTTP gate: how long one may wait for a request head, how many one address holds.

The gate (``app.gate``) sees requests; a connection that never completes its request head never reaches
it, and uvicorn keeps such a connection open for as long as the client likes (400 idle connections from
one address stayed open for 130 s). ``install`` makes uvicorn's HTTP protocol (h11 or httptools, the one
``http="auto"`` picks: Gradio starts uvicorn with its defaults) close a connection whose request head has
not arrived ``head_timeout`` seconds after it opened or after its last answer, and refuse connections
beyond ``per_peer`` from one peer address. (A connection upgraded to a WebSocket is left alone, and
keeps counting for its address: Gradio's page and API use none.)
"""

from __future__ import annotations

import logging
from collections import Counter

from .gate import visitor_address

log = logging.getLogger("dsnet.app")
_TEXT = b"Too many connections from your address; close some (browser tabs) and try again."
TOO_MANY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n" + (
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_TEXT), _TEXT)
)


class ConnectionGuard:
    """Mixed in before uvicorn's protocol class; ``head_timeout`` / ``per_peer`` are set by ``install``."""

    head_timeout: float = 10.0
    per_peer: int | None = None  # None: not limited (behind a proxy every connection has the proxy's address)
    open_per_peer: Counter = Counter()  # one for the process: every guarded connection counts in it

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer, self._peer = None, None
        peer = visitor_address(self.client[0]) if self.client else None  # an IPv6 address as its /64
        if self.per_peer is not None and peer is not None:
            if self.open_per_peer[peer] >= self.per_peer:
                transport.write(TOO_MANY)  # refused: this address already holds per_peer connections
                transport.close()
                return
            self.open_per_peer[peer] += 1
            self._peer = peer
        self._wait_for_head()

    def _wait_for_head(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_late)

    def _head_too_late(self) -> None:
        """No request in progress ``head_timeout`` s after the connection opened or its last answer."""
        idle = self.cycle is None or self.cycle.response_complete
        upgraded = self.transport.get_protocol() is not self  # a WebSocket took the connection over
        if idle and not upgraded and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._cancel_head_timer()
            self._wait_for_head()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        if self._peer is not None:
            self.open_per_peer[self._peer] -= 1
            if self.open_per_peer[self._peer] <= 0:
                del self.open_per_peer[self._peer]
            self._peer = None
        super().connection_lost(exc)


def install(head_timeout: float, per_peer: int | None) -> type:
    """Make uvicorn's ``http="auto"`` protocol the guarded one (in this process, for servers started after
    this call); returns the class. uvicorn resolves ``"auto"`` through ``uvicorn.config.HTTP_PROTOCOLS``."""
    from uvicorn import config
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    guarded = type(
        f"Guarded{AutoHTTPProtocol.__name__}",
        (ConnectionGuard, AutoHTTPProtocol),
        {"head_timeout": head_timeout, "per_peer": per_peer, "__module__": __name__},
    )
    globals()[guarded.__name__] = guarded  # uvicorn imports the protocol class by its dotted name
    config.HTTP_PROTOCOLS["auto"] = f"{__name__}:{guarded.__name__}"
    log.info(
        "connections: a request head within %g s; %s",
        head_timeout,
        f"at most {per_peer} per address" if per_peer else "no limit per address (behind a proxy)",
    )
    return guarded


def check() -> list[str]:
    """What ``ConnectionGuard`` relies on that the installed uvicorn no longer has (empty: all there)."""
    import inspect

    from uvicorn import config
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    problems = []
    if "auto" not in getattr(config, "HTTP_PROTOCOLS", {}):
        problems.append('uvicorn.config.HTTP_PROTOCOLS["auto"] is gone (install sets it)')
    for method in ("connection_made", "connection_lost", "on_response_complete"):
        if not callable(getattr(AutoHTTPProtocol, method, None)):
            problems.append(f"{AutoHTTPProtocol.__name__}.{method} is gone (ConnectionGuard extends it)")
    source = inspect.getsource(AutoHTTPProtocol)
    for name in ("self.cycle", "self.client", "self.loop", "response_complete"):
        if name not in source:
            problems.append(f"{AutoHTTPProtocol.__name__} no longer uses {name} (ConnectionGuard reads it)")
    return problems
