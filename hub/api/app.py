"""The FastAPI application of one hub (OpenAPI at /docs)."""

from __future__ import annotations

from fastapi import FastAPI

from hub import __version__
from hub.api import admin, health, ingest
from hub.api.problems import install_problem_handlers
from hub.runtime import Hub


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(
        title="Tryggbro",
        version=__version__,
        description="Integration hub for Norwegian municipal welfare technology: "
        "vendor events in, VKP R4 FHIR out, through a durable outbox.",
    )
    app.state.hub = hub
    app.state.tokens = admin.Tokens(hub)
    app.state.metrics = health.metrics_registry(hub)
    install_problem_handlers(app)
    app.include_router(ingest.router)
    ingest.install_ingest_route(app)
    app.include_router(admin.router)
    app.include_router(health.router)
    for path, endpoint, methods in hub.registries.routes:
        app.add_api_route(path, endpoint, methods=methods, tags=["plugins"])
    return app
