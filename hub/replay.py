"""Replay recorded fixtures through intake and processing, without delivering, and
compare the result with golden output.

A fixture folder holds `fixture.toml` (source, adapter, devices, routes) and `cases/`;
each case is a folder of inputs (`01.json`, `02.json`, … processed in name order, each as
a separate message, like a sender posting them one by one) and `expected.json`. Every
case runs in a fresh, temporary database. See docs/replay.md.
"""

from __future__ import annotations

import difflib
import json
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.config import Config, RouteSettings, format_validation_error
from hub.contracts import Adapter, AdapterSetup, IntakeRequest
from hub.domain.model import RawMessage
from hub.errors import ConfigError, InputError
from hub.mappings import MappingStore
from hub.monitor import DeviceTypes
from hub.plugins import PluginHost, resolve
from hub.processing import Pipeline, Processor
from hub.registry import EnrolmentRequest, RecordError, parse_enrolment
from hub.runtime import collect_registries
from hub.store.db import open_database, upgrade
from hub.store.repository import Repository

FIXTURE_FILE = "fixture.toml"
EXPECTED = "expected.json"
REPLAY_DESTINATION = "replay"
# Inputs are "received" at this fixed time so that output never depends on the clock.
RECEIVED_AT = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class CaseResult:
    fixture: str
    name: str
    ok: bool
    diff: str = ""
    error: str = ""


@dataclass
class ReplayReport:
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases) and bool(self.cases)

    def format(self) -> str:
        lines = []
        for c in self.cases:
            mark = "ok  " if c.ok else "DIFF" if c.diff else "FAIL"
            lines.append(f"{mark} {c.fixture}/{c.name}")
            if c.error:
                lines.append(f"     {c.error}")
            if c.diff:
                lines.extend("     " + line for line in c.diff.splitlines())
        failed = sum(not c.ok for c in self.cases)
        lines.append(f"{len(self.cases)} case(s), {failed} with differences or errors")
        return "\n".join(lines)

    def junit_xml(self) -> str:
        suite = ET.Element("testsuite", name="tryggbro-replay", tests=str(len(self.cases)),
                           failures=str(sum(bool(c.diff) for c in self.cases)),
                           errors=str(sum(bool(c.error) and not c.diff for c in self.cases)))
        for c in self.cases:
            case = ET.SubElement(suite, "testcase", classname=c.fixture, name=c.name)
            if c.diff:
                failure = ET.SubElement(case, "failure", message="output differs from golden")
                failure.text = c.diff
            elif c.error:
                error = ET.SubElement(case, "error", message=c.error)
                error.text = c.error
        return ET.tostring(suite, encoding="unicode", xml_declaration=True)


# Enrolments in fixtures start long before any recorded input unless they say otherwise.
FIXTURE_VALID_FROM = datetime(2000, 1, 1, tzinfo=UTC)


def _record(fixture_source: str, defaults: Mapping[str, Any],
            device: Mapping[str, Any]) -> dict[str, str]:
    """A fixture's [[devices]] table as a registry record (the CSV columns)."""
    record: dict[str, Any] = {"source": fixture_source, "valid_from": FIXTURE_VALID_FROM,
                              **defaults, **device}
    if isinstance(record.get("plans"), list):
        record["plans"] = ";".join(record["plans"])
    out = {}
    for key, value in record.items():
        if isinstance(value, datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        out[key] = str(value)
    return out


@dataclass(frozen=True)
class Fixture:
    root: Path
    source: str
    adapter: str
    content_type: str
    options: Mapping[str, Any]
    devices: list[dict[str, str]]  # registry records, checked when a case runs
    routes: list[RouteSettings]
    mappings_dir: Path


def load_fixture(root: Path) -> Fixture:
    path = root / FIXTURE_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for key in ("source", "adapter"):
        if not isinstance(data.get(key), str):
            raise ConfigError(f"{path}: {key}: required, a string")
    defaults: dict[str, Any] = {k: data[k] for k in ("device_type", "legal_basis",
                                                     "legal_basis_ref") if k in data}
    devices = [_record(data["source"], defaults, d) for d in data.get("devices", [])]
    from pydantic import ValidationError

    routes = []
    for i, r in enumerate(data.get("routes", [])):
        try:
            routes.append(RouteSettings.model_validate(r))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(path, exc, f"routes[{i}].")) from None
    mappings = root / data.get("mappings", "../../mappings")
    return Fixture(root, data["source"], data["adapter"],
                   data.get("content_type", "application/json"), data.get("options", {}),
                   devices, routes, mappings.resolve())


def find_fixtures(path: Path) -> list[Path]:
    if (path / FIXTURE_FILE).is_file():
        return [path]
    found = sorted(p.parent for p in path.glob(f"*/{FIXTURE_FILE}"))
    if not found:
        raise ConfigError(f"{path}: no {FIXTURE_FILE} here or in its sub-folders")
    return found


def replay_path(path: Path, *, plugins: PluginHost, config: Config | None = None,
                update: bool = False) -> ReplayReport:
    report = ReplayReport()
    for root in find_fixtures(path):
        fixture = load_fixture(root)
        cases = sorted(p for p in (root / "cases").iterdir() if p.is_dir()) \
            if (root / "cases").is_dir() else []
        if not cases:
            report.cases.append(CaseResult(root.name, "(none)", False, error="no cases/ found"))
        for case in cases:
            report.cases.append(_run_case(fixture, case, plugins, config, update))
    return report


