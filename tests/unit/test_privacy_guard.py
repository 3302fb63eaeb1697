"""The privacy guard (tests/privacy_guard.py) catches planted leaks and lets ids through.

Leaks are planted in a guard of our own (never the session's, which would fail the run):
in text, in a log line rendered by the hub's formatter, in a SQLite `last_error` column
and a log file, in a metric label.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from hub.domain.privacy import redact, safe_error_text
from tests.privacy_guard import IGNORE_MARKER, PrivacyGuard, Scanner, Vocabulary

FNR = "01819012012"


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(Vocabulary.from_repository())


def kinds(scanner: Scanner, text: str) -> list[str]:
    return [f.kind for f in scanner.scan(text)]


def test_vocabulary_holds_the_fixture_names_and_positions() -> None:
    vocabulary = Vocabulary.from_repository()
    assert {"Nordmann", "EVERYMAN", "Ærlig"} <= vocabulary.names  # known, PID-5, FHIR name
    assert "58.7674" in vocabulary.coordinates  # fixtures/location


@pytest.mark.parametrize("text", [
    f"patient {FNR} unknown", "fnr=018190-12012", "018190 12012", f'"id": {FNR}}}'])
def test_eleven_digit_numbers_are_leaks(scanner: Scanner, text: str) -> None:
    assert kinds(scanner, text) == ["11-digit number"]


@pytest.mark.parametrize("text", [
    "received 20261122120000 (14 digits)", "at 2026-11-22T12:00:00.123456+00:00",
    "message_id=12345 bytes=1048576", "id 3f2a9c01-1234-4567-8901-234567890123",
    "sha256 0123456789012345abcdef0123456789abcdef0123456789abcdef01234567",
    redact(f"patient {FNR}", b"k"), safe_error_text(f"HTTP 422: identifier {FNR} rejected"),
    "duration_ms=12.5 latency 0.25"])
def test_ids_timestamps_hashes_and_pseudonyms_are_not(scanner: Scanner, text: str) -> None:
    assert kinds(scanner, text) == []


def test_names_and_positions_are_leaks(scanner: Scanner) -> None:
    assert kinds(scanner, "device of Kari Nordmann went silent") == ["patient name"]
    assert kinds(scanner, "PID-5 EVERYMAN^ADAM rejected") == ["patient name"]
    assert kinds(scanner, "position lat=59.91234, lon=10.75012") == ["GPS position"]
    assert kinds(scanner, "at 58.7674") == ["GPS position"]  # a fixture coordinate alone
    assert kinds(scanner, "took 59.5 s, 10.2 % cpu, version 10.7.1") == []


def test_snippet_names_the_kind_never_the_value(scanner: Scanner) -> None:
    [finding] = scanner.scan(f"refused identifier {FNR} for device 7")
    assert FNR not in finding.snippet
    assert finding.snippet == "refused identifier <11-digit number> for device 7"


def test_guard_catches_a_log_line_the_hub_renders(pytestconfig: pytest.Config) -> None:
    """A name under a key the hub does not drop leaks through the production pipeline;
    the session's guard sees it (its findings are set aside so the run still passes)."""
    guard = pytestconfig.pluginmanager.get_plugin("privacy-guard")
    assert isinstance(guard, PrivacyGuard)
    kept, guard.leaks = guard.leaks, []
    try:
        structlog.stdlib.get_logger("hub.planted").warning("enrolled", who="Kari Nordmann",
                                                           patient=FNR)
        structlog.stdlib.get_logger("hub.planted").warning("harmless", message_id=7)
        leaks = guard.leaks
    finally:
        guard.leaks = kept
    assert [(leak.finding.kind, leak.place) for leak in leaks] == [
        ("patient name", "log line of logger 'hub.planted'")]  # `patient` is dropped
    assert leaks[0].test.endswith("::test_guard_catches_a_log_line_the_hub_renders")
    assert "Nordmann" not in leaks[0].line()


def test_guard_catches_a_formatter_without_redaction(scanner: Scanner) -> None:
    guard = PrivacyGuard(scanner)
    line = structlog.processors.JSONRenderer()(
        None, "info", {"event": "enrolled", "who": f"Kari Nordmann {FNR}"})
    assert isinstance(line, str)
    guard.check("log line of logger 'hub.planted'", line)
    assert sorted(leak.finding.kind for leak in guard.leaks) == [
        "11-digit number", "patient name"]
    assert all(FNR not in leak.line() and "Nordmann" not in leak.line()
               for leak in guard.leaks)


def test_guard_catches_stored_error_text_and_log_files(scanner: Scanner,
                                                       tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / IGNORE_MARKER).touch()  # keep the session's own guard out of this folder
    db = planted / "hub.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE delivery (id INTEGER PRIMARY KEY, last_error TEXT)")
        conn.execute("INSERT INTO delivery (last_error) VALUES (?)",
                     (f"HTTP 400: Patient {FNR} at 59.91234,10.75012",))
        conn.execute("INSERT INTO delivery (last_error) VALUES (?)", ("HTTP 503",))
    conn.close()
    (planted / "serve.log").write_text(
        '{"event": "ok", "logger": "hub.runtime"}\n'
        '{"event": "bad", "logger": "hub.planted", "who": "EVERYMAN"}\n')

    guard = PrivacyGuard(scanner)
    guard.check_tree(planted)
    assert guard.leaks == []  # the marker is honoured

    (planted / IGNORE_MARKER).unlink()
    guard = PrivacyGuard(scanner)
    guard.check_tree(planted)
    (planted / IGNORE_MARKER).touch()
    places = sorted((leak.finding.kind, leak.place) for leak in guard.leaks)
    assert places == [
        ("11-digit number", "planted/hub.db delivery.last_error"),
        ("GPS position", "planted/hub.db delivery.last_error"),
        ("patient name", "planted/serve.log:2 (logger 'hub.planted')"),
    ]


def test_guard_catches_a_metric_label(scanner: Scanner) -> None:
    registry = CollectorRegistry(auto_describe=False)

    class Leaky:
        def collect(self) -> list[GaugeMetricFamily]:
            family = GaugeMetricFamily("tryggbro_planted", "planted", labels=["patient"])
            family.add_metric([FNR], 1)
            family.add_metric(["ok"], 1)
            return [family]

    registry.register(Leaky())
    guard = PrivacyGuard(scanner)
    guard.check_registry(registry)
    assert [(leak.finding.kind, leak.place) for leak in guard.leaks] == [
        ("11-digit number", "metric tryggbro_planted{patient}")]


def test_the_session_guard_is_active(pytestconfig: pytest.Config) -> None:
    guard = pytestconfig.pluginmanager.get_plugin("privacy-guard")
    assert isinstance(guard, PrivacyGuard)
    before = guard.lines_seen
    structlog.stdlib.get_logger("hub.test").info("privacy guard sees this line", n=1)
    assert guard.lines_seen == before + 1
