"""The HTTP connection caps and the aggregated closing log (hub/api/slowclients.py).
The deadlines themselves are proven on real sockets in
tests/integration/test_slowloris.py."""

from __future__ import annotations

import io
import json

from hub.api.slowclients import ConnectionGuard, guarded_protocol
from hub.config import HttpSettings
from hub.logging import configure_logging


def test_caps_in_all_and_per_address():
    guard = ConnectionGuard(header_timeout=10, body_timeout=60, max_connections=3,
                            max_per_ip=2)
    assert guard.admit("10.0.0.1") is None
    assert guard.admit("10.0.0.1") is None
    assert guard.admit("10.0.0.1") == "too-many-connections-from-address"
    assert guard.admit("10.0.0.2") is None
    assert guard.admit("10.0.0.3") == "too-many-connections"
    assert (guard.open, guard.per_ip) == (3, {"10.0.0.1": 2, "10.0.0.2": 1})
    guard.release("10.0.0.2")
    guard.release("10.0.0.1")
    assert (guard.open, guard.per_ip) == (1, {"10.0.0.1": 1})
    assert guard.admit("10.0.0.3") is None


def test_closings_are_logged_as_counts_not_one_line_each():
    # Read the real JSON lines: `structlog.testing.capture_logs` cannot see a module
    # logger that an earlier test already used (the hub caches loggers on first use).
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    guard = ConnectionGuard(header_timeout=10, body_timeout=60, max_connections=3,
                            max_per_ip=2)
    for _ in range(500):
        guard.record("head-timeout")
    guard.record("too-many-connections")
    logs = [json.loads(line) for line in stream.getvalue().splitlines()
            if "slow-client limits" in line]
    assert len(logs) == 1
    assert logs[0]["counts"] == {"head-timeout": 1}
    assert guard.closed == {"head-timeout": 499, "too-many-connections": 1}


def test_each_listener_gets_its_own_counts():
    settings = HttpSettings(header_timeout_seconds=2, max_connections_per_ip=5)
    first, second = guarded_protocol(settings), guarded_protocol(settings)
    assert first._guard is not second._guard  # type: ignore[attr-defined]
    assert first._guard.header_timeout == 2  # type: ignore[attr-defined]
    assert first._guard.max_per_ip == 5  # type: ignore[attr-defined]