def _canonical(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def _run_case(fixture: Fixture, case: Path, plugins: PluginHost, config: Config | None,
              update: bool) -> CaseResult:
    name = fixture.root.name
    try:
        produced = run_case(fixture, case, plugins, config)
    except (ConfigError, InputError) as exc:
        return CaseResult(name, case.name, False, error=str(exc))
    expected_file = case / EXPECTED
    text = _canonical(produced)
    if update:
        expected_file.write_text(text, encoding="utf-8")
        return CaseResult(name, case.name, True)
    if not expected_file.is_file():
        return CaseResult(name, case.name, False,
                          error=f"{expected_file} is missing (run with --update to create it)")
    expected = _canonical(json.loads(expected_file.read_text(encoding="utf-8")))
    if expected == text:
        return CaseResult(name, case.name, True)
    diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True),
                                        text.splitlines(keepends=True),
                                        fromfile=f"{case.name}/{EXPECTED}", tofile="produced"))
    return CaseResult(name, case.name, False, diff=diff)


def _enrolments(fixture: Fixture, mappings: MappingStore) -> list[EnrolmentRequest]:
    types = DeviceTypes(mappings).names
    requests = []
    for i, record in enumerate(fixture.devices):
        try:
            requests.append(parse_enrolment(record, device_types=types))
        except RecordError as exc:
            raise ConfigError(f"{fixture.root / FIXTURE_FILE}: devices[{i}]: {exc}") from None
    return requests


def run_case(fixture: Fixture, case: Path, plugins: PluginHost,
             config: Config | None) -> list[dict[str, Any]]:
    """Run one case in a fresh temporary database; returns what each input produced."""
    inputs = sorted(p for p in case.iterdir() if p.is_file() and p.name != EXPECTED
                    and not p.name.startswith(".") and p.suffix != ".toml")
    if not inputs:
        raise ConfigError(f"{case}: no input files")
    registries = collect_registries(plugins)
    if fixture.adapter not in registries.adapters:
        raise ConfigError(f"{fixture.root / FIXTURE_FILE}: adapter {fixture.adapter!r} is not "
                          f"loaded (loaded: {', '.join(sorted(registries.adapters))})")
    mappings_dir = config.resolve(config.hub.mappings_dir) if config else fixture.mappings_dir
    mappings = MappingStore.load(mappings_dir)
    adapter: Adapter = registries.adapters[fixture.adapter](
        AdapterSetup(fixture.source, fixture.options, mappings))
    from hub.builtin.routing import rules_from_config

    if config is not None:
        rules, destinations = rules_from_config(config), list(config.destinations)
    else:
        holder = Config.model_validate({"routes": [r.model_dump() for r in fixture.routes]})
        rules = rules_from_config(holder)
        destinations = sorted({d for r in fixture.routes for d in r.destinations})
    with tempfile.TemporaryDirectory(prefix="tryggbro-replay-") as tmp:
        db = open_database(f"sqlite:///{tmp}/replay.db")
        try:
            upgrade(db)
            repo = Repository(db)
            repo.enrol(_enrolments(fixture, mappings))
            pipeline = Pipeline(hook=plugins.hook, adapters={fixture.source: adapter},
                                mappings=mappings, rules=rules, destinations=destinations,
                                repo=repo, resolve=resolve)
            processor = Processor(repo, pipeline, "replay", batch_size=1, lease_seconds=60,
                                  max_attempts=1)
            return [_one(fixture, adapter, repo, processor, path) for path in inputs]
        finally:
            db.dispose()


def _one(fixture: Fixture, adapter: Adapter, repo: Repository, processor: Processor,
         path: Path) -> dict[str, Any]:
    body = path.read_bytes()
    result: dict[str, Any] = {"input": path.name}
    try:
        key = adapter.intake_key(IntakeRequest(fixture.source, fixture.content_type, body, {}))
    except InputError as exc:
        result["rejected"] = {"status": exc.status, "problem": exc.slug, "detail": exc.detail}
        return result
    if key is None:
        result["rejected"] = {"status": 400, "problem": "missing-dedup-key",
                              "detail": "the adapter found no event id"}
        return result
    intake = repo.insert_messages([RawMessage(fixture.source, key, fixture.content_type, body,
                                              RECEIVED_AT)])[0]
    result["accepted"] = {"dedup_key": key, "duplicate": intake.duplicate}
    if intake.duplicate:
        return result
    while processor.run_batch()[0]:
        pass
    trace = repo.message_trace(intake.id)
    assert trace is not None
    result["state"] = trace["state"]
    if trace["reason"]:
        result["reason"] = trace["reason"]
    deliveries: dict[int, list[str]] = {}
    for d in trace["deliveries"]:
        deliveries.setdefault(d["event_id"], []).append(d["destination"])
    payloads = dict(repo.event_payloads(intake.id))
    result["events"] = [
        {
            "seq": e["seq"], "kind": e["kind"], "category": e["category"], "code": e["code"],
            "device": e["device_id"], "state": e["state"], "priority": e["priority"],
            **({"filtered_by": e["filtered_by"]} if e["filtered_by"] else {}),
            **({"destinations": sorted(deliveries.get(e["id"], []))}
               if e["state"] == "routed" else {}),
            **({"bundle": json.loads(payloads[e["seq"]] or "null")}
               if payloads.get(e["seq"]) else {}),
        }
        for e in trace["events"]
    ]
    return result

