"""Built-in router: the `[[routes]]` of the configuration, first match wins."""

from __future__ import annotations

from hub import hookimpl
from hub.config import Config
from hub.contracts import RouteContext
from hub.domain.model import Enrolment, Event
from hub.domain.routing import RouteAction, RouteDecision, RouteMatch, RouteRule, evaluate


def rules_from_config(config: Config) -> list[RouteRule]:
    return [
        RouteRule(
            name=r.name,
            match=RouteMatch(
                sources=tuple(r.match.sources),
                categories=tuple(r.match.categories),
                kinds=tuple(r.match.kinds),
                codes=tuple(r.match.codes),
                severities=tuple(r.match.severities),
                municipalities=tuple(r.match.municipalities),
            ),
            action=RouteAction(r.action),
            destinations=tuple(r.destinations),
            priority=r.priority,
        )
        for r in config.routes
    ]


@hookimpl(trylast=True)
def hub_route_event(
    event: Event, enrolment: Enrolment | None, context: RouteContext
) -> RouteDecision | None:
    return evaluate(context.rules, event, enrolment)
