"""Benchmark: durable HTTP ingest and end-to-end delivery of a real `tryggbro serve`.

Each run starts a fresh `tryggbro serve` on a new SQLite database (WAL, synchronous=FULL)
with a FHIR REST destination pointing at a fast local receiver, then:

1. `wrk` posts unique alarm webhooks (one thread, C connections, D seconds) to
   /ingest/bench: every 202 means the event is committed to disk. wrk reports requests/s
   and the latency distribution: that is *durable ingest*.
2. The clock keeps running until the receiver has every delivery: *end to end* is
   events / (last delivery - first request). Processing and dispatch run during the load,
   in the same process, as in production.

Each run first measures *ingest alone*: the same hub, configuration and load with intake
only (no processing or dispatch running), with the server process's CPU per event and
its own `/healthz` rate beside it; then the full `serve` as above. Both are reported.

In the same run, as references: wrk against the same server's GET /healthz (the HTTP stack
alone) and against the receiver itself (the destination's own ceiling).

Usage: .venv/bin/python bench/ingest_e2e.py [--runs 5] [--seconds 10] [--connections 32]
Results: printed as Markdown and saved in bench/out/; see bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import medians, save_runs, stop_process  # noqa: E402
from bench.mllp_ingest import cpu_seconds  # noqa: E402
from hub.store.db import open_database, upgrade  # noqa: E402
from hub.store.repository import Repository  # noqa: E402
from tests.integration.helpers import enrolment_request, unique_patient  # noqa: E402
from tests.peers.medplum import free_port  # noqa: E402
from tests.peers.receiver import RecordingReceiver  # noqa: E402

KEY = "bench-key"
DEVICES = 50  # 50 patients: 50 order keys in flight at most

LUA = r"""
counter = 0
run = os.getenv("BENCH_RUN")
devices = tonumber(os.getenv("BENCH_DEVICES"))
template = '{"eventId":"e-%s-%d","type":"alarm.raised","occurredAt":"2026-11-20T21:14:03+01:00",' ..
  '"alarm":{"id":"A-%s-%d","trigger":"button","priority":"high",' ..
  '"raisedAt":"2026-11-20T21:14:03+01:00","device":{"id":"BENCH-%d","model":"Careline GO"},' ..
  '"handling":{"contact":"two_way_speech","timeline":[{"step":"reported",' ..
  '"at":"2026-11-20T21:14:03+01:00"}]}}}'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = os.getenv("BENCH_KEY")
request = function()
  counter = counter + 1
  local body = string.format(template, run, counter, run, counter, counter % devices)
  return wrk.format(nil, "/ingest/bench", nil, body)
end
"""

CONFIG = """
[hub]
instance = "bench"
mappings_dir = "{mappings}"
[database]
url = "sqlite:///{tmp}/hub.db"
[http]
port = {port}
[logging]
level = "{log_level}"
[processing]
processes = {processes}
[sources.bench]
adapter = "alarmplatform"
auth = "api-key"
api_key_env = "BENCH_SOURCE_KEY"
[destinations.ehr]
type = "fhir-rest"
base_url = "{receiver}/fhir/R4"
concurrency = 16
batch_size = 128
events_per_request = {events_per_request}
[[routes]]
name = "alarms"
match = {{ categories = ["safety_alarm"] }}
destinations = ["ehr"]
"""


def wrk(url: str, seconds: int, connections: int, script: Path | None,
        env: dict[str, str]) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            raise SystemExit(f"no {label}% in wrk output:\n{out}")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    total = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert total, out
    assert rate, out
    return {"requests": int(total.group(1)), "rps": float(rate.group(1)),
            "p50_ms": ms("50"), "p99_ms": ms("99")}


def status(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    values = {}
    for name, label in (("delivered", 'tryggbro_deliveries{destination="ehr",state="delivered"}'),
                        ("processed", 'tryggbro_messages{state="processed"}'),
                        ("received", 'tryggbro_messages{state="received"}'),
                        ("processing", 'tryggbro_messages{state="processing"}')):
        m = re.search(re.escape(label) + r" ([\d.e+]+)", text)
        values[name] = float(m.group(1)) if m else 0.0
    values["unprocessed"] = values["received"] + values["processing"]
    return values


def prepare(tmp: Path, port: int, receiver_url: str, args: argparse.Namespace) -> Path:
    config = tmp / "bench.toml"
    config.write_text(CONFIG.format(mappings=ROOT / "mappings", tmp=tmp, port=port,
                                    receiver=receiver_url, log_level=args.log_level,
                                    processes=args.processing_processes,
                                    events_per_request=args.events_per_request))
    db = open_database(f"sqlite:///{tmp}/hub.db")
    upgrade(db)
    repo = Repository(db)
    repo.enrol([enrolment_request(f"BENCH-{i}", unique_patient(), "bench")
                for i in range(DEVICES)])
    db.dispose()
    return config


def wait_ready(base: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{base}/readyz", timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{base}/readyz did not answer within {timeout:g} s") from None
            time.sleep(0.05)


@contextlib.contextmanager
def serve(config: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `tryggbro serve` on the config, logging to log_path; SIGTERM on the way out."""
    env = {**os.environ, "BENCH_SOURCE_KEY": KEY}
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "hub.cli", "--config", str(config),
                                   "serve"], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield server
        finally:
            stop_process(server, timeout=60)


