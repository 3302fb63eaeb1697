"""The crash suite's verdict: what the peers received against what the senders sent.

A pure function of plain data, so it can be shown to fail (tests/chaos/test_checker.py):

- **lost**: an acknowledged message with an expected effect the peer never received;
- **duplicate effect**: one effect received under more than one request identity (an MLLP
  receiver that dedups by MSH-10 would store it twice; a FHIR PUT at a second resource id
  would create a second resource);
- **unexpected**: an effect no sent message explains;
- **order violation**: per destination and order key (patient), an effect of an earlier
  message arriving after an effect of a later one (a first arrival out of order, or a stale
  resend overwriting newer data).

Reported, not failures: **duplicate requests** (the same request received again, e.g. a
resend after a crash between the destination's answer and the mark: harmless, idempotent)
and **recovered** messages (never acknowledged to the sender, yet delivered: committed
just before a crash swallowed the ACK).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sent:
    """One message a sender produced."""

    msg: str  # the harness's name for it
    key: str  # order key: the patient
    seq: int  # position in its key's send order (a key's messages are sent one by one)
    acked: bool
    effects: Mapping[str, frozenset[str]]  # destination -> effects it must cause there


@dataclass(frozen=True)
class Received:
    """One effect as a peer received it, in arrival order."""

    destination: str
    effect: str  # FHIR: "Type/id"; MLLP: the Bundle id in OBR-3
    request: str  # FHIR: "Type/id" (a PUT is its own identity); MLLP: MSH-10


@dataclass
class Verdict:
    lost: list[tuple[str, str, str]] = field(default_factory=list)  # (msg, destination, effect)
    duplicate_effects: list[tuple[str, str, list[str]]] = field(default_factory=list)
    unexpected: list[tuple[str, str]] = field(default_factory=list)  # (destination, effect)
    order_violations: list[tuple[str, str, str, str]] = field(default_factory=list)
    duplicate_requests: int = 0
    recovered: int = 0
    messages: int = 0
    acked: int = 0
    effects: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicate_effects or self.unexpected
                    or self.order_violations)

    def summary(self) -> dict[str, int]:
        return {"messages": self.messages, "acked": self.acked, "effects": self.effects,
                "lost": len(self.lost), "duplicate_effects": len(self.duplicate_effects),
                "unexpected": len(self.unexpected),
                "order_violations": len(self.order_violations),
                "duplicate_requests": self.duplicate_requests, "recovered": self.recovered}


def check(sent: Iterable[Sent], received: Iterable[Received]) -> Verdict:
    sent = list(sent)
    received = list(received)
    verdict = Verdict(messages=len(sent), acked=sum(s.acked for s in sent),
                      effects=len(received))
    owner: dict[tuple[str, str], Sent] = {}
    for s in sent:
        for destination, effects in s.effects.items():
            for effect in effects:
                owner[(destination, effect)] = s
    requests: dict[tuple[str, str], set[str]] = defaultdict(set)
    seen = Counter((r.destination, r.effect, r.request) for r in received)
    verdict.duplicate_requests = sum(n - 1 for n in seen.values())
    # Per destination and key: the highest seq whose effect has arrived so far.
    newest: dict[tuple[str, str], Sent] = {}
    for r in received:
        requests[(r.destination, r.effect)].add(r.request)
        mine = owner.get((r.destination, r.effect))
        if mine is None:
            verdict.unexpected.append((r.destination, r.effect))
            continue
        s = mine
        head = newest.get((r.destination, s.key))
        if head is not None and s.seq < head.seq:
            verdict.order_violations.append((r.destination, s.key, s.msg, head.msg))
        if head is None or s.seq > head.seq:
            newest[(r.destination, s.key)] = s
    for (destination, effect), ids in requests.items():
        if len(ids) > 1:
            verdict.duplicate_effects.append((destination, effect, sorted(ids)))
    for s in sent:
        missing = [(destination, effect) for destination, effects in s.effects.items()
                   for effect in sorted(effects) if (destination, effect) not in requests]
        if s.acked:
            verdict.lost += [(s.msg, d, e) for d, e in missing]
        elif not missing and s.effects:
            verdict.recovered += 1
    return verdict
