"""Benchmark: end to end (ingest → FHIR → delivered) to the Medplum peer, beside the peer's
own ceiling.

Each run:

1. starts a fresh Medplum FHIR engine (tests/peers/medplum, `STRICT=1`: every resource of
   every transaction is validated) and a fresh `tryggbro serve` on a new SQLite database
   whose fhir-rest destination points at it (the configuration of bench/ingest_e2e.py);
2. `wrk` posts unique alarm webhooks for `--seconds`; processing and dispatch run during
   the load, as in production. The clock runs until Medplum holds the last resource:
   *end to end* = events ÷ (largest `meta.lastUpdated` in Medplum − start of the load);
3. checks against Medplum's own FHIR API that every event's DetectedIssue, Encounter and
   Composition is there, nothing else is, and every alarm identifier is on exactly one
   DetectedIssue (duplicates: 0); a sample of DetectedIssues must have one version each;
4. **the peer's own ceiling**: the same events' transaction Bundles, as the hub stored
   them and merged `events_per_request` at a time as its dispatcher does, are posted
   straight to a second fresh Medplum by `--clients` concurrent keep-alive clients (each
   Bundle once, so every id is new, as in the hub's run); *Medplum alone* = events ÷ time.
   The same checks run on that Medplum.

Beside the rates, the CPU seconds of the Medplum process and of the hub's processes per
event: on a shared machine those are steadier than the rates.

Usage: .venv/bin/python bench/medplum_e2e.py [--runs 3] [--seconds 10] [--connections 32]
Results: printed as Markdown and saved in bench/out/; see bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import medians, save_runs  # noqa: E402
from bench.delivery import cpu_seconds, descendants  # noqa: E402
from bench.ingest_e2e import (  # noqa: E402
    DEVICES,
    KEY,
    LUA,
    fmt,
    prepare,
    serve,
    wait_drained,
    wait_ready,
    wrk,
)
from hub.destinations.fhir_rest import merge_transactions  # noqa: E402
from tests.peers.medplum import MEDPLUM_DIR, MedplumPeer, free_port  # noqa: E402

ALARM_SYSTEM = "urn:tryggbro:alarm:bench"  # urn:tryggbro:alarm:<source>; the source is "bench"
RESOURCE_TYPES = ("DetectedIssue", "Encounter", "Composition")
PAGE = 1000  # Medplum's largest _count
# Medplum refuses a transaction with more than 50 updates ("Transaction contains more update
# operations than allowed", fhir-router 5.2.13); an alarm is 3 PUTs, so 16 events fit. With
# the hub's default of 25 every merged request is refused and the hub sends each event alone.
MEDPLUM_MAX_UPDATES = 50
RESOURCES_PER_ALARM = len(RESOURCE_TYPES)


def require_medplum() -> None:
    """Stop with the command that installs the peer, before anything is started."""
    if not (MEDPLUM_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        raise SystemExit(f"the Medplum peer is not installed in {MEDPLUM_DIR}: run `make medplum`"
                         " (npm ci of @medplum/fhir-router, core and definitions 5.2.13)")
    if shutil.which("node") is None:
        raise SystemExit("node is not on PATH: the Medplum peer needs Node.js (20 or newer)")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk (make bench-medplum does it)")


def fetch_all(peer: MedplumPeer, resource_type: str) -> list[dict[str, object]]:
    """Every resource of a type, page by page (Medplum caps _count at 1000)."""
    found: list[dict[str, object]] = []
    while True:
        status, _, bundle = peer.request(
            "GET", f"{resource_type}?_count={PAGE}&_offset={len(found)}", timeout=120)
        if status != 200:
            raise SystemExit(f"Medplum search {resource_type} -> {status}: {bundle}")
        page = [e["resource"] for e in bundle.get("entry", [])]
        found += page
        if len(page) < PAGE:
            return found


def last_write(peer: MedplumPeer) -> float:
    """Wall-clock time (epoch seconds) of the newest resource Medplum holds."""
    newest = 0.0
    for resource_type in RESOURCE_TYPES:
        status, _, bundle = peer.request(
            "GET", f"{resource_type}?_sort=-_lastUpdated&_count=1", timeout=120)
        if status != 200 or not bundle.get("entry"):
            raise SystemExit(f"Medplum has no {resource_type}: {status} {bundle}")
        stamp = bundle["entry"][0]["resource"]["meta"]["lastUpdated"]
        newest = max(newest, datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    return newest


def stored_bundles(db_path: Path) -> list[bytes]:
    """The transaction Bundle of every processed event, in the order the hub accepted them."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("select payload from event where payload is not null "
                          "order by journal_id, seq").fetchall()
    return [row[0].encode() for row in rows]


