"""Benchmark: MLLP ingest — the hub's `mllp` source (durable) next to hl7apy's MLLPServer
and python-hl7's asyncio server (both parse and ACK, store nothing), in one run.

Servers, each started fresh per run as a subprocess on 127.0.0.1:

- `hub`: bench/mllp_hub_server.py, the `mllp` source with a new SQLite database (WAL,
  synchronous=FULL), intake group commit, log level info; every AA is sent after the
  commit holding the message. No processing (durable ingest only).
- `hub+schema`: the same with `validation = "schema"` (hl7apy parse before storing).
- `hl7apy`: tests/peers/hl7apy_ack_server.py, hl7apy 1.3.5 MLLPServer, full hl7apy parse
  per message; it closes the connection after every message, so its clients reconnect
  per message (connect time is inside its latency).
- `python-hl7`: tests/peers/python_hl7_ack_server.py, hl7 0.4.5 asyncio server,
  `hl7.parse` + `create_ack` per message, persistent connections.

Load: C client connections (1 and 16) in one asyncio process, each sending one ORU^R01
(vital signs, 6 segments, UTF-8 with æøå, unique MSH-10) and waiting for its ACK before
the next, for D seconds. Each ACK is checked (MSA-1 AA/CA, MSA-2 = our MSH-10). For the
hub, the journal must afterwards hold exactly one row per ACK. Reported: messages/s and
ACK latency p50/p99 (ms), the median over R runs.

Usage: .venv/bin/python bench/mllp_ingest.py [--runs 5] [--seconds 5]
Results: printed as Markdown and saved in bench/out/; see bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save_runs, stop_process  # noqa: E402
from tests.peers.medplum import free_port  # noqa: E402
from tests.peers.mllp import PEERS, _wait_listening  # noqa: E402

SERVERS = ("hub", "hub+schema", "hl7apy", "python-hl7")
CONFIG = """
[hub]
instance = "bench"
mappings_dir = "{mappings}"
[database]
url = "sqlite:///{tmp}/hub.db"
[http]
port = {http_port}
[logging]
level = "info"
[monitor]
enabled = false
[sources.bench]
type = "mllp"
adapter = "test-hl7v2-journal"
host = "127.0.0.1"
port = {port}
max_connections_per_ip = 64
validation = "{validation}"
"""

TEMPLATE = ("MSH|^~\\&|MONITOR|KOMMUNE|TRYGGBRO|HUB|20260110081500+0100||ORU^R01^ORU_R01|"
            "{control}|P|2.6||||||UNICODE UTF-8\r"
            "PID|1||01819012012^^^&2.16.578.1.12.4.1.4.1&ISO^NNNOR||Ærlig^Øystein Åse\r"
            "OBR|1||{control}^MONITOR|182777000^Monitoring of patient^SCT|||20260110081500+0100\r"
            "OBX|1|NM|150456^Oxygen saturation^MDC^59408-5^SpO2^LN|1|97|%^%^UCUM|||||F|||"
            "20260110081500+0100\r"
            "OBX|2|NM|149546^Heart rate^MDC^8867-4^Heart rate^LN|1|71|/min^/min^UCUM|||||F|||"
            "20260110081500+0100\r"
            "OBX|3|NM|150364^Body temperature^MDC^8310-5^Body temperature^LN|1|37.1|"
            "Cel^Cel^UCUM|||||F|||20260110081500+0100")


@contextlib.contextmanager
def server(kind: str, tmp: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    if kind.startswith("hub"):
        config = tmp / "bench.toml"
        config.write_text(CONFIG.format(mappings=ROOT / "mappings", tmp=tmp, port=port,
                                        http_port=free_port(),
                                        validation="schema" if "schema" in kind else "none"))
        cmd = [sys.executable, str(ROOT / "bench" / "mllp_hub_server.py"), str(config)]
    elif kind == "hl7apy":
        cmd = [sys.executable, str(PEERS / "hl7apy_ack_server.py"), str(port)]
    else:
        cmd = [sys.executable, str(PEERS / "python_hl7_ack_server.py"), str(port)]
    log = (tmp / f"{kind}.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(proc, port, timeout=60)
        yield port, proc.pid
    finally:
        stop_process(proc)
        log.close()


async def read_ack(reader: asyncio.StreamReader) -> bytes:
    data = await reader.readuntil(b"\x1c\r")
    return data[data.index(b"\x0b") + 1:-2]


def check(ack: bytes, control: str) -> None:
    msa = next(s for s in ack.split(b"\r") if s.startswith(b"MSA")).split(b"|")
    if msa[1] not in (b"AA", b"CA") or msa[2].decode() != control:
        raise SystemExit(f"bad ACK for {control}: {ack!r}")


async def connection(port: int, tag: str, deadline: float, reconnect: bool,
                     latencies: list[float]) -> int:
    loop = asyncio.get_running_loop()
    n = 0
    reader = writer = None
    while loop.time() < deadline:
        control = f"{tag}-{n}"
        data = b"\x0b" + TEMPLATE.format(control=control).encode() + b"\x1c\r"
        t0 = loop.time()
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        assert reader is not None
        writer.write(data)
        ack = await asyncio.wait_for(read_ack(reader), 30)
        latencies.append(loop.time() - t0)
        check(ack, control)
        n += 1
        if reconnect:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()
    return n


def blocking_connection(port: int, tag: str, deadline: float, reconnect: bool,
                        latencies: list[float]) -> int:
    """One connection on a plain blocking socket: far less client CPU per message than
    asyncio streams, so that one connection measures the server, not the client."""
    n = 0
    sock: socket.socket | None = None
    buffer = b""
    while time.monotonic() < deadline:
        control = f"{tag}-{n}"
        data = b"\x0b" + TEMPLATE.format(control=control).encode() + b"\x1c\r"
        t0 = time.perf_counter()
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = b""
        sock.sendall(data)
        while b"\x1c\r" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit(f"connection closed before the ACK of {control}")
            buffer += chunk
        end = buffer.index(b"\x1c\r")
        ack, buffer = buffer[buffer.index(b"\x0b") + 1:end], buffer[end + 2:]
        latencies.append(time.perf_counter() - t0)
        check(ack, control)
        n += 1
        if reconnect:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return n


def load_blocking(port: int, connections: int, seconds: float, reconnect: bool,
                  run_tag: str) -> dict[str, float]:
    latencies: list[float] = []
    counts = [0] * connections
    started = time.monotonic()

    def run(c: int) -> None:
        counts[c] = blocking_connection(port, f"{run_tag}c{c}", started + seconds, reconnect,
                                        latencies)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return summary(sum(counts), elapsed, latencies)


def summary(total: int, elapsed: float, latencies: list[float]) -> dict[str, float]:
    latencies.sort()
    return {"messages": total, "msgs_per_s": total / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


async def load(port: int, connections: int, seconds: float, reconnect: bool,
               run_tag: str) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    started = loop.time()
    counts = await asyncio.gather(*(
        connection(port, f"{run_tag}c{c}", started + seconds, reconnect, latencies)
        for c in range(connections)))
    elapsed = loop.time() - started
    return summary(sum(counts), elapsed, latencies)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(kind: str, connections: int, seconds: float, index: int,
        db_dir: str | None = None, client: str = "asyncio") -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="tryggbro-mllp-bench-", dir=db_dir))
    try:
        with server(kind, tmp) as (port, pid):
            tag = f"r{index}{kind[:3]}{connections}"
            cpu0 = cpu_seconds(pid)
            if client == "blocking":
                result = load_blocking(port, connections, seconds, kind == "hl7apy", tag)
            else:
                result = asyncio.run(load(port, connections, seconds, kind == "hl7apy", tag))
            # The server's own CPU per answered message: a measure the machine's other
            # tenants disturb far less than messages/s.
            result["cpu_ms_per_msg"] = 1000 * (cpu_seconds(pid) - cpu0) / max(
                1, result["messages"])
        if kind.startswith("hub"):
            with sqlite3.connect(tmp / "hub.db") as db:
                rows = db.execute("select count(*) from journal where source = 'bench'"
                                  ).fetchone()[0]
            if rows != result["messages"]:
                raise SystemExit(f"{kind}: {rows} journal rows for {result['messages']} ACKs")
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--client", choices=("asyncio", "blocking"), default="asyncio",
                        help="asyncio: one asyncio client process (the recorded runs); "
                        "blocking: a thread per connection on plain sockets, less client "
                        "CPU per message (one connection is otherwise client-bound)")
    parser.add_argument("--db-dir", default=None,
                        help="where the hub's database goes (default: the temp dir); "
                        "/dev/shm takes the fsync away: a diagnostic of the code path's "
                        "CPU ceiling, NOT a durable measurement")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    for index in range(args.runs):
        for kind in args.servers.split(","):
            for connections in (int(c) for c in args.connections.split(",")):
                r = one(kind, connections, args.seconds, index, args.db_dir, args.client)
                results.setdefault(f"{kind} c={connections}", []).append(r)
                print(f"run {index + 1} {kind} c={connections}: {r['msgs_per_s']:.0f} msg/s, "
                      f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                      f"server CPU {r['cpu_ms_per_msg']:.3f} ms/msg", flush=True)
    save_runs("mllp_ingest", {"args": vars(args), "results": results})
    print(f"\nMedian of {args.runs} runs, {args.seconds:g} s each:\n")
    print("| server | connections | messages/s | ACK p50 ms | ACK p99 ms | server CPU ms/msg "
          "| msg/s runs |")
    print("|---|---|---|---|---|---|---|")
    for key, runs in results.items():
        kind, conns = key.split(" c=")
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"| {kind} | {conns} | {med['msgs_per_s']:,.0f} | {med['p50_ms']:.2f} | "
              f"{med['p99_ms']:.2f} | {med['cpu_ms_per_msg']:.3f} | "
              + ", ".join(f"{r['msgs_per_s']:.0f}" for r in runs) + " |")


if __name__ == "__main__":
    time.tzset()
    main()
