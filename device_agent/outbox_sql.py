"""The outbox's SQL statements, kept apart so the queue logic reads on its own."""

# SQLite builds before 3.32 allow at most 999 parameters in one statement.
CHUNK = 500
# Statements are constants: values only ever travel as named parameters, and lists of values
# as one JSON array parameter read with json_each.
BY_KEY = (
    "SELECT o.seq, o.op_id, o.collection, o.key, o.kind, o.hlc, o.data, o.priority, "
    "COALESCE(d.attempts, 0), o.enqueued_at, d.last_error "
    "FROM outbox AS o LEFT JOIN delivery AS d ON d.seq = o.seq "
    "WHERE o.collection = :collection AND o.key = :key ORDER BY o.hlc"
)
BY_ID = (
    "SELECT o.seq, o.op_id, o.collection, o.key, o.kind, o.hlc, o.data, o.priority, "
    "COALESCE(d.attempts, 0), o.enqueued_at, d.last_error "
    "FROM outbox AS o LEFT JOIN delivery AS d ON d.seq = o.seq "
    "WHERE o.op_id = :op_id"
)
TO_RESTAMP = (
    "SELECT o.seq, o.op_id, o.collection, o.key, o.kind, o.hlc, o.data, o.priority, "
    "COALESCE(d.attempts, 0), o.enqueued_at, d.last_error "
    "FROM outbox AS o LEFT JOIN delivery AS d ON d.seq = o.seq "
    "WHERE o.hlc > :clock OR o.hlc >= :earliest ORDER BY o.hlc"
)
# Walks outbox_claim in (priority, seq) order, looks each op up in the (small) delivery
# table, and stops after `limit` ready ones; only those are read from the table.
CANDIDATES = (
    "SELECT o.seq, o.op_id, o.collection, o.key, o.kind, o.hlc, o.data, o.priority, "
    "COALESCE(d.attempts, 0), o.enqueued_at, d.last_error, o.size "
    "FROM outbox AS o INDEXED BY outbox_claim LEFT JOIN delivery AS d ON d.seq = o.seq "
    "WHERE d.seq IS NULL OR (d.next_attempt_at <= :now "
    "AND (d.lease_until IS NULL OR d.lease_until <= :now)) "
    "ORDER BY o.priority, o.seq LIMIT :limit"
)
LEASE = (
    "INSERT INTO delivery (seq, leased_at, lease_until, lease_owner) "
    "SELECT value, :now, :until, :owner FROM json_each(:seqs) WHERE true "
    "ON CONFLICT (seq) DO UPDATE SET leased_at = excluded.leased_at, "
    "lease_until = excluded.lease_until, lease_owner = excluded.lease_owner"
)
ACK = "DELETE FROM outbox WHERE op_id IN (SELECT value FROM json_each(:ids))"
RELEASE = (
    "UPDATE delivery SET leased_at = NULL, lease_until = NULL, lease_owner = NULL, "
    "attempts = attempts + 1, last_error = :error, next_attempt_at = :retry_at "
    "WHERE seq IN (SELECT seq FROM outbox WHERE op_id IN (SELECT value FROM json_each(:ids)))"
)
RELEASE_UNATTEMPTED = (
    "UPDATE delivery SET leased_at = NULL, lease_until = NULL, lease_owner = NULL "
    "WHERE seq IN (SELECT seq FROM outbox WHERE op_id IN (SELECT value FROM json_each(:ids)))"
)
