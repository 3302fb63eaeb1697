"""The `tryggbro` command line.

Every command reads the configuration given with `--config` (or $TRYGGBRO_CONFIG, or
./tryggbro.toml). Errors print one clear line naming the file and key and exit with 2.
Plugins add commands through `hub_register_commands`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hub import __version__
from hub.config import DEFAULT_CONFIG_ENV, Config, load_config, require_env
from hub.errors import HubError
from hub.logging import configure_logging
from hub.monitor import DeviceTypes, outbox_alerts
from hub.plugins import PluginHost
from hub.registry import (
    PERSON_TYPES,
    EnrolmentRequest,
    RecordError,
    parse_csv,
    parse_enrolment,
    parse_time,
)
from hub.stages import STAGES, become_stage_process

if TYPE_CHECKING:
    from hub.runtime import Hub

F = TypeVar("F", bound=Callable[..., Any])


class State:
    def __init__(self, config_path: str | None, plugins: PluginHost) -> None:
        self.config_path = config_path
        self.plugins = plugins
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def hub(self, *, own: bool = False, with_sources: bool = False) -> Any:
        from hub.runtime import Hub

        return Hub.build(self.config, plugins=self.plugins, own=own, with_sources=with_sources)


pass_state = click.make_pass_decorator(State)


class HubGroup(click.Group):
    """Turns expected errors into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HubError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=HubGroup)
@click.option("-c", "--config", "config_path", envvar=DEFAULT_CONFIG_ENV,
              type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default: $TRYGGBRO_CONFIG or ./tryggbro.toml).")
