"""The routes of SPEC §5. Ledger and store calls block: they run in worker threads
(``def`` routes run in FastAPI's thread pool; ``async`` ones hand the work over explicitly)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ..errors import NotFoundError
from ..store.deliveries import check_state
from .app import JSONBytes, Services, services
from .body import BodyError, BodyKind, body_kind, parse_batch, read_body
from .metrics import CONTENT_TYPE
from .models import (
    ActivityOut,
    DeliveryOut,
    EndpointIn,
    EndpointOut,
    EndpointPatch,
    ErrorOut,
    HealthOut,
    ReportOut,
    SummaryOut,
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    404: {"model": ErrorOut},
    422: {"model": ErrorOut},
}

open_router = APIRouter()
metrics_router = APIRouter()
api_router = APIRouter(prefix="/v1", responses=_ERRORS)

_SVC = Depends(services)


# -- health and metrics ----------------------------------------------------------------------
@open_router.get("/healthz", response_model=HealthOut, tags=["operations"])
def healthz(svc: Services = _SVC) -> Response:
    """Liveness and readiness: answers 200 when the store answers (no token needed)."""
    svc.ledger.store.schema_version()
    body: dict[str, Any] = {"status": "ok", "role": svc.config.role.value}
    if svc.dispatcher is not None:
        body["dispatcher"] = "running"
    return JSONBytes(body)


@metrics_router.get(
    "/metrics",
    tags=["operations"],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
)
async def metrics(svc: Services = _SVC) -> Response:
    """Prometheus text format: ingest counts, request latency, deliveries by state (from
    the store, all processes), and this process's dispatcher counters."""
    svc.delivery_counts = await svc.deliveries().counts()
    body = await run_in_threadpool(svc.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


# -- events ----------------------------------------------------------------------------------
@api_router.post(
    "/events",
    response_model=ReportOut,
    tags=["events"],
    responses={413: {"model": ErrorOut}, 415: {"model": ErrorOut}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }
    },
)
async def post_events(request: Request, svc: Services = _SVC) -> Response:
    """Process a batch: a JSON array (``application/json``) or one event per line
    (``application/x-ndjson``). Returns the audit report; bad events are in it, not errors."""
    kind = body_kind(request.headers.get("content-type"))
    try:
        body = await read_body(
            request.stream(),
            kind=kind,
            content_length=request.headers.get("content-length"),
            max_bytes=svc.config.max_body_bytes,
            max_events=svc.config.max_events,
        )
    except ClientDisconnect:
        raise BodyError(
            400, "incomplete_body", "the client closed the connection before the body ended"
        ) from None
    rendered = await run_in_threadpool(_ingest, svc, body, kind)
    return Response(rendered, media_type="application/json")


def _ingest(svc: Services, body: bytes, kind: BodyKind) -> bytes:
    """Parse, process and render the report, all off the event loop (CPU-bound)."""
    events = parse_batch(body, kind, max_events=svc.config.max_events)
    report = svc.ledger.process(events)
    svc.metrics.count_report(report)
    return orjson.dumps(report.to_dict())


@api_router.get("/reports/{batch_id}", response_model=ReportOut, tags=["events"])
def get_report(batch_id: str, svc: Services = _SVC) -> Response:
    """A stored audit report with every outcome."""
    return JSONBytes(svc.ledger.report(batch_id))


# -- users -----------------------------------------------------------------------------------
@api_router.get("/users/{user_id}/activity", response_model=ActivityOut, tags=["users"])
def get_activity(user_id: str, svc: Services = _SVC) -> Response:
    """Last and first seen, counts by type and total value; 404 for a user never seen."""
    activity = svc.ledger.activity(user_id)
    if activity is None:
        raise NotFoundError(f"unknown user {user_id!r}: no event of this user was seen")
    return JSONBytes(activity)


@api_router.get("/users/{user_id}/summary", response_model=SummaryOut, tags=["users"])
def get_summary(user_id: str, svc: Services = _SVC) -> Response:
    """``{"click", "view", "purchase", "total_value"}``; zeros for a user without events."""
    return JSONBytes(svc.ledger.fetch_user_activity_summary(user_id))


# -- endpoints -------------------------------------------------------------------------------
def _find_endpoint(svc: Services, endpoint_id: str) -> Any:
    for endpoint in svc.ledger.store.list_endpoints():
        if endpoint.endpoint_id == endpoint_id:
            return endpoint
    raise NotFoundError(f"no endpoint {endpoint_id!r}")


@api_router.post("/endpoints", response_model=EndpointOut, status_code=201, tags=["endpoints"])
def create_endpoint(body: EndpointIn, svc: Services = _SVC) -> Response:
    """Register a webhook endpoint. The secret is shown in full only in this answer."""
    endpoint = svc.ledger.add_endpoint(
        body.url, secret=body.secret, event_types=body.event_types, enabled=body.enabled
    )
    return JSONBytes(endpoint.to_dict(show_secret=True), status_code=201)


