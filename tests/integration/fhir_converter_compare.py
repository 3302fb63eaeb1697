"""Our HL7 v2 → FHIR output against Microsoft FHIR-Converter's expected output, per field.

Every corpus message with an expected output (ADT_A01/A04/A08/A28/A31/A40, ORU_R01) goes
through the real pipeline: the `hl7v2` adapter's intake check, the journal on a real
SQLite file, processing (parse → enrich → route → map → validate) and the stored Bundle.
Each resource we emit is then compared with Microsoft's resource of the same kind on
chosen fields: identifiers, names, birth date, gender, encounter class/status/period,
observation codes, values and units, report code and status.

`python -m tests.integration.fhir_converter_compare` prints the table and every
disagreement in the form docs/hl7v2.md lists them.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import RawMessage
from hub.domain.routing import RouteAction, RouteMatch, RouteRule
from hub.errors import InputError
from hub.mappings import MappingStore
from hub.plugins import PluginHost, resolve
from hub.processing import Pipeline, Processor
from hub.runtime import collect_registries
from hub.store.db import open_database, upgrade
from hub.store.repository import Repository

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus" / "microsoft-fhir-converter"
EXPECTED = CORPUS / "expected-fhir-r4"
COMPARED_TYPES = ("ADT_A01", "ADT_A04", "ADT_A08", "ADT_A28", "ADT_A31", "ADT_A40", "ORU_R01")
OUT_OF_SCOPE = ("MDM_T02", "REF_I12")
# Microsoft outputs that are not valid R4 (corpus SOURCES.md, peers.md): compared on
# fields, never taken as "must validate".
INVALID_R4 = ("ADT01-23", "ADT01-28", "ADT04-28", "LAB-ORU-1", "LAB-ORU-2")
SOURCE = "hospital"
OPTIONS = {"municipality": "0301", "organisation": "974778882", "legal_basis": "agreement",
           "legal_basis_ref": "SA-2024-017", "hospital_organisation": "993467049"}
RECEIVED_AT = datetime(2026, 1, 1, tzinfo=UTC)
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Field:
    message: str  # corpus file stem
    resource: str  # "Patient", "Encounter", "Observation[2]" …
    name: str  # "identifier[PATID1234].value", "gender" …
    ours: str
    theirs: str

    @property
    def agree(self) -> bool:
        return self.ours == self.theirs

    @property
    def key(self) -> str:
        return f"{self.message} {self.resource}.{self.name}"


@dataclass
class Result:
    fields: list[Field]
    refused: dict[str, str]  # message → our intake refusal

    @property
    def agreement(self) -> float:
        return sum(f.agree for f in self.fields) / len(self.fields)

    @property
    def disagreements(self) -> list[Field]:
        return [f for f in self.fields if not f.agree]


def require_corpus() -> None:
    """The shared corpus sits beside the project root in CI; without it these tests fail
    with the reason instead of silently not running."""
    if not CORPUS.is_dir():
        raise FileNotFoundError(f"{CORPUS} is missing: the shared folder (../shared) must "
                                "sit beside the project root")


def expected_files() -> list[Path]:
    require_corpus()
    return sorted(p for t in COMPARED_TYPES for p in (EXPECTED / t).glob("*-expected.json"))


def run_ours(messages: list[Path]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """Every message through intake and processing on a real SQLite file; the resources
    of every Bundle it produced, by message stem, and the refusals."""
    plugins = PluginHost()
    plugins.load_entry_points()
    registries = collect_registries(plugins)
    mappings = MappingStore.load(REPO / "mappings")
    adapter = registries.adapters["hl7v2"](AdapterSetup(SOURCE, OPTIONS, mappings))
    rule = RouteRule("all", RouteMatch(), RouteAction.DELIVER, ("ehr",))
    produced: dict[str, list[dict[str, Any]]] = {}
    refused: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="tryggbro-msconv-") as tmp:
        db = open_database(f"sqlite:///{tmp}/hub.db")
        try:
            upgrade(db)
            repo = Repository(db)
            pipeline = Pipeline(hook=plugins.hook, adapters={SOURCE: adapter},
                                mappings=mappings, rules=[rule], destinations=["ehr"],
                                repo=repo, resolve=resolve)
            processor = Processor(repo, pipeline, "compare", batch_size=50, lease_seconds=60,
                                  max_attempts=1)
            ids: dict[str, int] = {}
            for path in messages:
                body = path.read_bytes()
                try:
                    key = adapter.intake_key(IntakeRequest(SOURCE, "application/hl7-v2", body, {}))
                except InputError as exc:
                    refused[path.stem] = exc.detail
                    continue
                assert key is not None
                # Several corpus messages share MSH-3/4/10 (copied templates): the
                # journal would take the second as a resend, so each gets its own key here.
                raw = RawMessage(SOURCE, f"{path.stem}|{key}"[:255], "application/hl7-v2",
                                 body, RECEIVED_AT)
                ids[path.stem] = repo.insert_messages([raw])[0].id
            while processor.run_batch()[0]:
                pass
            for stem, mid in ids.items():
                trace = repo.message_trace(mid)
                assert trace is not None
                if trace["state"] != "processed":
                    raise AssertionError(f"{stem}: {trace['state']}: {trace['reason']}")
                resources: list[dict[str, Any]] = []
                for _, payload in repo.event_payloads(mid):
                    bundle = json.loads(payload or "null")
                    resources.extend(e["resource"] for e in bundle["entry"])
                produced[stem] = resources
        finally:
            db.dispose()
    return produced, refused


# --- comparison -----------------------------------------------------------------------


def _num(value: Any) -> str:
    try:
        return str(Decimal(str(value)).normalize())
    except InvalidOperation:
        return str(value)


def _time(value: Any) -> str:
    """An instant as UTC text when it has a time; a date as itself."""
    if not isinstance(value, str) or not value:
        return "(none)"
    if "T" not in value:
        return value
    return datetime.fromisoformat(value).astimezone(UTC).isoformat()


def _codes(concept: Any) -> list[str]:
    return [str(c.get("code")) for c in (concept or {}).get("coding", []) if c.get("code")]


def _first_code(concept: Any) -> str:
    codes = _codes(concept)
    return codes[0] if codes else "(none)"


def _value(obs: dict[str, Any]) -> tuple[str, str]:
    """(value, unit) of an Observation as comparable text."""
    if "valueQuantity" in obs:
        q = obs["valueQuantity"]
        # UCUM-coded units compare by code; others by their text.
        unit = (q.get("code") if q.get("system") == UCUM and q.get("code")
                else q.get("unit") or "(none)")
        return (q.get("comparator", "") + _num(q.get("value")), unit)
    if "valueCodeableConcept" in obs:
        return (_first_code(obs["valueCodeableConcept"]), "(none)")
    for k in ("valueString", "valueDateTime"):
        if k in obs:
            return (str(obs[k]).strip(), "(none)")
    return ("(none)", "(none)")


def _patient(stem: str, ours: dict[str, Any], theirs: dict[str, Any]) -> Iterator[Field]:
    their_ids = {i.get("value"): i for i in theirs.get("identifier", [])}
    for ident in ours.get("identifier", []):
        value = ident["value"]
        other = their_ids.get(value)
        yield Field(stem, "Patient", f"identifier[{value}].value", value,
                    value if other else "(none)")
        our_type = _first_code(ident.get("type"))
        if our_type != "(none)" and ident.get("system", "").startswith("urn:tryggbro"):
            yield Field(stem, "Patient", f"identifier[{value}].type", our_type,
                        _first_code(other.get("type")) if other else "(none)")
    our_name = (ours.get("name") or [{}])[0]
    their_name = (theirs.get("name") or [{}])[0]
    yield Field(stem, "Patient", "name[0].family", our_name.get("family", "(none)"),
                their_name.get("family", "(none)"))
    yield Field(stem, "Patient", "name[0].given", " ".join(our_name.get("given", [])),
                " ".join(their_name.get("given", [])))
    yield Field(stem, "Patient", "birthDate", ours.get("birthDate", "(none)"),
                theirs.get("birthDate", "(none)"))
    yield Field(stem, "Patient", "gender", ours.get("gender", "(none)"),
                theirs.get("gender", "(none)"))


def _merge(stem: str, ours: list[dict[str, Any]],
           linkages: list[dict[str, Any]]) -> Iterator[Field]:
    """A40: each of our merges (surviving Patient `link` replaces → merged-away Patient)
    against Microsoft's Linkage items (source, historical) for the same surviving id."""
    theirs = {}
    for linkage in linkages:
        items = {i.get("type"): i.get("resource", {}).get("identifier", {}).get("value")
                 for i in linkage.get("item", [])}
        theirs[items.get("source")] = items.get("historical") or "(none)"
    by_id = {p["id"]: p for p in ours}
    for p in ours:
        for link in p.get("link", []):
            if link.get("type") != "replaces":
                continue
            surviving = p["identifier"][0]["value"]
            merged = by_id[link["other"]["reference"].split("/")[1]]["identifier"][0]["value"]
            yield Field(stem, f"Patient({surviving})", "merged-away identifier (A40)", merged,
                        theirs.get(surviving, "(none)"))