def expected_ids(bundles: list[bytes]) -> set[str]:
    return {entry["request"]["url"] for bundle in bundles
            for entry in json.loads(bundle)["entry"]}


def check_exactly_once(peer: MedplumPeer, bundles: list[bytes], sample: int,
                       where: str) -> dict[str, float]:
    """Medplum holds every event's resources, nothing else, each alarm once, one version."""
    expected = expected_ids(bundles)
    held: list[str] = []
    alarms: Counter[str] = Counter()
    for resource_type in RESOURCE_TYPES:
        for resource in fetch_all(peer, resource_type):
            held.append(f"{resource_type}/{resource['id']}")
            if resource_type == "DetectedIssue":
                identifiers = resource.get("identifier", [])
                assert isinstance(identifiers, list)
                alarms.update(i["value"] for i in identifiers if i["system"] == ALARM_SYSTEM)
    missing = expected - set(held)
    unexpected = set(held) - expected
    twice = {alarm: n for alarm, n in alarms.items() if n > 1}
    if missing or unexpected or twice or len(held) != len(set(held)) \
            or len(alarms) != len(bundles):
        raise SystemExit(f"{where}: {len(missing)} resources missing, {len(unexpected)} "
                         f"unexpected, {len(twice)} alarms on more than one DetectedIssue, "
                         f"{len(alarms)} alarms for {len(bundles)} events")
    issues = sorted(u for u in expected if u.startswith("DetectedIssue/"))
    step = max(1, len(issues) // sample) if sample else 0
    versions = []
    for url in issues[::step][:sample] if step else []:
        status, _, history = peer.request("GET", f"{url}/_history")
        if status != 200:
            raise SystemExit(f"{where}: GET {url}/_history -> {status}")
        versions.append(len(history.get("entry", [])))
    if any(n != 1 for n in versions):
        raise SystemExit(f"{where}: DetectedIssues written more than once: {Counter(versions)}")
    return {"resources": len(held), "duplicates": len(held) - len(set(held)) + len(twice),
            "versions_checked": len(versions)}


def wait_stages(log_path: Path, stages: int, timeout: float = 300.0) -> None:
    """Wait until every stage process logs "tryggbro running". /readyz answers as soon as
    the stage processes exist; they then import for a second or two (half a minute on a
    loaded machine), and the load must not start before they can work."""
    deadline = time.monotonic() + timeout
    while True:
        running = 0
        for line in log_path.read_text(errors="replace").splitlines():
            if '"tryggbro running"' in line and '"http": false' in line:
                running += 1
        if running >= stages:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{running} of {stages} stage processes running after "
                             f"{timeout:g} s; see {log_path}")
        time.sleep(0.1)


def hub_cpu(pid: int) -> float:
    """CPU seconds of `serve` and its stage processes (read before they exit)."""
    return sum(cpu_seconds(p) for p in [pid, *descendants(pid)])


def post_directly(peer: MedplumPeer, bodies: list[bytes], clients: int) -> dict[str, float]:
    """Post each body once with `clients` keep-alive connections; every entry must be 2xx."""
    lock = threading.Lock()
    queue = list(reversed(bodies))
    errors: list[str] = []
    path = urllib.parse.urlsplit(peer.base_url).path

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=120)
        try:
            while not errors:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                conn.request("POST", path, body, {"content-type": "application/fhir+json",
                                                  "accept": "application/fhir+json"})
                response = conn.getresponse()
                answer = response.read()
                statuses = [str(e.get("response", {}).get("status", ""))
                            for e in json.loads(answer).get("entry", [])] \
                    if response.status == 200 else []
                if response.status != 200 or not all(s.startswith("2") for s in statuses):
                    errors.append(f"HTTP {response.status}: {answer[:300]!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, name=f"medplum-client-{i}")
               for i in range(clients)]
    pid = peer.pid
    node0, client0, started = cpu_seconds(pid), time.process_time(), time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if errors:
        raise SystemExit(f"Medplum alone refused a transaction: {errors[0]}")
    return {"seconds": elapsed, "medplum_cpu": cpu_seconds(pid) - node0,
            "client_cpu": time.process_time() - client0}


