"""Routing rules: which destinations an event goes to, or which rule filters it.

Rules are evaluated in configuration order and the first match decides, so an operator
can read the rule list top to bottom and know what happens to an event.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from hub.domain.model import Enrolment, Event


class RouteAction(enum.StrEnum):
    DELIVER = "deliver"
    FILTER = "filter"


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Conditions, all of which must hold; an empty tuple means "any".

    `codes` accept glob patterns (`4.*` matches every digital-supervision code).
    Municipality conditions never match an event without an enrolment.
    """

    sources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    municipalities: tuple[str, ...] = ()

    def matches(self, event: Event, enrolment: Enrolment | None) -> bool:
        if self.sources and event.source not in self.sources:
            return False
        if self.categories and str(event.category) not in self.categories:
            return False
        if self.kinds and not any(fnmatchcase(event.kind, k) for k in self.kinds):
            return False
        if self.codes and (
            event.code is None or not any(fnmatchcase(event.code, c) for c in self.codes)
        ):
            return False
        if self.severities and event.severity not in self.severities:
            return False
        return not self.municipalities or (
            enrolment is not None and enrolment.municipality in self.municipalities
        )


@dataclass(frozen=True, slots=True)
class RouteRule:
    name: str
    match: RouteMatch
    action: RouteAction
    destinations: tuple[str, ...] = ()
    priority: int | None = None  # overrides the event's priority for these deliveries


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The outcome of routing one event: deliver to destinations, or filtered by rules."""

    action: RouteAction
    rules: tuple[str, ...]
    destinations: tuple[str, ...] = ()
    priority: int | None = None

    @classmethod
    def combine(cls, decisions: Iterable[RouteDecision | None]) -> RouteDecision | None:
        """Merge the decisions of several routing plugins.

        Any plugin that delivers wins over filters (losing an event is worse than an
        extra copy); destinations are the union in first-seen order.
        """
        given = [d for d in decisions if d is not None]
        deliver = [d for d in given if d.action is RouteAction.DELIVER]
        if deliver:
            destinations: list[str] = []
            for d in deliver:
                destinations.extend(x for x in d.destinations if x not in destinations)
            priorities = [d.priority for d in deliver if d.priority is not None]
            return cls(
                RouteAction.DELIVER,
                tuple(r for d in deliver for r in d.rules),
                tuple(destinations),
                max(priorities) if priorities else None,
            )
        if given:
            return cls(RouteAction.FILTER, tuple(r for d in given for r in d.rules))
        return None


def evaluate(
    rules: Sequence[RouteRule], event: Event, enrolment: Enrolment | None
) -> RouteDecision | None:
    """First matching rule decides; None when no rule matches."""
    for rule in rules:
        if rule.match.matches(event, enrolment):
            return RouteDecision(rule.action, (rule.name,), rule.destinations, rule.priority)
    return None
