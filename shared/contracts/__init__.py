"""The wire protocol (PROTOCOL.md) as code. Standard library only: the device imports it."""

from shared.contracts import limits
from shared.contracts.enums import ErrorCode, OpKind, OpStatus, Priority
from shared.contracts.hlc import (
    HybridLogicalClock,
    InvalidTimestamp,
    Timestamp,
    format_hlc,
    is_hlc,
    parse_hlc,
)
from shared.contracts.model import (
    BatchResponse,
    ChangesPage,
    JsonObject,
    Op,
    OpError,
    OpResult,
    Record,
    RecordClock,
    encoded_size,
)
from shared.contracts.validation import (
    BatchTooLarge,
    ContractError,
    ParsedBatch,
    Problem,
    RejectedOp,
    parse_batch,
    parse_batch_response,
    parse_changes_page,
    parse_op,
    parse_record,
)

__all__ = [
    "BatchResponse",
    "BatchTooLarge",
    "ChangesPage",
    "ContractError",
    "ErrorCode",
    "HybridLogicalClock",
    "InvalidTimestamp",
    "JsonObject",
    "Op",
    "OpError",
    "OpKind",
    "OpResult",
    "OpStatus",
    "ParsedBatch",
    "Priority",
    "Problem",
    "Record",
    "RecordClock",
    "RejectedOp",
    "Timestamp",
    "encoded_size",
    "format_hlc",
    "is_hlc",
    "limits",
    "parse_batch",
    "parse_batch_response",
    "parse_changes_page",
    "parse_hlc",
    "parse_op",
    "parse_record",
]
