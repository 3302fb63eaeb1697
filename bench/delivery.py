"""Benchmarks of the delivery side: backlog drain, memory, alarm latency, scale-out.

Every run starts from a fresh database and drives real `tryggbro serve` / `tryggbro worker`
subprocesses against the fast local receiver (`tests/peers/receiver.py`); the receiver's
own ceiling (wrk against it) is measured in the same run.

Sub-commands:

- ``backlog``: N queued deliveries (default 100,000 over 1,000 patients = order keys),
  then `serve` starts with the receiver up; *drain rate* = N / (last delivery - first
  delivery) at the receiver, which must hold every DetectedIssue exactly once.
- ``memory``: 1,000,000 queued deliveries; `serve` drains for a fixed time while the RSS
  of `serve` and of each of its stage processes is sampled every 0.2 s (max reported).
- ``alarm``: `serve` receives 200 DHO measurement uploads/s (the other traffic) and one
  alarm every 100 ms; latency = the receiver has the alarm's transaction - the alarm's
  POST was sent (same clock, same process).
- ``scaleout``: on a fresh PostgreSQL cluster (tests/peers/postgres.py), the same seeded
  backlog drained by one `tryggbro worker`, then (fresh database) by two.

**Seeding** (backlog, memory, scaleout). K alarm webhooks (one per patient) go through the
real path: `serve` journals, processes (FHIR built and validated) and plans deliveries,
with the destination down (connection refused). Then the bench resets those K deliveries
to `pending` (as the retry schedule makes them once the destination is back) and copies the
journal, event and delivery rows in three `INSERT ... SELECT` statements, changing only
ids, dedup keys and the DetectedIssue id (so every event is a distinct resource at the
receiver). The rows are the rows the real path writes; only the FHIR work is not repeated.

Usage: .venv/bin/python bench/delivery.py {backlog,memory,alarm,scaleout} [--runs 3]
Results are printed as Markdown and saved in bench/out/; see bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from bench.common import medians, save_runs  # noqa: E402
from bench.ingest_e2e import wrk  # noqa: E402
from hub.store.db import open_database, upgrade  # noqa: E402
from hub.store.repository import Repository  # noqa: E402
from tests.integration.helpers import enrolment_request, unique_patient  # noqa: E402
from tests.peers.medplum import free_port  # noqa: E402
from tests.peers.receiver import RecordedRequest, RecordingReceiver  # noqa: E402

KEY = "bench-key"
PY = sys.executable

CONFIG = """
[hub]
instance = "bench"
mappings_dir = "{mappings}"
[database]
url = "{db_url}"
[http]
port = {port}
[logging]
level = "info"
[monitor]
enabled = {monitor}
[processing]
processes = {processes}
[sources.bench]
adapter = "alarmplatform"
auth = "api-key"
api_key_env = "BENCH_SOURCE_KEY"
[sources.dho]
adapter = "dho-json"
auth = "api-key"
api_key_env = "BENCH_SOURCE_KEY"
[destinations.ehr]
type = "fhir-rest"
base_url = "{receiver}/fhir/R4"
concurrency = {concurrency}
batch_size = {batch_size}
poll_seconds = 0.2
[destinations.ehr.retry]
base_seconds = 30
cap_seconds = 60
alarm_cap_seconds = 60
[[routes]]
name = "alarms"
match = {{ categories = ["safety_alarm"] }}
destinations = ["ehr"]
[[routes]]
name = "measurements"
match = {{ categories = ["home_follow_up"] }}
destinations = ["ehr"]
"""

ALARM = ('{{"eventId":"e-{tag}","type":"alarm.raised","occurredAt":"2026-11-20T21:14:03+01:00",'
         '"alarm":{{"id":"A-{tag}","trigger":"button","priority":"high",'
         '"raisedAt":"2026-11-20T21:14:03+01:00","device":{{"id":"BENCH-{device}",'
         '"model":"Careline GO"}},"handling":{{"contact":"two_way_speech","timeline":'
         '[{{"step":"reported","at":"2026-11-20T21:14:03+01:00"}}]}}}}}}')

DHO = ('{{"messageId":"m-{tag}","sentAt":"2026-01-10T08:20:00+01:00","station":'
       '{{"id":"DHO-{device}","model":"CareTab 3"}},"readings":[{{"readingId":"r-{tag}",'
       '"kind":"oxygenSaturation","takenAt":"2026-01-10T08:17:30+01:00","value":96,'
       '"unit":"%","instrument":"Nonin 3230"}}]}}')


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


class Gateway:
    """A fresh database and config; starts `serve` or `worker` processes on it."""

    def __init__(self, tmp: Path, db_url: str, receiver_url: str, *, processes: int = 2,
                 monitor: bool = True, concurrency: int = 16, batch_size: int = 128) -> None:
        self.tmp = tmp
        self.db_url = db_url
        self.port = free_port()
        self.config = tmp / "bench.toml"
        self.config.write_text(CONFIG.format(
            mappings=ROOT / "mappings", db_url=db_url, port=self.port, receiver=receiver_url,
            processes=processes, monitor=str(monitor).lower(), concurrency=concurrency,
            batch_size=batch_size))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "BENCH_SOURCE_KEY": KEY}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, command: str = "serve", count: int = 1) -> list[subprocess.Popen[bytes]]:
        started = []
        for n in range(count):
            log = (self.tmp / f"{command}-{len(self.procs)}.log").open("ab")
            proc = subprocess.Popen([PY, "-m", "hub.cli", "--config", str(self.config),
                                     command], stdout=log, stderr=subprocess.STDOUT,
                                    env=self.env)
            log.close()
            self.procs.append(proc)
            started.append(proc)
            del n
        if command == "serve":
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"{self.base}/readyz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise SystemExit("serve did not become ready; see " + str(self.tmp))
        return started

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def descendants(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for task in tasks:
        with contextlib.suppress(FileNotFoundError):
            for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
                found.append(int(child))
                found += descendants(int(child))
    return found


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def post(base: str, path: str, body: str) -> None:
    req = urllib.request.Request(f"{base}{path}", data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-API-Key": KEY})
    with urllib.request.urlopen(req, timeout=30) as r:
        if r.status != 202:
            raise SystemExit(f"ingest answered {r.status}")


def metrics(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        body = r.read().decode()
    out = {}
    for name, label in (("processed", 'tryggbro_messages{state="processed"}'),
                        ("received", 'tryggbro_messages{state="received"}'),
                        ("processing", 'tryggbro_messages{state="processing"}')):
        m = re.search(re.escape(label) + r" ([\d.e+]+)", body)
        out[name] = float(m.group(1)) if m else 0.0
    return out


# ---------------------------------------------------------------------------------------
# Database: fresh, enrolled, seeded
# ---------------------------------------------------------------------------------------


def prepare_db(db_url: str, keys: int, dho_devices: int = 0) -> None:
    db = open_database(db_url)
    upgrade(db)
    repo = Repository(db)
    requests = [enrolment_request(f"BENCH-{i}", unique_patient(), "bench") for i in range(keys)]
    requests += [enrolment_request(f"DHO-{i}", unique_patient(), "dho",
                                   device_type="dho_device") for i in range(dho_devices)]
    for i in range(0, len(requests), 500):
        repo.enrol(requests[i:i + 500])
    db.dispose()


def seed(tmp: Path, db_url: str, total: int, keys: int) -> float:
    """Queue `total` pending deliveries over `keys` patients (see the module doc)."""
    t0 = time.monotonic()
    prepare_db(db_url, keys)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: the destination is down
    gw = Gateway(tmp, db_url, down, processes=1, monitor=False)
    gw.start("serve")
    try:
        for i in range(keys):
            post(gw.base, "/ingest/bench", ALARM.format(tag=f"seed-{i}", device=i))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            m = metrics(gw.base)
            if m["processed"] >= keys and m["received"] + m["processing"] == 0:
                break
            time.sleep(0.1)
        else:
            raise SystemExit("seeding: processing did not finish")
    finally:
        gw.stop()
    db = open_database(db_url)
    with db.engine.begin() as conn:
        templates = conn.execute(text(
            "SELECT j.id AS jid, e.id AS eid, d.id AS did, e.payload FROM journal j "
            "JOIN event e ON e.journal_id = j.id JOIN delivery d ON d.event_id = e.id "
            "WHERE j.source = 'bench' ORDER BY j.id")).all()
        if len(templates) != keys:
            raise SystemExit(f"seeding: {len(templates)} deliveries for {keys} alarms")
        conn.execute(text("DELETE FROM delivery_attempt"))
        conn.execute(text("DELETE FROM destination_status"))
        conn.execute(text(
            "UPDATE delivery SET state = 'pending', attempts = 0, not_before = created_at, "
            "last_error = NULL, last_status = NULL, escalated = false, lease_owner = NULL, "
            "lease_until = NULL"))
        conn.execute(text("CREATE TEMP TABLE tmpl (k INTEGER, jid INTEGER, eid INTEGER, "
                          "did INTEGER, issue TEXT)"))
        rows = []
        for k, t in enumerate(templates):
            issue = next(e["resource"]["id"] for e in json.loads(t.payload)["entry"]
                         if e["resource"]["resourceType"] == "DetectedIssue")
            rows.append({"k": k, "jid": t.jid, "eid": t.eid, "did": t.did, "issue": issue})
        conn.execute(text("INSERT INTO tmpl VALUES (:k, :jid, :eid, :did, :issue)"), rows)
        jbase, ebase, dbase = (conn.execute(text(f"SELECT max(id) FROM {t}")).scalar()
                               for t in ("journal", "event", "delivery"))
        n = total - keys
        series = (f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                  f"WHERE i < {n}) ")
        join = f"FROM n JOIN tmpl t ON t.k = n.i % {keys} "
        conn.execute(text(
            series + "INSERT INTO journal (id, source, dedup_key, body_sha256, content_type, "
            "body, transport, received_at, answer, state, state_reason, attempts, "
            "lease_owner, lease_until, processed_at, updated_at) "
            f"SELECT {jbase} + n.i, j.source, j.dedup_key || '-s' || n.i, j.body_sha256, "
            "j.content_type, j.body, j.transport, j.received_at, j.answer, j.state, "
            "j.state_reason, j.attempts, NULL, NULL, j.processed_at, j.updated_at "
            + join + "JOIN journal j ON j.id = t.jid"))
        conn.execute(text(
            series + "INSERT INTO event (id, journal_id, seq, source, business_key, kind, "
            "category, code, device_id, occurred_at, priority, snapshot, state, filtered_by, "
            "bundle_id, payload, summary) "
            f"SELECT {ebase} + n.i, {jbase} + n.i, e.seq, e.source, "
            "e.business_key || '-s' || n.i, e.kind, e.category, e.code, e.device_id, "
            "e.occurred_at, e.priority, e.snapshot, e.state, e.filtered_by, "
            "e.bundle_id || '-s' || n.i, "
            "replace(e.payload, t.issue, t.issue || '-s' || n.i), e.summary "
            + join + "JOIN event e ON e.id = t.eid"))
        conn.execute(text(
            series + "INSERT INTO delivery (id, event_id, journal_id, destination, order_key, "
            "priority, state, attempts, not_before, escalated, created_at, updated_at) "
            f"SELECT {dbase} + n.i, {ebase} + n.i, {jbase} + n.i, d.destination, "
            "d.order_key, d.priority, d.state, 0, d.not_before, d.escalated, d.created_at, "
            "d.updated_at " + join + "JOIN delivery d ON d.id = t.did"))
        conn.execute(text("DROP TABLE tmpl"))
        count = conn.execute(text("SELECT count(*) FROM delivery WHERE state = 'pending'")
                             ).scalar()
    if not db.is_sqlite:
        with db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    db.dispose()
    if count != total:
        raise SystemExit(f"seeding: {count} pending deliveries, wanted {total}")
    return time.monotonic() - t0


def delivered_count(db_url: str) -> int:
    db = open_database(db_url, check=False)
    try:
        with db.read_engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM delivery WHERE state = 'delivered'")).scalar() or 0)
    finally:
        db.dispose()


def deliveries_at(receiver: RecordingReceiver) -> list[RecordedRequest]:
    """The hub's writes: a wrk GET of the ceiling measurement can still be recorded just
    after `receiver_ceiling` cleared the list (it was in flight when wrk stopped)."""
    return [r for r in receiver.requests() if r.method == "POST"]


def issues_at(receiver: RecordingReceiver) -> list[str]:
    return [e["resource"]["id"] for r in deliveries_at(receiver)
            for e in json.loads(r.body)["entry"]
            if e["resource"]["resourceType"] == "DetectedIssue"]


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="tryggbro-bench-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def receiver_ceiling(receiver: RecordingReceiver) -> float:
    rps = wrk(f"{receiver.url}/fhir/R4/", 3, 16, None, {})["rps"]
    receiver.clear()
    return rps


# ---------------------------------------------------------------------------------------
# Sub-commands
# ---------------------------------------------------------------------------------------


def drain(args: argparse.Namespace, db_url: str, tmp: Path, command: str,
          count: int) -> dict[str, float]:
    """Seed, then let `count` serve/worker processes drain with the receiver up."""
    seeded_s = seed(tmp, db_url, args.deliveries, args.keys)
    with RecordingReceiver() as receiver:
        ceiling = receiver_ceiling(receiver)
        gw = Gateway(tmp, db_url, receiver.url, processes=1, concurrency=args.concurrency,
                     batch_size=args.batch_size)
        started = time.monotonic()
        procs = gw.start(command, count)
        spy = start_profile(args, procs[0].pid, tmp) if args.profile else None
        try:
            deadline = started + args.timeout
            while time.monotonic() < deadline:
                time.sleep(0.5)
                if deliveries_at(receiver) and delivered_count(db_url) >= args.deliveries:
                    break
            else:
                raise SystemExit(f"not drained within {args.timeout} s")
            cpu = stage_cpu(procs)
        finally:
            if spy is not None:
                spy.wait()
            gw.stop()
        requests = deliveries_at(receiver)
        issues = issues_at(receiver)
    if len(set(issues)) != args.deliveries:
        raise SystemExit(f"receiver has {len(set(issues))} alarms for {args.deliveries}")
    first, last = min(r.time for r in requests), max(r.time for r in requests)
    return {"deliveries": args.deliveries, "drain_per_s": args.deliveries / (last - first),
            "drain_s": last - first, "start_to_first_s": first - started,
            "http_requests": len(requests), "duplicate_writes": len(issues) - len(set(issues)),
            "seed_s": seeded_s, "receiver_rps": ceiling,
            **{f"cpu_ms_per_delivery_{k}": 1000 * v / args.deliveries for k, v in cpu.items()}}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stage_cpu(procs: list[subprocess.Popen[bytes]]) -> dict[str, float]:
    """CPU seconds used so far by the dispatch stage (`serve`'s child) or by all workers,
    and by every process of the run: a measure that does not depend on the machine's
    load, unlike the drain rate."""
    out = {"all": 0.0}
    for proc in procs:
        for pid in [proc.pid, *descendants(proc.pid)]:
            used = cpu_seconds(pid)
            out["all"] += used
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") \
                if Path(f"/proc/{pid}/cmdline").exists() else []
            if (b"stage" in cmd and b"dispatch" in cmd) or b"worker" in cmd:
                out["dispatch"] = out.get("dispatch", 0.0) + used
    return out


def start_profile(args: argparse.Namespace, pid: int, tmp: Path) -> subprocess.Popen[bytes]:
    """py-spy on the dispatch stage (`serve`) or the worker itself, from 2 s after start
    for `--profile` seconds; the collapsed stacks are summarised into bench/out/."""
    target = pid
    for _ in range(100):
        for child in descendants(pid):
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"stage" in cmd and b"dispatch" in cmd:
                target = child
        if target != pid:
            break
        time.sleep(0.1)
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return subprocess.Popen(
        ["sh", "-c", f"sleep 2; {spy} record --pid {target} --duration {args.profile} "
         f"--rate 200 --format raw --nonblocking -o {out}/dispatch-{stamp}.txt"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cmd_backlog(args: argparse.Namespace) -> dict[str, float]:
    with workdir() as tmp:
        return drain(args, f"sqlite:///{tmp}/hub.db", tmp, "serve", 1)


def cmd_memory(args: argparse.Namespace) -> dict[str, float]:
    with workdir() as tmp:
        db_url = f"sqlite:///{tmp}/hub.db"
        seeded_s = seed(tmp, db_url, args.deliveries, args.keys)
        size_mb = sum(p.stat().st_size for p in tmp.glob("hub.db*")) / 2**20
        with RecordingReceiver() as receiver:
            gw = Gateway(tmp, db_url, receiver.url, processes=2, concurrency=args.concurrency,
                         batch_size=args.batch_size)
            (serve,) = gw.start("serve")
            peak: dict[str, float] = {}
            total_peak = 0.0
            t_end = time.monotonic() + args.seconds
            try:
                while time.monotonic() < t_end:
                    pids = [serve.pid, *descendants(serve.pid)]
                    sizes = {str(p): rss_mb(p) for p in pids}
                    total_peak = max(total_peak, sum(sizes.values()))
                    for i, pid in enumerate(pids):
                        key = "serve" if i == 0 else f"child{i}"
                        peak[key] = max(peak.get(key, 0.0), sizes[str(pid)])
                    receiver.clear()  # the bodies would otherwise fill the bench's memory
                    time.sleep(0.2)
                idle_pids = [serve.pid, *descendants(serve.pid)]
            finally:
                gw.stop()
        delivered = delivered_count(db_url)
    result = {"outbox_rows": args.deliveries, "db_mb": size_mb, "seed_s": seeded_s,
              "seconds": args.seconds, "delivered_in_window": delivered,
              "max_rss_one_process_mb": max(peak.values()),
              "max_rss_all_processes_mb": total_peak, "processes": len(idle_pids)}
    result.update({f"max_rss_{k}_mb": v for k, v in peak.items()})
    return result


def cmd_alarm(args: argparse.Namespace) -> dict[str, float]:
    with workdir() as tmp:
        db_url = f"sqlite:///{tmp}/hub.db"
        prepare_db(db_url, args.keys, dho_devices=args.keys)
        with RecordingReceiver() as receiver:
            ceiling = receiver_ceiling(receiver)
            gw = Gateway(tmp, db_url, receiver.url, processes=2)
            gw.start("serve")
            stop = threading.Event()
            sent_other = [0]
            lag = [0.0]

            def other_traffic() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
                t0 = time.monotonic()
                i = 0
                while not stop.is_set():
                    due = t0 + i / args.other_rate
                    now = time.monotonic()
                    if due > now:
                        time.sleep(due - now)
                    lag[0] = max(lag[0], now - due)
                    body = DHO.format(tag=f"o{i}", device=i % args.keys)
                    conn.request("POST", "/ingest/dho", body=body.encode(), headers={
                        "Content-Type": "application/json", "X-API-Key": KEY})
                    r = conn.getresponse()
                    r.read()
                    if r.status != 202:
                        raise SystemExit(f"dho ingest answered {r.status}")
                    i += 1
                    sent_other[0] = i

            thread = threading.Thread(target=other_traffic, daemon=True)
            try:
                thread.start()
                time.sleep(2)  # the other traffic is flowing before the first alarm
                sent: dict[str, float] = {}
                conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
                for i in range(args.alarms):
                    tag = f"lat-{i}-{time.time_ns()}"
                    body = ALARM.format(tag=tag, device=i % args.keys)
                    sent[f"A-{tag}"] = time.monotonic()
                    conn.request("POST", "/ingest/bench", body=body.encode(), headers={
                        "Content-Type": "application/json", "X-API-Key": KEY})
                    r = conn.getresponse()
                    r.read()
                    if r.status != 202:
                        raise SystemExit(f"alarm ingest answered {r.status}")
                    time.sleep(args.interval)
                time.sleep(3)
            finally:
                stop.set()
                thread.join(timeout=30)
                gw.stop()
            other_seconds = args.alarms * args.interval + 5
            arrived: dict[str, float] = {}
            measurements = 0
            for got in receiver.requests():
                for m in re.finditer(rb'"A-(lat-[\d]+-[\d]+)"', got.body):
                    arrived.setdefault("A-" + m.group(1).decode(), got.time)
                measurements += got.body.count(b'"resourceType":"Observation"') + \
                    got.body.count(b'"resourceType": "Observation"')
    missing = [a for a in sent if a not in arrived]
    if missing:
        raise SystemExit(f"{len(missing)} alarms never reached the receiver")
    lat = sorted((arrived[a] - sent[a]) * 1000 for a in sent)
    return {"alarms": len(lat), "p50_ms": statistics.median(lat),
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "max_ms": lat[-1],
            "other_events_per_s": sent_other[0] / other_seconds,
            "other_sender_max_lag_ms": lag[0] * 1000,
            "observations_delivered": measurements, "receiver_rps": ceiling}


def cmd_scaleout(args: argparse.Namespace) -> dict[str, float]:
    from tests.peers.postgres import PostgresCluster

    result: dict[str, float] = {}
    with PostgresCluster() as pg:
        for workers in (1, 2):
            name = f"bench{workers}_{time.time_ns()}"
            pg.create_database(name)
            with workdir() as tmp:
                r = drain(args, pg.url(name), tmp, "worker", workers)
            pg.drop_database(name)
            result[f"workers{workers}_per_s"] = r["drain_per_s"]
            result[f"workers{workers}_duplicates"] = r["duplicate_writes"]
            result["receiver_rps"] = r["receiver_rps"]
    result["ratio"] = result["workers2_per_s"] / result["workers1_per_s"]
    return result


COMMANDS = {"backlog": cmd_backlog, "memory": cmd_memory, "alarm": cmd_alarm,
            "scaleout": cmd_scaleout}
DEFAULTS: dict[str, dict[str, Any]] = {
    "backlog": {"deliveries": 100_000, "keys": 1000},
    "memory": {"deliveries": 1_000_000, "keys": 1000},
    "alarm": {"keys": 50},
    "scaleout": {"deliveries": 30_000, "keys": 1000},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deliveries", type=int)
    parser.add_argument("--keys", type=int, help="patients = order keys")
    parser.add_argument("--seconds", type=float, default=30.0, help="memory: drain window")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--alarms", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--other-rate", type=float, default=200.0)
    parser.add_argument("--profile", type=int, default=0,
                        help="backlog/scaleout: py-spy the dispatcher for N seconds")
    args = parser.parse_args()
    for key, value in DEFAULTS[args.command].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk (make bench does it)")
    runs = []
    for i in range(args.runs):
        result = COMMANDS[args.command](args)
        runs.append(result)
        print(f"run {i + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()),
              flush=True)
    median = medians(runs)
    save_runs(f"delivery-{args.command}", {"args": vars(args), "runs": runs, "median": median})
    print(f"\n`bench/delivery.py {args.command}`, median of {args.runs} runs:\n")
    print("| measure | median | runs |")
    print("|---|---|---|")
    for key, value in median.items():
        print(f"| {key} | {value:,.1f} | " + ", ".join(f"{r.get(key, 0.0):.1f}" for r in runs)
              + " |")


if __name__ == "__main__":
    main()
