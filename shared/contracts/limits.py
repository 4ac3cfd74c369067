"""Protocol limits, as named in PROTOCOL.md. Servers may lower them by configuration."""

from __future__ import annotations

PROTOCOL_VERSION = 1

MAX_OPS_PER_BATCH = 500
MAX_BATCH_BYTES = 5 * 1024 * 1024
MAX_OP_BYTES = 350 * 1024
MAX_KEY_CHARS = 256
MAX_COLLECTION_CHARS = 64
MAX_FIELD_NAME_CHARS = 128
# DynamoDB stores documents nested at most 32 levels deep; the record and `data` take two.
MAX_NESTING_DEPTH = 30
COLLECTION_PATTERN = r"[a-z0-9_-]{1,64}"
MAX_CLOCK_SKEW_S = 300
DEFAULT_CHANGES_LIMIT = 100
MAX_CHANGES_LIMIT = 1000
# Bytes of records one response carries at most (a page of /v1/changes, the `record`s of a
# batch's results), counted as they travel inside the Lambda proxy response: the body's JSON
# escaped once more, to ASCII, as the Lambda runtime encodes it. Lambda refuses a response
# over 6 MB (API Gateway then answers 502, and every retry fails the same way); this leaves
# room for the rest of the body and the envelope.
MAX_RESPONSE_RECORD_BYTES = 4 * 1024 * 1024
