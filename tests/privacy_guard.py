"""Privacy guard: a pytest plugin that fails the run if personal data leaks (issue 5).

Over the whole test run no 11-digit number, patient name or GPS position may appear in a
log line, a metric label or a stored error text. The guard watches, while every test runs:

- every log line the hub renders in this process. The session starts with the hub's
  production logging (`hub.logging.configure_logging`, level debug) so structlog lines go
  through the same processors as in production, and
  `structlog.stdlib.ProcessorFormatter.format` is wrapped, so lines rendered by a handler a
  test installs itself are seen too;
- every Prometheus sample the hub exposes: `HubCollector.collect` is wrapped, and each
  registry `metrics_registry()` built during a test is scraped once more when the test body
  ends (its labels, not its values, are scanned);
- log files (`*.log`, `*.out`, `*.err`) and SQLite databases the test left under its
  `tmp_path` (subprocess hubs write `serve.log` there): `journal.state_reason`,
  `delivery.last_error`, `delivery_attempt.detail`, `destination_status.reason`.
  PostgreSQL test databases are scanned by the `pg_url` fixture before they are dropped.
  Whatever is left under pytest's base temp folder is scanned at the end of the session.

What counts as a leak (`scan_text`): a run of 11 digits, also `6+5` with a space or hyphen,
not inside a longer digit run (as `hub.domain.privacy.redact`) nor inside a hex hash or UUID;
a patient name used by the fixtures and tests (`patient_names`); a GPS position (a
latitude/longitude pair with at least four decimals in Norwegian ranges, or a coordinate
value used by a fixture). A folder holding a file named `.privacy-guard-ignore` is not
scanned: the guard's own tests plant leaks there.

The report names the test, the place (logger, metric, table.column, file) and a snippet
with the offending value itself replaced by its kind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sqlite3
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

ROOT = Path(__file__).resolve().parent.parent
IGNORE_MARKER = ".privacy-guard-ignore"
LOG_SUFFIXES = frozenset({".log", ".out", ".err"})
# Stored error texts: the columns `hub.domain.privacy.safe_error_text` guards.
ERROR_COLUMNS = (("journal", "state_reason"), ("delivery", "last_error"),
                 ("delivery_attempt", "detail"), ("destination_status", "reason"))

# --- what a leak looks like -----------------------------------------------------------

_ELEVEN_DIGITS = re.compile(r"(?<!\d)(\d{6})[ \-]?(\d{5})(?!\d)")
_HEX_TOKEN = re.compile(r"[0-9A-Fa-f-]+")
# Norway, Svalbard aside: latitude 57–72 N, longitude 4–32 E; at least 4 decimals (~10 m).
_LATITUDE = r"(?:5[7-9]|6\d|7[0-2])\.\d{4,}"
_LONGITUDE = r"(?:[4-9]|[12]\d|3[0-2])\.\d{4,}"
_POSITION = re.compile(
    rf"(?<![\d.])(?:{_LATITUDE}(?!\d)[^\d\n]{{1,40}}?(?<![\d.]){_LONGITUDE}"
    rf"|{_LONGITUDE}(?!\d)[^\d\n]{{1,40}}?(?<![\d.]){_LATITUDE})(?!\d)")

# Names used by the fixtures and tests that are not in a PID-5 or a FHIR HumanName we can
# read mechanically (free-text `name` fields of vendor payloads).
KNOWN_TEST_NAMES = frozenset({
    "Kari Nordmann", "Ola Nordmann", "Åse Bjørnø", "Bjørnø", "Ærlig", "Bjørnstad",
    "Ødegård", "Øystein", "Nordmann",
})
# Name parts too common to be evidence of a leak (words, code names, placeholders).
_NOT_A_NAME = frozenset({
    "test", "sample", "baby", "navn", "patient", "mr", "ms", "mrs", "jr", "iii", "ii",
    "official", "usual", "name", "given", "family", "unknown", "none", "null", "john",
    "jane", "doe", "kari", "marie", "adam", "anna", "girl", "snow", "shine", "aaaaaa",
    "aaaaaaaa",
})
_PID5 = re.compile(r"(?:^|[\r\n]|\\r|\\n)PID\|(?:[^|\r\n\\]*\|){4}([^|\r\n\\]*)")
_FHIR_NAME_PART = re.compile(r'"(?:family|given)"\s*:\s*(\[[^\]]*\]|"[^"]*")')
_FIXTURE_POSITION = re.compile(r'"(?:lat|latitude|lon|lng|longitude)"\s*:\s*(-?\d+\.\d{4,})')
_FIXTURE_TOML_POSITION = re.compile(r"(?m)^\s*(?:lat|latitude|lon|lng|longitude)\s*=\s*"
                                    r"(-?\d+\.\d{4,})")


def _name_parts(value: str) -> Iterator[str]:
    for part in re.split(r"[\^&~\s,]+", value):
        part = part.strip("\"'.")
        if len(part) >= 4 and part.replace("-", "").isalpha() \
                and part.casefold() not in _NOT_A_NAME:
            yield part


# The public HL7 v2 corpus the MLLP tests send (read if present, as those tests do).
CORPUS_HL7 = ROOT.parent / "shared" / "corpus" / "microsoft-fhir-converter" / "hl7v2"


def _fixture_files() -> Iterator[Path]:
    folders = (ROOT / "fixtures", ROOT / "tests", *sorted((ROOT / "plugins").glob("*/tests")),
               CORPUS_HL7)
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix in {".json", ".hl7", ".txt", ".er7", ".py",
                                                   ".toml", ".xml", ".edi", ""} \
                    and "node_modules" not in path.parts and path.name != "privacy_guard.py":
                yield path


@dataclass(frozen=True)
class Vocabulary:
    """The personal data the tests use: patient names and fixture coordinates."""

    names: frozenset[str]
    coordinates: frozenset[str]

    @classmethod
    def from_repository(cls) -> Vocabulary:
        names: set[str] = set()
        coordinates: set[str] = set()
        for name in KNOWN_TEST_NAMES:
            names.update(_name_parts(name))
        for path in _fixture_files():
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for match in _PID5.finditer(text):
                names.update(_name_parts(match.group(1)))
            for match in _FHIR_NAME_PART.finditer(text):
                names.update(_name_parts(match.group(1)))
            for pattern in (_FIXTURE_POSITION, _FIXTURE_TOML_POSITION):
                coordinates.update(m.group(1).lstrip("-") for m in pattern.finditer(text))
        return cls(frozenset(names), frozenset(coordinates))

    def name_pattern(self) -> re.Pattern[str] | None:
        if not self.names:
            return None
        alternatives = "|".join(re.escape(n) for n in sorted(self.names, key=len, reverse=True))
        return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def coordinate_pattern(self) -> re.Pattern[str] | None:
        if not self.coordinates:
            return None
        alternatives = "|".join(re.escape(c) for c in sorted(self.coordinates))
        return re.compile(rf"(?<![\d.])(?:{alternatives})(?!\d)")


@dataclass(frozen=True)
class Finding:
    kind: str  # "11-digit number", "patient name", "GPS position"
    snippet: str  # context around the hit, the hit itself replaced by <kind>


class Scanner:
    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self._patterns: list[tuple[str, re.Pattern[str]]] = [("GPS position", _POSITION)]
        coordinate = vocabulary.coordinate_pattern()
        if coordinate is not None:
            self._patterns.append(("GPS position", coordinate))
        name = vocabulary.name_pattern()
        if name is not None:
            self._patterns.append(("patient name", name))

    def scan(self, text: str) -> list[Finding]:
        """Every leak in `text`, each with a snippet that does not repeat it."""
        hits: list[tuple[int, int, str]] = []
        for match in _ELEVEN_DIGITS.finditer(text):
            if not _inside_hex_token(text, match.start(), match.end()):
                hits.append((match.start(), match.end(), "11-digit number"))
        for kind, pattern in self._patterns:
            hits.extend((m.start(), m.end(), kind) for m in pattern.finditer(text))
        return [Finding(kind, self._snippet(text, start, end, kind))
                for start, end, kind in sorted(hits)]

    def _snippet(self, text: str, start: int, end: int, kind: str) -> str:
        before = text[max(0, start - 40):start]
        after = text[end:end + 40]
        return self._mask(before) + f"<{kind}>" + self._mask(after)

    def _mask(self, text: str) -> str:
        text = _ELEVEN_DIGITS.sub("<11-digit number>", text)
        for kind, pattern in self._patterns:
            text = pattern.sub(f"<{kind}>", text)
        return text.replace("\n", " ").replace("\r", " ")


def _inside_hex_token(text: str, start: int, end: int) -> bool:
    """True if the digits are part of a hash, HMAC pseudonym or UUID, not a number."""
    left = start
    while left > 0 and text[left - 1] in "0123456789abcdefABCDEF-":
        left -= 1
    right = end
    while right < len(text) and text[right] in "0123456789abcdefABCDEF-":
        right += 1
    token = text[left:right].strip("-")
    return len(token.replace("-", "")) >= 16 and any(c.isalpha() for c in token)


# --- where text leaves the hub ----------------------------------------------------------

@dataclass(frozen=True)
class Leak:
    test: str
    place: str
    finding: Finding

    def line(self) -> str:
        return f"{self.test}: {self.finding.kind} in {self.place}: {self.finding.snippet}"


def stored_error_texts_sqlite(path: Path) -> Iterator[tuple[str, str]]:
    """(table.column, text) of every stored error text in one SQLite file."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return
    try:
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in ERROR_COLUMNS:
            if table not in tables:
                continue
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                continue
            query = f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL"
            for (value,) in conn.execute(query):
                yield f"{table}.{column}", str(value)
    except sqlite3.DatabaseError:
        return
    finally:
        conn.close()


