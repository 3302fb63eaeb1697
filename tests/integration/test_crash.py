"""Crash: `kill -9` of `tryggbro serve` while events flow, at random moments and at named
crash points. Every event that got a 202 ends delivered, none twice in effect
(ARCHITECTURE §2 invariants 1-3; reliability.md recipe A, short version)."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid

import pytest

from hub.store.db import open_database, upgrade
from hub.store.repository import Repository
from tests.integration.helpers import PATIENTS, alarm_event, enrolment_request
from tests.integration.serve import cli, new_port, toml_config

pytestmark = [pytest.mark.peer, pytest.mark.slow]
ALARM_SYSTEM = "urn:tryggbro:alarm:alarmplatform"
RANDOM_KILLS = 5
# Intake runs in the serve process itself; processing and dispatch in its stage children,
# which the serve process restarts when they die.
PARENT_POINTS = ["after_commit_before_ack:3"]
CHILD_POINTS = ["after_claim:2", "after_send_before_mark:2", "mid_processing:2"]


def child_kills(log):
    return log.read_text().count('"returncode": -9')


class Sender:
    """A vendor: posts new events until told to finish, each until it gets a 202,
    resending after errors and lost answers, as real webhook senders do."""

    def __init__(self, server, make_event, threads=4, pause=0.1):
        self.server = server
        self.make_event = make_event
        self.pause = pause  # 4 threads x 10/s: enough traffic, a bounded number of events
        self.sent: list[str] = []
        self.acked: dict[str, int] = {}
        self.attempts = 0
        self.errors: dict[str, int] = {}
        self.lock = threading.Lock()
        self.finishing = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def next_event(self):
        with self.lock:
            if self.finishing.is_set():
                return None
            event = self.make_event(len(self.sent))
            self.sent.append(event["alarm"]["id"])
            return event

    def run(self):
        while (event := self.next_event()) is not None:
            while True:
                self.attempts += 1
                try:
                    status, reply = self.server.post(event, timeout=3)
                except Exception as exc:  # any failure: a vendor resends
                    self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
                    status, reply = 0, {}
                if status == 202:
                    with self.lock:
                        self.acked[event["alarm"]["id"]] = reply["id"]
                    time.sleep(self.pause)
                    break
                time.sleep(0.1)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.finishing.set()

    def finish(self, timeout):
        self.finishing.set()
        for t in self.threads:
            t.join(timeout=timeout)
        return all(not t.is_alive() for t in self.threads)


def test_kill_minus_nine_loses_and_duplicates_nothing(tmp_path, medplum, serve_process):
    port = new_port()
    config = toml_config(tmp_path, port, medplum.base_url)
    db = open_database(f"sqlite:///{tmp_path}/hub.db")
    upgrade(db)
    devices = [f"TA-CR-{i}" for i in range(len(PATIENTS))]
    Repository(db).enrol([enrolment_request(device, patient)
                          for device, patient in zip(devices, PATIENTS, strict=True)])
    db.dispose()
    run = uuid.uuid4().hex[:8]

    def make_event(i):
        return alarm_event(f"e-{run}-{i}", f"ALM-{run}-{i}", devices[i % len(devices)])

    server = serve_process(config, port, tmp_path / "serve.log")
    rng = random.Random(2026)
    kills = 0
    server.start()
    with Sender(server, make_event) as sender:
        for _ in range(RANDOM_KILLS):
            time.sleep(rng.uniform(0.3, 1.0))
            server.kill()
            kills += 1
            server.start()
        for point in PARENT_POINTS:
            server.kill()
            server.start(crash_at=point)
            deadline = time.monotonic() + 20
            while server.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not server.alive(), f"crash point {point} was never reached"
            kills += 1
            server.start()
        for point in CHILD_POINTS:
            server.kill()
            before = child_kills(server.log)
            server.start(crash_at=point)
            deadline = time.monotonic() + 20
            while child_kills(server.log) == before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert child_kills(server.log) > before, f"crash point {point} was never reached"
            time.sleep(rng.uniform(0.2, 1.0))  # let the restarted child work, then crash on
            kills += child_kills(server.log) - before
            server.kill()
            server.start()
        assert sender.finish(timeout=60), "the vendor could not get its events acknowledged"
    acked = sender.acked
    events = sender.sent
    assert len(acked) == len(events) > 100
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = json.loads(cli(config, "status", "--json").stdout)
        busy = status["messages"].get("received", 0) + status["messages"].get("processing", 0)
        pending = sum(n for s, n in status["deliveries"].get("ehr", {}).items()
                      if s in ("pending", "leased"))
        if not busy and not pending:
            break
        time.sleep(0.3)
    server.stop()
    assert status["messages"] == {"processed": len(events)}, status
    assert status["deliveries"]["ehr"] == {"delivered": len(events)}, status

    # One listing of every DetectedIssue (Medplum's in-memory search is linear in the
    # number of resources, so one search per alarm would be quadratic).
    found: dict[str, list[str]] = {}
    for issue in medplum.search("DetectedIssue", _count=100_000):
        for ident in issue.get("identifier", []):
            if ident["system"] == ALARM_SYSTEM and ident["value"].startswith(f"ALM-{run}-"):
                found.setdefault(ident["value"], []).append(issue["id"])
    lost = sorted(set(acked) - set(found))
    duplicated = sorted(a for a, ids in found.items() if len(ids) > 1)
    unexpected = sorted(set(found) - set(events))
    # Sends recorded by the gateway; more than one per delivery means a resend after a
    # crash (harmless: the same PUTs again). Sends whose outcome a crash swallowed are
    # not recorded, so this is a lower bound.
    attempts_db = sqlite3.connect(tmp_path / "hub.db")
    requests = attempts_db.execute("SELECT count(*) FROM delivery_attempt").fetchone()[0]
    attempts_db.close()
    assert lost == []
    assert duplicated == []
    assert unexpected == []
    log_text = server.log.read_text()
    assert not [p for p in PATIENTS if p in log_text]  # invariant 5: no identity numbers
    print(f"kills={kills} events={len(events)} posts={sender.attempts} "
          f"effects={len(found)} recorded sends={requests} sender errors={sender.errors}")
    assert requests >= len(acked)
