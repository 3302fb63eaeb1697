"""Crash suite (reliability.md §5.2, recipe A): mixed traffic into the real `tryggbro serve`
(and, on PostgreSQL, two `tryggbro worker` processes), `kill -9` at random moments and at
named crash points, restarts, and a final check against what the peers received.

Traffic, one thread per patient, each message resent until acknowledged (as real senders
do), a patient's messages one after the other (so their order is defined):
- alarms over SOS Access (the real `sos-access` client), source `sos`;
- alarm webhooks over HTTP (alarmplatform), source `alarms`;
- dispenser webhooks (`dispenser`) and DHO uploads (`dho-json`) over HTTP;
- IHE PCD-01 ORU^R01 vital signs over MLLP (built-in `hl7v2` adapter), source `gw`.
Destinations: a recording FHIR receiver (`ehr`, every event) and a recording MLLP receiver
(`vitals`, the vital signs as ORU^R01).

Processes: SQLite — one `tryggbro serve` with its processing and dispatch child processes
(`[hub] stage_processes = true`, the default); a kill of the serve process takes its
children with it. PostgreSQL — `tryggbro serve` running intake, processing and dispatch in
one process (`stage_processes = false`) plus two `tryggbro worker` processes; any of the
three is killed.

`run_chaos(...)` is used by tests/chaos/test_chaos.py (short) and bench/chaos.py (long).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hub.domain.ids import bundle_id, resource_id
from tests.chaos.checker import Received, Sent, Verdict, check
from tests.peers.mllp_receiver import RecordingMllpReceiver
from tests.peers.receiver import RecordingReceiver, fhir_effects

ROOT = Path(__file__).resolve().parents[2]
SOURCE_KEY_ENV, SOURCE_KEY = "CHAOS_SOURCE_KEY", "chaos-source-key"
SOS_ENV, SOS_AUTH = "CHAOS_SOS_CREDENTIALS", "hxp4x9nnwxjatv8"
VIEWER_ENV, OPERATOR_ENV = "CHAOS_VIEWER_TOKENS", "CHAOS_OPERATOR_TOKENS"
PRIMARY = ("DetectedIssue", "MedicationDispense", "Observation")  # one per message
KINDS = ("sos", "alarm", "dispenser", "dho", "pcd01")

# Where a crash point fires: in the process holding intake (serve), or where processing
# and dispatch run (serve's stage children on SQLite; serve and the workers on PostgreSQL).
INTAKE_POINTS = ("after_commit_before_ack", "mid_group_commit")
STAGE_POINTS = ("after_claim", "after_send_before_mark", "mid_processing")
RANDOM = "random"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fnr(rng: random.Random) -> str:
    """A synthetic fødselsnummer (Tenor style: month + 80, valid mod-11 check digits)."""
    w1, w2 = (3, 7, 6, 1, 8, 9, 4, 5, 2), (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)
    while True:
        base = (f"{rng.randint(1, 28):02d}{rng.randint(1, 12) + 80:02d}"
                f"{rng.randint(0, 99):02d}{rng.randint(0, 999):03d}")
        d = [int(c) for c in base]
        k1 = (11 - sum(a * b for a, b in zip(w1, d, strict=True)) % 11) % 11
        if k1 == 10:
            continue
        k2 = (11 - sum(a * b for a, b in zip(w2, [*d, k1], strict=True)) % 11) % 11
        if k2 != 10:
            return f"{base}{k1}{k2}"


@dataclass
class Patient:
    n: int
    person: str

    @property
    def alarm_device(self) -> str:
        return f"CH-A-{self.n}"

    @property
    def sos_code(self) -> str:
        return f"77{self.n:05d}"

    @property
    def dispenser(self) -> str:
        return f"PP9{self.n:05d}"

    @property
    def dho_station(self) -> str:
        return f"DHO-CH-{self.n}"

    @property
    def eui(self) -> str:
        return f"0012A1FFFE{self.n:06X}"

    def enrolments(self) -> list[tuple[str, str, str]]:
        return [("alarms", self.alarm_device, "safety_alarm"),
                ("sos", self.sos_code, "safety_alarm"),
                ("dispenser", self.dispenser, "dispenser"),
                ("dho", self.dho_station, "dho_device"),
                ("gw", self.eui, "dho_device")]


# --- configuration -------------------------------------------------------------------


@dataclass
class Ports:
    http: int = field(default_factory=free_port)
    sos: int = field(default_factory=free_port)
    mllp: int = field(default_factory=free_port)


def write_config(path: Path, db_url: str, ports: Ports, fhir_url: str, mllp_port: int,
                 *, stage_processes: bool, lease_seconds: float) -> Path:
    retry = "base_seconds = 0.05\ncap_seconds = 0.5\nalarm_cap_seconds = 0.5"
    api = f'auth = "api-key"\napi_key_env = "{SOURCE_KEY_ENV}"'
    path.write_text(f"""
