"""The FastAPI application factory: wiring, authentication, and errors -> status codes.

Nothing is created at import: :func:`create_app` builds an app from an :class:`ApiConfig`;
the store (and, for roles that run it, the dispatcher) is opened in the app's lifespan and
closed on shutdown.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import orjson
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import (
    ConfigError,
    ConflictError,
    DispatchError,
    EventledgerError,
    InputError,
    NotFoundError,
    StoreError,
    TargetRefusedError,
)
from ..ledger import Ledger
from .body import BodyError
from .config import ApiConfig
from .metrics import ApiMetrics, LatencyMiddleware

log = logging.getLogger("eventledger.api")


class JSONBytes(Response):
    """A JSON response rendered with orjson (the routes return plain dicts and lists)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, code: str, reason: str, **headers: str) -> JSONBytes:
    return JSONBytes({"error": code, "reason": reason}, status_code=status, headers=headers)


@dataclass
class Services:
    """What the routes use, opened in the lifespan of one app."""

    config: ApiConfig
    ledger: Ledger
    metrics: ApiMetrics
    dispatcher: Any = None  # the EventOrchestrator, in roles that run it
    delivery_counts: dict[str, int] = field(default_factory=dict)
    _deliveries: Any = None

    def deliveries(self) -> Any:
        """The store's delivery repository (opened on first use, closed on shutdown)."""
        if self._deliveries is None:
            self._deliveries = self.ledger.store.deliveries()
        return self._deliveries

    async def close_deliveries(self) -> None:
        if self._deliveries is not None:
            repo, self._deliveries = self._deliveries, None
            await repo.close()


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def _bearer_check(token: str | None) -> Callable[..., Any]:
    scheme = HTTPBearer(auto_error=False, description="the value of EVENTLEDGER_API_TOKEN")
    expected = token.encode() if token is not None else None

    async def require_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(scheme),  # noqa: B008
    ) -> None:
        if expected is None:
            return
        if credentials is None:
            raise _AuthError("a bearer token is required: Authorization: Bearer <token>")
        # Constant-time: the comparison does not tell how much of the token was right.
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise _AuthError("the bearer token is not valid")

    return require_token


class _AuthError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def _install_error_handlers(app: FastAPI, metrics: ApiMetrics) -> None:
    async def on_body_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BodyError)
        metrics.count_refused(exc.code)
        return error_response(exc.status, exc.code, exc.reason)

    async def on_auth_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _AuthError)
        return error_response(401, "unauthorized", exc.reason, **{"WWW-Authenticate": "Bearer"})

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        reason = str(exc.detail)
        if exc.status_code == 404 and reason == "Not Found":
            reason = f"no route {request.url.path}"
        elif exc.status_code == 405:
            reason = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, code, reason, **(exc.headers or {}))

    async def on_domain_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EventledgerError)
        status, code = _domain_status(exc)
        if status >= 500:
            log.error("request %s %s failed: %s", request.method, request.url.path, exc)
        return error_response(status, code, str(exc))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback; the client still gets the JSON shape of every error.
        return error_response(500, "internal_error", f"unexpected {type(exc).__name__}")

    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(BodyError, on_body_error)
    app.add_exception_handler(_AuthError, on_auth_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(EventledgerError, on_domain_error)


def _domain_status(exc: EventledgerError) -> tuple[int, str]:
    """Only here do eventledger's errors become status codes."""
    if isinstance(exc, NotFoundError):
        return 404, "not_found"
    if isinstance(exc, TargetRefusedError):
        return 400, "target_refused"
    if isinstance(exc, ConfigError | InputError):
        return 400, "invalid_value"
    if isinstance(exc, ConflictError | DispatchError):
        return 409, "conflict"
    if isinstance(exc, StoreError):
        return 503, "store_unavailable"
    return 500, "internal_error"


def create_app(config: ApiConfig, *, ledger: Ledger | None = None) -> FastAPI:
    """A new app serving ``config.role``; ``ledger`` (optional) is used instead of opening
    ``config.db_url``, and is then left open on shutdown."""
    from . import routes

    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = ledger is None
        # Opening (and migrating) the store blocks: not on the event loop.
        opened = (
            ledger if ledger is not None else await anyio.to_thread.run_sync(Ledger, config.db_url)
        )
        svc = Services(config=config, ledger=opened, metrics=metrics)
        app.state.services = svc
        try:
            await routes.start_background(svc)
            yield
        finally:
            try:
                await routes.stop_background(svc)
            finally:
                if own:
                    await anyio.to_thread.run_sync(opened.close)

    app = FastAPI(
        title="eventledger",
        version=__version__,
        summary="Apply untrusted user-activity events exactly once, prove it, serve summaries "
        "and deliver applied events to webhooks in per-user order.",
        lifespan=lifespan,
        default_response_class=JSONBytes,
    )
    _install_error_handlers(app, metrics)
    auth = Depends(_bearer_check(config.token))
    app.include_router(routes.open_router)
    app.include_router(routes.metrics_router, dependencies=[auth])
    if config.role.runs_api:
        app.include_router(routes.api_router, dependencies=[auth])
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app