def stored_error_texts_url(url: str) -> Iterator[tuple[str, str]]:
    """(table.column, text) of every stored error text in a database behind a URL."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            for table, column in ERROR_COLUMNS:
                if table in tables:
                    query = text(f"SELECT {column} FROM {table} "
                                 f"WHERE {column} IS NOT NULL")
                    for (value,) in conn.execute(query):
                        yield f"{table}.{column}", str(value)
    finally:
        engine.dispose()


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


class PrivacyGuard:
    """Collects leaks over a session; `pytest_*` methods make it a pytest plugin."""

    def __init__(self, scanner: Scanner) -> None:
        self.scanner = scanner
        self.leaks: list[Leak] = []
        self.current = "(outside any test)"
        self.scanned_dirs: set[Path] = set()
        self._registries: weakref.WeakSet[Any] = weakref.WeakSet()
        self._undo: list[Callable[[], None]] = []
        self.lines_seen = 0  # rendered in this process
        self.file_lines_seen = 0  # in log files (subprocess hubs)
        self.error_texts_seen = 0
        self.labels_seen = 0

    # scanning, usable without pytest
    def check(self, place: str, text: str) -> list[Leak]:
        found = [Leak(self.current, place, f) for f in self.scanner.scan(text)]
        self.leaks.extend(found)
        return found

    def check_tree(self, folder: Path) -> None:
        """Scan log files and SQLite databases under `folder`, once."""
        folder = folder.resolve()
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or any(
                    (parent / IGNORE_MARKER).exists()
                    for parent in path.parents if parent.is_relative_to(folder)):
                continue
            if any(parent in self.scanned_dirs for parent in path.parents):
                continue
            place = str(path.relative_to(folder.parent))
            if path.suffix in LOG_SUFFIXES:
                text = path.read_text(encoding="utf-8", errors="replace")
                for number, line in enumerate(text.splitlines(), 1):
                    self.file_lines_seen += 1
                    self.check(f"{place}:{number} ({_logger_of(line)})", line)
            elif _is_sqlite(path):
                for column, value in stored_error_texts_sqlite(path):
                    self.error_texts_seen += 1
                    self.check(f"{place} {column}", value)
        self.scanned_dirs.add(folder)

    def check_database(self, url: str, label: str) -> None:
        for column, value in stored_error_texts_url(url):
            self.error_texts_seen += 1
            self.check(f"{label} {column}", value)

    def check_registry(self, registry: Any) -> None:
        for family in registry.collect():
            self.check_families([family])

    def check_families(self, families: Iterable[Any]) -> None:
        for family in families:
            for sample in family.samples:
                for label, value in sample.labels.items():
                    self.labels_seen += 1
                    self.check(f"metric {sample.name}{{{label}}}", str(value))

    # hooks into the hub
    def install(self) -> None:
        from hub.api import health
        from hub.logging import configure_logging

        configure_logging("debug", redaction_key=b"privacy-guard", stream=_CurrentStderr())

        guard = self
        original_format = structlog.stdlib.ProcessorFormatter.format

        def format_and_scan(formatter: Any, record: logging.LogRecord) -> str:
            line: str = original_format(formatter, record)
            guard.lines_seen += 1
            guard.check(f"log line of logger {record.name!r}", line)
            return line

        structlog.stdlib.ProcessorFormatter.format = format_and_scan  # type: ignore[method-assign,assignment]
        self._undo.append(lambda: setattr(structlog.stdlib.ProcessorFormatter, "format",
                                          original_format))

        original_collect = health.HubCollector.collect

        def collect_and_scan(collector: Any) -> Iterator[Any]:
            for family in original_collect(collector):
                guard.check_families([family])
                yield family

        health.HubCollector.collect = collect_and_scan  # type: ignore[method-assign,assignment]
        self._undo.append(lambda: setattr(health.HubCollector, "collect", original_collect))

        original_registry = health.metrics_registry

        def registry_and_remember(hub: Any) -> Any:
            registry = original_registry(hub)
            guard._registries.add(registry)
            return registry

        health.metrics_registry = registry_and_remember
        self._undo.append(lambda: setattr(health, "metrics_registry", original_registry))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Iterator[None]:
        self.current = item.nodeid
        try:
            return (yield)
        finally:
            self.current = "(outside any test)"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        try:
            return (yield)
        finally:
            # The hub is still open: scrape what /metrics would expose now.
            for registry in list(self._registries):
                with contextlib.suppress(Exception):  # a hub the test closed itself
                    self.check_registry(registry)
            self._registries.clear()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Iterator[None]:
        try:
            return (yield)
        finally:
            tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
            if isinstance(tmp_path, Path):
                self.check_tree(tmp_path)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.current = "(left in the base temp folder)"
        factory = getattr(session.config, "_tmp_path_factory", None)
        if factory is not None and getattr(factory, "_basetemp", None) is not None:
            self.check_tree(factory.getbasetemp())
        self.uninstall()
        if self.leaks and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.leaks:
            terminalreporter.write_line(
                f"privacy guard: no personal data in {self.lines_seen} log lines, "
                f"{self.file_lines_seen} lines of log files, {self.labels_seen} metric labels, "
                f"{self.error_texts_seen} stored error texts")
            return
        terminalreporter.section("privacy guard: personal data leaked", red=True)
        shown = self.leaks[:200]
        for leak in shown:
            terminalreporter.write_line(leak.line())
        if len(self.leaks) > len(shown):
            terminalreporter.write_line(f"... and {len(self.leaks) - len(shown)} more")


def _logger_of(line: str) -> str:
    try:
        data = json.loads(line)
    except ValueError:
        return "not JSON"
    return f"logger {data.get('logger', '?')!r}" if isinstance(data, dict) else "not JSON"


class _CurrentStderr(io.TextIOBase):
    """Writes to whatever sys.stderr is now, so pytest's capture shows a test's lines."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


GUARD_KEY = pytest.StashKey[PrivacyGuard]()


def pytest_configure(config: pytest.Config) -> None:
    guard = PrivacyGuard(Scanner(Vocabulary.from_repository()))
    guard.install()
    config.stash[GUARD_KEY] = guard
    config.pluginmanager.register(guard, "privacy-guard")


def guard_of(config: pytest.Config) -> PrivacyGuard | None:
    return config.stash.get(GUARD_KEY, None)