[hub]
instance = "chaos"
mappings_dir = "{ROOT / 'mappings'}"
stage_processes = {str(stage_processes).lower()}

[database]
url = "{db_url}"

[http]
host = "127.0.0.1"
port = {ports.http}

[admin]
viewer_tokens_env = "{VIEWER_ENV}"
operator_tokens_env = "{OPERATOR_ENV}"

[processing]
processes = 1
poll_seconds = 0.05
lease_seconds = {lease_seconds}

[sources.alarms]
adapter = "alarmplatform"
{api}

[sources.dispenser]
adapter = "dispenser"
{api}

[sources.dho]
adapter = "dho-json"
{api}

[sources.sos]
type = "sos-access"
adapter = "sos-access"
host = "127.0.0.1"
port = {ports.sos}
receiver_id = "42"
credentials_env = "{SOS_ENV}"

[sources.gw]
type = "mllp"
adapter = "hl7v2"
host = "127.0.0.1"
port = {ports.mllp}
[sources.gw.options]
default_charset = "UNICODE UTF-8"
municipality = "0301"
organisation = "974778882"
legal_basis = "agreement"
legal_basis_ref = "SA-2024-017"
hospital_organisation = "993467049"

[destinations.ehr]
type = "fhir-rest"
base_url = "{fhir_url}"
timeout_seconds = 3
poll_seconds = 0.05
lease_seconds = {lease_seconds}
[destinations.ehr.retry]
{retry}

[destinations.vitals]
type = "mllp"
host = "127.0.0.1"
port = {mllp_port}
ack_timeout_seconds = 3
connect_timeout_seconds = 2
poll_seconds = 0.05
lease_seconds = {lease_seconds}
[destinations.vitals.retry]
{retry}

[[routes]]
name = "device-health"
match = {{ categories = ["device_health"] }}
action = "filter"

[[routes]]
name = "vital-signs"
match = {{ categories = ["home_follow_up"] }}
destinations = ["ehr", "vitals"]

