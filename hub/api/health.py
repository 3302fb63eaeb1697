"""Liveness, readiness and Prometheus metrics (no personal data in any label)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from hub import __version__
from hub.api.problems import problem
from hub.domain.model import DeliveryState, MessageState
from hub.monitor import outbox_alerts
from hub.runtime import Hub
from hub.store.db import schema_is_current

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database reachable, schema current, stages running")
def readyz(request: Request) -> Any:
    hub: Hub = request.app.state.hub
    problems: dict[str, str] = {}
    try:
        with hub.db.read_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if not schema_is_current(hub.db):
            problems["database"] = "schema is not at the current migration"
    except Exception as exc:
        problems["database"] = f"unreachable: {type(exc).__name__}"
    problems.update(hub.health.problems())
    if problems:
        return problem(503, "not-ready", "; ".join(f"{k}: {v}" for k, v in problems.items()),
                       request.url.path, checks=problems)
    return {"status": "ready"}


class HubCollector(Collector):
    """Reads the counts from the database at scrape time: the rows are the truth."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        report = self.hub.repo.status()
        info = InfoMetricFamily("tryggbro", "Gateway build information")
        info.add_metric([], {"version": __version__, "database": self.hub.db.dialect})
        yield info
        messages = GaugeMetricFamily("tryggbro_messages", "Journaled messages per state",
                                     labels=["state"])
        for message_state in MessageState:
            messages.add_metric([message_state.value],
                                report.messages.get(message_state.value, 0))
        yield messages
        deliveries = GaugeMetricFamily("tryggbro_deliveries",
                                       "Deliveries per destination and state",
                                       labels=["destination", "state"])
        oldest = GaugeMetricFamily("tryggbro_delivery_oldest_pending_seconds",
                                   "Age of the oldest undelivered delivery",
                                   labels=["destination"])
        escalated = GaugeMetricFamily("tryggbro_deliveries_escalated",
                                      "Alarm deliveries failing long enough to page a human",
                                      labels=["destination"])
        paused = GaugeMetricFamily("tryggbro_destination_paused",
                                   "1 while a destination is paused after refusing us",
                                   labels=["destination"])
        overdue = GaugeMetricFamily("tryggbro_receipts_overdue",
                                    "Deliveries awaiting a receipt (AppRec) past its deadline",
                                    labels=["destination"])
        alarm_oldest = GaugeMetricFamily(
            "tryggbro_delivery_oldest_pending_alarm_seconds",
            "Age of the oldest undelivered alarm delivery", labels=["destination"])
        alert = GaugeMetricFamily(
            "tryggbro_outbox_age_alert",
            "1 while the oldest undelivered delivery is past [monitor] "
            "outbox_age_alert_seconds (outbox_age_alarm_alert_seconds for alarms)",
            labels=["destination"])
        alerts = outbox_alerts(report, self.hub.config.monitor)
        for name in sorted(set(self.hub.config.destinations) | set(report.deliveries)):
            alarm_oldest.add_metric([name], report.oldest_pending_alarm_seconds.get(name, 0.0))
            alert.add_metric([name], 1 if name in alerts else 0)
            per_state = report.deliveries.get(name, {})
            for state in DeliveryState:
                deliveries.add_metric([name, state.value], per_state.get(state.value, 0))
            oldest.add_metric([name], report.oldest_pending_seconds.get(name, 0.0))
            escalated.add_metric([name], report.escalated.get(name, 0))
            paused.add_metric([name], 1 if name in report.paused else 0)
            overdue.add_metric([name], report.receipts_overdue.get(name, 0))
        yield deliveries
        yield overdue
        yield oldest
        yield escalated
        yield alarm_oldest
        yield alert
        yield paused
        unprocessed = GaugeMetricFamily("tryggbro_oldest_unprocessed_seconds",
                                        "Age of the oldest message not yet processed")
        unprocessed.add_metric([], report.oldest_unprocessed_seconds or 0.0)
        yield unprocessed


@router.get("/metrics", summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


def metrics_registry(hub: Hub) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    return registry
