"""A local JFT peer (Journalføringstjenesten, NHN), written from NHN's published API as
summarised in shared/docs/domain.md §1.5.

Why: JFT's test environment is not reachable from tests. The peer serves the write API on
127.0.0.1 with real sockets and checks what JFT checks: a DPoP-bound token with scope
`nhn:jft/api` and the claim `orgnr_parent` (through the swappable `Verifier`), a body of at
most about 1 MB that is FHIR R4 JSON (hub.fhir structure check; otherwise 400), and test
person numbers only (Tenor-style synthetic numbers: month + 80; test data cannot leak
into production and the reverse).

- `POST /v1/Bundle` → 202 Accepted, `Location: /v1/Bundle/{id}/$status`;
- `GET /v1/Bundle/{id}/$status` → `{registered, read, journaled, failed}`, each a
  timestamp or null;
- `POST /v1/Bundle/{id}/$journaling-acknowledged` → 202 (the EPJ's acknowledgement).

The test plays the EPJ: `read(id)` marks an event fetched, `journal(id)` acknowledges it
(through the HTTP endpoint, as an EPJ would), `fail(id)` sets `failed`. `auto_register`
decides whether a new event is `registered` at once.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.fhir import structure_problems

from ._national import (
    Grant,
    HttpPeer,
    Refusal,
    StaticTokens,
    Verifier,
    fhir_json,
    operation_outcome,
)

SCOPE = "nhn:jft/api"
ORGNR_PARENT = "helseid://claims/client/claims/orgnr_parent"
MAX_BODY = 1_000_000
FNR_SYSTEMS = {"urn:oid:2.16.578.1.12.4.1.4.1", "urn:oid:2.16.578.1.12.4.1.4.2"}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Stored:
    id: str
    bundle: dict[str, Any]
    orgnr_parent: str
    source_system: str | None
    status: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(
        ("registered", "read", "journaled", "failed")))
    status_asked: int = 0


def _person_numbers(data: Any) -> list[str]:
    """Every fødselsnummer/D-nummer identifier value anywhere in the resource tree."""
    found: list[str] = []
    if isinstance(data, dict):
        if data.get("system") in FNR_SYSTEMS and isinstance(data.get("value"), str):
            found.append(data["value"])
        for value in data.values():
            found.extend(_person_numbers(value))
    elif isinstance(data, list):
        for item in data:
            found.extend(_person_numbers(item))
    return found


def is_test_number(value: str) -> bool:
    """Tenor synthetic numbers add 80 to the month (domain: synthetic FNRs)."""
    return len(value) == 11 and value.isdigit() and 81 <= int(value[2:4]) <= 92


class JftPeer(HttpPeer):
    name = "jft"

    def __init__(self, verifier: Verifier | None = None, *, environment: str = "test") -> None:
        # JFT takes DPoP-bound tokens only; the static table checks the scheme and that a
        # proof is there, the HelseID verifier (tests/peers/helseid.py) checks the proof.
        self.tokens = StaticTokens(require_dpop=True)
        self.verifier: Verifier = verifier or self.tokens
        self.environment = environment
        self.auto_register = True
        self.events: dict[str, Stored] = {}
        super().__init__(Starlette(routes=[
            Route("/v1/Bundle", self._post, methods=["POST"]),
            Route("/v1/Bundle/{id}/$status", self._status, methods=["GET"]),
            Route("/v1/Bundle/{id}/$journaling-acknowledged", self._ack, methods=["POST"]),
        ]))

    # -- test control (the EPJ's side) -------------------------------------------------------

    def stored(self) -> list[Stored]:
        with self.lock:
            return list(self.events.values())

    def register_event(self, event_id: str) -> None:
        with self.lock:
            self.events[event_id].status["registered"] = _now()

    def read(self, event_id: str) -> None:
        with self.lock:
            self.events[event_id].status["read"] = _now()

    def journal(self, event_id: str, token: str) -> None:
        """Acknowledge journaling as the EPJ does: over HTTP, with its own token."""
        headers = {"authorization": f"DPoP {token}", "dpop": "epj-proof"}
        request = urllib.request.Request(
            f"{self.url}/v1/Bundle/{event_id}/$journaling-acknowledged", data=b"",
            headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        if status != 202:
            raise AssertionError(f"journaling acknowledgement refused: HTTP {status}")

    def mark_journaled(self, event_id: str) -> None:
        """The EPJ journaled it (without its own HTTP call: for tests whose tokens come
        from the HelseID peer, where the EPJ would need a client of its own)."""
        with self.lock:
            self.events[event_id].status["journaled"] = _now()

    def fail(self, event_id: str) -> None:
        with self.lock:
            self.events[event_id].status["failed"] = _now()

    # -- HTTP side --------------------------------------------------------------------------

    def _access(self, request: Request) -> Response | Grant:
        result = self.verifier.verify(request.method, str(request.url), request.headers)
        if isinstance(result, Refusal):
            return JSONResponse({"title": "Unauthorized", "detail": result.reason},
                                status_code=result.status,
                                headers=result.headers())
        if SCOPE not in result.scopes:
            return JSONResponse({"title": "Forbidden", "detail": f"scope {SCOPE} required"},
                                status_code=403)
        if not result.claims.get(ORGNR_PARENT):
            return JSONResponse({"title": "Forbidden",
                                 "detail": "the token has no orgnr_parent claim"},
                                status_code=403)
        return result

    async def _post(self, request: Request) -> Response:
        access = self._access(request)
        if not isinstance(access, Grant):
            return access
        if (status := self.next_failure()) is not None:
            return JSONResponse({"title": "Simulated failure"}, status_code=status)
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"title": "Payload too large"}, status_code=413)
        try:
            bundle = json.loads(body)
        except ValueError:
            return fhir_json(operation_outcome("error", "invalid", "not JSON"), 400)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            return fhir_json(operation_outcome("error", "invalid", "not a Bundle"), 400)
        problems = structure_problems(bundle)
        if problems:
            return fhir_json(operation_outcome("error", "structure", "; ".join(problems[:3])),
                             400)
        numbers = _person_numbers(bundle)
        if not numbers:
            return fhir_json(operation_outcome("error", "required", "no person identifier"),
                             400)
        wrong = [n for n in numbers if is_test_number(n) != (self.environment == "test")]
        if wrong:
            return fhir_json(operation_outcome(
                "error", "business-rule",
                f"{'production' if self.environment == 'test' else 'test'} person number in "
                f"the {self.environment} environment"), 400)
        event_id = str(uuid.uuid4())
        stored = Stored(event_id, bundle, str(access.claims[ORGNR_PARENT]),
                        request.headers.get("nhn-source-system"))
        if self.auto_register:
            stored.status["registered"] = _now()
        with self.lock:
            self.events[event_id] = stored
            self.lock.notify_all()
        return Response(status_code=202,
                        headers={"location": f"/v1/Bundle/{event_id}/$status"})

    async def _status(self, request: Request) -> Response:
        access = self._access(request)
        if not isinstance(access, Grant):
            return access
        with self.lock:
            stored = self.events.get(request.path_params["id"])
            if stored is None or stored.orgnr_parent != access.claims.get(ORGNR_PARENT):
                return JSONResponse({"title": "Not found"}, status_code=404)
            stored.status_asked += 1
            return JSONResponse(dict(stored.status))

    async def _ack(self, request: Request) -> Response:
        access = self._access(request)
        if not isinstance(access, Grant):
            return access
        with self.lock:
            stored = self.events.get(request.path_params["id"])
            if stored is None:
                return JSONResponse({"title": "Not found"}, status_code=404)
            stored.status["journaled"] = _now()
        return Response(status_code=202)