@click.version_option(__version__, prog_name="tryggbro")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Tryggbro: welfare-technology events in, VKP R4 FHIR out, nothing lost."""
    if ctx.obj is None:
        plugins = PluginHost()
        plugins.load_entry_points()
        ctx.obj = State(config_path, plugins)
    else:
        ctx.obj.config_path = config_path


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S%z") if value else "-"


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


# ----------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------


def _run(state: State, *, own: bool = True, **run: Any) -> None:
    config = state.config
    key_env = config.logging.redaction_key_env
    key = require_env(config, "logging.redaction_key_env", key_env).encode() if key_env else None
    configure_logging(config.logging.level, redaction_key=key)
    hub = state.hub(own=own, with_sources=bool(run.get("serve_http")))
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(hub.run(**run))
        else:
            uvloop.run(hub.run(**run))
    finally:
        hub.close()


@cli.command()
@click.option("--host", default=None, help="Override [http].host.")
@click.option("--port", type=int, default=None, help="Override [http].port.")
@pass_state
def serve(state: State, host: str | None, port: int | None) -> None:
    """Run the gateway: HTTP intake and admin API, processing and dispatch, in one process."""
    if host or port is not None:
        http = state.config.http.model_copy(update={k: v for k, v in
                                                    (("host", host), ("port", port)) if v})
        state._config = state.config.model_copy(update={"http": http})
    _run(state, serve_http=True, stage_processes=state.config.hub.stage_processes)


@cli.command()
@pass_state
def worker(state: State) -> None:
    """Run processing and dispatch only (several of them share a PostgreSQL database)."""
    _run(state, serve_http=False)


@cli.command(hidden=True)
@click.argument("stage_name", metavar="STAGE", type=click.Choice(STAGES))
@click.option("--parent", type=int, required=True)
@click.option("--wake-fd", type=int)
@click.option("--notify-fd", type=int)
@pass_state
def stage(state: State, stage_name: str, parent: int, wake_fd: int | None,
          notify_fd: int | None) -> None:
    """One stage of a `serve` process group (started by serve, not by hand)."""
    become_stage_process(parent)
    _run(state, own=False, serve_http=False, stages=(stage_name,), wake_fd=wake_fd,
         notify_fd=notify_fd)


# ----------------------------------------------------------------------------------------
# Looking
# ----------------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def plugins(state: State, as_json: bool) -> None:
    """List loaded plugins with their versions and the hooks each implements."""
    infos = state.plugins.plugins()
    if as_json:
        click.echo(_dump([{"name": p.name, "distribution": p.distribution,
                           "version": p.version, "builtin": p.builtin, "hooks": list(p.hooks)}
                          for p in infos]))
        return
    click.echo(_table([(p.name, p.distribution, p.version, ", ".join(p.hooks)) for p in infos],
                      ("plugin", "distribution", "version", "hooks")))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def status(state: State, as_json: bool) -> None:
    """Messages per state, deliveries per destination and state, oldest pending age."""
    hub = state.hub()
    try:
        report = hub.repo.status()
    finally:
        hub.close()
    if as_json:
        alerts = outbox_alerts(report, hub.config.monitor)
        click.echo(_dump({**report.as_dict(), "outbox_alerts": {
            name: a.as_dict() for name, a in sorted(alerts.items())}}))
        return
    click.echo("messages:")
    for st, n in sorted(report.messages.items()):
        click.echo(f"  {st:<12} {n}")
    if report.oldest_unprocessed_seconds is not None:
        click.echo(f"  oldest unprocessed: {report.oldest_unprocessed_seconds:.1f} s")
    click.echo("deliveries:")
    rows = []
    for dest in sorted(set(hub.config.destinations) | set(report.deliveries)):
        per = report.deliveries.get(dest, {})
        oldest = report.oldest_pending_seconds.get(dest)
        awaiting = per.get("awaiting_receipt", 0)
        overdue = report.receipts_overdue.get(dest, 0)
        rows.append((dest, per.get("pending", 0), per.get("leased", 0),
                     f"{awaiting} ({overdue} overdue)" if overdue else awaiting,
                     per.get("delivered", 0),
                     per.get("dead", 0), f"{oldest:.1f} s" if oldest is not None else "-",
                     report.escalated.get(dest, 0),
                     "paused" if dest in report.paused else ""))
    click.echo(_table(rows, ("  destination", "pending", "leased", "awaiting receipt",
                             "delivered", "dead", "oldest pending", "escalated", "")))
    for dest, states in sorted(report.awaiting_by_transport_state.items()):
        if set(states) != {"-"}:
            click.echo(f"  {dest} awaiting: " + ", ".join(
                f"{n} {st}" for st, n in sorted(states.items())))
    for dest, info in report.paused.items():
        click.echo(f"  {dest} paused until {_when(info['until'])}: {info['reason']}")
    for dest, alert in sorted(outbox_alerts(report, hub.config.monitor).items()):
        click.echo(f"  ALERT {dest}: oldest {'alarm ' if alert.alarm else ''}delivery waiting "
                   f"{alert.age_seconds:.0f} s (threshold {alert.threshold_seconds:.0f} s)")


def _parse_time(_ctx: click.Context, _param: click.Parameter, value: str | None
                ) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"expected ISO 8601 such as 2026-11-20T21:00, got {value!r}"
                                 ) from None
    return parsed if parsed.tzinfo else parsed.astimezone()  # naive: local time


@cli.command()
@click.option("--source")
@click.option("--dedup-key")
@click.option("--state", "state_", type=click.Choice(
    ["received", "processing", "processed", "filtered", "failed", "unmatched"]))
@click.option("--since", callback=_parse_time, help="Received at or after (ISO 8601, local).")
@click.option("--until", callback=_parse_time, help="Received before (ISO 8601, local).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_state
def messages(state: State, source: str | None, dedup_key: str | None, state_: str | None,
             since: datetime | None, until: datetime | None, limit: int, as_json: bool) -> None:
    """Search journaled messages (newest first)."""
    hub = state.hub()
    try:
        items = hub.repo.search_messages(source=source, dedup_key=dedup_key, state=state_,
                                         since=since, until=until, limit=limit)
    finally:
        hub.close()
    if as_json:
        click.echo(_dump(items))
        return
    rows = [(m["id"], _when(m["received_at"]), m["source"], m["dedup_key"], m["state"],
             ",".join(f"{k}:{v}" for k, v in sorted(m["deliveries"].items())) or "-",
             (m["reason"] or "")[:60]) for m in items]
    click.echo(_table(rows, ("id", "received", "source", "dedup key", "state", "deliveries",
                             "reason")))


@cli.command()
@click.argument("message_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.option("--body", is_flag=True, help="Also print the body as received (personal data).")
@click.option("--fhir", is_flag=True, help="Also print the mapped FHIR Bundles (personal data).")
@pass_state
def show(state: State, message_id: int, as_json: bool, body: bool, fhir: bool) -> None:
    """One message's trace through every stage and delivery attempt."""
    hub = state.hub()
    try:
        trace = hub.repo.message_trace(message_id, include_body=body)
        bundles = hub.repo.event_payloads(message_id) if fhir else []
    finally:
        hub.close()
    if trace is None:
        raise click.ClickException(f"no message with id {message_id}")
    if fhir:
        trace["bundles"] = [json.loads(p) for _, p in bundles if p]
    if as_json:
        click.echo(_dump(trace))
        return
    t = trace
    click.echo(f"message {t['id']}  source={t['source']}  dedup_key={t['dedup_key']}  "
               f"state={t['state']}")
    click.echo(f"  received {_when(t['received_at'])}  processed {_when(t['processed_at'])}  "
               f"{t['body_bytes']} bytes {t['content_type']}  sha256 {t['body_sha256'][:16]}")
    if t["reason"]:
        click.echo(f"  reason: {t['reason']}")
    for e in t["events"]:
        extra = f" filtered by {e['filtered_by']}" if e["filtered_by"] else ""
        click.echo(f"  event {e['seq']}: {e['kind']} {e['category']} code={e['code']} "
                   f"device={e['device_id']} {e['state']}{extra}")
    for d in t["deliveries"]:
        click.echo(f"  delivery {d['id']} -> {d['destination']}: {d['state']} "
                   f"(attempts {d['attempts']}, priority {d['priority']}"
                   f"{', escalated' if d['escalated'] else ''})")
        if d.get("correlation_id"):
            click.echo(f"    correlation id {d['correlation_id']}, receipt due by "
                       f"{_when(d['receipt_deadline'])}")
        if d.get("transport_state"):
            click.echo(f"    transport {d['transport_state']} (transport id "
                       f"{d.get('transport_ref') or '-'})")
        if d["last_error"]:
            label = "last error" if d["state"] != "delivered" else "receipt errors"
            click.echo(f"    {label}: {d['last_error']}")
        for a in d["attempt_log"]:
            code = f" HTTP {a['status_code']}" if a["status_code"] else ""
            click.echo(f"    attempt {a['number']} {_when(a['started_at'])} {a['outcome']}{code}"
                       f" {a['detail'] or ''}".rstrip())
    if body:
        click.echo("body:")
        click.echo(t["body"])
    for bundle in trace.get("bundles", []):
        click.echo(_dump(bundle))


