"""Builders shared by the integration tests: configuration, events, enrolments."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hub.config import Config, config_from_dict
from hub.mappings import MappingStore
from hub.monitor import DeviceTypes
from hub.registry import EnrolmentRequest, parse_enrolment
from hub.runtime import Hub

ROOT = Path(__file__).resolve().parents[2]
SOURCE_KEY_ENV = "TEST_ALARMPLATFORM_KEY"
SOURCE_KEY = "alarm-source-key-for-tests"
WEBHOOK_SECRET_ENV = "TEST_ALARMPLATFORM_WEBHOOK_SECRET"
WEBHOOK_SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
VIEWER_ENV, VIEWER_TOKEN = "TEST_VIEWER_TOKENS", "viewer-token-for-tests"
OPERATOR_ENV, OPERATOR_TOKEN = "TEST_OPERATOR_TOKENS", "operator-token-for-tests"
ENV = {SOURCE_KEY_ENV: SOURCE_KEY, WEBHOOK_SECRET_ENV: WEBHOOK_SECRET,
       VIEWER_ENV: VIEWER_TOKEN, OPERATOR_ENV: OPERATOR_TOKEN}

# Synthetic fødselsnummer (Tenor style: month + 80), valid check digits, no real person.
PATIENTS = ["01819012012", "12894513738", "03875210059", "24923810087", "17856010082",
            "05913313722", "29824810042"]
_W1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
_W2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)


def unique_patient(rng: random.Random | None = None) -> str:
    """A fresh synthetic fødselsnummer (month + 80, valid check digits), so tests that
    share the Medplum peer never see each other's patients."""
    rng = rng or random.Random()
    while True:
        base = f"{rng.randint(1, 28):02d}{rng.randint(1, 12) + 80:02d}{rng.randint(0, 99):02d}" \
               f"{rng.randint(0, 999):03d}"
        digits = [int(c) for c in base]
        k1 = (11 - sum(w * d for w, d in zip(_W1, digits, strict=True)) % 11) % 11
        if k1 == 10:
            continue
        k2 = (11 - sum(w * d for w, d in zip(_W2, [*digits, k1], strict=True)) % 11) % 11
        if k2 != 10:
            return f"{base}{k1}{k2}"


FAST_RETRY = {"base_seconds": 0.05, "cap_seconds": 0.4, "alarm_cap_seconds": 0.4,
              "max_attempts": 4, "escalate_after_attempts": 3, "pause_seconds": 0.5}


def config_dict(db_url: str, destinations: dict[str, dict[str, Any]], *,
                routes: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "hub": {"instance": "test", "mappings_dir": str(ROOT / "mappings")},
        "database": {"url": db_url},
        "processing": {"poll_seconds": 0.05, "lease_seconds": 5},
        "admin": {"viewer_tokens_env": VIEWER_ENV, "operator_tokens_env": OPERATOR_ENV},
        "sources": {
            "alarmplatform": {"adapter": "alarmplatform", "auth": "api-key",
                              "api_key_env": SOURCE_KEY_ENV, "max_body_bytes": 65536},
            "signed": {"adapter": "alarmplatform", "auth": "standard-webhooks",
                       "webhook_secret_env": WEBHOOK_SECRET_ENV},
        },
        "destinations": {
            name: {"poll_seconds": 0.05, "retry": dict(FAST_RETRY), **settings}
            for name, settings in destinations.items()
        },
        "routes": routes if routes is not None else [
            {"name": "device-health", "match": {"categories": ["device_health"]},
             "action": "filter"},
            {"name": "alarms", "match": {"categories": ["safety_alarm"]},
             "destinations": list(destinations)},
        ],
    }
    data.update(extra)
    return data


def make_config(tmp_path: Path, data: dict[str, Any]) -> Config:
    return config_from_dict(data, tmp_path / "tryggbro.toml")


def build_hub(tmp_path: Path, db_url: str, destinations: dict[str, dict[str, Any]],
              **kwargs: Any) -> Hub:
    return Hub.build(make_config(tmp_path, config_dict(db_url, destinations, **kwargs)))


DEVICE_TYPES = DeviceTypes(MappingStore.load(Path(__file__).parents[2] / "mappings")).names


def enrolment_request(device: str, patient: str = PATIENTS[0], source: str = "alarmplatform",
                      municipality: str = "0301", **fields: Any) -> EnrolmentRequest:
    """A consented enrolment from 2020 on, through the registry's own parser."""
    record = {"source": source, "device_id": device, "device_type": "safety_alarm",
              "patient": patient, "municipality": municipality, "legal_basis": "consent",
              "valid_from": "2020-01-01T00:00:00+00:00", **fields}
    return parse_enrolment(record, device_types=DEVICE_TYPES)


def enrol(hub: Hub, device: str, patient: str = PATIENTS[0], source: str = "alarmplatform",
          municipality: str = "0301", **fields: Any) -> None:
    hub.repo.enrol([enrolment_request(device, patient, source, municipality, **fields)])


BASE_TIME = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)


def alarm_event(event_id: str, alarm_id: str, device: str = "TA-1",
                kind: str = "alarm.raised", minute: int = 0,
                steps: list[tuple[str, int]] | None = None, **alarm_extra: Any) -> dict[str, Any]:
    """A webhook body; `minute` offsets the times so later events are newer snapshots."""
    at = BASE_TIME + timedelta(minutes=minute)
    timeline = [{"step": s, "at": (BASE_TIME + timedelta(minutes=m)).isoformat()}
                for s, m in (steps if steps is not None else [("reported", 0)])]
    return {
        "eventId": event_id, "type": kind, "occurredAt": at.isoformat(),
        "alarm": {"id": alarm_id, "trigger": "button", "priority": "high",
                  "raisedAt": BASE_TIME.isoformat(),
                  "device": {"id": device, "model": "Careline GO"},
                  "handling": {"contact": "two_way_speech", "timeline": timeline},
                  **alarm_extra},
    }


def body(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode()
