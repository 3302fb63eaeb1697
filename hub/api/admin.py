"""Admin API: the CLI's read and retry operations over HTTP, behind bearer tokens.

Two roles: `viewer` reads, `operator` also retries and reprocesses. Tokens come from the
environment variables named in `[admin]`; with none configured the admin API is closed.
Message bodies are never returned (they hold personal data); the trace shows states,
codes, reasons and attempts.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from hub.api.problems import problem
from hub.config import env_list
from hub.domain.privacy import safe_error_text
from hub.errors import InputError
from hub.jsonsafe import loads_strict
from hub.monitor import DeviceTypes, outbox_alerts
from hub.registry import EnrolmentRequest, RecordError, parse_csv, parse_enrolment
from hub.runtime import Hub
from hub.store.repository import RegistryConflict

router = APIRouter(prefix="/admin", tags=["admin"])

VIEWER, OPERATOR = "viewer", "operator"


class Tokens:
    def __init__(self, hub: Hub) -> None:
        admin = hub.config.admin
        self.operator = [t.encode() for t in env_list(hub.config, "admin.operator_tokens_env",
                                                      admin.operator_tokens_env)]
        self.viewer = [t.encode() for t in env_list(hub.config, "admin.viewer_tokens_env",
                                                    admin.viewer_tokens_env)]

    def role(self, token: str) -> str | None:
        given = token.encode()
        is_operator = any(hmac.compare_digest(given, t) for t in self.operator)
        is_viewer = any(hmac.compare_digest(given, t) for t in self.viewer)
        return OPERATOR if is_operator else VIEWER if is_viewer else None


def _role(request: Request) -> str:
    tokens: Tokens = request.app.state.tokens
    if not tokens.operator and not tokens.viewer:
        raise InputError("admin-disabled", "the admin API is disabled: no tokens are configured "
                         "([admin] viewer_tokens_env / operator_tokens_env)", 403)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise InputError("missing-credentials", "send Authorization: Bearer <token>", 401)
    role = tokens.role(token.strip())
    if role is None:
        raise InputError("invalid-credentials", "the bearer token is not valid", 401)
    return role


def viewer(request: Request) -> str:
    return _role(request)


def operator(request: Request) -> str:
    role = _role(request)
    if role != OPERATOR:
        raise InputError("forbidden", "this operation needs the operator role", 403)
    return role


Viewer = Annotated[str, Depends(viewer)]
Operator = Annotated[str, Depends(operator)]


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InputError("invalid-request", f"{name}: expected an ISO 8601 time, got "
                         f"{value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/status", summary="Counts per state, oldest pending age per destination")
def status(request: Request, _: Viewer) -> dict[str, Any]:
    hub = _hub(request)
    report = hub.repo.status()
    alerts = outbox_alerts(report, hub.config.monitor)
    return {**report.as_dict(),
            "outbox_alerts": {name: a.as_dict() for name, a in sorted(alerts.items())}}


@router.get("/messages", summary="Search journaled messages")
def messages(
    request: Request, _: Viewer,
    source: str | None = None, dedup_key: str | None = None, state: str | None = None,
    since: Annotated[str | None, Query(description="ISO 8601; UTC if no offset")] = None,
    until: Annotated[str | None, Query(description="ISO 8601; UTC if no offset")] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    before_id: int | None = None,
) -> dict[str, Any]:
    hub = _hub(request)
    cap = hub.config.admin.max_page_size
    if limit > cap:
        raise InputError("invalid-request", f"limit: at most {cap}")
    items = hub.repo.search_messages(
        source=source, dedup_key=dedup_key, state=state, since=_time(since, "since"),
        until=_time(until, "until"), limit=limit, before_id=before_id)
    next_before = items[-1]["id"] if len(items) == limit else None
    return {"items": items, "next_before_id": next_before}


@router.get("/messages/{message_id}", summary="One message through every stage")
def show(request: Request, message_id: int, _: Viewer) -> Any:
    trace = _hub(request).repo.message_trace(message_id)
    if trace is None:
        return problem(404, "not-found", f"no message with id {message_id}", request.url.path)
    return trace


@router.post("/messages/{message_id}/reprocess", summary="Run a failed/unmatched/filtered "
             "message through the pipeline again")
def reprocess(request: Request, message_id: int, _: Operator) -> Any:
    result = _hub(request).repo.reprocess(message_id)
    if result == "not-found":
        return problem(404, "not-found", f"no message with id {message_id}", request.url.path)
    if result != "queued":
        state = result.removeprefix("state-")
        return problem(409, "not-reprocessable",
                       f"message {message_id} is {state}; only failed, unmatched or filtered "
                       "messages are reprocessed (retry its deliveries instead)",
                       request.url.path)
    return {"id": message_id, "status": "queued"}


@router.post("/deliveries/{delivery_id}/retry", summary="Retry one delivery now")
def retry(request: Request, delivery_id: int, _: Operator) -> Any:
    result = _hub(request).repo.retry_delivery(delivery_id)
    if result == "not-found":
        return problem(404, "not-found", f"no delivery with id {delivery_id}", request.url.path)
    if result != "retrying":
        return problem(409, result, f"delivery {delivery_id} is {result.replace('-', ' ')}",
                       request.url.path)
    return {"id": delivery_id, "status": "retrying"}


@router.post("/deliveries/retry-dead", summary="Retry every dead delivery")
def retry_dead(request: Request, _: Operator, destination: str | None = None) -> dict[str, int]:
    return {"retrying": _hub(request).repo.retry_all_dead(destination)}


@router.get("/plugins", summary="Loaded plugins, versions and hooks")
def plugins(request: Request, _: Viewer) -> list[dict[str, Any]]:
    return [
        {"name": p.name, "distribution": p.distribution, "version": p.version,
         "builtin": p.builtin, "hooks": list(p.hooks)}
        for p in _hub(request).plugins.plugins()
    ]


# ---------------------------------------------------------------------------------------
# Device registry
# ---------------------------------------------------------------------------------------

MAX_IMPORT_BYTES = 20 * 1024 * 1024


@router.get("/devices", summary="Devices: current enrolment, state and last contact")
def devices(request: Request, _: Viewer, source: str | None = None) -> list[dict[str, Any]]:
    return _hub(request).repo.list_devices(source)


@router.get("/enrolments", summary="Every enrolment, past and future (no patient ids)")
def enrolments(request: Request, _: Viewer, source: str | None = None,
               device_id: str | None = None) -> list[dict[str, Any]]:
    return _hub(request).repo.list_enrolments(source, device_id)


@router.post("/enrolments", status_code=201,
             summary="Enrol a device for a patient, with its legal basis (registry fields)")
async def enrol(request: Request, _: Operator) -> Any:
    body = await request.body()
    try:
        record = loads_strict(body)
    except ValueError as exc:
        return problem(400, "invalid-json", f"the body is not JSON: {exc}", request.url.path)
    if not isinstance(record, dict):
        return problem(422, "invalid-enrolment", "expected a JSON object of registry fields",
                       request.url.path)
    hub = _hub(request)
    try:
        req = parse_enrolment(record, device_types=DeviceTypes(hub.mappings).names)
    except RecordError as exc:
        return problem(422, "invalid-enrolment", str(exc), request.url.path,
                       problems=[safe_error_text(p) for p in exc.problems])
    return await _enrol(request, hub, [req])


@router.post("/enrolments/import", status_code=201,
             summary="Bulk enrol from CSV: every row, or nothing if any row is bad")
async def import_enrolments(request: Request, _: Operator) -> Any:
    body = await request.body()
    if len(body) > MAX_IMPORT_BYTES:
        return problem(413, "too-large", f"the file is larger than {MAX_IMPORT_BYTES} bytes",
                       request.url.path)
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return problem(422, "not-utf8", f"the file is not UTF-8 (byte {exc.start})",
                       request.url.path)
    hub = _hub(request)
    report = await run_in_threadpool(parse_csv, text,
                                     device_types=DeviceTypes(hub.mappings).names)
    unknown = sorted({r.device.source for r in report.requests} - set(hub.config.sources))
    report.errors.extend(f"source {s!r} is not configured" for s in unknown)
    if report.errors:
        return problem(422, "invalid-import",
                       f"{len(report.errors)} problem(s); nothing was imported",
                       request.url.path, problems=[safe_error_text(e) for e in report.errors])
    return await _enrol(request, hub, report.requests)


async def _enrol(request: Request, hub: Hub, requests: list[EnrolmentRequest]) -> Any:
    unknown = sorted({r.device.source for r in requests} - set(hub.config.sources))
    if unknown:
        return problem(422, "unknown-source", f"no source named {', '.join(unknown)}",
                       request.url.path)
    try:
        ids = await run_in_threadpool(hub.repo.enrol, requests)
    except RegistryConflict as exc:
        return problem(409, "enrolment-overlaps", str(exc), request.url.path,
                       problems=exc.problems)
    requeued = 0
    for source in sorted({r.device.source for r in requests}):
        requeued += await run_in_threadpool(hub.repo.requeue_unmatched, source)
    return {"enrolled": ids, "requeued_messages": requeued}


@router.post("/enrolments/{enrolment_id}/end", summary="End an enrolment now or at a time")
def end_enrolment(request: Request, enrolment_id: int, _: Operator,
                  at: str | None = None) -> Any:
    when = _time(at, "at")
    result = _hub(request).repo.end_enrolment(enrolment_id, when)
    if result == "not-found":
        return problem(404, "not-found", f"no enrolment {enrolment_id}", request.url.path)
    if result == "already-ended":
        return problem(409, "already-ended", f"enrolment {enrolment_id} has already ended",
                       request.url.path)
    return {"id": enrolment_id, "status": "ended"}
