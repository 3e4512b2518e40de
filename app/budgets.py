"""Amounts a visitor may spend within a sliding window: upload bytes and files, decoded pixels.

One small object for every such limit, so each is checked the same way: per visitor and for
everyone, within ``window`` seconds, read from an injected clock (tests move time on instead of
sleeping it out).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class WindowBudget:
    """``per_client`` for one visitor and ``total`` for everyone, per ``window`` seconds."""

    per_client: float
    total: float
    window: float
    clock: Callable[[], float] = time.monotonic
    _charges: list[tuple[float, str, float]] = field(default_factory=list, repr=False)  # (when, client, amount)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def used(self, client: str | None = None) -> float:
        """What ``client`` (None: everyone) spent within the window."""
        with self._lock:
            self._expire()
            return sum(a for _, c, a in self._charges if client is None or c == client)

    def exceeded(self, client: str, amount: float) -> Literal["client", "total"] | None:
        """Which limit charging ``amount`` now would pass (None: neither); charges nothing."""
        with self._lock:
            self._expire()
            mine = sum(a for _, c, a in self._charges if c == client)
            if mine + amount > self.per_client:
                return "client"
            if sum(a for _, _, a in self._charges) + amount > self.total:
                return "total"
            return None

    def charge(self, client: str, amount: float) -> None:
        with self._lock:
            self._charges.append((self.clock(), client, amount))

    def _expire(self) -> None:
        now = self.clock()
        if self._charges and now - self._charges[0][0] >= self.window:
            self._charges = [ch for ch in self._charges if now - ch[0] < self.window]
