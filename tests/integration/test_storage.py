"""Storage on real SQLite and real PostgreSQL: migrations, dedup, leases, claims, FIFO."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.pool import QueuePool

from hub.domain.model import (
    DeliveryState,
    EventState,
    MessageState,
    RawMessage,
    Receipt,
    ReceiptStatus,
)
from hub.store.db import (
    HEAD_REVISION,
    current_revision,
    head_revision,
    open_database,
    schema_is_current,
    upgrade,
)
from hub.store.repository import (
    AttemptRecord,
    MessageOutcome,
    PlannedDelivery,
    PlannedEvent,
    Repository,
)
from hub.store.tables import metadata

NOW = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)


@pytest.fixture
def repo(db_url):
    db = open_database(db_url)
    upgrade(db)
    yield Repository(db)
    db.dispose()


def raw(key, body=b"{}", source="vendor"):
    return RawMessage(source, key, "application/json", body, NOW)


def test_migrations_reach_head_and_match_the_models(repo):
    assert current_revision(repo.db) == head_revision()
    # upgrade() and /readyz skip Alembic when the stored revision is HEAD_REVISION: it
    # must be the newest migration, or a database one migration behind would pass.
    assert head_revision() == HEAD_REVISION
    assert schema_is_current(repo.db)
    with repo.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    upgrade(repo.db)  # idempotent at head


def test_intake_dedup_within_and_across_batches(repo):
    first = repo.insert_messages([raw("a"), raw("b"), raw("a")])
    assert [r.duplicate for r in first] == [False, False, True]
    assert first[2].id == first[0].id
    again = repo.insert_messages([raw("a"), raw("a", b'{"changed": 1}'), raw("a", source="x")])
    assert again[0].id == first[0].id
    assert again[0].duplicate
    assert again[0].same_body
    assert not again[1].same_body  # same key, different body: reported, still one row
    assert not again[2].duplicate  # the key is per source
    assert repo.status().messages == {"received": 3}


def test_a_resent_message_gets_the_answer_stored_with_its_first_copy(repo):
    def acked(key, answer, body=b"MSH|..."):
        return RawMessage("mllp", key, "x-application/hl7-v2+er7", body, NOW, answer=answer)

    first = repo.insert_messages([acked("a", b"ACK-1"), acked("a", b"ACK-2")])
    assert [(r.duplicate, r.answer) for r in first] == [(False, b"ACK-1"), (True, b"ACK-1")]
    # A later resend, built with a fresh answer, is answered with the stored one.
    later = repo.insert_messages([acked("a", b"ACK-3")])
    assert (later[0].duplicate, later[0].answer) == (True, b"ACK-1")
    # Row-by-row path (taken when another process inserted a key meanwhile) agrees.
    each = repo._insert_each([acked("a", b"ACK-4"), acked("b", b"ACK-5")], ["x", "y"])
    assert [(r.duplicate, r.answer) for r in each] == [(True, b"ACK-1"), (False, b"ACK-5")]
    assert repo.insert_messages([raw("no-answer")])[0].answer is None


def claim_concurrently(claim, workers=4):
    """Run `claim(worker_name)` in several threads until it returns nothing; returns
    every id claimed (a double claim shows up as an id counted twice)."""
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name):
        while batch := claim(name):
            with lock:
                claimed.extend(item.id for item in batch)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return claimed


def test_concurrent_claims_take_each_message_once(repo):
    ids = {r.id for r in repo.insert_messages([raw(f"m{i}") for i in range(400)])}
    claimed = claim_concurrently(lambda name: repo.claim_messages(name, 25, 30, 5))
    assert Counter(claimed) == Counter(ids)


def outcome_with(message_id, destination="ehr", order_key="k1", priority=50, seq=0):
    return MessageOutcome(message_id, MessageState.PROCESSED, None, [
        PlannedEvent(seq=seq, source="vendor", business_key=f"b{message_id}", kind="alarm.raised",
                     category="safety_alarm", code="3", device_id="d", occurred_at=NOW,
                     priority=priority, snapshot=False, state=EventState.ROUTED, summary={},
                     bundle_id=f"bundle-{message_id}", payload='{"resourceType":"Bundle"}',
                     deliveries=[PlannedDelivery(destination, priority, order_key)])])


def plan(repo, specs):
    """specs: list of (order_key, priority); returns delivery ids in creation order."""
    results = repo.insert_messages([raw(f"k{i}-{time.monotonic_ns()}") for i in range(len(specs))])
    claimed = repo.claim_messages("proc", len(specs), 30, 5)
    assert len(claimed) == len(specs)
    outcomes = [outcome_with(r.id, order_key=k, priority=p)
                for r, (k, p) in zip(results, specs, strict=True)]
    assert repo.save_outcomes("proc", outcomes) == []
    return [d["id"] for r in results for d in repo.message_trace(r.id)["deliveries"]]


def finish(repo, worker, claimed, state=DeliveryState.DELIVERED, not_before=None):
    now = datetime.now(UTC)
    return repo.record_attempts(worker, "ehr", [AttemptRecord(
        delivery_id=c.id, attempt=c.attempt, started_at=now, finished_at=now,
        outcome="delivered" if state is DeliveryState.DELIVERED else "retry",
        status_code=200, detail="x", retry_after=None, new_state=state,
        not_before=not_before or now,
        error=None if state is DeliveryState.DELIVERED else "x") for c in claimed])


def test_per_key_fifo_one_in_flight_and_retry_blocks_the_key(repo):
    first, second, other = plan(repo, [("patient-a", 50), ("patient-a", 50), ("patient-b", 50)])
    batch = repo.claim_deliveries("ehr", "w1", 10, 60)
    assert sorted(c.id for c in batch) == [first, other]  # second waits behind first
    by_id = {c.id: c for c in batch}
    assert repo.claim_deliveries("ehr", "w2", 10, 60) == []
    # first fails and backs off: patient-a stays blocked, patient-b flows
    finish(repo, "w1", [by_id[first]], DeliveryState.PENDING,
           datetime.now(UTC) + timedelta(seconds=0.3))
    finish(repo, "w1", [by_id[other]])
    assert repo.claim_deliveries("ehr", "w1", 10, 60) == []
    time.sleep(0.35)
    again = repo.claim_deliveries("ehr", "w1", 10, 60)
    assert [c.id for c in again] == [first]
    assert again[0].attempt == 2
    finish(repo, "w1", again)
    assert [c.id for c in repo.claim_deliveries("ehr", "w1", 10, 60)] == [second]


def test_dead_letter_does_not_block_its_key_for_ever(repo):
    first, second = plan(repo, [("patient-a", 50), ("patient-a", 50)])
    batch = repo.claim_deliveries("ehr", "w1", 10, 60)
    finish(repo, "w1", batch, DeliveryState.DEAD)
    assert [c.id for c in repo.claim_deliveries("ehr", "w1", 10, 60)] == [second]
    assert repo.retry_delivery(first) == "retrying"
    assert repo.retry_delivery(second) == "in-flight"


def test_alarms_are_claimed_before_older_ordinary_deliveries(repo):
    low, alarm, mid = plan(repo, [("a", 10), ("b", 100), ("c", 50)])
    batch = repo.claim_deliveries("ehr", "w1", 2, 60)
    assert [c.id for c in batch] == [alarm, mid]
    assert low not in {c.id for c in batch}


def test_concurrent_delivery_claims_never_double_claim(repo):
    ids = set(plan(repo, [(f"key-{i}", 50) for i in range(200)]))

    def claim_and_deliver(name):
        batch = repo.claim_deliveries("ehr", name, 16, 60)
        assert finish(repo, name, batch) == []  # nothing lost to another worker
        return batch

    claimed = claim_concurrently(claim_and_deliver)
    assert Counter(claimed) == Counter(ids)
    assert repo.status().deliveries == {"ehr": {"delivered": 200}}


def test_expired_lease_is_taken_over_and_the_old_owner_is_fenced_off(repo):
    (delivery,) = plan(repo, [("k", 100)])
    (old,) = repo.claim_deliveries("ehr", "dead-worker", 10, lease_seconds=0.2)
    assert repo.claim_deliveries("ehr", "new-worker", 10, 60) == []
    time.sleep(0.3)
    (new,) = repo.claim_deliveries("ehr", "new-worker", 10, 60)
    assert new.id == delivery
    assert new.attempt == 2
    assert finish(repo, "dead-worker", [old]) == [delivery]  # lost: not recorded as state
    assert finish(repo, "new-worker", [new]) == []
    (recorded,) = repo.message_trace(new.message_id)["deliveries"]
    assert recorded["state"] == "delivered"
    assert [a["worker"] for a in recorded["attempt_log"]] == ["dead-worker", "new-worker"]


def test_expired_processing_lease_and_crash_looping_message(repo):
    (msg,) = repo.insert_messages([raw("loop")])
    for attempt in range(1, 4):
        (m,) = repo.claim_messages(f"w{attempt}", 10, 0.05, max_attempts=3)
        assert m.attempts == attempt
        time.sleep(0.1)  # the worker "dies": its lease expires
    assert repo.claim_messages("w4", 10, 0.05, max_attempts=3) == []
    trace = repo.message_trace(msg.id)
    assert trace["state"] == "failed"
    assert "did not complete in 3 attempts" in trace["reason"]
    assert repo.reprocess(msg.id) == "queued"
    (again,) = repo.claim_messages("w5", 10, 30, max_attempts=3)
    assert again.attempts == 1


def test_a_result_saved_after_losing_the_lease_is_discarded(repo):
    (msg,) = repo.insert_messages([raw("slow")])
    repo.claim_messages("slow-worker", 10, 0.05, 5)
    time.sleep(0.1)
    repo.claim_messages("fast-worker", 10, 30, 5)
    assert repo.save_outcomes("slow-worker", [outcome_with(msg.id)]) == [msg.id]
    assert repo.save_outcomes("fast-worker", [outcome_with(msg.id)]) == []
    assert len(repo.message_trace(msg.id)["deliveries"]) == 1


def test_operator_actions_and_their_refusals(repo):
    (delivery,) = plan(repo, [("k", 50)])
    batch = repo.claim_deliveries("ehr", "w", 10, 60)
    finish(repo, "w", batch, DeliveryState.DEAD)
    assert repo.status().deliveries["ehr"] == {"dead": 1}
    assert repo.retry_all_dead() == 1
    batch = repo.claim_deliveries("ehr", "w", 10, 60)
    finish(repo, "w", batch)
    assert repo.retry_delivery(delivery) == "already-delivered"
    assert repo.retry_delivery(999_999) == "not-found"
    message_id = batch[0].message_id
    assert repo.reprocess(message_id) == "state-processed"
    assert repo.reprocess(999_999) == "not-found"


def test_sqlite_writers_of_one_process_queue_for_its_write_connection(tmp_path):
    """A second writer waits in the pool, not in SQLite's busy handler: it holds no
    connection and issues no BEGIN IMMEDIATE while another holds the lock, and runs as
    soon as that one commits.
    (Polling the lock from a connection of its own, a writer sleeps in steps up to 100 ms
    and loses the lock again and again to busier threads.)"""
    db = open_database(f"sqlite:///{tmp_path}/hub.db")
    upgrade(db)
    repo = Repository(db)
    begins: list[str] = []
    # insert=True: before the listener that issues BEGIN IMMEDIATE (and would block).
    event.listen(db.engine, "begin", lambda conn: begins.append(threading.current_thread().name),
                 insert=True)
    release, holding = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE journal SET state = state")
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_write_lock, name="holder")
    waiter = threading.Thread(target=lambda: repo.insert_messages([raw("queued")]),
                              name="waiter")
    try:
        holder.start()
        assert holding.wait(10)
        waiter.start()
        time.sleep(0.3)  # room for the waiter to try: it must not reach SQLite
        assert waiter.is_alive()
        pool = db.engine.pool
        assert isinstance(pool, QueuePool)
        assert pool.checkedout() == 1  # the waiter has no connection of its own
        assert begins == ["holder"]
        release.set()
        waiter.join(10)
        assert not waiter.is_alive()
        assert begins == ["holder", "waiter"]
        assert repo.status().messages == {"received": 1}
    finally:
        release.set()
        holder.join(10)
        db.dispose()


@pytest.mark.pg
def test_a_key_inserted_meanwhile_by_another_process_falls_back_row_by_row(pg_url):
    """Intake looks the batch's keys up, then inserts the new ones. On PostgreSQL another
    process may commit one of those keys in between: the batch is then written row by
    row and nothing is lost or doubled. (SQLite's BEGIN IMMEDIATE rules the race out.)"""
    db, other = open_database(pg_url), open_database(pg_url)
    upgrade(db)
    repo, rival = Repository(db), Repository(other)
    raced: list[int] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def another_process_commits_first(conn, cursor, statement, *args):
        if statement.startswith("INSERT INTO journal") and not raced:
            raced.append(rival.insert_messages([raw("shared")])[0].id)

    try:
        results = repo.insert_messages([raw("shared"), raw("fresh")])
    finally:
        event.remove(db.engine, "before_cursor_execute", another_process_commits_first)
        other.dispose()
        db.dispose()
    assert raced
    assert (results[0].id, results[0].duplicate) == (raced[0], True)
    assert not results[1].duplicate


def test_one_bad_result_in_a_batch_fails_only_its_message(repo):
    """The batch is written with multi-row statements; when that fails (here: a real
    unique-key violation, two events with the same seq), each message is written alone
    and only the bad one fails, with the reason kept."""
    good, bad = (r.id for r in repo.insert_messages([raw("good"), raw("bad")]))
    repo.claim_messages("proc", 10, 30, 5)
    broken = outcome_with(bad)
    broken = MessageOutcome(bad, MessageState.PROCESSED, None,
                            [*broken.events, *broken.events])  # seq 0 twice
    assert repo.save_outcomes("proc", [outcome_with(good), broken]) == []
    assert repo.message_trace(good)["state"] == "processed"
    assert len(repo.message_trace(good)["deliveries"]) == 1
    failed = repo.message_trace(bad)
    assert failed["state"] == "failed"
    assert failed["reason"].startswith("storing the processing result failed: IntegrityError")
    assert failed["events"] == []
    assert failed["deliveries"] == []


def test_recording_no_attempts_is_a_no_op(repo):
    assert repo.record_attempts("w", "ehr", []) == []


def await_receipt(repo, claimed, correlation, deadline, transport=False):
    now = datetime.now(UTC)
    return repo.record_attempts("w1", "ehr", [AttemptRecord(
        delivery_id=c.id, attempt=c.attempt, started_at=now, finished_at=now,
        outcome="awaiting", status_code=201, detail="accepted", retry_after=None,
        new_state=DeliveryState.AWAITING_RECEIPT, not_before=deadline,
        correlation_id=f"{correlation}-{c.id}", receipt_deadline=deadline,
        transport_ref=f"edi-{c.id}" if transport else None) for c in claimed])


def test_transport_states_of_awaiting_deliveries(repo):
    from hub.domain.model import TransportAction, TransportCheck

    first, second, third = plan(repo, [("patient-a", 50), ("patient-b", 50), ("patient-c", 50)])
    batch = repo.claim_deliveries("ehr", "w1", 10, 60)
    await_receipt(repo, batch, "m", datetime.now(UTC) + timedelta(hours=72), transport=True)
    assert repo.awaiting_transport("ehr") == [(first, f"edi-{first}"), (second, f"edi-{second}"),
                                              (third, f"edi-{third}")]
    assert repo.awaiting_transport("other") == []
    # The state first recorded is "unconfirmed": asking again with no change logs nothing.
    wait = TransportCheck("Unconfirmed", TransportAction.WAIT, "not yet")
    assert repo.record_transport(first, wait) is False
    assert repo.record_transport(first, TransportCheck("Acknowledged", TransportAction.CONFIRMED))
    assert repo.record_transport(second, TransportCheck("Rejected", TransportAction.DEAD,
                                                        "MessageError"))
    assert repo.record_transport(third, TransportCheck("Abandoned", TransportAction.RESEND,
                                                       "no receipt"))
    assert repo.awaiting_transport("ehr") == []
    states = {d["id"]: d for t in (repo.message_trace(m["id"]) for m in repo.search_messages())
              for d in t["deliveries"]}
    assert (states[first]["state"], states[first]["transport_state"]) == (
        "awaiting_receipt", "acknowledged")
    assert states[first]["attempt_log"][-1]["outcome"] == "transport:ok"
    assert (states[second]["state"], states[second]["escalated"]) == ("dead", True)
    assert states[second]["last_error"] == "transport failed: MessageError"
    assert states[third]["state"] == "pending"
    assert states[third]["correlation_id"] is None
    assert "sending again" in states[third]["last_error"]
    (again,) = repo.claim_deliveries("ehr", "w1", 10, 60)
    assert again.id == third
    # Only awaiting deliveries change.
    assert repo.record_transport(second, TransportCheck("Acknowledged",
                                                        TransportAction.CONFIRMED)) is False


def save_receipt(repo, receipt, key, *, each=False):
    (result,) = repo.insert_messages([raw(key, source="inbox")])
    repo.claim_messages("proc", 10, 30, 5)
    outcome = MessageOutcome(result.id, MessageState.PROCESSED, None, [PlannedEvent(
        seq=0, source="inbox", business_key=key, kind="apprec", category="safety_alarm",
        code=None, device_id="d", occurred_at=NOW, priority=50, snapshot=False,
        state=EventState.RECEIPT, summary={}, receipt=receipt)])
    if each:  # the row-by-row path, taken when a batch fails
        assert repo._save_each("proc", [outcome]) == []
    else:
        assert repo.save_outcomes("proc", [outcome]) == []


def test_awaiting_receipt_frees_its_key_and_receipts_settle_it(repo):
    first, second, third = plan(repo, [("patient-a", 50), ("patient-a", 50),
                                       ("patient-b", 50)])
    batch = repo.claim_deliveries("ehr", "w1", 10, 60)
    assert sorted(c.id for c in batch) == [first, third]
    deadline = datetime.now(UTC) + timedelta(hours=72)
    assert await_receipt(repo, batch, "msg", deadline) == []
    # Awaiting a receipt does not hold patient-a's next delivery back for days.
    (nxt,) = repo.claim_deliveries("ehr", "w1", 10, 60)
    assert nxt.id == second
    assert repo.status().deliveries["ehr"] == {"awaiting_receipt": 2, "leased": 1}
    origins = repo.origins([f"msg-{first}", f"msg-{third}", "unknown"])
    assert set(origins) == {f"msg-{first}", f"msg-{third}"}
    assert origins[f"msg-{first}"].state == "awaiting_receipt"
    assert (origins[f"msg-{first}"].source, origins[f"msg-{first}"].device_id) == ("vendor", "d")

    save_receipt(repo, Receipt(f"msg-{first}", ReceiptStatus.REJECTED,
                               "AppRec 2 (Avvist): E35 Pasient finnes ikke", "ehr"), "r1")
    save_receipt(repo, Receipt(f"msg-{third}", ReceiptStatus.PARTIAL, "AppRec 3: E36", None),
                 "r2", each=True)
    rejected = repo.message_trace(repo.search_messages(dedup_key=None)[-1]["id"])
    d1 = next(d for d in rejected["deliveries"] if d["id"] == first)
    assert (d1["state"], d1["escalated"]) == ("dead", True)
    assert "rejected by the receiver: AppRec 2 (Avvist): E35" in d1["last_error"]
    assert d1["attempt_log"][-1]["outcome"] == "receipt:rejected"
    trace3 = next(t for t in (repo.message_trace(m["id"]) for m in repo.search_messages())
              if any(d["id"] == third for d in t["deliveries"]))
    d3 = next(d for d in trace3["deliveries"] if d["id"] == third)
    assert d3["state"] == "delivered"
    assert "errors in part: AppRec 3: E36" in d3["last_error"]
    # A second copy of a receipt changes nothing.
    save_receipt(repo, Receipt(f"msg-{third}", ReceiptStatus.REJECTED, "late", None), "r3")
    assert repo.origins([f"msg-{third}"])[f"msg-{third}"].state == "delivered"


def test_overdue_receipts_are_found_once_marked(repo):
    (first,) = plan(repo, [("patient-a", 50)])
    batch = repo.claim_deliveries("ehr", "w1", 10, 60)
    past = datetime.now(UTC) - timedelta(seconds=1)
    await_receipt(repo, batch, "late", past)
    (late,) = repo.overdue_receipts(datetime.now(UTC))
    assert (late.delivery_id, late.correlation_id, late.category) == (
        first, f"late-{first}", "safety_alarm")
    assert repo.status().receipts_overdue == {"ehr": 1}
    repo.mark_receipt_alerted(first, datetime.now(UTC))
    assert repo.overdue_receipts(datetime.now(UTC)) == []
    assert repo.status().receipts_overdue == {"ehr": 1}  # still overdue, alerted once


def test_an_ok_receipt_is_logged_on_every_database(repo):
    (first,) = plan(repo, [("patient-a", 50)])
    batch = repo.claim_deliveries("ehr", "w1", 10, 60)
    await_receipt(repo, batch, "ok", datetime.now(UTC) + timedelta(hours=72))
    save_receipt(repo, Receipt(f"ok-{first}", ReceiptStatus.DELIVERED, "AppRec 1 (OK)", "ehr"),
                 "r-ok")
    assert repo.origins([f"ok-{first}"])[f"ok-{first}"].state == "delivered"