[[routes]]
name = "alarms-and-medication"
match = {{ categories = ["safety_alarm", "medication"] }}
destinations = ["ehr"]
""")
    return path


def environment(patients: list[Patient]) -> dict[str, str]:
    sos = ",".join(f"{p.sos_code}:{SOS_AUTH}" for p in patients)
    return {SOURCE_KEY_ENV: SOURCE_KEY, SOS_ENV: sos, VIEWER_ENV: "chaos-viewer",
            OPERATOR_ENV: "chaos-operator", "TRYGGBRO_LOG_CACHE": "0"}


def prepare_database(db_url: str, patients: list[Patient]) -> None:
    from hub.mappings import MappingStore
    from hub.monitor import DeviceTypes
    from hub.registry import parse_enrolment
    from hub.store.db import open_database, upgrade
    from hub.store.repository import Repository

    types = DeviceTypes(MappingStore.load(ROOT / "mappings")).names
    db = open_database(db_url)
    upgrade(db)
    Repository(db).enrol([
        parse_enrolment({"source": source, "device_id": device, "device_type": dtype,
                         "patient": p.person, "municipality": "0301",
                         "legal_basis": "consent", "valid_from": "2020-01-01T00:00:00+00:00"},
                        device_types=types)
        for p in patients for source, device, dtype in p.enrolments()])
    db.dispose()


# --- messages ------------------------------------------------------------------------


@dataclass
class Message:
    kind: str
    source: str
    dedup_key: str
    effects: dict[str, frozenset[str]]
    payload: Any  # what the sender sends (bytes, or the SOS reference)


def _stamp(at: datetime) -> str:
    return at.strftime("%Y%m%d%H%M%S+0000")


def build_message(kind: str, p: Patient, run: str, i: int, at: datetime) -> Message:
    """Message `i` of patient `p`, and the effects it must have at each destination."""
    tag = f"{run}-{p.n}-{i}"
    if kind == "alarm":
        event_id, alarm_id = f"ev-{tag}", f"ALM-{tag}"
        body: dict[str, Any] = {
                "eventId": event_id, "type": "alarm.raised", "occurredAt": at.isoformat(),
                "alarm": {"id": alarm_id, "trigger": "button", "priority": "high",
                          "raisedAt": at.isoformat(),
                          "device": {"id": p.alarm_device, "model": "Careline GO"},
                          "handling": {"contact": "two_way_speech",
                                       "timeline": [{"step": "reported",
                                                     "at": at.isoformat()}]}}}
        rid = resource_id("alarms", alarm_id, "DetectedIssue")
        return Message(kind, "alarms", event_id, {"ehr": frozenset([f"DetectedIssue/{rid}"])},
                       json.dumps(body).encode())
    if kind == "sos":
        dedup = f"alarm:{p.sos_code}:AL:S-{tag}"
        rid = resource_id("sos", dedup, "DetectedIssue")
        return Message(kind, "sos", dedup, {"ehr": frozenset([f"DetectedIssue/{rid}"])},
                       f"S-{tag}")
    if kind == "dispenser":
        event_id, dose_id = f"evd-{tag}", f"{p.dispenser}-{tag}"
        body = {"eventId": event_id, "eventType": "dose.dispensed",
                "timestamp": at.isoformat(),
                "device": {"serialNumber": p.dispenser, "model": "Evondos E300",
                           "type": "Multidosedispenser", "location": "Kjøkken"},
                "dose": {"doseId": dose_id, "plannedAt": at.isoformat(),
                         "handedOverAt": at.isoformat(),
                         "medicationText": "Morgendose (multidose)"}}
        rid = resource_id("dispenser", f"dose:{dose_id}", "MedicationDispense")
        return Message(kind, "dispenser", event_id,
                       {"ehr": frozenset([f"MedicationDispense/{rid}"])},
                       json.dumps(body).encode())
    if kind == "dho":
        message_id, reading_id = f"dho-{tag}", f"r-{tag}"
        body = {"messageId": message_id, "sentAt": at.isoformat(),
                "station": {"id": p.dho_station, "model": "CareTab 3"},
                "readings": [{"readingId": reading_id, "kind": "oxygenSaturation",
                              "takenAt": at.isoformat(), "value": 96, "unit": "%"}]}
        rid = resource_id("dho", reading_id, "Observation")
        return Message(kind, "dho", message_id,
                       {"ehr": frozenset([f"Observation/{rid}"]),
                        "vitals": frozenset([bundle_id("dho", message_id, 0)])},
                       json.dumps(body).encode())
    if kind == "pcd01":
        control = f"P{tag}"[:20]
        sender = f"ChaosGW^{p.eui}^EUI-64"
        t = _stamp(at)
        text = "\r".join([
            f"MSH|^~\\&|{sender}|Hjemmetjenesten|TRYGGBRO|OSLO|{t}||ORU^R01^ORU_R01|{control}"
            "|P|2.6|||||||UNICODE UTF-8",
            f"PID|||{p.person}^^^^NNNOR",
            f"OBR|1|{control}^ChaosGW|{control}^ChaosGW|182777000^monitoring of patient"
            f"^SNOMED-CT|||{t}",
            f"OBX|1|CWE|65573^MDC_DEV_SYS_PM_MDS^MDC|1|||||||X|||||||{p.eui}^^{p.eui}^EUI-64",
            "OBX|2|CWE|69642^MDC_DEV_SPEC_PROFILE_PULS_OXIM^MDC|1.1|||||||X",
            f"OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|96|262688^MDC_DIM_PERCENT^MDC"
            f"|||||R|||{t}"])
        dedup = f"{sender}|Hjemmetjenesten|{control}"
        when = at.replace(microsecond=0).astimezone(UTC)
        rid = resource_id("gw", f"{p.eui}|150456|{when.isoformat()}", "Observation")
        return Message(kind, "gw", dedup, {"ehr": frozenset([f"Observation/{rid}"]),
                                           "vitals": frozenset([bundle_id("gw", dedup, 0)])},
                       text.encode())
    raise ValueError(kind)


# --- senders -------------------------------------------------------------------------


class Senders:
    """One thread per patient: a message at a time, resent until acknowledged."""

    def __init__(self, ports: Ports, patients: list[Patient], run: str, seed: int,
                 pause: float = 0.4, backlog: Callable[[], int] = lambda: 0,
                 max_backlog: int = 100) -> None:
        self.ports = ports
        self.patients = patients
        self.run = run
        self.seed = seed
        self.pause = pause
        # A crash suite, not a load test: senders hold new messages back while more than
        # `max_backlog` acknowledged effects are still undelivered (a killed gateway on a
        # busy machine would otherwise face an ever-growing backlog and prove nothing new).
        self.backlog = backlog
        self.max_backlog = max_backlog
        self.expected_effects = 0
        self.sent: list[tuple[Sent, Message]] = []
        self.attempts = 0
        self.resent = 0  # messages that needed more than one attempt
        self.refused: list[str] = []  # answers saying the message is wrong (harness bug)
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.finishing = threading.Event()
        self.deadline = float("inf")  # after finishing: give up resending at this time
        logging.getLogger("sos_access").setLevel(logging.WARNING)  # it logs the password
        self.threads = [threading.Thread(target=self._patient, args=(p,), daemon=True)
                        for p in patients]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self, timeout: float) -> bool:
        self.deadline = time.monotonic() + timeout
        self.finishing.set()
        for t in self.threads:
            t.join(timeout=max(0.1, self.deadline - time.monotonic() + 5))
        return not any(t.is_alive() for t in self.threads)

    def _patient(self, p: Patient) -> None:
        rng = random.Random(self.seed * 1000 + p.n)
        base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        i = 0
        while not self.finishing.is_set():
            if self.backlog() > self.max_backlog:
                time.sleep(0.1)
                continue
            i += 1
            kind = rng.choice(KINDS)
            msg = build_message(kind, p, self.run, i, base + timedelta(seconds=i))
            acked, tries = self._until_acked(msg, p)
            with self.lock:
                self.expected_effects += sum(len(e) for e in msg.effects.values()) if acked else 0
                self.attempts += tries
                self.resent += tries > 1
                self.sent.append((Sent(f"{msg.source}:{msg.dedup_key}", p.person, i, acked,
                                       msg.effects), msg))
            time.sleep(self.pause * rng.random() * 2)

    def _until_acked(self, msg: Message, p: Patient) -> tuple[bool, int]:
        tries = 0
        while time.monotonic() < self.deadline:
            tries += 1
            try:
                if self._send(msg, p):
                    return True, tries
            except Exception as exc:  # any failure: a real sender resends
                self.errors[type(exc).__name__] += 1
            time.sleep(0.1)
        return False, tries

    def _send(self, msg: Message, p: Patient) -> bool:
        if msg.kind == "sos":
            return self._sos(msg, p)
        if msg.kind == "pcd01":
            return self._mllp(msg)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports.http}/ingest/{msg.source}", method="POST",
            data=msg.payload,
            headers={"x-api-key": SOURCE_KEY, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=3) as r:
                return bool(r.status in (200, 202))
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 401, 403, 404, 413, 415, 422):
                self.refused.append(f"{msg.kind} HTTP {exc.code}: {exc.read()[:300]!r}")
            else:
                self.errors[f"HTTP {exc.code}"] += 1
            return False

    def _sos(self, msg: Message, p: Patient) -> bool:
        from sos_access.client import SOSAccessClient  # type: ignore[import-untyped]

        client = SOSAccessClient(transmitter_code=p.sos_code, transmitter_type="SV300",
                                 authentication=SOS_AUTH, receiver_id="42",
                                 receiver_address=("127.0.0.1", self.ports.sos),
                                 use_single_receiver=True)
        response = client.send_alarm(event_code="MA", reference=msg.payload)
        if response.status != 0:
            self.refused.append(f"sos status {response.status}: {response.info}")
        return bool(response.status == 0)

    def _mllp(self, msg: Message) -> bool:
        with socket.create_connection(("127.0.0.1", self.ports.mllp), timeout=3) as sock:
            sock.sendall(b"\x0b" + msg.payload + b"\x1c\x0d")
            answer = b""
            while b"\x1c\x0d" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("closed before the ACK")
                answer += chunk
        text = answer.strip(b"\x0b\x1c\x0d").decode("utf-8", "replace")
        msa = next((s.split("|") for s in text.split("\r") if s.startswith("MSA|")), [])
        code = msa[1] if len(msa) > 1 else ""
        if code in ("AA", "CA"):
            return True
        if code in ("AR", "CR"):
            self.refused.append(f"pcd01 {text[-300:]!r}")
        return False


# --- processes -----------------------------------------------------------------------


class HubProcess:
    """`tryggbro serve` or `tryggbro worker` as a subprocess; kill -9, restart."""

    def __init__(self, name: str, command: str, config: Path, env: dict[str, str],
                 log: Path, http_port: int | None = None) -> None:
        self.name = name
        self.command = command
        self.config = config
        self.env = env
        self.log = log
        self.http_port = http_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.crash_at: str | None = None

    def start(self, crash_at: str | None = None, timeout: float = 60.0) -> None:
        env = {**os.environ, **self.env}
        env.pop("TRYGGBRO_CRASH_AT", None)
        if crash_at:
            env["TRYGGBRO_CRASH_AT"] = crash_at
        self.crash_at = crash_at
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub.cli", "--config", str(self.config),
                 self.command], stdout=out, stderr=subprocess.STDOUT, env=env)
        if self.http_port is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code == -signal.SIGKILL and crash_at:
                return  # the crash point fired while starting
            if code is not None:
                raise RuntimeError(f"{self.name} exited with {code}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.http_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready in {timeout} s:\n"
                           f"{self.log.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def child_kills(self) -> int:
        """Stage children (of serve) that died of SIGKILL, from the supervisor's log."""
        try:
            return self.log.read_text(errors="replace").count('"returncode": -9')
        except OSError:
            return 0


