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

from hub.api.problems import problem
from hub.config import env_list
from hub.errors import InputError
from hub.runtime import Hub

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
    return _hub(request).repo.status().as_dict()


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
