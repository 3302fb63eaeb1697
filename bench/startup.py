"""Benchmark: how long a fresh `tryggbro serve` takes to start accepting alarms.

After a crash (kill -9) or an upgrade every second of start-up is a second in which
alarms are not acknowledged. Each run starts `tryggbro serve` with the example
configuration (tryggbro.example.toml: SQLite, the alarmplatform webhook, the hospital
MLLP listener, the folder destination, stage child processes) on a new data directory,
and from the moment of the spawn probes, concurrently:

- `/readyz` until it answers 200;
- the alarmplatform webhook with one alarm until it answers 202 (a durable ACK: the hub
  answers only after the journal commit);
- the MLLP listener with one ADT^A01 until it answers AA (likewise after the commit);
- the delivered folder until the ADT's Bundle is written (processing and dispatch child
  processes up and through their first message).

It also reads the serve process's own CPU time (utime + stime, /proc) when /readyz first
answers: wall times move with the load of a shared machine, the CPU spent until ready
much less. Each figure is the median of `--runs` runs.

Compare with another checkout (e.g. main, `git worktree add <dir> main`) with
`--source <dir>`: that tree's `hub` package is put first on PYTHONPATH of the server
(and of its stage children), the installed distributions (entry points) are shared.

Usage: .venv/bin/python bench/startup.py [--runs 7] [--source DIR] [--timeout 120]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import stop_process  # noqa: E402
from hub.hl7v2.framing import frame  # noqa: E402
from tests.integration.helpers import alarm_event, body  # noqa: E402
from tests.integration.test_mllp_source import msg  # noqa: E402

KEY_ENV = "TRYGGBRO_ALARMPLATFORM_API_KEY"
ENV = {KEY_ENV: "startup-bench-key", "TRYGGBRO_ADMIN_VIEWER_TOKENS": "startup-viewer",
       "TRYGGBRO_ADMIN_OPERATOR_TOKENS": "startup-operator"}
PROBE_INTERVAL = 0.01  # seconds between attempts while a listener is not up yet
MEASURES = ("readyz", "http_ack", "mllp_ack", "first_delivery")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def example_config(tmp: Path, source: Path, http_port: int, mllp_port: int) -> Path:
    """tryggbro.example.toml with its ports, data directory and mappings moved."""
    text = (ROOT / "tryggbro.example.toml").read_text()
    replacements = {
        r'^port = 8080$': f"port = {http_port}",
        r'^port = 2575$': f"port = {mllp_port}",
        r'^mappings_dir = "mappings"$': f'mappings_dir = "{source / "mappings"}"',
        r'^url = "sqlite:///var/tryggbro.db"$': f'url = "sqlite:///{tmp}/var/tryggbro.db"',
        r'^path = "var/delivered"$': f'path = "{tmp}/var/delivered"',
    }
    for pattern, value in replacements.items():
        text, n = re.subn(pattern, value, text, flags=re.MULTILINE)
        if n != 1:
            raise RuntimeError(f"tryggbro.example.toml changed: {pattern!r} matched {n} times")
    path = tmp / "tryggbro.toml"
    path.write_text(text)
    return path


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def readyz_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    finally:
        conn.close()


def http_ack(port: int) -> bool:
    event = alarm_event("startup-1", "ALM-startup-1", "TA-STARTUP")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/ingest/alarmplatform", body=body(event),
                     headers={"x-api-key": ENV[KEY_ENV], "content-type": "application/json"})
        status = conn.getresponse().status
    finally:
        conn.close()
    if status != 202:
        raise RuntimeError(f"the webhook answered {status}, not 202")
    return True


def mllp_ack(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(frame(msg("STARTUP1").encode()))
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            chunk = s.recv(4096)
            if not chunk:
                return False  # closed before answering: not up yet
            answer += chunk
    if b"MSA|AA|" not in answer:
        raise RuntimeError(f"the MLLP listener did not accept: {answer[:120]!r}")
    return True


@dataclass
class Run:
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    serve_cpu_at_ready: float | None = None


def probe(name: str, attempt: Callable[[], bool], t0: float, run: Run,
          deadline: float, on_success: Callable[[], None] | None = None) -> None:
    while time.monotonic() < deadline:
        try:
            if attempt():
                run.seconds[name] = time.monotonic() - t0
                if on_success:
                    on_success()
                return
        except (OSError, http.client.HTTPException):
            pass  # not listening yet
        except RuntimeError as exc:
            run.errors[name] = str(exc)
            return
        time.sleep(PROBE_INTERVAL)
    run.errors[name] = "timed out"


def one_run(source: Path, timeout: float) -> Run:
    run = Run()
    with tempfile.TemporaryDirectory(prefix="tryggbro-startup-") as tmp_name:
        tmp = Path(tmp_name)
        http_port, mllp_port = free_port(), free_port()
        config = example_config(tmp, source, http_port, mllp_port)
        delivered = tmp / "var" / "delivered"
        env = {**os.environ, **ENV}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), env.get("PYTHONPATH"))
                                            if p)
        log = (tmp / "serve.log").open("wb")
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "--config", str(config),
                                 "serve"], cwd=tmp, env=env, stdout=log, stderr=log)
        deadline = t0 + timeout

        def record_cpu() -> None:
            run.serve_cpu_at_ready = cpu_seconds(proc.pid)

        def delivered_one() -> bool:
            return delivered.is_dir() and any(delivered.iterdir())

        probes = [
            threading.Thread(target=probe, args=("readyz", lambda: readyz_ok(http_port), t0,
                                                 run, deadline, record_cpu)),
            threading.Thread(target=probe, args=("http_ack", lambda: http_ack(http_port), t0,
                                                 run, deadline)),
            threading.Thread(target=probe, args=("mllp_ack", lambda: mllp_ack(mllp_port), t0,
                                                 run, deadline)),
            threading.Thread(target=probe, args=("first_delivery", delivered_one, t0, run,
                                                 deadline)),
        ]
        try:
            for t in probes:
                t.start()
            for t in probes:
                t.join()
        finally:
            stop_process(proc)
            log.close()
        if run.errors:
            tail = (tmp / "serve.log").read_text(errors="replace")[-2000:]
            print(f"  errors {run.errors}; serve log ends:\n{tail}", file=sys.stderr)
    return run


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--source", type=Path, default=ROOT,
                        help="checkout whose hub package the server runs (default: this one)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per run, seconds")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    source = args.source.resolve()
    runs = []
    for n in range(1, args.runs + 1):
        r = one_run(source, args.timeout)
        runs.append(r)
        shown = "  ".join(f"{k} {r.seconds[k]:.2f}s" if k in r.seconds else f"{k} -"
                          for k in MEASURES)
        cpu = f"{r.serve_cpu_at_ready:.2f}s" if r.serve_cpu_at_ready is not None else "-"
        print(f"run {n}: {shown}  serve CPU at ready {cpu}", file=sys.stderr)
    summary = {k: median([r.seconds[k] for r in runs if k in r.seconds]) for k in MEASURES}
    summary["serve_cpu_at_ready"] = median([r.serve_cpu_at_ready for r in runs
                                            if r.serve_cpu_at_ready is not None])
    failed = sum(1 for r in runs if r.errors)
    if args.json:
        print(json.dumps({"source": str(source), "runs": args.runs, "failed_runs": failed,
                          "median_seconds": summary}))
        return
    print(f"tryggbro serve start-up, {source}, median of {args.runs} runs "
          f"({failed} with errors):")
    labels = {"readyz": "spawn -> /readyz 200", "http_ack": "spawn -> first webhook 202",
              "mllp_ack": "spawn -> first MLLP AA",
              "first_delivery": "spawn -> first Bundle delivered",
              "serve_cpu_at_ready": "serve process CPU at ready"}
    for key, label in labels.items():
        value = summary[key]
        print(f"  {label:34s} {'-' if value is None else f'{value:.2f} s'}")


if __name__ == "__main__":
    main()