# --- the run -------------------------------------------------------------------------


@dataclass
class ChaosReport:
    database: str
    cycles: int
    seconds: float
    kills: Counter[str]  # "point@process" -> kills
    not_reached: Counter[str]
    verdict: Verdict
    journal: Counter[str]  # state of each acknowledged message's journal row
    senders: dict[str, Any]

    @property
    def ok(self) -> bool:
        bad_journal = {k: n for k, n in self.journal.items()
                       if not k.startswith(("processed", "pending"))}
        return self.verdict.ok and not bad_journal and not self.senders["refused"]

    def as_dict(self) -> dict[str, Any]:
        return {"database": self.database, "cycles": self.cycles,
                "seconds": round(self.seconds, 1), "kills": dict(sorted(self.kills.items())),
                "kills_total": sum(self.kills.values()),
                "crash_points_not_reached": dict(self.not_reached),
                "verdict": self.verdict.summary(), "journal": dict(self.journal),
                "senders": self.senders, "ok": self.ok}


class Collector:
    """Takes what the peers received, in arrival order, as `Received` effects."""

    def __init__(self, fhir: RecordingReceiver, mllp: RecordingMllpReceiver) -> None:
        self.fhir = fhir
        self.mllp = mllp
        self.received: list[Received] = []
        self.distinct: set[tuple[str, str]] = set()
        self._seen = 0
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def poll(self) -> list[Received]:
        with self._lock:
            return self._poll()

    def _poll(self) -> list[Received]:
        for request in self.fhir.take():
            for url in fhir_effects(request):
                if url.split("/")[0] in PRIMARY:
                    self.received.append(Received("ehr", url, url))
        for m in self.mllp.take():
            self.received.append(Received("vitals", m.obr3, m.control_id))
        for r in self.received[self._seen:]:
            self.distinct.add((r.destination, r.effect))
            self.counts[r.destination] += 1
        self._seen = len(self.received)
        return self.received


