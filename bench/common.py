"""Pieces every benchmark needs: stop a server it started, and keep the runs it measured."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM (the server's graceful shutdown), then SIGKILL if it takes over `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def medians(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The median of each measure over the runs (the first run names the measures)."""
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}


def save_runs(name: str, record: Mapping[str, Any]) -> Path:
    """Write one benchmark's record to bench/out/<name>-<UTC time>.json."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=2))
    return path