def wait_drained(base: str, timeout: float = 600.0, poll: float = 0.05) -> int:
    """Wait until every accepted event is processed and delivered; the accepted count.
    Each poll reads /metrics, which costs the server CPU: poll slowly on long drains."""
    deadline = time.monotonic() + timeout
    while True:
        counts = status(f"{base}/metrics")
        if counts["unprocessed"] == 0 and counts["delivered"] == counts["processed"]:
            return int(counts["processed"])
        if time.monotonic() > deadline:
            raise SystemExit(f"not drained within {timeout:g} s: {counts}")
        time.sleep(poll)


def ingest_alone(args: argparse.Namespace, index: int) -> dict[str, float]:
    """The same hub and load with intake only (no processing, no dispatch running): the
    durable ingest path by itself. bench/mllp_hub_server.py runs a Hub as `serve` does,
    without its stages."""
    tmp = Path(tempfile.mkdtemp(prefix="tryggbro-bench-"))
    port = free_port()
    config = prepare(tmp, port, "http://127.0.0.1:9", args)
    env = {**os.environ, "BENCH_SOURCE_KEY": KEY}
    log = (tmp / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "mllp_hub_server.py"),
                               str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        script = tmp / "post.lua"
        script.write_text(LUA)
        cpu0 = cpu_seconds(server.pid)
        load = wrk(base, args.seconds, args.connections, script,
                   {"BENCH_RUN": f"a{index}-{time.time_ns()}", "BENCH_KEY": KEY,
                    "BENCH_DEVICES": str(DEVICES)})
        cpu = cpu_seconds(server.pid) - cpu0
        cpu0 = cpu_seconds(server.pid)
        health = wrk(f"{base}/healthz", args.seconds // 2 or 1, args.connections, None, {})
        health_cpu = cpu_seconds(server.pid) - cpu0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    with sqlite3.connect(tmp / "hub.db") as db:
        rows = db.execute("select count(*) from journal where source = 'bench'").fetchone()[0]
    shutil.rmtree(tmp, ignore_errors=True)
    if rows < load["requests"]:
        raise SystemExit(f"ingest alone: {rows} journal rows for {load['requests']} 202s")
    return {"alone_ingest_rps": load["rps"], "alone_ingest_p50_ms": load["p50_ms"],
            "alone_ingest_p99_ms": load["p99_ms"],
            "alone_cpu_ms_per_event": 1000 * cpu / load["requests"],
            "alone_healthz_rps": health["rps"],
            "alone_healthz_cpu_ms_per_req": 1000 * health_cpu / health["requests"]}


def one_run(args: argparse.Namespace, index: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="tryggbro-bench-"))
    port = free_port()
    with RecordingReceiver() as receiver:
        config = prepare(tmp, port, receiver.url, args)
        base = f"http://127.0.0.1:{port}"
        with serve(config, tmp / "serve.log") as server:
            wait_ready(base)
            script = tmp / "post.lua"
            script.write_text(LUA)
            started = time.monotonic()
            cpu0 = cpu_seconds(server.pid)
            load = wrk(base, args.seconds, args.connections, script,
                       {"BENCH_RUN": f"{index}-{time.time_ns()}", "BENCH_KEY": KEY,
                        "BENCH_DEVICES": str(DEVICES)})
            intake_cpu = cpu_seconds(server.pid) - cpu0
            # wrk does not count requests still in flight at its deadline; the server
            # accepted them, so the journal is the count of accepted events.
            accepted = wait_drained(base)
            assert accepted >= load["requests"], (accepted, load)
            requests = receiver.requests()
            issues = [e["resource"]["id"] for r in requests
                      for e in json.loads(r.body)["entry"]
                      if e["resource"]["resourceType"] == "DetectedIssue"]
            if len(set(issues)) != accepted:
                raise SystemExit(f"receiver has {len(set(issues))} alarms for {accepted} events")
            last = max(r.time for r in requests)
            health = wrk(f"{base}/healthz", args.seconds // 2 or 1, args.connections, None, {})
        receiver_alone = wrk(f"{receiver.url}/fhir/R4/", args.seconds // 2 or 1,
                             args.connections, None, {})
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "events": accepted,
        "duplicate_writes": len(issues) - accepted,
        "http_requests": len(requests),
        "ingest_rps": load["rps"],
        "ingest_p50_ms": load["p50_ms"],
        "ingest_p99_ms": load["p99_ms"],
        "intake_process_cpu_ms_per_event": 1000 * intake_cpu / load["requests"],
        "e2e_rps": accepted / (last - started),
        "drain_after_load_s": max(0.0, last - started - args.seconds),
        "healthz_rps": health["rps"],
        "receiver_rps": receiver_alone["rps"],
    }


def fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--processing-processes", type=int, default=2)
    parser.add_argument("--events-per-request", type=int, default=25,
                        help="the fhir-rest destination's events_per_request")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk (make bench does it)")
    runs = []
    for i in range(args.runs):
        result = {**ingest_alone(args, i), **one_run(args, i)}
        runs.append(result)
        print(f"run {i + 1}: " + ", ".join(f"{k}={fmt(v)}" for k, v in result.items()),
              flush=True)
    median = medians(runs)
    save_runs("ingest_e2e", {"args": vars(args), "runs": runs, "median": median})
    print(f"\nMedian of {args.runs} runs, {args.seconds} s of load each, "
          f"{args.connections} connections, log level {args.log_level}, "
          f"{args.processing_processes} processing process(es):\n")
    print("| measure | median | runs |")
    print("|---|---|---|")
    for key, value in median.items():
        print(f"| {key} | {fmt(value)} | " + ", ".join(fmt(r[key]) for r in runs) + " |")


if __name__ == "__main__":
    main()