def one_run(args: argparse.Namespace, index: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="tryggbro-medplum-bench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with MedplumPeer(strict=True) as medplum:
            config = prepare(tmp, port, f"http://127.0.0.1:{medplum.port}", args)
            with serve(config, tmp / "serve.log") as server:
                launched = time.monotonic()
                wait_ready(base)
                wait_stages(tmp / "serve.log", args.processing_processes + 1)  # + dispatch
                stages_ready = time.monotonic() - launched
                script = tmp / "post.lua"
                script.write_text(LUA)
                node0 = cpu_seconds(medplum.pid)
                hub0 = hub_cpu(server.pid)
                started = time.time()
                load = wrk(base, args.seconds, args.connections, script,
                           {"BENCH_RUN": f"m{index}-{time.time_ns()}", "BENCH_KEY": KEY,
                            "BENCH_DEVICES": str(DEVICES)})
                # e2e is read from Medplum's lastUpdated, so slow polling costs no precision.
                accepted = wait_drained(base, timeout=args.drain_timeout, poll=0.5)
                hub_used = hub_cpu(server.pid) - hub0
                node_used = cpu_seconds(medplum.pid) - node0
            last = last_write(medplum)
            bundles = stored_bundles(tmp / "hub.db")
            if len(bundles) != accepted or accepted < load["requests"]:
                raise SystemExit(f"{len(bundles)} stored bundles, {accepted} events delivered, "
                                 f"{load['requests']} 202s from wrk")
            with sqlite3.connect(tmp / "hub.db") as db:
                sends = db.execute("select coalesce(sum(attempts), 0) from delivery "
                                   "where destination = 'ehr'").fetchone()[0]
            hub_check = check_exactly_once(medplum, bundles, args.history_sample, "via the hub")
        # Medplum's best: the hub's grouping, but never above what Medplum accepts.
        group = min(args.events_per_request, MEDPLUM_MAX_UPDATES // RESOURCES_PER_ALARM)
        merged = [merge_transactions(bundles[i:i + group])
                  for i in range(0, len(bundles), group)]
        with MedplumPeer(strict=True) as alone:
            direct = post_directly(alone, merged, args.clients)
            check_exactly_once(alone, bundles, args.history_sample, "Medplum alone")
    finally:
        if args.keep:
            print(f"kept {tmp} (serve.log, hub.db)", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "events": accepted,
        "ingest_rps": load["rps"],
        "e2e_rps": accepted / (last - started),
        "drain_after_load_s": max(0.0, last - started - args.seconds),
        "medplum_alone_rps": accepted / direct["seconds"],
        "e2e_share_of_ceiling": (accepted / (last - started)) / (accepted / direct["seconds"]),
        "duplicates": hub_check["duplicates"],
        "resent_deliveries": sends - accepted,
        "medplum_cpu_ms_per_event_via_hub": 1000 * node_used / accepted,
        "medplum_cpu_ms_per_event_alone": 1000 * direct["medplum_cpu"] / accepted,
        "hub_cpu_ms_per_event": 1000 * hub_used / accepted,
        "client_cpu_ms_per_event_alone": 1000 * direct["client_cpu"] / accepted,
        "requests_alone": len(merged),
        "hub_start_s": stages_ready,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="seconds of wrk load")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--clients", type=int, default=4,
                        help="concurrent clients posting straight to Medplum (its ceiling)")
    parser.add_argument("--history-sample", type=int, default=200,
                        help="DetectedIssues whose history is read to check one version each")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder")
    parser.add_argument("--processing-processes", type=int, default=2)
    parser.add_argument("--events-per-request", type=int,
                        default=MEDPLUM_MAX_UPDATES // RESOURCES_PER_ALARM,
                        help="the hub's events_per_request, and the direct posts' group "
                        "up to 16; above 16 Medplum refuses the hub's merged transactions and "
                        "the hub sends each event of the group alone")
    args = parser.parse_args()
    require_medplum()
    runs = []
    for i in range(args.runs):
        result = one_run(args, i)
        runs.append(result)
        print(f"run {i + 1}: " + ", ".join(f"{k}={fmt(v)}" for k, v in result.items()),
              flush=True)
    median = medians(runs)
    save_runs("medplum_e2e", {"args": vars(args), "runs": runs, "median": median})
    print(f"\nMedian of {args.runs} runs, {args.seconds} s of load each, {args.connections} wrk "
          f"connections, Medplum STRICT=1, {args.clients} direct clients, "
          f"{args.events_per_request} events per transaction:\n")
    print(f"hub delivers {fmt(median['e2e_rps'])} events/s end to end to Medplum; "
          f"Medplum alone accepts {fmt(median['medplum_alone_rps'])} events/s "
          f"(the same transactions, {args.clients} clients)\n")
    print("| measure | median | runs |")
    print("|---|---|---|")
    for key, value in median.items():
        print(f"| {key} | {fmt(value)} | " + ", ".join(fmt(r[key]) for r in runs) + " |")


if __name__ == "__main__":
    main()