def _encounter(stem: str, ours: dict[str, Any], theirs: dict[str, Any]) -> Iterator[Field]:
    yield Field(stem, "Encounter", "class", ours["class"]["code"],
                theirs.get("class", {}).get("code", "(none)"))
    yield Field(stem, "Encounter", "status", ours["status"], theirs.get("status", "(none)"))
    visit = [i["value"] for i in ours["identifier"] if i.get("system") != "urn:ietf:rfc:3986"]
    if visit:
        their_values = [i.get("value") for i in theirs.get("identifier", [])]
        yield Field(stem, "Encounter", "identifier(visit number)", visit[0],
                    visit[0] if visit[0] in their_values else "(none)")
    for end in ("start", "end"):
        ours_t = _time(ours.get("period", {}).get(end))
        theirs_t = _time(theirs.get("period", {}).get(end))
        if ours_t != "(none)" or theirs_t != "(none)":
            yield Field(stem, "Encounter", f"period.{end}", ours_t, theirs_t)


def _paired(stem: str, rtype: str, ours: list[dict[str, Any]], theirs: list[dict[str, Any]]
            ) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]] | Field]:
    """Each of our resources with Microsoft's of the same code (each used once): the
    pair, or a disagreeing `code` field when they have none."""
    unused = list(theirs)
    for n, resource in enumerate(ours):
        code = _first_code(resource.get("code"))
        match = next((t for t in unused if code in _codes(t.get("code"))), None)
        where = f"{rtype}[{n}]({code})"
        if match is None:
            yield Field(stem, where, "code", code, "(none)")
            continue
        unused.remove(match)
        yield Field(stem, where, "code", code, code)
        yield where, resource, match