@api_router.get("/endpoints", response_model=list[EndpointOut], tags=["endpoints"])
def list_endpoints(svc: Services = _SVC) -> Response:
    """Every registered endpoint (secrets masked)."""
    return JSONBytes([e.to_dict() for e in svc.ledger.store.list_endpoints()])


@api_router.get("/endpoints/{endpoint_id}", response_model=EndpointOut, tags=["endpoints"])
def get_endpoint(endpoint_id: str, svc: Services = _SVC) -> Response:
    return JSONBytes(_find_endpoint(svc, endpoint_id).to_dict())


@api_router.patch("/endpoints/{endpoint_id}", response_model=EndpointOut, tags=["endpoints"])
def patch_endpoint(endpoint_id: str, body: EndpointPatch, svc: Services = _SVC) -> Response:
    """Enable or disable an endpoint (a disabled one gets no new deliveries)."""
    if not svc.ledger.store.set_endpoint_enabled(endpoint_id, body.enabled):
        raise NotFoundError(f"no endpoint {endpoint_id!r}")
    return JSONBytes(_find_endpoint(svc, endpoint_id).to_dict())


@api_router.delete("/endpoints/{endpoint_id}", status_code=204, tags=["endpoints"])
def delete_endpoint(endpoint_id: str, svc: Services = _SVC) -> Response:
    if not svc.ledger.store.remove_endpoint(endpoint_id):
        raise NotFoundError(f"no endpoint {endpoint_id!r}")
    return Response(status_code=204)


# -- deliveries ------------------------------------------------------------------------------
# Delivery ids of the pipeline are "endpoint_id/event_id": the path converter takes the slash.
@api_router.get("/deliveries", response_model=list[DeliveryOut], tags=["deliveries"])
async def list_deliveries(
    state: str | None = Query(  # noqa: B008
        None, description="PENDING, IN_FLIGHT, RETRY_WAIT, COMPLETED, DEAD_LETTER or SKIPPED"
    ),
    limit: int = Query(100, ge=1, le=1000),  # noqa: B008
    offset: int = Query(0, ge=0),  # noqa: B008
    svc: Services = _SVC,
) -> Response:
    """Deliveries, optionally of one state, oldest first."""
    rows = await svc.deliveries().list_deliveries(check_state(state), limit, offset)
    return JSONBytes([r.to_dict() for r in rows])


@api_router.get("/deliveries/{delivery_id:path}", response_model=DeliveryOut, tags=["deliveries"])
async def get_delivery(delivery_id: str, svc: Services = _SVC) -> Response:
    """One delivery: state, attempts, last error, and what it waits for (``blocked_by``)."""
    info = await svc.deliveries().get(delivery_id)
    if info is None:
        raise NotFoundError(f"unknown delivery {delivery_id!r}")
    return JSONBytes(info.to_dict())


@api_router.post(
    "/deliveries/{delivery_id:path}/retry",
    response_model=DeliveryOut,
    tags=["deliveries"],
    responses={409: {"model": ErrorOut}},
)
async def retry_delivery(delivery_id: str, svc: Services = _SVC) -> Response:
    """DEAD_LETTER -> PENDING, attempts reset: it is delivered again, then its successors."""
    if svc.dispatcher is not None:  # also wakes this process's dispatcher at once
        info = await svc.dispatcher.retry_dead_letter(delivery_id)
    else:
        info = await svc.deliveries().retry_dead_letter(delivery_id)
    return JSONBytes(info.to_dict())


@api_router.post(
    "/deliveries/{delivery_id:path}/skip",
    response_model=DeliveryOut,
    tags=["deliveries"],
    responses={409: {"model": ErrorOut}},
)
async def skip_delivery(delivery_id: str, svc: Services = _SVC) -> Response:
    """DEAD_LETTER -> SKIPPED: given up; the user's next delivery may go."""
    if svc.dispatcher is not None:
        info = await svc.dispatcher.skip_dead_letter(delivery_id)
    else:
        info = await svc.deliveries().skip_dead_letter(delivery_id)
    return JSONBytes(info.to_dict())


# -- background work -------------------------------------------------------------------------
async def start_background(svc: Services) -> None:
    """Export delivery counts, and start the dispatcher when the role runs it."""
    svc.metrics.add_gauges(
        "eventledger_deliveries",
        "Deliveries in the store by state (all processes)",
        "state",
        lambda: {k: float(v) for k, v in svc.delivery_counts.items()},
    )
    if svc.config.role.runs_dispatcher:
        from .dispatching import start_dispatcher

        await start_dispatcher(svc)


async def stop_background(svc: Services) -> None:
    """Stop the dispatcher gracefully, then close the delivery repository."""
    try:
        if svc.dispatcher is not None:
            from .dispatching import stop_dispatcher

            await stop_dispatcher(svc)
    finally:
        await svc.close_deliveries()