def journal_states(db_url: str, messages: list[tuple[Sent, Message]]) -> Counter[str]:
    """For every acknowledged message: its journal state, and `pending` when deliveries
    are still open. Missing = acknowledged but not in the journal."""
    from sqlalchemy import text

    from hub.store.db import open_database

    db = open_database(db_url)
    try:
        with db.engine.connect() as conn:
            rows = {(r.source, r.dedup_key): (r.id, r.state) for r in conn.execute(
                text("SELECT id, source, dedup_key, state FROM journal"))}
            open_deliveries = Counter(r.journal_id for r in conn.execute(text(
                "SELECT journal_id FROM delivery WHERE state IN ('pending', 'leased')")))
            dead = Counter(r.journal_id for r in conn.execute(text(
                "SELECT journal_id FROM delivery WHERE state = 'dead'")))
    finally:
        db.dispose()
    states: Counter[str] = Counter()
    for sent, msg in messages:
        if not sent.acked:
            continue
        row = rows.get((msg.source, msg.dedup_key))
        if row is None:
            states["missing"] += 1
            continue
        journal_id, state = row
        if state in ("received", "processing") or open_deliveries[journal_id]:
            states["pending"] += 1
        elif dead[journal_id]:
            states[f"{state}+dead"] += 1
        else:
            states[state] += 1
    return states


