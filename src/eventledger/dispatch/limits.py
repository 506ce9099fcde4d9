"""Per-host admission: a fair (FIFO) limit on concurrent requests to one destination host.

aiohttp's own per-host pool does not serve its waiters in order: with more callers than
connections some callers waited seconds while others went round again (the starvation trap
in MEASURED.md). This limiter sits in front of the pool and admits a host's deliveries in
the order they arrived; a delivery only reaches a worker once its host admitted it, so a
saturated or hanging host ties up its own slots and never the workers of other hosts.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["HostLanes"]


class HostLanes(Generic[T]):
    """Admission of items per host: at most ``limit`` admitted at once, the rest queued FIFO.

    Not thread-safe: used from the event loop only.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the per-host limit must be >= 1")
        self.limit = limit
        self._admitted: dict[str, int] = {}
        self._waiting: dict[str, deque[T]] = {}
        self._progress: dict[str, float] = {}  # when the host last freed (or first took) a slot

    def offer(self, host: str, item: T, now: float = 0.0) -> bool:
        """Admit ``item`` now (True) or queue it behind the host's earlier items (False)."""
        n = self._admitted.get(host, 0)
        if n < self.limit and not self._waiting.get(host):
            self._admitted[host] = n + 1
            if n == 0:
                self._progress[host] = now
            return True
        self._waiting.setdefault(host, deque()).append(item)
        return False

    def done(self, host: str, now: float = 0.0) -> T | None:
        """An admitted item of ``host`` finished: admit and return the next waiting one."""
        self._progress[host] = now
        waiting = self._waiting.get(host)
        if waiting:
            item = waiting.popleft()
            if not waiting:
                del self._waiting[host]
            return item  # it takes over the freed slot
        n = self._admitted.get(host, 0) - 1
        if n > 0:
            self._admitted[host] = n
        else:
            self._admitted.pop(host, None)
            self._progress.pop(host, None)
        return None

    def admitted(self, host: str) -> int:
        """Items of ``host`` admitted and not done."""
        return self._admitted.get(host, 0)

    def waiting(self, host: str) -> int:
        """Items of ``host`` queued for admission."""
        return len(self._waiting.get(host, ()))

    def stalled(self, host: str, now: float, after: float) -> bool:
        """Whether ``host`` has every slot taken and freed none for ``after`` seconds."""
        return self.admitted(host) >= self.limit and now - self._progress.get(host, now) > after

    def load(self, now: float = 0.0, stall_after: float = float("inf")) -> int:
        """Admitted plus waiting items; a stalled host counts at most ``limit``, so that its
        queue never holds room that other hosts could use."""
        hosts = self._admitted.keys() | self._waiting.keys()
        total = 0
        for h in hosts:
            n = self.admitted(h) + self.waiting(h)
            total += min(n, self.limit) if self.stalled(h, now, stall_after) else n
        return total

    def trim_stalled(self, now: float, stall_after: float) -> list[T]:
        """Remove and return the waiting items of stalled hosts."""
        out: list[T] = []
        for host in list(self._waiting):
            if self.stalled(host, now, stall_after):
                out.extend(self._waiting.pop(host))
        return out

    def drain_waiting(self) -> list[T]:
        """Remove and return every waiting item."""
        out = [item for waiting in self._waiting.values() for item in waiting]
        self._waiting.clear()
        return out
