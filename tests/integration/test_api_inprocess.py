"""Fine-grained API cases in process (httpx ASGI transport, real SQLite store): how failures
of the store and odd requests become status codes. The real-server tests are in
test_api_server.py and test_api_pipeline.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from eventledger import Ledger
from eventledger.api import ApiConfig, create_app


@pytest.fixture
async def client_and_ledger(sqlite_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Ledger]]:
    ledger = Ledger(sqlite_url)
    app = create_app(ApiConfig(db_url=sqlite_url), ledger=ledger)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, ledger
    ledger.close()


async def test_a_failing_store_is_503_with_a_reason(
    client_and_ledger: tuple[httpx.AsyncClient, Ledger],
) -> None:
    client, ledger = client_and_ledger
    assert (await client.get("/healthz")).status_code == 200
    ledger.store.close()  # every query now fails in the driver
    r = await client.get("/healthz")
    assert r.status_code >= 500 and r.json()["error"] in ("store_unavailable", "internal_error")
    for path in ("/v1/users/u/summary", "/v1/endpoints"):
        r = await client.get(path)
        assert r.status_code == 503, (path, r.text)
        assert r.json()["error"] == "store_unavailable"
        assert "closed" in r.json()["reason"]


async def test_odd_requests_get_json_reasons(
    client_and_ledger: tuple[httpx.AsyncClient, Ledger],
) -> None:
    client, _ = client_and_ledger
    r = await client.delete("/v1/events")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = await client.get("/v1/deliveries", params={"limit": 0})
    assert r.status_code == 422 and "limit" in r.json()["reason"]
    r = await client.patch("/v1/endpoints/x", json={"enabled": "perhaps"})
    assert r.status_code == 422 and "enabled" in r.json()["reason"]
    r = await client.post(
        "/v1/endpoints", content=b"{", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    r = await client.get("/v1/deliveries/nope")
    assert r.status_code == 404 and "nope" in r.json()["reason"]


async def test_latency_metric_is_labelled_by_route_template(
    client_and_ledger: tuple[httpx.AsyncClient, Ledger],
) -> None:
    client, _ = client_and_ledger
    for user in ("a", "b", "c"):
        await client.get(f"/v1/users/{user}/summary")
    await client.get("/no/such/thing")
    text = (await client.get("/metrics")).text
    assert (
        'eventledger_http_request_duration_seconds_count{method="GET",'
        'route="/v1/users/{user_id}/summary",status="200"} 3.0'
    ) in text
    assert 'route="unmatched",status="404"' in text
    assert "/v1/users/a/" not in text  # no per-user series


async def test_served_connections_have_nodelay() -> None:
    """Regression: a listener made without IPPROTO_TCP left Nagle on, ~40 ms per request."""
    import asyncio
    import socket

    from eventledger.api.server import listen_socket

    nodelay: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if nodelay:
                break
            await asyncio.sleep(0.01)
        writer.close()
    assert nodelay and nodelay[0] != 0
