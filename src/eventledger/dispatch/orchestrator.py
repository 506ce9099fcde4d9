"""``EventOrchestrator``: durable, idempotent, causally ordered webhook delivery (SPEC §4).

Tasks, all started by :meth:`EventOrchestrator.start` and all ended by
:meth:`EventOrchestrator.stop`:

* one **claimer**: asks the store for due, causally ready deliveries in batches (the claim is
  the only way to a request), and routes each through the per-host admission
  (:class:`~eventledger.dispatch.limits.HostLanes`) into the work queue;
* ``workers`` **workers**: take admitted deliveries from the work queue, POST them and put
  the outcome on the result queue;
* one **recorder**: writes outcomes in batches, conditional on still owning the lease, and
  wakes the claimer (a completion may unblock the entity's next sequence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from ..errors import ConflictError, DispatchError, EventledgerError, TargetRefusedError
from ..store import Store
from ..store.deliveries import (
    ClaimedDelivery,
    DeliveryInfo,
    DeliveryRepository,
    DeliveryResult,
    DeliveryState,
    NewDelivery,
)
from ..timeutil import now_us
from .limits import HostLanes
from .model import DispatchConfig, DispatchEvent, DispatchMetrics
from .transport import AttemptResult, Transport, check_literal_target, target_host

log = logging.getLogger("eventledger.dispatch")

US = 1_000_000
#: Outcomes written per store transaction at most.
RECORD_BATCH = 500
#: Wait before writing outcomes again after a store error.
STORE_RETRY_S = 0.5
#: Times a batch of outcomes is tried before leaving its rows to lease expiry.
STORE_ATTEMPTS = 20
#: A claimed row is not sent when less than this is left of its lease.
LEASE_MARGIN_S = 1.0


class EventOrchestrator:
    """Delivers :class:`DispatchEvent` s (and pipeline deliveries) from ``store``.

    ``submit`` works without ``start`` (it only stores the event); ``start`` begins sending.
    Use ``async with EventOrchestrator(store, config) as orchestrator:`` or call ``start`` and
    ``stop``. ``repository`` may be given (the caller then closes it); by default one is
    opened from ``store.deliveries()`` and closed by ``stop``.
    """

    def __init__(
        self,
        store: Store,
        config: DispatchConfig | None = None,
        *,
        repository: DeliveryRepository | None = None,
    ) -> None:
        self.store = store
        self.config = config or DispatchConfig()
        self.metrics = DispatchMetrics()
        self.owner = self.config.owner or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self._repo = repository
        self._owns_repo = repository is None
        self._transport: Transport | None = None
        self._lanes: HostLanes[ClaimedDelivery] = HostLanes(self.config.per_host_limit)
        self._work: asyncio.Queue[ClaimedDelivery | None] = asyncio.Queue()
        self._results: asyncio.Queue[tuple[ClaimedDelivery, DeliveryResult] | None] = (
            asyncio.Queue()
        )
        self._wake = asyncio.Event()
        self._claimer: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._held = 0  # claimed rows not yet recorded or released
        self._started = False
        self._stopping = False
        self._stopped = False
        self._submit_batch: list[tuple[NewDelivery, asyncio.Future[bool]]] = []

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> EventOrchestrator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _repository(self) -> DeliveryRepository:
        if self._stopped:
            raise DispatchError("the orchestrator is stopped")
        if self._repo is None:
            self._repo = self.store.deliveries()
        return self._repo

    async def start(self) -> None:
        """Start the claimer, the workers and the recorder."""
        if self._started:
            return
        if self._stopped:
            raise DispatchError("a stopped orchestrator cannot be started again")
        self._repository()
        cfg = self.config
        self._transport = Transport(
            request_timeout=cfg.request_timeout,
            per_host=cfg.per_host_limit,
            # The pool's total never binds before our own limits do.
            total=max(100, cfg.workers * 2),
            allow_private=cfg.allow_private_targets,
        )
        await self._transport.open()
        self._started = True
        self._recorder = asyncio.create_task(self._record_loop(), name="eventledger-recorder")
        self._workers = [
            asyncio.create_task(self._worker(random.Random()), name=f"eventledger-worker-{i}")
            for i in range(cfg.workers)
        ]
        self._claimer = asyncio.create_task(self._claim_loop(), name="eventledger-claimer")

    async def run(self) -> None:
        """Start, run until cancelled, then stop gracefully (and re-raise the cancellation)."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def stop(self, drain: float | None = None) -> None:
        """Stop gracefully: claim nothing more, give back claimed rows not yet sent, let the
        requests in flight finish (at most ``drain`` seconds, default ``drain_timeout``) and record
        their outcomes, then end every task and close the HTTP session and the store
        connections. Idempotent."""
        if self._stopped:
            return
        self._stopping = True
        self._wake.set()
        try:
            if self._started:
                await self._shutdown(drain)
        finally:
            self._stopped = True
            if self._transport is not None:
                await self._transport.close()
            if self._repo is not None and self._owns_repo:
                await self._repo.close()

    async def _shutdown(self, drain: float | None) -> None:
        cfg = self.config
        if self._claimer is not None:
            await _finish(self._claimer)
        # Rows claimed but not started go back to the store at once.
        unsent = self._lanes.drain_waiting()
        while not self._work.empty():
            item = self._work.get_nowait()
            if item is not None:
                self._lanes.done(host_of(item), time.monotonic())
                unsent.append(item)
        await self._release(unsent, now_us())
        for _ in self._workers:
            self._work.put_nowait(None)
        if drain is None:
            drain = cfg.drain_timeout
        if drain is None:
            drain = cfg.request_timeout + 1.0
        if self._workers:
            _done, late = await asyncio.wait(self._workers, timeout=drain)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._results.put_nowait(None)
        if self._recorder is not None:
            await _finish(self._recorder)

    # -- public operations -----------------------------------------------------------------
    async def submit(self, event: DispatchEvent) -> bool:
        """Store ``event`` as a PENDING delivery; False when its ``event_id`` is already
        known (in any state: a COMPLETED event is never reset or sent again).

        Raises InputError for a malformed event, TargetRefusedError for a target that can
        never be allowed, ConflictError when its (entity, sequence) belongs to another id.
        Concurrent submits are written together in one store transaction.
        """
        if not isinstance(event, DispatchEvent):
            raise DispatchError("submit() takes a DispatchEvent")
        check_literal_target(event.target_url, self.config.allow_private_targets)
        row = NewDelivery(
            delivery_id=event.event_id,
            webhook_id=event.event_id,
            entity_key=event.entity_id,
            sequence=event.sequence,
            target_url=event.target_url,
            payload=event.body(),
        )
        created = await self._insert(row)
        if created:
            self.metrics.submitted += 1
            self._wake.set()
        else:
            self.metrics.duplicates_suppressed += 1
        return created

    async def submit_many(self, events: Sequence[DispatchEvent]) -> list[bool]:
        """``submit`` for many events at once (one store transaction when possible)."""
        return list(await asyncio.gather(*(self.submit(e) for e in events)))

    async def _insert(self, row: NewDelivery) -> bool:
        # Group commit: the first caller of a loop iteration writes everyone's rows.
        repo = self._repository()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._submit_batch.append((row, future))
        if len(self._submit_batch) == 1:
            await asyncio.sleep(0)
            batch, self._submit_batch = self._submit_batch, []
            try:
                await self._write_batch(repo, batch)
            except BaseException as exc:
                for _row, fut in batch:
                    if not fut.done():
                        if isinstance(exc, Exception):
                            fut.set_exception(exc)
                        else:  # the writer was cancelled: submitting again is safe
                            fut.set_exception(DispatchError("submit interrupted; submit again"))
                raise
        return await future

    @staticmethod
    async def _write_batch(
        repo: DeliveryRepository, batch: list[tuple[NewDelivery, asyncio.Future[bool]]]
    ) -> None:
        try:
            created = await repo.insert([r for r, _f in batch])
        except ConflictError:
            if len(batch) == 1:
                raise
            # Find the offending row(s): one by one, each with its own answer.
            for row, fut in batch:
                try:
                    fut.set_result((await repo.insert([row]))[0])
                except EventledgerError as exc:
                    fut.set_exception(exc)
            return
        for (_row, fut), ok in zip(batch, created, strict=True):
            fut.set_result(ok)

    async def get_delivery(self, event_id: str) -> DeliveryInfo | None:
        """The delivery of ``event_id`` (``state``, ``attempts``, ``last_error``,
        ``blocked_by``...), or None when unknown."""
        return await self._repository().get(event_id)

    async def retry_dead_letter(self, event_id: str) -> DeliveryInfo:
        """DEAD_LETTER -> PENDING with attempts reset (NotFoundError / ConflictError)."""
        info = await self._repository().retry_dead_letter(event_id)
        self._wake.set()
        return info

    async def skip_dead_letter(self, event_id: str) -> DeliveryInfo:
        """DEAD_LETTER -> SKIPPED: the entity's next sequence may go."""
        info = await self._repository().skip_dead_letter(event_id)
        self._wake.set()
        return info

    async def wait_idle(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until nothing is left to do now: no delivery held here, none IN_FLIGHT or
        RETRY_WAIT, no PENDING one ready (rows blocked behind a DEAD_LETTER or a missing
        sequence do not count). False when ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        repo = self._repository()
        pause = min(self.config.poll_interval, 0.05)
        while True:
            if self._held == 0 and self._results.empty() and not await repo.work_remaining():
                # Re-check our own state: the store answer may predate a claim of ours.
                if self._held == 0:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause)

    async def refresh_blocked(self) -> int:
        """Recount the ``blocked`` gauge from the store and return it."""
        self.metrics.blocked = await self._repository().count_blocked()
        return self.metrics.blocked

    # -- claimer ---------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        cfg = self.config
        repo = self._repository()
        lease_us = int(cfg.lease_duration * US)
        next_blocked_check = 0.0
        while not self._stopping:
            self._wake.clear()
            room = (
                cfg.workers
                + cfg.claim_batch_size
                - self._lanes.load(time.monotonic(), cfg.saturated_host_delay)
            )
            claimed: list[ClaimedDelivery] = []
            if room > 0:
                try:
                    claimed = await repo.claim(
                        self.owner, min(cfg.claim_batch_size, room), lease_us
                    )
                except EventledgerError as exc:
                    self.metrics.store_errors += 1
                    log.warning("claim failed: %s", exc)
                await self._route(claimed)
            if time.monotonic() >= next_blocked_check:
                next_blocked_check = time.monotonic() + cfg.blocked_check_interval
                try:
                    await self.refresh_blocked()
                except EventledgerError as exc:
                    log.warning("counting blocked deliveries failed: %s", exc)
            if len(claimed) == cfg.claim_batch_size and not self._stopping:
                continue  # more may be due right now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.poll_interval):
                    await self._wake.wait()

    async def _route(self, claimed: list[ClaimedDelivery]) -> None:
        if not claimed:
            return
        self._held += len(claimed)
        self.metrics.claimed += len(claimed)
        refused: list[tuple[ClaimedDelivery, DeliveryResult]] = []
        for item in claimed:
            try:
                host = target_host(item.target_url)
            except TargetRefusedError as exc:
                refused.append((item, self._dead(item, str(exc))))
                continue
            if self._lanes.offer(host, item, time.monotonic()):
                self._work.put_nowait(item)
        for pair in refused:
            self.metrics.refused_targets += 1
            self._results.put_nowait(pair)
        # A host whose slots are all taken and none freed for a while (hanging, saturated)
        # gives its queue back for a while, so that it never holds room other hosts could use.
        surplus = self._lanes.trim_stalled(time.monotonic(), self.config.saturated_host_delay)
        if surplus:
            retry_at = now_us() + int(self.config.saturated_host_delay * US)
            await self._release(surplus, retry_at)

    async def _release(self, items: list[ClaimedDelivery], retry_at_us: int) -> None:
        if not items:
            return
        try:
            await self._repository().release(
                self.owner, [i.delivery_id for i in items], retry_at_us
            )
        except EventledgerError as exc:  # the leases expire and the rows are reclaimed
            self.metrics.store_errors += 1
            log.warning("releasing %d deliveries failed: %s", len(items), exc)
        self._held -= len(items)
        self.metrics.released += len(items)

    # -- workers ---------------------------------------------------------------------------
    async def _worker(self, rng: random.Random) -> None:
        while True:
            item = await self._work.get()
            if item is None:
                return
            self.metrics.in_flight += 1
            try:
                result = await self._attempt(item, rng)
            finally:
                self.metrics.in_flight -= 1
                nxt = self._lanes.done(host_of(item), time.monotonic())
                if nxt is not None:
                    self._work.put_nowait(nxt)
            self._results.put_nowait((item, result))

    async def _attempt(self, item: ClaimedDelivery, rng: random.Random) -> DeliveryResult:
        assert self._transport is not None
        now = now_us()
        if item.lease_expires_at_us - now < LEASE_MARGIN_S * US:
            # Too late to send under our lease; recording will fail and the row is reclaimed.
            return self._retry(item, "lease expired before sending", None, 0.0)
        secret = item.secret if item.endpoint_id is not None else self.config.signing_secret
        self.metrics.sent += 1
        try:
            outcome = await self._transport.post(
                item.target_url, item.webhook_id, item.payload, secret
            )
        except TargetRefusedError as exc:
            self.metrics.refused_targets += 1
            return self._dead(item, str(exc))
        except Exception as exc:  # never lose a worker to a surprise; record it as a failure
            log.exception("unexpected error delivering %s", item.delivery_id)
            outcome = AttemptResult(False, None, f"internal error: {type(exc).__name__}: {exc}")
        if outcome.ok:
            return DeliveryResult(
                delivery_id=item.delivery_id,
                state=DeliveryState.COMPLETED,
                last_status=outcome.status,
            )
        policy = self.config.retry
        if policy.is_exhausted(item.attempts):
            return self._dead(item, outcome.error, outcome.status)
        delay = policy.delay(item.attempts, rng)
        if outcome.retry_after is not None:
            delay = min(policy.maximum, outcome.retry_after)
        return self._retry(item, outcome.error, outcome.status, delay)

    @staticmethod
    def _retry(
        item: ClaimedDelivery, error: str | None, status: int | None, delay: float
    ) -> DeliveryResult:
        return DeliveryResult(
            delivery_id=item.delivery_id,
            state=DeliveryState.RETRY_WAIT,
            last_status=status,
            last_error=error,
            next_attempt_at_us=now_us() + int(delay * US),
        )

    @staticmethod
    def _dead(
        item: ClaimedDelivery, error: str | None, status: int | None = None
    ) -> DeliveryResult:
        return DeliveryResult(
            delivery_id=item.delivery_id,
            state=DeliveryState.DEAD_LETTER,
            last_status=status,
            last_error=error,
        )

    # -- recorder --------------------------------------------------------------------------
    async def _record_loop(self) -> None:
        last = False
        while not last:
            first = await self._results.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < RECORD_BATCH and not self._results.empty():
                more = self._results.get_nowait()
                if more is None:
                    last = True
                    break
                batch.append(more)
            await self._write_results(batch)

    async def _write_results(self, batch: list[tuple[ClaimedDelivery, DeliveryResult]]) -> None:
        repo = self._repository()
        results = [r for _i, r in batch]
        written = None
        for attempt in range(STORE_ATTEMPTS):
            try:
                written = await repo.record(self.owner, results)
                break
            except EventledgerError as exc:
                self.metrics.store_errors += 1
                log.warning("recording %d outcomes failed (try %d): %s", len(batch), attempt, exc)
                await asyncio.sleep(STORE_RETRY_S)
        self._held -= len(batch)
        if written is None:
            return  # the leases expire and the rows are reclaimed: at-least-once
        self.metrics.lease_lost += len(batch) - written
        for result in results:
            if result.state is DeliveryState.COMPLETED:
                self.metrics.succeeded += 1
            elif result.state is DeliveryState.RETRY_WAIT:
                self.metrics.failed_attempts += 1
                self.metrics.retried += 1
            else:
                self.metrics.dead_lettered += 1
                if result.last_status is not None or result.last_error:
                    self.metrics.failed_attempts += 1
        self._wake.set()

    def __repr__(self) -> str:
        return f"EventOrchestrator(owner={self.owner!r}, store={self.store.url!r})"


def host_of(item: ClaimedDelivery) -> str:
    """The per-host limiter key of a claimed delivery (routing already validated the URL)."""
    return target_host(item.target_url)


async def _finish(task: asyncio.Task[Any]) -> None:
    """Await a task of ours to its end, propagating nothing but our own cancellation."""
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
    except Exception:
        log.exception("dispatcher task %s failed", task.get_name())
