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

    def offer(self, host: str, item: T) -> bool:
        """Admit ``item`` now (True) or queue it behind the host's earlier items (False)."""
        n = self._admitted.get(host, 0)
        if n < self.limit and not self._waiting.get(host):
            self._admitted[host] = n + 1
            return True
        self._waiting.setdefault(host, deque()).append(item)
        return False

    def done(self, host: str) -> T | None:
        """An admitted item of ``host`` finished: admit and return the next waiting one."""
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
        return None

    def admitted(self, host: str) -> int:
        """Items of ``host`` admitted and not done."""
        return self._admitted.get(host, 0)

    def waiting(self, host: str) -> int:
        """Items of ``host`` queued for admission."""
        return len(self._waiting.get(host, ()))

    def load(self) -> int:
        """Admitted plus waiting items, counting at most ``limit`` per host: a host with a
        long queue does not count as more work than it may run at once."""
        hosts = self._admitted.keys() | self._waiting.keys()
        return sum(min(self.limit, self.admitted(h) + self.waiting(h)) for h in hosts)

    def trim(self, keep: int) -> list[T]:
        """Remove and return the waiting items beyond ``keep`` per host (newest first out)."""
        out: list[T] = []
        for host in list(self._waiting):
            waiting = self._waiting[host]
            while len(waiting) > keep:
                out.append(waiting.pop())
            if not waiting:
                del self._waiting[host]
        return out

    def drain_waiting(self) -> list[T]:
        """Remove and return every waiting item."""
        out = [item for waiting in self._waiting.values() for item in waiting]
        self._waiting.clear()
        return out
