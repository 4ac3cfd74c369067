"""POST /v1/batches: validate, apply every op, answer one result per op in request order.

Ops on different records are applied concurrently (a small thread pool); ops on the same
record stay in request order in one worker, so they do not fight over the version condition.
An op that cannot be applied now is put on the retry queue and answered `queued`; only when
that also fails does the whole request become a 503 (the dual failure).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from shared.config import Settings
from shared.contracts import (
    BatchResponse,
    BatchTooLarge,
    ContractError,
    ErrorCode,
    Op,
    OpError,
    OpResult,
    OpStatus,
    ParsedBatch,
    RejectedOp,
    limits,
    parse_batch,
    parse_hlc,
    response_size,
)
from shared.dal import Principal, RetryMessage, enqueue
from shared.dal.records import StoredRecord
from shared.errors import (
    ApplyFailed,
    BadRequest,
    PayloadTooLarge,
    QueueError,
    RecordTooLarge,
    ServiceUnavailable,
)
from shared.logic.apply import Outcome, RecordKey, apply_ops, load_current
from shared.logic.body import decode_json_body, limits_details
from shared.logic.clock import now_ms, server_time
from shared.observability import MetricUnit, logger, metrics

RESERVED_PREFIX = "_"  # collections starting with "_" belong to the server
DUAL_FAILURE_RETRY_AFTER_S = 10


class _DualFailure(Exception):
    def __init__(self, op_id: str, store_cause: str, queue_cause: str) -> None:
        super().__init__(op_id)
        self.op_id, self.store_cause, self.queue_cause = op_id, store_cause, queue_cause


def _precheck(op: Op, principal: Principal, settings: Settings, now: int) -> Optional[OpResult]:
    """A rejection decided without touching the store, or None."""
    stamp = parse_hlc(op.hlc)
    if stamp.physical_ms > now + settings.max_clock_skew_s * 1000:
        return OpResult(
            op.op_id,
            OpStatus.REJECTED,
            error=OpError(
                ErrorCode.CLOCK_AHEAD,
                f"the op's clock is {(stamp.physical_ms - now) // 1000} s ahead of the server, "
                f"more than the {settings.max_clock_skew_s} s allowed: merge server_time and "
                "re-stamp the op",
                {"server_time": server_time(), "max_clock_skew_s": settings.max_clock_skew_s},
            ),
        )
    if op.collection.startswith(RESERVED_PREFIX):
        return OpResult(
            op.op_id,
            OpStatus.REJECTED,
            error=OpError(
                ErrorCode.FORBIDDEN,
                f"collection {op.collection!r} is reserved for the server: use a name "
                f"that does not start with {RESERVED_PREFIX!r}",
            ),
        )
    if settings.require_device_node and stamp.node != principal.device_id:
        return OpResult(
            op.op_id,
            OpStatus.REJECTED,
            error=OpError(
                ErrorCode.FORBIDDEN,
                f"the op was stamped by node {stamp.node!r}, not by this device: stamp ops "
                "with the device id the token was issued to",
            ),
        )
    return None


def _answer(op: Op, outcome: Outcome, principal: Principal, batch_id: str) -> OpResult:
    if isinstance(outcome, RecordTooLarge):
        return OpResult(
            op.op_id, OpStatus.REJECTED, error=OpError(ErrorCode.TOO_LARGE, str(outcome))
        )
    if isinstance(outcome, ApplyFailed):
        return _queue(op, principal, batch_id, outcome)
    keep_record = outcome.status in (OpStatus.SUPERSEDED, OpStatus.MERGED)
    return OpResult(op.op_id, outcome.status, outcome.record if keep_record else None)


def _queue(op: Op, principal: Principal, batch_id: str, failure: ApplyFailed) -> OpResult:
    message = RetryMessage(
        principal.tenant_id, principal.device_id, batch_id, op, failure.reason, server_time()
    )
    try:
        message_id = enqueue(message)
    except QueueError as exc:
        logger.error(
            "op could be neither applied nor queued",
            extra={"op_id": op.op_id, "store_cause": str(failure), "queue_cause": str(exc)},
        )
        raise _DualFailure(op.op_id, str(failure), str(exc)) from exc
    logger.warning(
        "op queued for retry",
        extra={"op_id": op.op_id, "reason": failure.reason, "message_id": message_id},
    )
    return OpResult(op.op_id, OpStatus.QUEUED)


def _group_by_record(items: Sequence[tuple[int, Op]]) -> dict[RecordKey, list[tuple[int, Op]]]:
    groups: dict[RecordKey, list[tuple[int, Op]]] = {}
    for index, op in items:
        groups.setdefault((op.collection, op.key), []).append((index, op))
    return groups


def parse(raw: Any, settings: Settings) -> ParsedBatch:
    """parse_batch with its errors turned into API errors (400, 413)."""
    try:
        return parse_batch(raw, max_ops=settings.max_batch_ops)
    except BatchTooLarge as exc:
        raise PayloadTooLarge(
            f"{exc}: split the batch",
            details=limits_details(settings.max_batch_ops, settings.max_batch_bytes),
        ) from exc
    except ContractError as exc:
        raise BadRequest(
            f"the batch does not follow the protocol: {exc}",
            details={"problems": [{"path": p.path, "message": p.message} for p in exc.problems]},
        ) from exc


def apply_batch(raw: Any, principal: Principal, settings: Settings) -> BatchResponse:
    """Apply a decoded batch body for `principal`. Raises BadRequest, PayloadTooLarge, 503."""
    started = time.monotonic()
    batch = parse(raw, settings)
    results: list[Optional[OpResult]] = [
        item.to_result() if isinstance(item, RejectedOp) else None for item in batch.items
    ]
    now = now_ms()
    accepted: list[tuple[int, Op]] = []
    for index, item in enumerate(batch.items):
        if isinstance(item, Op):
            rejection = _precheck(item, principal, settings, now)
            if rejection is None:
                accepted.append((index, item))
            else:
                results[index] = rejection
    groups = _group_by_record(accepted)
    # One read for the whole batch (BatchGetItem), then one conditional write per record.
    prefetched: dict[RecordKey, Optional[StoredRecord]] = {}
    unreadable: Optional[ApplyFailed] = None
    if groups:
        try:
            prefetched = load_current(principal.tenant_id, groups)
        except ApplyFailed as exc:
            unreadable = exc
    failures: list[_DualFailure] = []
    stop = threading.Event()

    def run(key: RecordKey) -> None:
        group = groups[key]
        if stop.is_set():
            return
        ops = [op for _, op in group]
        outcomes: list[Outcome] = (
            [unreadable] * len(ops)
            if unreadable is not None
            else apply_ops(principal.tenant_id, ops, prefetched[key], settings)
        )
        for (index, op), outcome in zip(group, outcomes):
            if stop.is_set():
                return
            try:
                results[index] = _answer(op, outcome, principal, batch.batch_id)
            except _DualFailure as exc:
                failures.append(exc)
                stop.set()
                return

    if len(groups) <= 1:
        for key in groups:
            run(key)
    else:
        with ThreadPoolExecutor(max_workers=min(settings.apply_concurrency, len(groups))) as pool:
            list(pool.map(run, groups))
    if failures:
        first = failures[0]
        raise ServiceUnavailable(
            "the sync store and the retry queue both failed; nothing was lost: "
            f"resend the same batch after {DUAL_FAILURE_RETRY_AFTER_S} s",
            retry_after_s=DUAL_FAILURE_RETRY_AFTER_S,
            details={
                "op_id": first.op_id,
                "causes": {"dynamodb": first.store_cause, "sqs": first.queue_cause},
            },
        )
    final = _within_budget([result for result in results if result is not None])
    _record_metrics(final, time.monotonic() - started)
    logger.info(
        "batch applied",
        extra={
            "batch_id": batch.batch_id,
            "tenant_id": principal.tenant_id,
            "device_id": principal.device_id,
            "ops": len(final),
            "statuses": dict(Counter(r.status.value for r in final)),
        },
    )
    return BatchResponse(batch.batch_id, server_time(), final)


def _within_budget(results: Sequence[OpResult]) -> list[OpResult]:
    """The results, with `record` left out of those past the response budget.

    Every superseded or merged result carries the whole record, and a few stale ops on a
    large record would make an answer Lambda cannot return (nor any retry of the batch).
    A result without `record` is complete otherwise; the device gets the record through
    /v1/changes.
    """
    size = 0
    left_out = 0
    kept: list[OpResult] = []
    for result in results:
        if result.record is None:
            kept.append(result)
            continue
        cost = response_size(result.record.to_wire())
        if size + cost > limits.MAX_RESPONSE_RECORD_BYTES:
            kept.append(dataclasses.replace(result, record=None))
            left_out += 1
        else:
            kept.append(result)
            size += cost
    if left_out:
        logger.info(
            "records left out of the batch answer",
            extra={"left_out": left_out, "budget_bytes": limits.MAX_RESPONSE_RECORD_BYTES},
        )
    return kept


def _record_metrics(results: Sequence[OpResult], elapsed_s: float) -> None:
    for status, count in Counter(r.status for r in results).items():
        metrics.add_metric(
            name=f"Ops{status.value.capitalize()}", unit=MetricUnit.Count, value=count
        )
    metrics.add_metric(name="BatchOps", unit=MetricUnit.Count, value=len(results))
    metrics.add_metric(
        name="BatchLatency", unit=MetricUnit.Milliseconds, value=round(elapsed_s * 1000, 1)
    )


def handle_batch_request(
    body: Optional[str],
    *,
    is_base64: bool,
    content_encoding: Optional[str],
    principal: Principal,
    settings: Settings,
) -> BatchResponse:
    """Decode the HTTP body (base64, gzip, bounded) and apply the batch."""
    raw = decode_json_body(
        body,
        is_base64=is_base64,
        content_encoding=content_encoding,
        max_ops=settings.max_batch_ops,
        max_bytes=settings.max_batch_bytes,
    )
    metrics.add_metric(name="BatchBytes", unit=MetricUnit.Bytes, value=len(body or ""))
    return apply_batch(raw, principal, settings)