def run_chaos(workdir: Path, cycles: int, *, db_url: str | None = None, seed: int = 2026,
              patients: int = 8, log: Callable[[str], None] = print,
              drain_seconds: float = 180.0, max_seconds: float | None = None) -> ChaosReport:
    """Run `cycles` kill cycles; SQLite in `workdir` unless `db_url` (PostgreSQL) is given.

    `max_seconds`: stop starting new cycles after this long (the report gives the cycles
    actually run), so a long run fits a time slot and still ends with a verdict."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    postgres = db_url is not None and db_url.startswith("postgresql")
    db_url = db_url or f"sqlite:///{workdir}/hub.db"
    people = [Patient(n, fnr(rng)) for n in range(1, patients + 1)]
    prepare_database(db_url, people)
    ports = Ports()
    env = environment(people)
    started = time.monotonic()
    kills: Counter[str] = Counter()
    not_reached: Counter[str] = Counter()
    with RecordingReceiver() as fhir, RecordingMllpReceiver() as mllp:
        config = write_config(workdir / "tryggbro.toml", db_url, ports, f"{fhir.url}/fhir",
                              mllp.port, stage_processes=not postgres,
                              lease_seconds=3 if postgres else 5)
        serve = HubProcess("serve", "serve", config,
                           {**env, "_CHAOS_STAGE_CHILDREN": "0" if postgres else "1"},
                           workdir / "serve.log", ports.http)
        procs = [serve]
        if postgres:
            procs += [HubProcess(f"worker{i}", "worker", config, env,
                                 workdir / f"worker{i}.log") for i in (1, 2)]
        collector = Collector(fhir, mllp)
        senders = Senders(ports, people, run=f"{seed}", seed=seed,
                          backlog=lambda: senders.expected_effects - len(collector.distinct))
        try:
            plan = _plan(rng, procs, serve)
            for proc in procs:
                _start(proc, plan, rng)
            senders.start()
            done = 0
            for cycle in range(1, cycles + 1):
                last = cycle == cycles or (
                    max_seconds is not None and time.monotonic() - started > max_seconds)
                plan = _cycle(rng, plan, procs, kills, not_reached,
                              lambda: _progress(collector), last=last)
                collector.poll()
                done = cycle
                if cycle % 10 == 0 or last:
                    log(f"[{'pg' if postgres else 'sqlite'}] cycle {cycle}/{cycles}: "
                        f"{len(senders.sent)} messages, {len(collector.received)} effects, "
                        f"kills {sum(kills.values())}")
                if last:
                    break
            senders.finish(timeout=30)
            _drain(collector, senders, drain_seconds)
        finally:
            senders.finishing.set()
            senders.deadline = 0
            for proc in procs:
                proc.stop()
            for proc in procs:
                proc.kill()
        collector.poll()
    messages = list(senders.sent)
    verdict = check([s for s, _ in messages], collector.received)
    journal = journal_states(db_url, messages)
    report = ChaosReport(
        "postgresql" if postgres else "sqlite", done, time.monotonic() - started, kills,
        not_reached, verdict, journal,
        {"attempts": senders.attempts, "resent_messages": senders.resent,
         "errors": dict(senders.errors), "refused": senders.refused[:10],
         "by_kind": dict(Counter(m.kind for _, m in messages))})
    log(json.dumps(report.as_dict(), indent=1))
    return report


def _progress(collector: Collector) -> tuple[int, ...]:
    collector.poll()
    return tuple(collector.counts[d] for d in ("ehr", "vitals"))


def _drain(collector: Collector, senders: Senders, timeout: float) -> None:
    """Wait until every acknowledged message has all its effects (or the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {(r.destination, r.effect) for r in collector.poll()}
        if all((d, e) in got for s, _ in senders.sent if s.acked
               for d, effects in s.effects.items() for e in effects):
            time.sleep(1.0)  # late resends (duplicates, order breaks) still count
            collector.poll()
            return
        time.sleep(0.3)


@dataclass
class Plan:
    point: str  # RANDOM or a crash point
    target: HubProcess
    before: int = 0  # stage-child kills in the target's log when it was armed

    @property
    def child(self) -> bool:
        """A stage point on SQLite fires in a stage child of serve, not in serve itself."""
        return self.target.command == "serve" and self.point in STAGE_POINTS \
            and self.target.env.get("_CHAOS_STAGE_CHILDREN") == "1"


def _plan(rng: random.Random, procs: list[HubProcess], restarted: HubProcess | None) -> Plan:
    """The next kill. A crash point is armed in the process being (re)started now, so that
    every cycle costs one start; random kills hit any process."""
    point = rng.choice([RANDOM, RANDOM, *INTAKE_POINTS, *STAGE_POINTS])
    if point == RANDOM or restarted is None:
        return Plan(RANDOM, rng.choice(procs))
    if point in INTAKE_POINTS and restarted.command != "serve":
        point = rng.choice(STAGE_POINTS)  # a worker has no intake
    return Plan(point, restarted)


def _start(proc: HubProcess, plan: Plan, rng: random.Random) -> None:
    armed = f"{plan.point}:{rng.randint(1, 3)}" if plan.point != RANDOM \
        and plan.target is proc else None
    proc.start(crash_at=armed)


def _cycle(rng: random.Random, plan: Plan, procs: list[HubProcess], kills: Counter[str],
           not_reached: Counter[str], progress: Callable[[], tuple[int, ...]],
           last: bool) -> Plan:
    """Carry out one kill as planned, restart the process, return the next plan.

    A random kill waits first until every peer received something new since the last
    restart (at most 20 s): on a busy machine a restarted process needs seconds before it
    works, and a suite that only ever kills processes while they start proves little."""
    target = plan.target
    if plan.point == RANDOM:
        mark, deadline = progress(), time.monotonic() + 20
        while any(a == b for a, b in zip(progress(), mark, strict=True)) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 1.0))
        target.kill()
        kills[f"{RANDOM}@{target.command}"] += 1
    else:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (target.child_kills() > plan.before) if plan.child else not target.alive():
                where = "stage child" if plan.child else target.command
                kills[f"{plan.point}@{where}"] += 1
                break
            time.sleep(0.05)
        else:
            not_reached[plan.point] += 1
        if target.alive():  # a stage child died (or the point was not reached): serve too
            time.sleep(rng.uniform(0.0, 0.3))
            target.kill()
            kills[f"{RANDOM}@{target.command}"] += 1
    # After the last kill everything runs unarmed, so that the backlog drains.
    following = Plan(RANDOM, target) if last else _plan(rng, procs, target)
    if following.point != RANDOM:
        following.before = target.child_kills()
    _start(target, following, rng)
    return following
