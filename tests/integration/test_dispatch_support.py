"""A real aiohttp webhook receiver on loopback for the dispatcher tests (holds no tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 0


Behaviour = Callable[["Receiver", Received, int], Awaitable[web.Response]]


async def ok(_rx: Receiver, _r: Received, _n: int) -> web.Response:
    return web.Response(status=200)


@dataclass
class Receiver:
    """Records every request; ``behaviour(receiver, request, n)`` answers it, where ``n`` is
    the number of earlier requests with the same ``webhook-id``."""

    host: str = "127.0.0.1"
    behaviour: Behaviour = ok
    requests: list[Received] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        rec = Received(
            request.headers.get("webhook-id", ""),
            dict(request.headers),
            await request.read(),
            time.monotonic(),
        )
        seen = sum(1 for r in self.requests if r.webhook_id == rec.webhook_id)
        self.requests.append(rec)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            resp = await self.behaviour(self, rec, seen)
            rec.status = resp.status
            return resp
        finally:
            self.active -= 1

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.requests]

    def succeeded(self) -> list[str]:
        return [r.webhook_id for r in self.requests if 200 <= r.status < 300]

    async def wait_for(self, n: int, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while len(self.requests) < n:
            assert time.monotonic() < deadline, f"only {len(self.requests)} of {n} requests"
            await asyncio.sleep(0.01)