# ----------------------------------------------------------------------------------------
# Acting
# ----------------------------------------------------------------------------------------


@cli.group()
def outbox() -> None:
    """Operate on deliveries."""


@outbox.command("retry")
@click.argument("delivery_id", type=int, required=False)
@click.option("--all-dead", is_flag=True, help="Retry every dead delivery.")
@click.option("--destination", help="With --all-dead: only this destination.")
@pass_state
def outbox_retry(state: State, delivery_id: int | None, all_dead: bool,
                 destination: str | None) -> None:
    """Make a dead (or backing-off) delivery due now."""
    if (delivery_id is None) == (not all_dead):
        raise click.UsageError("give a DELIVERY_ID or --all-dead (not both)")
    hub = state.hub()
    try:
        if all_dead:
            n = hub.repo.retry_all_dead(destination)
            click.echo(f"{n} dead deliveries queued for retry")
            return
        assert delivery_id is not None
        result = hub.repo.retry_delivery(delivery_id)
    finally:
        hub.close()
    if result != "retrying":
        raise click.ClickException(f"delivery {delivery_id}: {result.replace('-', ' ')}")
    click.echo(f"delivery {delivery_id} queued for retry")


@cli.command()
@click.argument("message_id", type=int)
@pass_state
def reprocess(state: State, message_id: int) -> None:
    """Run a failed, unmatched or filtered message through the pipeline again."""
    hub = state.hub()
    try:
        result = hub.repo.reprocess(message_id)
    finally:
        hub.close()
    if result == "not-found":
        raise click.ClickException(f"no message with id {message_id}")
    if result != "queued":
        raise click.ClickException(
            f"message {message_id} is {result.removeprefix('state-')}; only failed, unmatched "
            "or filtered messages are reprocessed (use `tryggbro outbox retry` for deliveries)")
    click.echo(f"message {message_id} queued for processing")


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--update", is_flag=True,
              help="Write the produced output as the new golden files (review the diff!).")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a JUnit XML report to this file.")