def _observations(stem: str, ours: list[dict[str, Any]],
                  theirs: list[dict[str, Any]]) -> Iterator[Field]:
    for item in _paired(stem, "Observation", ours, theirs):
        if isinstance(item, Field):
            yield item
            continue
        where, obs, match = item
        value, unit = _value(obs)
        their_value, their_unit = _value(match)
        yield Field(stem, where, "value", value, their_value)
        if unit != "(none)" or their_unit != "(none)":
            yield Field(stem, where, "unit", unit, their_unit)


def _reports(stem: str, ours: list[dict[str, Any]],
             theirs: list[dict[str, Any]]) -> Iterator[Field]:
    for item in _paired(stem, "DiagnosticReport", ours, theirs):
        if isinstance(item, Field):
            yield item
            continue
        where, report, match = item
        yield Field(stem, where, "status", report["status"], match.get("status", "(none)"))


def compare(produced: dict[str, list[dict[str, Any]]] | None = None,
            refused: dict[str, str] | None = None) -> Result:
    """Compare per field. `produced` (resources by message stem) and `refused` (reasons by
    stem) come from `run_ours` unless a caller ran the messages another way (over MLLP)."""
    files = expected_files()
    stems = [p.name.removesuffix("-expected.json") for p in files]
    if produced is None or refused is None:
        produced, refused = run_ours([CORPUS / "hl7v2" / f"{s}.hl7" for s in stems])
    fields: list[Field] = []
    for stem, path in zip(stems, files, strict=True):
        if stem in refused:
            continue
        theirs = [e["resource"] for e in json.loads(path.read_text("utf-8"))["entry"]]
        ours = produced[stem]

        def of(rtype: str, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for r in resources if r["resourceType"] == rtype]

        our_patients = [p for p in of("Patient", ours) if p.get("active", True)]
        their_patients = of("Patient", theirs)
        if our_patients and their_patients:
            fields.extend(_patient(stem, our_patients[0], their_patients[0]))
        if of("Linkage", theirs):
            fields.extend(_merge(stem, of("Patient", ours), of("Linkage", theirs)))
        our_enc, their_enc = of("Encounter", ours), of("Encounter", theirs)
        if our_enc:
            fields.extend(_encounter(stem, our_enc[0], their_enc[0] if their_enc else {}))
        fields.extend(_observations(stem, of("Observation", ours), of("Observation", theirs)))
        fields.extend(_reports(stem, of("DiagnosticReport", ours),
                               of("DiagnosticReport", theirs)))
    return Result(fields, refused)


def main() -> None:
    result = compare()
    by_message: dict[str, list[Field]] = {}
    for f in result.fields:
        by_message.setdefault(f.message, []).append(f)
    print("| message | fields compared | agree |")
    print("|---|---:|---:|")
    for stem, fs in by_message.items():
        print(f"| {stem} | {len(fs)} | {sum(f.agree for f in fs)} |")
    total = len(result.fields)
    agree = sum(f.agree for f in result.fields)
    print(f"| **all** | **{total}** | **{agree}** ({100 * agree / total:.1f} %) |")
    for stem, reason in result.refused.items():
        print(f"refused {stem}: {reason}")
    print()
    for f in result.disagreements:
        print(f"| `{f.key}` | {f.ours} | {f.theirs} |")


if __name__ == "__main__":
    main()
