"""The sync engine: push the outbox, pull the changes, act on every answer of PROTOCOL.md.

Push claims ops in priority order (critical first, FIFO within a priority) in batches bounded
by op count and bytes, and acts on each per-op status: `applied`, `duplicate` and `queued`
are acked; `superseded` and `merged` are acked and their `record` folded into the replica;
`rejected` is quarantined - except `clock_ahead`, which re-stamps the ops from the clock
corrected by the server's time and sends them again. A 413 halves the batch, a 400 bisects
it until the bad op is alone and quarantined; one bad op never holds back the others.
Whole-request failures release the ops (nothing is lost) and end the round with the failure,
so the caller can back off. Pull pages from the persisted cursor, applies each page and its
cursor in one transaction, and starts over from the beginning on 410.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from device_agent.db import transaction
from device_agent.errors import NotFound
from device_agent.network import Connectivity, NetworkMonitor, classify
from device_agent.outbox import Outbox, PendingOp
from device_agent.outcomes import (
    Accepted,
    AuthFailed,
    BadRequest,
    CursorExpired,
    Failure,
    Outcome,
    Page,
    Throttled,
    TooLarge,
    Unreachable,
)
from device_agent.replica import Replica
from device_agent.state import AgentState
from device_agent.summary import ProcessingSummary
from device_agent.sync_failures import Stop, describe, failure_name
from device_agent.transport import Transport, new_batch_id
from shared.contracts import BatchResponse, ErrorCode, OpStatus, limits

log = logging.getLogger("device_agent.sync")

_ACK = (OpStatus.APPLIED, OpStatus.DUPLICATE, OpStatus.QUEUED)
_FOLD = (OpStatus.SUPERSEDED, OpStatus.MERGED)
# A request cut short by the round's deadline ends within a timer's precision of it.
_DEADLINE_SLACK_S = 0.1


@dataclass
class SyncConfig:
    """Batch bounds (the server's limits at most), pull page size, lease length."""

    batch_ops: int = 100
    batch_bytes: int = 1024 * 1024
    pull_limit: int = 500
    lease_s: float = 120.0
    max_restamps: int = 3
    defer_s: float = 60.0  # how long an op the cloud did not settle waits before a resend
    # The longest a round pushes before it pulls: a backlog that takes longer to send does
    # not hold back the changes other devices made (the next round pushes on).
    push_slice_s: float = 30.0

    def __post_init__(self) -> None:
        self.batch_ops = max(1, min(self.batch_ops, limits.MAX_OPS_PER_BATCH))
        self.batch_bytes = max(1024, min(self.batch_bytes, limits.MAX_BATCH_BYTES))
        self.pull_limit = max(1, min(self.pull_limit, limits.MAX_CHANGES_LIMIT))
        self.push_slice_s = max(0.1, self.push_slice_s)  # each round sends a batch at least


class SyncEngine:
    """One device database's push and pull against one transport."""

    def __init__(
        self,
        outbox: Outbox,
        state: AgentState,
        replica: Replica,
        transport: Transport,
        *,
        monitor: Optional[NetworkMonitor] = None,
        config: Optional[SyncConfig] = None,
        wall: Callable[[], float] = time.time,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.outbox, self.state, self.replica = outbox, state, replica
        self.transport = transport
        self.monitor = monitor or NetworkMonitor()
        self.config = config or SyncConfig()
        self._wall = wall
        self.should_stop = should_stop
        self._batch_ops = self.config.batch_ops
        self._batch_bytes = self.config.batch_bytes
        self._restamps: dict[str, int] = {}
        # The round's own deadline (not a push slice's end): no request waits past it.
        self._deadline: Optional[float] = None
        # The whole-request failure that stopped the last round (None: none did). A summary
        # names its kind (`server_error`), this keeps its status (a 503 is not a 404).
        self.stopped_on: Optional[Failure] = None
        self.on_progress: Optional[Callable[[ProcessingSummary], None]] = None

    # -- a round: push, then pull ------------------------------------------------------

    def round(
        self,
        summary: Optional[ProcessingSummary] = None,
        *,
        deadline: Optional[float] = None,
        pull: bool = True,
    ) -> ProcessingSummary:
        """Push everything ready, then pull until up to date. Pending pushes never hold back
        incoming changes: the pull runs after most push failures, and after `push_slice_s`
        of pushing (the round then ends with `pushed_all` False and no `stopped_by`: the
        next round pushes on)."""
        summary = summary or ProcessingSummary()
        started = time.monotonic()
        self._deadline = deadline
        requests_before = summary.requests
        slice_end = started + self.config.push_slice_s
        push_deadline = slice_end if deadline is None else min(deadline, slice_end)
        push_failure = self._guard(lambda: self.push(summary, deadline=push_deadline))
        sliced = push_failure == "timeout" and push_deadline == slice_end
        if sliced and (deadline is None or time.monotonic() < deadline):
            push_failure = None  # not a failure: time to pull
        pull_failure: Union[Failure, str, None] = None
        # Pull anyway after most push failures (a 503 on batches may leave reads working), but
        # not when it cannot help: offline, token refused, told to slow down (429), or stopping.
        hopeless = (
            isinstance(push_failure, (AuthFailed, Unreachable))
            or (isinstance(push_failure, Throttled) and push_failure.status == 429)
            or push_failure in ("stopped", "timeout")
        )
        if pull and not hopeless:
            pull_failure = self._guard(lambda: self.pull(summary, deadline=deadline))
        summary.pushed_all = push_failure is None and not sliced
        summary.pulled_all = pull and not hopeless and pull_failure is None
        failure = push_failure if push_failure is not None else pull_failure
        self.stopped_on = None if failure is None or isinstance(failure, str) else failure
        if failure is not None:
            summary.stopped_by = failure_name(failure)
            summary.error(describe(failure))
            if isinstance(failure, Throttled) and failure.retry_after:
                summary.retry_after = max(summary.retry_after or 0.0, failure.retry_after)
        summary.remaining = self.outbox.depth()
        summary.duration_s += time.monotonic() - started
        if summary.requests > requests_before or failure is not None:
            # Only a round that talked to the cloud writes stats: an idle worker polling the
            # outbox must not rewrite the database (and wear the SD card) twice a second.
            self._record_stats(summary, failure)
        return summary

    def _guard(self, step: Callable[[], None]) -> Union[Failure, str, None]:
        try:
            step()
        except Stop as stop:
            return stop.failure
        return None

    def _record_stats(self, summary: ProcessingSummary, failure: Union[Failure, str, None]) -> None:
        now = self._wall()
        previous = self.state.stats()
        connectivity = self.monitor.state.value
        if failure is None:
            self.state.update_stats(
                last_success_at=now,
                last_attempt_at=now,
                consecutive_failures=0,
                current_backoff_s=0.0,
                connectivity=connectivity,
            )
        elif failure in ("stopped", "timeout"):
            self.state.update_stats(last_attempt_at=now, connectivity=connectivity)
        else:
            self.state.update_stats(
                last_attempt_at=now,
                last_error=describe(failure),
                last_error_at=now,
                consecutive_failures=previous.consecutive_failures + 1,
                connectivity=connectivity,
            )

    def _observe(self, outcome: Outcome, summary: ProcessingSummary) -> None:
        summary.requests += 1
        summary.bytes_sent += outcome.traffic.sent
        summary.bytes_received += outcome.traffic.received
        if classify(outcome) is not Connectivity.OFFLINE:
            summary.reached_cloud = True
        self.monitor.observe(outcome)

    def _out_of_time(self, outcome: Outcome, summary: ProcessingSummary) -> bool:
        """Whether a request gave up because the round's time ran out (then it is counted
        but says nothing about the link: the monitor does not hear of it)."""
        deadline = self._deadline
        if not isinstance(outcome, Unreachable) or deadline is None:
            return False
        if time.monotonic() < deadline - _DEADLINE_SLACK_S:
            return False
        summary.requests += 1
        summary.bytes_sent += outcome.traffic.sent
        return True

    def _check_time(self, deadline: Optional[float]) -> None:
        if self.should_stop():
            raise Stop("stopped")
        if deadline is not None and time.monotonic() >= deadline:
            raise Stop("timeout")

    # -- push --------------------------------------------------------------------------

    def push(self, summary: ProcessingSummary, *, deadline: Optional[float] = None) -> None:
        """Send ready ops until none is left; raises Stop on a whole-request failure."""
        while True:
            self._check_time(deadline)
            claimed = self.outbox.claim(
                limit=self._batch_ops,
                max_bytes=self._batch_bytes,
                lease_s=self.config.lease_s,
                now=self._wall(),
            )
            if not claimed:
                return
            self._deliver(claimed, summary, deadline)

    def _deliver(
        self, claimed: list[PendingOp], summary: ProcessingSummary, deadline: Optional[float]
    ) -> None:
        """Send the claimed ops, splitting on 413/400; every claimed op ends acked,
        quarantined or released, whatever happens."""
        work: list[list[PendingOp]] = [claimed]
        lone_failures, accepted = 0, False
        try:
            while work:
                batch = work.pop()
                # Until its answer comes, the cloud may have taken these stamps: no re-stamp
                # may go below them (AgentState.restamp_clock).
                self.state.note_sent(max(p.op.hlc for p in batch))
                outcome = self.transport.push(
                    new_batch_id(), [p.op for p in batch], deadline=self._deadline
                )
                if self._out_of_time(outcome, summary):
                    # The answer may still come to the cloud's side: as for a lost answer,
                    # a resend is recognised (`duplicate`).
                    self._release(batch, "the sync's time ran out", attempted=True)
                    raise Stop("timeout")
                self._observe(outcome, summary)
                if isinstance(outcome, (TooLarge, BadRequest)):
                    # Refused whole: the cloud took none of its stamps.
                    with transaction(self.state.conn, durable=False):
                        self.state.note_settled(max(p.op.hlc for p in batch), "")
                if isinstance(outcome, Accepted):
                    accepted = True
                    self._settle(batch, outcome.response, summary)
                elif isinstance(outcome, (TooLarge, BadRequest)) and len(batch) > 1:
                    # Halve on 413; bisect on 400 until the bad op stands alone.
                    middle = len(batch) // 2
                    work += [batch[middle:], batch[:middle]]
                    if isinstance(outcome, TooLarge):
                        self._shrink(len(batch), outcome)
                elif isinstance(outcome, BadRequest) and lone_failures >= 3 and not accepted:
                    # Every op alone is refused and none got through: the request itself is
                    # wrong (an envelope bug, a proxy), not the ops. Do not quarantine the
                    # whole outbox one op at a time; back off and let a human look.
                    self._release(batch, describe(outcome), attempted=True)
                    raise Stop(outcome)
                elif isinstance(outcome, (TooLarge, BadRequest)):
                    lone_failures += 1
                    code = ErrorCode.TOO_LARGE if isinstance(outcome, TooLarge) else outcome.code
                    reason = str(getattr(code, "value", code))
                    if self._quarantine(batch[0], reason, outcome.message):
                        summary.quarantined += 1
                        summary.error(f"op {batch[0].op.op_id} quarantined: {outcome.message}")
                else:
                    self._release(batch, describe(outcome), attempted=True)
                    raise Stop(outcome)
                if self.on_progress is not None:
                    self.on_progress(summary)
                if work:
                    self._check_time(deadline)
        finally:
            # Anything not sent (a Stop, a crash) goes back untouched: nothing is lost.
            leftover = [p for batch in work for p in batch]
            if leftover:
                self._release(leftover, "not sent", attempted=False)

    def _shrink(self, size: int, outcome: TooLarge) -> None:
        # The limit the cloud states, else half the refused batch.
        self._batch_ops = max(1, min(self._batch_ops, outcome.max_ops or size // 2))
        if outcome.max_bytes:
            self._batch_bytes = max(1024, min(self._batch_bytes, outcome.max_bytes))
        log.info("batch shrunk max_ops=%d max_bytes=%d", self._batch_ops, self._batch_bytes)

    def _settle(
        self, batch: Sequence[PendingOp], response: BatchResponse, summary: ProcessingSummary
    ) -> None:
        self.state.merge_server_time(response.server_time)
        results = {r.op_id: r for r in response.results if r.op_id}
        acks: list[str] = []
        ahead: list[PendingOp] = []
        missing: list[PendingOp] = []
        accepted = ""  # the greatest stamp among the ops the cloud took
        with transaction(self.state.conn):
            for pending in batch:
                result = results.get(pending.op.op_id)
                if result is None:
                    missing.append(pending)
                    continue
                if result.status in _ACK or result.status in _FOLD:
                    # The op leaves the outbox: keep it in the local view through the replica.
                    self.replica.apply_op(pending.op)
                    if result.status in _FOLD and result.record is not None:
                        self.replica.apply(result.record)
                        self.state.merge_seen(result.record.hlc)
                    acks.append(pending.op.op_id)
                    accepted = max(accepted, pending.op.hlc)
                    summary.count(result.status)
                elif result.error is not None and result.error.code is ErrorCode.CLOCK_AHEAD:
                    ahead.append(pending)
                else:
                    code = result.error.code.value if result.error else ErrorCode.INVALID_OP.value
                    message = result.error.message if result.error else "rejected"
                    summary.count(OpStatus.REJECTED)
                    if self._quarantine(pending, code, message):
                        summary.quarantined += 1
                        summary.error(f"op {pending.op.op_id} rejected: {code}: {message}")
            self.outbox.ack(acks)
            # Ops left unanswered may have been taken: the batch is settled only without them.
            self.state.note_settled("" if missing else max(p.op.hlc for p in batch), accepted)
            for op_id in acks:
                self._restamps.pop(op_id, None)
            if missing:
                # Not answered: resend later, not within this round (no tight loop on a
                # server that keeps leaving it out).
                self.outbox.release(
                    [p.op.op_id for p in missing],
                    error="the cloud sent no result for this op",
                    retry_at=self._wall() + self.config.defer_s,
                )
                summary.deferred += len(missing)
        if ahead:
            self._restamp(ahead, response, summary)

    def _restamp(
        self, ahead: list[PendingOp], response: BatchResponse, summary: ProcessingSummary
    ) -> None:
        """The cloud refused stamps from our future: restart the clock at the server's time,
        re-stamp (keeping order) and let the next claim send them again."""
        details = next(
            (r.error.details for r in response.results if r.error and r.error.details), None
        )
        server_time = (details or {}).get("server_time") or response.server_time
        retry_now = [
            p for p in ahead if self._restamps.get(p.op.op_id, 0) < self.config.max_restamps
        ]
        give_up = [p for p in ahead if p not in retry_now]
        with transaction(self.state.conn):
            if retry_now:
                # The clock goes back only together with the re-stamp: set back alone, it
                # would stamp new writes below the pending ops still ahead, which would then
                # win over them. The intake's stamps count in the clock: placed first, they
                # are re-stamped with the rest.
                self.outbox.place_intake()
                self.state.restamp_clock(str(server_time), _skew_s(details))
                ids = [p.op.op_id for p in retry_now]
                restamped = self.outbox.restamp(ids)
                for op_id in ids:
                    self._restamps[op_id] = self._restamps.get(op_id, 0) + 1
                self.outbox.release_unattempted(ids)
                summary.restamped += len(restamped)
            if give_up:
                # Still "ahead" after re-stamping: do not loop; try again later.
                summary.deferred += len(give_up)
                summary.error(f"{len(give_up)} op(s) still clock_ahead after re-stamping")
                self.outbox.release(
                    [p.op.op_id for p in give_up],
                    error="clock_ahead after re-stamping",
                    retry_at=self._wall() + self.config.defer_s,
                )
        log.warning(
            "clock ahead of the cloud restamped=%d deferred=%d server_time=%s",
            len(retry_now),
            len(give_up),
            server_time,
        )

    def _quarantine(self, pending: PendingOp, code: str, message: str) -> bool:
        """Quarantine the op; False if it was gone (its lease ran out and another process
        settled it meanwhile)."""
        try:
            self.outbox.quarantine(pending.op.op_id, code, message)
        except NotFound:
            log.info("op to quarantine already settled elsewhere op_id=%s", pending.op.op_id)
            return False
        log.warning(
            "op quarantined op_id=%s collection=%s code=%s",
            pending.op.op_id,
            pending.op.collection,
            code,
        )
        return True

    def _release(self, batch: Sequence[PendingOp], error: str, *, attempted: bool) -> None:
        ids = [p.op.op_id for p in batch]
        if attempted:
            self.outbox.release(ids, error=error, retry_at=self._wall())
        else:
            self.outbox.release_unattempted(ids)

    # -- pull --------------------------------------------------------------------------

    def pull(self, summary: ProcessingSummary, *, deadline: Optional[float] = None) -> None:
        """Page `/v1/changes` from the stored cursor until `has_more` is false.

        A page is applied, and its cursor stored, only if the stored cursor is still the one
        it was asked from; otherwise another process has moved on, and the pull goes on from
        there (its page dropped: that chain brings the same changes). So the stored cursors
        form one chain whose pages were all applied, and while a full resync is under way
        (begun with the cursor set back to the start, in one transaction) that chain is the
        resync's: the page that ends it ends the resync, whichever process pulls it."""
        cursor = self.state.cursor()
        resynced = False
        while True:
            self._check_time(deadline)
            outcome = self.transport.pull(cursor, self.config.pull_limit, deadline=deadline)
            if self._out_of_time(outcome, summary):
                raise Stop("timeout")
            self._observe(outcome, summary)
            if isinstance(outcome, Page):
                page = outcome.page
                with transaction(self.state.conn):
                    stored = self.state.cursor()
                    if stored == cursor:
                        summary.pulled += self.replica.apply_many(page.changes)
                        self.state.merge_seen(max((r.hlc for r in page.changes), default=""))
                        self.state.set_cursor(page.cursor)
                        if not page.has_more:
                            self.replica.finish_resync()  # (nothing when none is under way)
                if stored != cursor:
                    cursor = stored
                    continue
                if self.on_progress is not None:
                    self.on_progress(summary)
                stalled = page.cursor == cursor  # a cursor that does not move: stop paging
                cursor = page.cursor
                if not page.has_more or stalled:
                    return
            elif isinstance(outcome, CursorExpired) and not resynced:
                with transaction(self.state.conn):
                    stored = self.state.cursor()
                    if stored == cursor:
                        self.replica.begin_resync()  # records stay visible until it ends
                        self.state.set_cursor(None)
                if stored != cursor:
                    # Another process moved on meanwhile (its own resync): go on from there.
                    cursor = stored
                    continue
                log.warning("pull cursor expired: full resync from the beginning")
                cursor, resynced = None, True
                summary.resyncs += 1
            else:
                raise Stop(outcome)


def _skew_s(details: Optional[dict[str, Any]]) -> float:
    """The cloud's clock skew allowance from `clock_ahead` details, else the default."""
    skew = (details or {}).get("max_clock_skew_s")
    if isinstance(skew, (int, float)) and not isinstance(skew, bool) and skew >= 0:
        return float(skew)
    return float(limits.MAX_CLOCK_SKEW_S)
