"""The LWW conflict engine: convergence, commutativity, idempotence, against a reference model."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.conflict import (
    ConflictRegistry,
    Resolution,
    UnknownResolver,
    apply_lww,
    check_convergence,
    merge_records,
    parse_assignments,
    replay,
)
from shared.contracts import Op, OpKind, OpStatus, Record, format_hlc

pytestmark = pytest.mark.agent

DEVICES = ["dev-a", "dev-b", "pi-7"]
FIELDS = ["currency", "theme", "lang"]


def make_op(kind: OpKind, ms: int, device: str, data: Optional[dict[str, Any]] = None) -> Op:
    hlc = format_hlc(1_764_000_000_000 + ms, 0, device)
    return Op(f"op-{ms}-{device}", "preferences", "user-42", kind, hlc, data)


@st.composite
def histories(draw: st.DrawFn) -> list[Op]:
    """Random put/patch/delete ops from several devices, each with a unique HLC."""
    count = draw(st.integers(min_value=1, max_value=12))
    stamps = draw(
        st.lists(
            st.tuples(st.integers(0, 50), st.sampled_from(DEVICES)),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    ops = []
    for ms, device in stamps:
        kind = draw(st.sampled_from(list(OpKind)))
        data: Optional[dict[str, Any]] = None
        if kind is not OpKind.DELETE:
            names = draw(st.lists(st.sampled_from(FIELDS), unique=True, min_size=1, max_size=3))
            values = (
                st.one_of(st.integers(0, 9), st.none())
                if kind is OpKind.PATCH
                else st.integers(0, 9)
            )
            data = {name: draw(values) for name in names}
        ops.append(make_op(kind, ms, device, data))
    return ops


def reference_document(ops: list[Op]) -> dict[str, Any]:
    """PROTOCOL.md's semantics stated directly over the set of ops, with no incremental state."""
    resets = [op for op in ops if op.kind is not OpKind.PATCH]
    reset = max(resets, key=lambda op: op.hlc) if resets else None
    floor = reset.hlc if reset else ""
    winners: dict[str, tuple[str, Any]] = {}
    candidates = [op for op in ops if op.kind is OpKind.PATCH and op.hlc > floor]
    if reset is not None:
        candidates.append(reset)
    for op in candidates:
        for name, value in (op.data or {}).items():
            if name not in winners or op.hlc > winners[name][0]:
                winners[name] = (op.hlc, value)
    return {name: value for name, (_, value) in winners.items() if value is not None}


