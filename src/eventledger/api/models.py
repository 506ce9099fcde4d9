"""Request and response shapes of the HTTP API (they also make the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer: a stable error code and a human reason."""

    error: str = Field(examples=["body_too_large"])
    reason: str = Field(examples=["the body exceeds the limit of 33554432 bytes"])


class OutcomeOut(BaseModel):
    index: int
    event_id: str | None
    user_id: str | None
    outcome: Literal["applied", "duplicate", "rejected"]
    reason: str | None
    detail: str | None


class ReportOut(BaseModel):
    """The audit report of a batch (SPEC §2)."""

    batch_id: str
    received_at: str
    total: int
    applied: int
    duplicates: int
    rejected: int
    rejected_by_reason: dict[str, int]
    balanced: bool
    outcomes: list[OutcomeOut]


class ActivityOut(BaseModel):
    user_id: str
    last_seen_at: str
    first_seen_at: str | None
    applied: int
    counts: dict[str, int]
    total_value: float


class SummaryOut(BaseModel):
    """The seed's summary shape; zeros for a user without applied events."""

    click: int
    view: int
    purchase: int
    total_value: float


class EndpointIn(BaseModel):
    """A webhook endpoint to register; a ``whsec_`` secret is generated when none is given."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(examples=["https://example.test/hooks/eventledger"])
    secret: str | None = Field(default=None, description="whsec_ followed by base64")
    event_types: list[str] | None = Field(
        default=None, description="only these event types; null or absent for all"
    )
    enabled: bool = True


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool


class EndpointOut(BaseModel):
    endpoint_id: str
    url: str
    secret: str | None = Field(
        description="the full secret only in the answer to its creation, masked afterwards"
    )
    event_types: list[str] | None
    enabled: bool
    created_at: str


class DeliveryOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    delivery_id: str
    state: str
    attempts: int
    last_error: str | None = None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]


class HealthOut(BaseModel):
    status: Literal["ok"]
    role: str
    dispatcher: str | None = None
