"""The outbox's SQL statements, kept apart so the queue logic reads on its own."""

# SQLite builds before 3.32 allow at most 999 parameters in one statement.
CHUNK = 500
# Statements are constants: values only ever travel as parameters, and lists of values as
# one JSON array parameter read with json_each.
# Intake rows (schema.MIGRATIONS, version 7) as the outbox's rows below: never handed out, so no
# seq (NULL), no attempt, no error.
_INTAKE_AS_PENDING = (
    "SELECT NULL, op_id, collection, key, kind, hlc, data, priority, 0, enqueued_at, NULL "
    "FROM outbox_intake "
)
# Every op on a key, in HLC order: through outbox_keys (whose stale rows find no op and drop
# out), and in the intake. One statement, so that an intake placed meanwhile by another
# connection is seen in one place or the other.
BY_KEY = (
    "SELECT o.seq, o.op_id, o.collection, o.key, o.kind, o.hlc, o.data, o.priority, "
    "COALESCE(d.attempts, 0), o.enqueued_at, d.last_error "
    "FROM outbox_keys AS k "
    "JOIN outbox AS o ON o.seq = k.seq AND o.collection = k.collection AND o.key = k.key "
    "LEFT JOIN delivery AS d ON d.seq = o.seq "
    "WHERE k.collection = :collection AND k.key = :key "
    "UNION ALL " + _INTAKE_AS_PENDING + "WHERE collection = :collection AND key = :key "
    "ORDER BY 6"
)
BY_SEQ = (
    "SELECT o.seq, o.op_id, o.collection, o.key, o.kind, o.hlc, o.data, o.priority, "
    "COALESCE(d.attempts, 0), o.enqueued_at, d.last_error "
    "FROM outbox AS o LEFT JOIN delivery AS d ON d.seq = o.seq "
    "WHERE o.seq = :seq"
)
# Op ids to seqs: through delivery's index for ops handed out (every op the sync engine names),
# else by scanning the outbox (the outbox has no op_id index: see schema.MIGRATIONS, version 3).
SEQS_HANDED_OUT = (
    "SELECT op_id, seq FROM delivery WHERE op_id IN (SELECT value FROM json_each(:ids))"
)
SEQS_SCANNED = "SELECT op_id, seq FROM outbox WHERE op_id IN (SELECT value FROM json_each(:ids))"
TO_RESTAMP = (
    "SELECT o.seq, o.op_id, o.collection, o.key, o.kind, o.hlc, o.data, o.priority, "
    "COALESCE(d.attempts, 0), o.enqueued_at, d.last_error "
    "FROM outbox AS o LEFT JOIN delivery AS d ON d.seq = o.seq "
    "WHERE o.hlc > :clock OR o.hlc >= :earliest ORDER BY o.hlc"
)
# The kept ops (outbox_replaced) of live ops that a re-stamp must move with them.
KEPT_TO_RESTAMP = (
    "SELECT r.by_seq, r.op_id, r.hlc FROM outbox_replaced AS r "
    "WHERE (r.hlc > :clock OR r.hlc >= :earliest) "
    "AND EXISTS (SELECT 1 FROM outbox AS o WHERE o.seq = r.by_seq)"
)
# Walks the outbox in seq order, which is claim order (see schema.MIGRATIONS, version 2), looks
# each op up in the (small) delivery table, and stops after `limit` ready ones.
CANDIDATES = (
    "SELECT o.seq, o.op_id, o.collection, o.key, o.kind, o.hlc, o.data, o.priority, "
    "COALESCE(d.attempts, 0), o.enqueued_at, d.last_error, o.size "
    "FROM outbox AS o LEFT JOIN delivery AS d ON d.seq = o.seq "
    "WHERE d.seq IS NULL OR (d.next_attempt_at <= :now "
    "AND (d.lease_until IS NULL OR d.lease_until <= :now)) "
    "ORDER BY o.seq LIMIT :limit"
)
# The oldest op of each priority is its first row.
OLDEST = (
    "SELECT MIN(enqueued_at) FROM outbox_totals AS t, outbox AS o "
    "WHERE o.seq = (SELECT seq FROM outbox WHERE seq >= t.priority << 48 ORDER BY seq LIMIT 1)"
)
LEASE = (
    "INSERT INTO delivery (seq, op_id, leased_at, lease_until, lease_owner) "
    "SELECT o.seq, o.op_id, :now, :until, :owner "
    "FROM json_each(:seqs) AS j JOIN outbox AS o ON o.seq = j.value WHERE true "
    "ON CONFLICT (seq) DO UPDATE SET leased_at = excluded.leased_at, "
    "lease_until = excluded.lease_until, lease_owner = excluded.lease_owner"
)
# Removing ops, with each one's share of the totals: in one statement where SQLite has
# RETURNING (3.35 and newer), else a read and a delete.
REMOVE_RETURNING = (
    "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(:seqs)) RETURNING priority, size"
)
# Removing ops named by id, with RETURNING: those handed out through delivery's op_id index,
# then any others by a scan of the outbox.
REMOVE_HANDED_OUT = (
    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM delivery "
    "WHERE op_id IN (SELECT value FROM json_each(:ids))) RETURNING op_id, priority, size"
)
REMOVE_SCANNED = (
    "DELETE FROM outbox WHERE op_id IN (SELECT value FROM json_each(:ids)) "
    "RETURNING op_id, priority, size"
)
TO_REMOVE = "SELECT priority, size FROM outbox WHERE seq IN (SELECT value FROM json_each(:seqs))"
REMOVE = "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(:seqs))"
FORGET_KEY = "DELETE FROM outbox_keys WHERE collection = :collection AND key = :key AND seq = :seq"
FORGET_ALL_KEYS = "DELETE FROM outbox_keys"
# What pending ops replaced (schema.MIGRATIONS, version 6): kept under the replacing op's seq.
KEEP_REPLACED = (
    "INSERT OR REPLACE INTO outbox_replaced (by_seq, op_id, collection, key, kind, hlc, data, "
    "priority, size, enqueued_at) VALUES (:by_seq, :op_id, :collection, :key, :kind, :hlc, "
    ":data, :priority, :size, :enqueued_at)"
)
REPLACED_BY = (
    "SELECT op_id, collection, key, kind, hlc, data, priority, size, enqueued_at "
    "FROM outbox_replaced WHERE by_seq = :seq ORDER BY hlc"
)
REPLACED_COLUMNS = (
    "op_id",
    "collection",
    "key",
    "kind",
    "hlc",
    "data",
    "priority",
    "size",
    "enqueued_at",
)
# An op put back in the outbox (quarantine retried, or restored) counts as handed out once: newer
# writes on its key may have been sent, so none may be coalesced into it.
MARK_HANDED_OUT = "INSERT INTO delivery (seq, op_id) VALUES (:seq, :op_id)"
FORGET_REPLACED_BY = "DELETE FROM outbox_replaced WHERE by_seq = :seq"
FORGET_ALL_REPLACED = "DELETE FROM outbox_replaced"
FORGET_STALE_REPLACED = (
    "DELETE FROM outbox_replaced "
    "WHERE NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.seq = outbox_replaced.by_seq)"
)
FORGET_STALE_KEYS = (
    "DELETE FROM outbox_keys "
    "WHERE NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.seq = outbox_keys.seq)"
)
# The intake: recorded writes not placed yet (schema.MIGRATIONS, version 7), in recording order.
INTAKE = (
    "INSERT INTO outbox_intake (op_id, collection, key, kind, hlc, data, priority, size, "
    "enqueued_at) VALUES (:op_id, :collection, :key, :kind, :hlc, :data, :priority, :size, "
    ":enqueued_at)"
)
INTAKE_ROWS = (
    "SELECT op_id, collection, key, kind, hlc, data, priority, size, enqueued_at "
    "FROM outbox_intake ORDER BY n"
)
# What placing needs to know of each intake row (outbox_intake.place_intake), in recording order.
INTAKE_BRIEF = "SELECT n, collection, key, priority, size, hlc FROM outbox_intake ORDER BY n"
# Whether a write in the intake is on a key with an op in the outbox (it may coalesce). CROSS
# JOIN keeps the join order: the few intake rows first, then a key lookup for each.
INTAKE_MEETS_PENDING = (
    "SELECT EXISTS (SELECT 1 FROM outbox_intake AS i "
    "CROSS JOIN outbox_keys AS k ON k.collection = i.collection AND k.key = i.key "
    "CROSS JOIN outbox AS o ON o.seq = k.seq)"
)
PLACE_FROM_INTAKE = (
    "INSERT INTO outbox (seq, op_id, collection, key, kind, hlc, data, priority, size, "
    "enqueued_at) SELECT :seq, op_id, collection, key, kind, hlc, data, priority, size, "
    "enqueued_at FROM outbox_intake WHERE n = :n"
)
PLACE_ALL_FROM_INTAKE = (
    "INSERT INTO outbox (seq, op_id, collection, key, kind, hlc, data, priority, size, "
    "enqueued_at) SELECT n + :shift, op_id, collection, key, kind, hlc, data, priority, size, "
    "enqueued_at FROM outbox_intake ORDER BY n"
)
INTAKE_BY_PRIORITY = "SELECT priority, COUNT(*), SUM(size) FROM outbox_intake GROUP BY priority"
INTAKE_OLDEST = "SELECT MIN(enqueued_at) FROM outbox_intake"
INTAKE_BY_ID = _INTAKE_AS_PENDING + "WHERE op_id = :op_id"
# The totals, and the intake counted as priority -1: one statement, one snapshot.
TOTALS = (
    "SELECT priority, ops, bytes, next_seq, stale_keys FROM outbox_totals UNION ALL "
    "SELECT -1, COUNT(*), COALESCE(SUM(size), 0), 0, 0 FROM outbox_intake"
)
GROW = (
    "UPDATE outbox_totals SET ops = ops + :ops, bytes = bytes + :bytes, "
    "next_seq = max(next_seq + :seqs, :next), stale_keys = stale_keys + :stale, "
    "last_hlc = max(last_hlc, :hlc) WHERE priority = :priority"
)
NO_STALE_KEYS = "UPDATE outbox_totals SET stale_keys = 0"
RELEASE = (
    "UPDATE delivery SET leased_at = NULL, lease_until = NULL, lease_owner = NULL, "
    "attempts = attempts + 1, last_error = :error, next_attempt_at = :retry_at "
    "WHERE op_id IN (SELECT value FROM json_each(:ids))"
)
RELEASE_UNATTEMPTED = (
    "UPDATE delivery SET leased_at = NULL, lease_until = NULL, lease_owner = NULL "
    "WHERE op_id IN (SELECT value FROM json_each(:ids))"
)
# The quarantine (outbox_quarantine): an op moved in with the reason, listed, put back.
INSERT_QUARANTINED = (
    "INSERT INTO quarantine (op_id, collection, key, kind, hlc, data, priority, size, "
    "enqueued_at, attempts, code, message, quarantined_at) "
    "SELECT o.op_id, o.collection, o.key, o.kind, o.hlc, o.data, o.priority, o.size, "
    "o.enqueued_at, COALESCE(d.attempts, 0), :code, :message, :now "
    "FROM outbox AS o LEFT JOIN delivery AS d ON d.seq = o.seq WHERE o.seq = :seq"
)
QUARANTINED = (
    "SELECT op_id, collection, key, kind, hlc, data, priority, code, message, attempts, "
    "enqueued_at, quarantined_at FROM quarantine ORDER BY quarantined_at, hlc"
)
RETURN_QUARANTINED = (
    "INSERT INTO outbox (seq, op_id, collection, key, kind, hlc, data, priority, size, "
    "enqueued_at) SELECT :seq, op_id, collection, key, kind, hlc, data, priority, size, :now "
    "FROM quarantine WHERE op_id = :op_id"
)
