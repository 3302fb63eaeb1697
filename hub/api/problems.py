"""RFC 9457 problem details: every rejection says exactly what is wrong."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from hub.domain.privacy import safe_error_text
from hub.errors import InputError
from hub.logging import get_logger

log = get_logger("hub.api")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:tryggbro:problem:"

_TITLES = {
    400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 409: "Conflict", 413: "Content too large",
    415: "Unsupported media type", 422: "Unprocessable content", 429: "Too many requests",
    500: "Internal error", 503: "Service unavailable",
}
_SLUGS = {404: "not-found", 405: "method-not-allowed", 401: "unauthorized", 403: "forbidden"}


def problem(status: int, slug: str, detail: str, instance: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + slug,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": safe_error_text(detail),
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return problem(exc.status, exc.slug, exc.detail, request.url.path, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = _SLUGS.get(exc.status_code, f"http-{exc.status_code}")
        return problem(exc.status_code, slug, str(exc.detail), request.url.path,
                       headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
            for e in exc.errors()
        ]
        text = "; ".join(f"{e['where']}: {e['problem']}" for e in errors)
        return problem(400, "invalid-request", text, request.url.path, errors=errors)

    @app.exception_handler(ClientDisconnect)
    async def _disconnected(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client went away, or the slow-client body deadline closed the connection
        # (hub/api/slowclients.py), before the body was complete: nothing was stored,
        # and this answer goes nowhere.
        log.info("client disconnected before its request body was complete; nothing "
                 "stored", path=request.url.path)
        return problem(400, "client-disconnected", "the connection closed before the "
                       "request body was complete; nothing was stored", request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in request", path=request.url.path)
        return problem(500, "internal-error",
                       "the gateway hit an unexpected error; nothing was stored for this "
                       "request; retry, and tell the operator if it persists",
                       request.url.path)
