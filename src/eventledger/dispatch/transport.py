"""HTTP delivery: target checks, Standard Webhooks signing and the aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from ..errors import TargetRefusedError
from .retry import parse_retry_after

__all__ = ["AttemptResult", "TargetGuard", "Transport", "sign", "target_host"]

#: Bytes of a response body read (and thrown away) to keep the connection reusable.
MAX_RESPONSE_BYTES = 64 * 1024
#: How long a host's resolved addresses are trusted.
RESOLVE_TTL_S = 30.0
USER_AGENT = "eventledger-dispatcher"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of
    ``{id}.{timestamp}.{body}`` keyed with the base64 secret after its ``whsec_`` prefix."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


@functools.lru_cache(maxsize=4096)
def target_host(url: str) -> str:
    """The destination host of an http(s) URL (lower case), or TargetRefusedError.

    Cached: every delivery asks twice, and a dispatcher sees few distinct URLs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise TargetRefusedError(f"invalid target URL {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise TargetRefusedError(f"target URL must be http or https, got {url!r}")
    if not host:
        raise TargetRefusedError(f"target URL has no host: {url!r}")
    return host.lower()


def _refused_address(text: str) -> bool:
    """Whether an IP address is private, loopback, link-local or otherwise not public."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_literal_target(url: str, allow_private: bool) -> str:
    """Check the scheme and, when the host is an IP literal, its address; return the host."""
    host = target_host(url)
    if allow_private:
        return host
    try:
        refused = _refused_address(host)
    except ValueError:
        return host  # a name: checked on resolution
    if refused:
        raise TargetRefusedError(f"target {url!r} is a private/loopback/link-local address")
    return host


class TargetGuard:
    """Refuses targets whose host resolves to a non-public address (unless allowed)."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def check(self, url: str) -> None:
        """Raise TargetRefusedError when ``url`` may not be delivered to."""
        host = check_literal_target(url, self.allow_private)
        if self.allow_private:
            return
        try:
            ipaddress.ip_address(host)
            return  # a literal, already checked
        except ValueError:
            pass
        now = time.monotonic()
        cached = self._cache.get(host)
        if cached is None or cached[0] < now:
            reason = await self._resolve(host)
            cached = (now + RESOLVE_TTL_S, reason)
            self._cache[host] = cached
        if cached[1] is not None:
            raise TargetRefusedError(f"target {url!r} refused: {cached[1]}")

    @staticmethod
    async def _resolve(host: str) -> str | None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            return None  # unresolvable: the request fails and is retried like any failure
        for info in infos:
            address = str(info[4][0])
            if _refused_address(address):
                return f"{host} resolves to the non-public address {address}"
        return None


class PublicOnlyResolver(AbstractResolver):
    """aiohttp's resolver, keeping only public addresses.

    The check before each request gives a clear reason; this one closes the gap between that
    check and the connection (a name that re-resolves to a private address meanwhile)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if not _refused_address(r["host"])]
        if not public:
            raise OSError(f"{host} resolves only to non-public addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one POST gave: ``ok`` for a 2xx; else the error, status and Retry-After."""

    ok: bool
    status: int | None
    error: str | None
    retry_after: float | None = None


class Transport:
    """One aiohttp session for every request of an orchestrator.

    ``per_host`` is the fair limiter's size; the connector's ``limit_per_host`` matches it and
    its total ``limit`` is never the bottleneck, so aiohttp's unfair waiting never happens.
    """

    def __init__(
        self, *, request_timeout: float, per_host: int, total: int, allow_private: bool
    ) -> None:
        self.request_timeout = request_timeout
        self.per_host = per_host
        self.total = total
        self.guard = TargetGuard(allow_private)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.total,
                limit_per_host=self.per_host,
                resolver=None if self.guard.allow_private else PublicOnlyResolver(),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.request_timeout),
                auto_decompress=False,
                headers={"user-agent": USER_AGENT},
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def post(
        self, url: str, webhook_id: str, body: bytes, secret: str | None
    ) -> AttemptResult:
        """POST ``body`` to ``url`` with the webhook headers; never raises for network errors
        (TargetRefusedError is raised for a refused target)."""
        if self._session is None:
            raise RuntimeError("Transport.open() was not called")
        await self.guard.check(url)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
        }
        if secret:
            headers["webhook-signature"] = sign(secret, webhook_id, timestamp, body)
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.content.read(MAX_RESPONSE_BYTES)
                if not resp.content.at_eof():
                    resp.close()  # do not read an endless body; drop the connection
                if 200 <= resp.status < 300:
                    return AttemptResult(True, resp.status, None)
                retry_after = None
                if resp.status in (429, 503):
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
                return AttemptResult(False, resp.status, f"HTTP {resp.status}", retry_after)
        except TimeoutError:
            return AttemptResult(False, None, f"timeout after {self.request_timeout:g}s")
        except aiohttp.ClientError as exc:
            return AttemptResult(False, None, f"connection error: {type(exc).__name__}: {exc}")
        except OSError as exc:
            return AttemptResult(False, None, f"connection error: {exc}")