@click.option("--use-config", is_flag=True,
              help="Use the configuration's routes and mappings instead of the fixture's.")
@pass_state
def replay(state: State, path: Path, update: bool, junit: Path | None, use_config: bool) -> None:
    """Feed recorded fixtures through the pipeline (no delivery) and compare with golden output.

    PATH is a fixture folder (with fixture.toml) or a folder of such folders. Exits 1 on
    any difference.
    """
    from hub.replay import replay_path

    configure_logging("error")
    config = state.config if use_config else None
    report = replay_path(path, plugins=state.plugins, config=config, update=update)
    click.echo(report.format())
    if junit:
        junit.write_text(report.junit_xml(), encoding="utf-8")
    if not report.ok and not update:
        sys.exit(1)


# ----------------------------------------------------------------------------------------
# Device registry: enrol with a legal basis, end, list, bulk import
# ----------------------------------------------------------------------------------------


@cli.group()
def devices() -> None:
    """The device registry: which patient a device serves, where, and on which legal basis."""


def _enrol_requests(hub: Hub, requests: list[EnrolmentRequest]) -> None:
    unknown = sorted({r.device.source for r in requests} - set(hub.config.sources))
    if unknown:
        raise click.ClickException(f"no source named {', '.join(map(repr, unknown))} in "
                                   f"{hub.config.path}")
    from hub.store.repository import RegistryConflict

    try:
        ids = hub.repo.enrol(requests)
    except RegistryConflict as exc:
        raise click.ClickException("; ".join(exc.problems)) from None
    requeued = sum(hub.repo.requeue_unmatched(s) for s in sorted({r.device.source
                                                                  for r in requests}))
    click.echo(f"enrolled {len(ids)} device(s) (enrolment id {', '.join(map(str, ids))}); "
               f"{requeued} held message(s) queued again")


@devices.command("enrol")
@click.argument("source")
@click.argument("device_id")
@click.option("--type", "device_type", required=True,
              help="Kind of device (mappings/device-types.toml): safety_alarm, dispenser …")
@click.option("--patient", required=True,
              help="Fødselsnummer, D-number, FHN or H-number (11 digits, mod-11 checked).")
@click.option("--id-type", type=click.Choice(sorted(PERSON_TYPES)),
              help="Inferred from the number when not given (FHN must be given).")
@click.option("--assigner", help="Org.nr that issued the H-number (required for hnr).")
@click.option("--municipality", required=True, help="Kommunenummer (4 digits).")
@click.option("--organisation", help="Organisation number (9 digits).")
@click.option("--care-team")
@click.option("--consent", "basis", flag_value="consent",
              help="Legal basis: the patient's consent (samtykke).")
@click.option("--vedtak", "vedtak", metavar="REFERENCE",
              help="Legal basis: an administrative decision, by its case reference.")
@click.option("--vendor")
@click.option("--model")
@click.option("--heartbeat-minutes", type=int,
              help="Expected contact interval; silence beyond it raises 'no contact'.")
@click.option("--plan", "plans", multiple=True,
              help="DHO measurement plan, e.g. spo2:92..100@24h (repeatable).")
@click.option("--valid-from", help="ISO 8601 with offset. Default: now.")
@click.option("--valid-to", help="ISO 8601 with offset. Default: open-ended.")
@pass_state
def devices_enrol(state: State, source: str, device_id: str, device_type: str, patient: str,
                  id_type: str | None, assigner: str | None, municipality: str,
                  organisation: str | None, care_team: str | None, basis: str | None,
                  vedtak: str | None, vendor: str | None, model: str | None,
                  heartbeat_minutes: int | None, plans: tuple[str, ...],
                  valid_from: str | None, valid_to: str | None) -> None:
    """Enrol DEVICE_ID of SOURCE for a patient. Nothing is routed without a legal basis:
    give --consent or --vedtak REFERENCE. Held (unmatched) messages are re-run."""
    if basis and vedtak:
        raise click.UsageError("give either --consent or --vedtak, not both")
    record = {
        "source": source, "device_id": device_id, "device_type": device_type,
        "patient": patient, "patient_type": id_type, "patient_assigner": assigner,
        "municipality": municipality, "organisation": organisation, "care_team": care_team,
        "legal_basis": "vedtak" if vedtak else basis, "legal_basis_ref": vedtak,
        "vendor": vendor, "model": model, "heartbeat_minutes": heartbeat_minutes,
        "plans": ";".join(plans), "valid_from": valid_from, "valid_to": valid_to,
    }
    hub = state.hub()
    try:
        try:
            request = parse_enrolment(record, device_types=DeviceTypes(hub.mappings).names)
        except RecordError as exc:
            raise click.ClickException("; ".join(exc.problems)) from None
        _enrol_requests(hub, [request])
    finally:
        hub.close()