@settings(max_examples=300, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_any_order_with_duplicates_converges_to_the_reference_model(
    ops: list[Op], rng: Any
) -> None:
    shuffled = ops + rng.sample(ops, k=len(ops) // 2)
    rng.shuffle(shuffled)
    in_order = replay(apply_lww, ops)
    shuffled_result = replay(apply_lww, shuffled)
    assert shuffled_result == in_order
    assert shuffled_result is not None
    assert shuffled_result.data == reference_document(ops)


@settings(max_examples=200, deadline=None)
@given(histories())
def test_applying_an_op_twice_reports_duplicate_and_changes_nothing(ops: list[Op]) -> None:
    record = replay(apply_lww, ops)
    for op in ops:
        again = apply_lww(record, op)
        assert again.record == record
        assert again.status in (OpStatus.DUPLICATE, OpStatus.SUPERSEDED)


@settings(max_examples=200, deadline=None)
@given(histories(), histories())
def test_merging_replicas_equals_applying_both_histories(left: list[Op], right: list[Op]) -> None:
    right = [op for op in right if op.hlc not in {o.hlc for o in left}]
    merged = merge_records(replay(apply_lww, left), replay(apply_lww, right))
    assert merged == replay(apply_lww, left + right)
    assert merge_records(merged, replay(apply_lww, left)) == merged


def test_a_tombstone_is_never_resurrected_by_an_older_write() -> None:
    delete = make_op(OpKind.DELETE, 10, "dev-a")
    older_put = make_op(OpKind.PUT, 5, "dev-b", {"currency": "EUR"})
    older_patch = make_op(OpKind.PATCH, 7, "pi-7", {"theme": "dark"})
    record = replay(apply_lww, [delete])
    for op in (older_put, older_patch):
        resolution = apply_lww(record, op)
        assert resolution.status is OpStatus.SUPERSEDED
        assert resolution.record.deleted


def test_a_newer_patch_brings_a_deleted_record_back() -> None:
    record = replay(apply_lww, [make_op(OpKind.DELETE, 10, "dev-a")])
    resolution = apply_lww(record, make_op(OpKind.PATCH, 11, "dev-b", {"theme": "dark"}))
    assert resolution.status is OpStatus.APPLIED
    assert resolution.record.data == {"theme": "dark"}


def test_a_patch_partly_older_than_field_writes_is_merged() -> None:
    put = make_op(OpKind.PUT, 1, "dev-a", {"currency": "EUR", "theme": "light"})
    newer_patch = make_op(OpKind.PATCH, 9, "dev-b", {"theme": "dark"})
    late_patch = make_op(OpKind.PATCH, 5, "pi-7", {"theme": "blue", "lang": "sw"})
    record = replay(apply_lww, [put, newer_patch])
    resolution = apply_lww(record, late_patch)
    assert resolution.status is OpStatus.MERGED
    assert resolution.record.data == {"currency": "EUR", "theme": "dark", "lang": "sw"}


def test_a_field_written_by_a_later_patch_survives_an_older_put() -> None:
    patch = make_op(OpKind.PATCH, 9, "dev-b", {"theme": "dark"})
    older_put = make_op(OpKind.PUT, 5, "dev-a", {"currency": "BTC", "theme": "light"})
    resolution = apply_lww(replay(apply_lww, [patch]), older_put)
    assert resolution.status is OpStatus.MERGED
    assert resolution.record.data == {"currency": "BTC", "theme": "dark"}


def test_a_removed_field_keeps_its_clock_so_an_older_patch_cannot_bring_it_back() -> None:
    remove = make_op(OpKind.PATCH, 9, "dev-b", {"theme": None})
    older = make_op(OpKind.PATCH, 5, "dev-a", {"theme": "light"})
    record = replay(apply_lww, [make_op(OpKind.PUT, 1, "pi-7", {"theme": "x"}), remove])
    assert record is not None and "theme" not in record.data
    assert record.clock.fields["theme"] == remove.hlc
    assert apply_lww(record, older).status is OpStatus.SUPERSEDED


def test_the_wire_form_carries_the_clock_and_the_latest_writer() -> None:
    record = replay(
        apply_lww,
        [make_op(OpKind.PUT, 1, "dev-a", {"a": 1}), make_op(OpKind.PATCH, 2, "pi-7", {"a": None})],
    )
    assert record is not None
    wire = record.to_wire()
    assert wire["deleted"] is True
    assert wire["device_id"] == "pi-7"
    assert set(wire["clock"]["fields"]) == {"a"} and wire["data"] == {}


def max_counter(current: Optional[Record], op: Op) -> Resolution:
    """A custom resolver for tests: the field `count` only ever grows (a G-counter-like max)."""
    base = current or Record(op.collection, op.key)
    if base.carries(op.hlc):
        return Resolution(OpStatus.DUPLICATE, base)
    mine = int((op.data or {}).get("count", 0))
    theirs = int(base.data.get("count", 0))
    if mine <= theirs:
        return Resolution(OpStatus.SUPERSEDED, base)
    fields = {"count": op.hlc}
    return Resolution(
        OpStatus.APPLIED,
        Record(base.collection, base.key, {"count": mine}, type(base.clock)("", fields)),
    )


def test_registry_routes_collections_to_their_configured_resolver() -> None:
    registry = ConflictRegistry()
    registry.register("max_counter", max_counter)
    registry.configure(parse_assignments("inventory=max_counter"))
    assert registry.resolver_for("inventory") is max_counter
    assert registry.resolver_for("preferences") is apply_lww


def test_an_unregistered_resolver_name_is_a_clear_configuration_error() -> None:
    registry = ConflictRegistry()
    registry.assign("inventory", "nope")
    with pytest.raises(UnknownResolver, match="not registered"):
        registry.resolver_for("inventory")


@pytest.mark.parametrize("text", ["inventory", "=x", "inventory="])
def test_bad_resolver_assignments_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="collection=resolver"):
        parse_assignments(text)


def test_check_convergence_accepts_lww_and_catches_an_order_dependent_resolver() -> None:
    ops = [make_op(OpKind.PATCH, ms, "dev-a", {"count": ms}) for ms in range(8)]
    check_convergence(apply_lww, ops)

    def last_arrival_wins(current: Optional[Record], op: Op) -> Resolution:
        return Resolution(OpStatus.APPLIED, Record(op.collection, op.key, dict(op.data or {})))

    with pytest.raises(AssertionError, match="diverged"):
        check_convergence(last_arrival_wins, ops)
