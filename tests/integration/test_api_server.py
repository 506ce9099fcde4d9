"""The HTTP API against a real ``eventledger serve`` (uvicorn) process on 127.0.0.1.

Each server runs as a subprocess on its own SQLite file; the tests check both the answers and
what the store holds afterwards (a refused body stores nothing).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

MAX_BODY = 64 * 1024
MAX_EVENTS = 50
TOKEN = "s3cret-token-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    base: str
    db_path: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def count(self, table: str) -> int:
        with sqlite3.connect(self.db_path) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return int(self.proc.returncode)


def start_server(tmp: Path, *args: str, token: str | None = None) -> Server:
    port = free_port()
    db_path = tmp / "api.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLEDGER_")}
    if token is not None:
        env["EVENTLEDGER_API_TOKEN"] = token
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "eventledger",
                "serve",
                "--db",
                f"sqlite:///{db_path}",
                "--port",
                str(port),
                "--log-level",
                "warning",
                *args,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", db_path, proc, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(server.base + "/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise AssertionError(f"server did not answer /healthz in 30 s: {log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("api"),
        "--role",
        "api",
        "--max-body-bytes",
        str(MAX_BODY),
        "--max-events",
        str(MAX_EVENTS),
    )
    yield srv
    code = srv.stop()
    assert code == 0, f"serve exited {code} on SIGTERM: {srv.log.read_text()}"


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("auth"), "--role", "api", token=TOKEN)
    yield srv
    assert srv.stop() == 0


def event(event_id: str, user: str = "u1", kind: str = "click", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user,
        "type": kind,
        "timestamp": "2024-05-01T10:00:00Z",
        **extra,
    }


def stored(server: Server) -> tuple[int, int, int, int]:
    return (
        server.count("events"),
        server.count("batches"),
        server.count("batch_outcomes"),
        server.count("users"),
    )


# -- ingest -> report ------------------------------------------------------------------------
def test_ingest_returns_the_report_and_stores_it(server: Server) -> None:
    batch = [
        event("ing-1", "ing-user", "purchase", metadata={"price": 12.5}),
        event("ing-2", "ing-user", "view"),
        event("ing-1", "ing-user", "purchase", metadata={"price": 12.5}),
        event("ing-3", "ing-user", "Bad Type"),
        42,
    ]
    with server.client() as c:
        r = c.post("/v1/events", json=batch)
        assert r.status_code == 200, r.text
        report = r.json()
        assert (report["total"], report["applied"], report["duplicates"]) == (5, 2, 1)
        assert report["rejected_by_reason"] == {"invalid_type": 1, "not_an_object": 1}
        assert report["balanced"] is True
        assert [o["outcome"] for o in report["outcomes"]] == [
            "applied",
            "applied",
            "duplicate",
            "rejected",
            "rejected",
        ]
        again = c.get(f"/v1/reports/{report['batch_id']}")
        assert again.status_code == 200
        assert again.json() == report
        activity = c.get("/v1/users/ing-user/activity").json()
        assert activity["counts"] == {"purchase": 1, "view": 1}
        assert activity["total_value"] == 12.5
        summary = c.get("/v1/users/ing-user/summary").json()
        assert summary == {"click": 0, "view": 1, "purchase": 1, "total_value": 12.5}


def test_ndjson_with_some_bad_lines_is_200_with_rejected_outcomes(server: Server) -> None:
    lines = [
        orjson.dumps(event("nd-1", "nd-user")),
        b'{"event_id": "nd-broken", "user_id": ',
        b"",
        b'"just a string"',
        orjson.dumps(event("nd-2", "nd-user", "view")),
    ]
    with server.client() as c:
        r = c.post(
            "/v1/events",
            content=b"\n".join(lines) + b"\n",
            headers={"content-type": "application/x-ndjson"},
        )
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["total"] == 4  # the blank line is not an event
        assert report["applied"] == 2
        assert report["rejected_by_reason"] == {"malformed_json": 1, "not_an_object": 1}
        assert report["balanced"] is True
        assert c.get("/v1/users/nd-user/summary").json()["view"] == 1


def test_unknown_user_and_report_are_404_with_a_reason(server: Server) -> None:
    with server.client() as c:
        r = c.get("/v1/users/nobody-ever/activity")
        assert r.status_code == 404
        assert r.json()["error"] == "not_found"
        assert "nobody-ever" in r.json()["reason"]
        assert c.get("/v1/users/nobody-ever/summary").json() == {
            "click": 0,
            "view": 0,
            "purchase": 0,
            "total_value": 0.0,
        }
        r = c.get("/v1/reports/no-such-batch")
        assert r.status_code == 404
        assert "no-such-batch" in r.json()["reason"]
        r = c.get("/v1/no-such-route")
        assert r.status_code == 404 and r.json()["error"] == "not_found"


# -- bodies refused as a whole ---------------------------------------------------------------
BAD_BODIES = [
    pytest.param(b"this is not json", "application/json", 400, "malformed_json", id="not-json"),
    pytest.param(b"[{\"a\": 1}, ", "application/json", 400, "malformed_json", id="truncated"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "application/json", 413, "body_too_large",
                 id="deep-and-huge"),
    pytest.param(b"[" * 20_000 + b"]" * 20_000, "application/json", 400, "malformed_json",
                 id="deeply-nested"),
    pytest.param(orjson.dumps(event("obj-1")), "application/json", 400, "not_an_array",
                 id="object-not-array"),
    pytest.param(b'"a string"', "application/json", 400, "not_an_array", id="string"),
    pytest.param(b"[]", "application/json", 400, "empty_batch", id="empty-array"),
    pytest.param(b"", "application/json", 400, "empty_body", id="empty-body"),
    pytest.param(b"  \n \n", "application/x-ndjson", 400, "empty_body", id="blank-ndjson"),
    pytest.param(b"nope\n{broken\n", "application/x-ndjson", 400, "malformed_json",
                 id="ndjson-no-valid-line"),
    pytest.param(b"[]", "text/plain", 415, "unsupported_media_type", id="text-plain"),
    pytest.param(b"[]", "application/x-www-form-urlencoded", 415, "unsupported_media_type",
                 id="form"),
    pytest.param(b"x" * (MAX_BODY + 1), "application/json", 413, "body_too_large", id="huge"),
    pytest.param(orjson.dumps([event(f"many-{i}") for i in range(MAX_EVENTS + 1)]),
                 "application/json", 413, "too_many_events", id="too-many-array"),
    pytest.param(b"\n".join(orjson.dumps(event(f"nd-many-{i}")) for i in range(MAX_EVENTS + 1)),
                 "application/x-ndjson", 413, "too_many_events", id="too-many-ndjson"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "content_type", "status", "code"), BAD_BODIES)
def test_bad_bodies_are_refused_with_a_reason_and_store_nothing(
    server: Server, body: bytes, content_type: str, status: int, code: str
) -> None:
    before = stored(server)
    with server.client() as c:
        r = c.post("/v1/events", content=body, headers={"content-type": content_type})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == code
    assert len(r.json()["reason"]) > 10
    assert stored(server) == before


def test_missing_content_type_is_415(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/events", content=b"[]")
    assert r.status_code == 415
    assert "none" in r.json()["reason"]


def test_huge_chunked_body_is_refused_while_reading(server: Server) -> None:
    """No Content-Length: the limit is enforced on the bytes as they arrive."""
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(200):  # up to 1.6 MB, far past the 64 KiB limit
            sent += 8192
            yield b"[" + b" " * 8191 if sent == 8192 else b" " * 8192

    before = stored(server)
    with server.client() as c:
        try:
            r = c.post("/v1/events", content=body(), headers={"content-type": "application/json"})
        except httpx.TransportError:
            # The server may close the connection before the client finished sending.
            r = None
    if r is not None:
        assert r.status_code == 413
        assert r.json()["error"] == "body_too_large"
    assert stored(server) == before


def test_declared_content_length_over_the_limit_is_refused_before_reading(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", int(server.base.rsplit(":", 1)[1]))) as sock:
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n["
        )
        sock.settimeout(10)
        answer = b""
        while b"}" not in answer:  # the head and the JSON body may come in several reads
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body_too_large" in answer


# -- endpoints -------------------------------------------------------------------------------
def test_endpoint_crud(server: Server) -> None:
    with server.client() as c:
        r = c.post(
            "/v1/endpoints",
            json={"url": "https://hooks.example.test/a", "event_types": ["purchase"]},
        )
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["secret"].startswith("whsec_") and len(created["secret"]) > 20
        eid = created["endpoint_id"]
        one = c.get(f"/v1/endpoints/{eid}").json()
        assert one["secret"] != created["secret"]  # shown once, masked afterwards
        assert one["event_types"] == ["purchase"] and one["enabled"] is True
        assert eid in [e["endpoint_id"] for e in c.get("/v1/endpoints").json()]
        r = c.patch(f"/v1/endpoints/{eid}", json={"enabled": False})
        assert r.status_code == 200 and r.json()["enabled"] is False
        assert c.get(f"/v1/endpoints/{eid}").json()["enabled"] is False
        assert c.delete(f"/v1/endpoints/{eid}").status_code == 204
        r = c.get(f"/v1/endpoints/{eid}")
        assert r.status_code == 404 and eid in r.json()["reason"]
        assert c.delete(f"/v1/endpoints/{eid}").status_code == 404
        assert c.patch(f"/v1/endpoints/{eid}", json={"enabled": True}).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"url": "ftp://x.test/"}, 400, "http"),
        ({"url": "https://x.test/", "secret": "nope"}, 400, "whsec_"),
        ({"url": "https://x.test/", "event_types": ["Bad Type"]}, 400, "event type"),
        ({}, 422, "url"),
        ({"url": "https://x.test/", "colour": "red"}, 422, "colour"),
        ([1, 2], 422, "body"),
    ],
)
def test_bad_endpoint_is_refused_with_a_reason(
    server: Server, body: Any, status: int, words: str
) -> None:
    before = server.count("endpoints")
    with server.client() as c:
        r = c.post("/v1/endpoints", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["reason"]
    assert server.count("endpoints") == before


def test_endpoint_secret_given_is_kept(server: Server) -> None:
    secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    with server.client() as c:
        r = c.post("/v1/endpoints", json={"url": "https://x.test/s", "secret": secret})
        assert r.status_code == 201 and r.json()["secret"] == secret
        assert c.delete(f"/v1/endpoints/{r.json()['endpoint_id']}").status_code == 204


# -- operations ------------------------------------------------------------------------------
def test_metrics_reflect_the_counts(server: Server) -> None:
    def value(text: str, outcome: str, reason: str) -> float:
        m = re.search(
            rf'^eventledger_ingest_events_total\{{outcome="{outcome}",reason="{reason}"\}} (\S+)$',
            text,
            re.M,
        )
        return float(m.group(1)) if m else 0.0

    with server.client() as c:
        before = c.get("/metrics").text
        r = c.post(
            "/v1/events",
            json=[event("met-1", "met"), event("met-1", "met"), event("met-2", "met", "X")],
        )
        assert r.status_code == 200
        c.post("/v1/events", content=b"[", headers={"content-type": "application/json"})
        after = c.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    assert value(text, "applied", "") - value(before, "applied", "") == 1
    assert value(text, "duplicate", "") - value(before, "duplicate", "") == 1
    assert value(text, "rejected", "invalid_type") - value(before, "rejected", "invalid_type") == 1
    assert 'eventledger_ingest_batches_total{result="malformed_json"}' in text
    assert re.search(
        r'eventledger_http_request_duration_seconds_count\{method="POST",route="/v1/events",'
        r'status="200"\} [1-9]',
        text,
    )


SPEC_ROUTES = {
    ("post", "/v1/events"),
    ("get", "/v1/users/{user_id}/activity"),
    ("get", "/v1/users/{user_id}/summary"),
    ("get", "/v1/reports/{batch_id}"),
    ("post", "/v1/endpoints"),
    ("get", "/v1/endpoints"),
    ("get", "/v1/endpoints/{endpoint_id}"),
    ("patch", "/v1/endpoints/{endpoint_id}"),
    ("delete", "/v1/endpoints/{endpoint_id}"),
    ("get", "/v1/deliveries"),
    ("get", "/v1/deliveries/{delivery_id}"),
    ("post", "/v1/deliveries/{delivery_id}/retry"),
    ("post", "/v1/deliveries/{delivery_id}/skip"),
    ("get", "/metrics"),
    ("get", "/healthz"),
}


def test_openapi_document_lists_every_route(server: Server) -> None:
    with server.client() as c:
        doc = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
    assert doc["openapi"].startswith("3.")
    found = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert SPEC_ROUTES <= found, SPEC_ROUTES - found
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    from openapi_spec_validator import validate

    validate(doc)  # raises on any violation of the OpenAPI 3.x schema


def test_healthz(server: Server) -> None:
    with server.client() as c:
        r = c.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


# -- authentication --------------------------------------------------------------------------
def test_token_required_when_set(authed: Server) -> None:
    with authed.client() as c:
        assert c.get("/healthz").status_code == 200  # open: probes carry no token
        for method, path in [
            ("GET", "/v1/users/u/summary"),
            ("POST", "/v1/events"),
            ("GET", "/v1/endpoints"),
            ("GET", "/metrics"),
        ]:
            r = c.request(method, path, content=b"[]", headers={"content-type": "application/json"})
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
    with authed.client("wrong-token") as c:
        r = c.get("/v1/users/u/summary")
        assert r.status_code == 401 and "not valid" in r.json()["reason"]
    before = authed.count("events")
    with authed.client("wrong-token") as c:
        c.post("/v1/events", json=[event("auth-1")])
    assert authed.count("events") == before
    with authed.client(TOKEN) as c:
        assert c.get("/v1/users/u/summary").status_code == 200
        r = c.post("/v1/events", json=[event("auth-1", "auth-user")])
        assert r.status_code == 200 and r.json()["applied"] == 1
        assert c.get("/metrics").status_code == 200
    assert authed.count("events") == before + 1


def test_non_loopback_bind_without_token_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLEDGER_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventledger",
            "serve",
            "--db",
            f"sqlite:///{tmp_path / 'x.db'}",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    err = result.stderr.decode().strip()
    assert len(err.splitlines()) == 1, err
    assert "EVENTLEDGER_API_TOKEN" in err and "0.0.0.0" in err
    assert "Traceback" not in err


def test_client_closing_mid_body_stores_nothing_and_server_stays_up(server: Server) -> None:
    before = stored(server)
    port = int(server.base.rsplit(":", 1)[1])
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 5000\r\n\r\n[{"event_id": "cut-1", "user_id": "cut", '
            )
    with server.client() as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/v1/users/cut/activity").status_code == 404
    assert stored(server) == before
    assert "Traceback" not in server.log.read_text()


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLEDGER_")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "eventledger", "serve", "--db",
             f"sqlite:///{tmp_path / 'x.db'}", "--port", str(port)],
            env=env, capture_output=True, timeout=60,
        )  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert lines == [
        f"eventledger: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
