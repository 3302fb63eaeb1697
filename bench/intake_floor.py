"""Diagnostic: the floor under one MLLP connection's ACK latency, measured piece by piece.

One connection has one message outstanding, so each ACK waits for its own commit:

1. **hand-off**: event loop → intake writer thread (`queue.SimpleQueue`) → back to the loop
   (`call_soon_threadsafe` resolving a future), as `hub/intake.py` does, without any
   storage in between: the price of committing off the event loop;
2. **lone commit**: one ~600-byte row in its own transaction on SQLite (WAL,
   ``synchronous=FULL``) in DIR — the fsync's floor (use /dev/shm for its CPU alone).

Usage: .venv/bin/python bench/intake_floor.py [--dir /tmp] [--count 3000]
Prints µs per round trip / commit, wall and CPU (user + system); see bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import resource
import sqlite3
import sys
import tempfile
import threading
import time


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def handoff(count: int) -> str:
    items: queue.SimpleQueue[tuple[asyncio.Future[int], asyncio.AbstractEventLoop] | None]
    items = queue.SimpleQueue()

    def writer() -> None:
        while (item := items.get()) is not None:
            future, loop = item
            loop.call_soon_threadsafe(future.set_result, 1)

    async def run() -> str:
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        loop = asyncio.get_running_loop()
        latencies = []
        user0, sys0 = _cpu()
        for _ in range(count):
            start = time.perf_counter()
            future: asyncio.Future[int] = loop.create_future()
            items.put((future, loop))
            await future
            latencies.append(time.perf_counter() - start)
        user1, sys1 = _cpu()
        items.put(None)
        thread.join()
        latencies.sort()
        return (f"hand-off loop→writer→loop: p50 {latencies[count // 2] * 1e6:.0f} µs, "
                f"p99 {latencies[int(count * 0.99)] * 1e6:.0f} µs; CPU "
                f"{(user1 - user0) / count * 1e6:.0f} user + "
                f"{(sys1 - sys0) / count * 1e6:.0f} sys µs per round trip")

    try:
        import uvloop
    except ImportError:
        return asyncio.run(run())
    return "uvloop " + uvloop.run(run())


def lone_commits(directory: str, count: int) -> str:
    path = os.path.join(tempfile.mkdtemp(dir=directory), "floor.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        body = os.urandom(600)
        user0, sys0 = _cpu()
        start = time.perf_counter()
        for _ in range(count):
            conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
        wall = time.perf_counter() - start
        user1, sys1 = _cpu()
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        os.rmdir(os.path.dirname(path))
    return (f"lone commit in {directory}: {count / wall:.0f}/s, {wall / count * 1e6:.0f} µs "
            f"wall; CPU {(user1 - user0) / count * 1e6:.0f} user + "
            f"{(sys1 - sys0) / count * 1e6:.0f} sys µs per commit")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    print(handoff(args.count * 5))
    print(lone_commits(args.dir, args.count))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