@devices.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--check", is_flag=True, help="Check the file only; enrol nothing.")
@pass_state
def devices_import(state: State, csv_file: Path, check: bool) -> None:
    """Enrol every row of CSV_FILE, or nothing if any row is bad (each bad row is named by
    its line number). Columns: see docs/registry.md."""
    try:
        text = csv_file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{csv_file}: not UTF-8 text (byte {exc.start}); save the "
                                   "file as CSV UTF-8") from None
    hub = state.hub()
    try:
        report = parse_csv(text, device_types=DeviceTypes(hub.mappings).names)
        unknown = sorted({r.device.source for r in report.requests} - set(hub.config.sources))
        report.errors.extend(f"source {s!r} is not configured in {hub.config.path}"
                             for s in unknown)
        if report.errors:
            for line in report.errors:
                click.echo(f"{csv_file}: {line}", err=True)
            raise click.ClickException(f"{len(report.errors)} problem(s); nothing was imported")
        if check:
            click.echo(f"{csv_file}: {len(report.requests)} row(s) OK; nothing imported (--check)")
            return
        _enrol_requests(hub, report.requests)
    finally:
        hub.close()


@devices.command("end")
@click.argument("enrolment_id", type=int)
@click.option("--at", "at_text", help="ISO 8601 with offset. Default: now.")
@pass_state
def devices_end(state: State, enrolment_id: int, at_text: str | None) -> None:
    """End enrolment ENROLMENT_ID: later events of the device are held, not routed."""
    problems: list[str] = []
    at = parse_time(at_text, "--at", problems) if at_text else None
    if problems:
        raise click.BadParameter(problems[0], param_hint="--at")
    hub = state.hub()
    try:
        result = hub.repo.end_enrolment(enrolment_id, at)
    finally:
        hub.close()
    if result == "not-found":
        raise click.ClickException(f"no enrolment {enrolment_id}")
    if result == "already-ended":
        raise click.ClickException(f"enrolment {enrolment_id} has already ended")
    click.echo(f"enrolment {enrolment_id} ended")


@devices.command("list")
@click.option("--source")
@click.option("--history", is_flag=True, help="Every enrolment, past and future, not devices.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def devices_list(state: State, source: str | None, history: bool, as_json: bool) -> None:
    """List devices with their current enrolment, last contact and state (patient
    identifiers are never shown)."""
    hub = state.hub()
    try:
        items = hub.repo.list_enrolments(source) if history else hub.repo.list_devices(source)
    finally:
        hub.close()
    if as_json:
        click.echo(_dump(items))
        return
    if history:
        click.echo(_table([(e["id"], e["source"], e["device_id"], e["municipality"],
                            e["legal_basis"] or "NONE", _when(e["valid_from"]),
                            _when(e["valid_to"])) for e in items],
                          ("id", "source", "device", "municipality", "legal basis",
                           "valid from", "valid to")))
        return
    click.echo(_table([(d["source"], d["device_id"], d["device_type"] or "-", d["state"],
                        (d["enrolment"] or {}).get("municipality") or "-",
                        (d["enrolment"] or {}).get("legal_basis") or "-",
                        _when(d["last_seen_at"]), "NO CONTACT" if d["no_contact_at"] else "")
                       for d in items],
                      ("source", "device", "type", "state", "municipality", "legal basis",
                       "last seen", "")))


def main() -> None:
    plugins = PluginHost()
    try:
        plugins.load_entry_points()
    except HubError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    plugins.hook.hub_register_commands(cli=cli)
    cli(obj=State(None, plugins), auto_envvar_prefix=None)


if __name__ == "__main__":
    main()
