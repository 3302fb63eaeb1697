"""The composition root: wires configuration, plugins, storage and the three stages.

`Hub.build()` validates everything that can be checked before running (configuration,
plugin registries, mappings, database durability, migrations) and fails with a message
naming the file and key. `Hub.run()` is `tryggbro serve` (HTTP + processing + dispatch
in one asyncio process) or `tryggbro worker` (processing + dispatch only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from hub.builtin.routing import rules_from_config
from hub.config import Config, validate_type_settings
from hub.contracts import (
    Adapter,
    AdapterFactory,
    AdapterSetup,
    Destination,
    DestinationType,
    RouteEndpoint,
    Source,
    SourceType,
)
from hub.dispatch import Dispatcher
from hub.domain.model import Priority
from hub.errors import ConfigError
from hub.intake import Intake
from hub.logging import get_logger
from hub.mappings import MappingStore
from hub.monitor import MONITOR_SOURCE, Monitor, MonitorAdapter, OutboxWatch
from hub.plugins import PluginHost, resolve
from hub.stages import (
    DISPATCH,
    PROCESSING,
    STAGES,
    Notifier,
    StageSupervisor,
    watch_wake_pipe,
)
from hub.store.db import Database, acquire_owner_lock, open_database, upgrade
from hub.store.repository import Repository

# Processing (and through it hub.fhir's fhir.resources models, ~1 s of imports) is
# imported where a processing loop is built, so `serve`'s intake process, whose stages run
# in child processes, never loads it. The processing child imports it before its first
# batch (warm_up), so a broken install still stops processing at start-up.
if TYPE_CHECKING:
    from hub.processing import Pipeline, Processor

log = get_logger("hub.runtime")


@dataclass
class Registries:
    adapters: dict[str, AdapterFactory] = field(default_factory=dict)
    destination_types: dict[str, DestinationType] = field(default_factory=dict)
    source_types: dict[str, SourceType] = field(default_factory=dict)
    routes: list[tuple[str, RouteEndpoint, list[str]]] = field(default_factory=list)


def collect_registries(plugins: PluginHost) -> Registries:
    reg = Registries()

    def add_adapter(name: str, factory: AdapterFactory) -> None:
        if name in reg.adapters:
            raise ConfigError(f"two plugins register an adapter named {name!r}")
        reg.adapters[name] = factory

    def add_destination(dtype: DestinationType) -> None:
        if dtype.name in reg.destination_types:
            raise ConfigError(f"two plugins register a destination type named {dtype.name!r}")
        reg.destination_types[dtype.name] = dtype

    def add_source(stype: SourceType) -> None:
        if stype.name in reg.source_types:
            raise ConfigError(f"two plugins register a source type named {stype.name!r}")
        reg.source_types[stype.name] = stype

    def add_route(path: str, endpoint: RouteEndpoint, methods: list[str]) -> None:
        if path.startswith(("/ingest", "/admin")):
            raise ConfigError(f"plugin route {path!r}: /ingest and /admin are reserved")
        reg.routes.append((path, endpoint, methods))

    plugins.hook.hub_register_adapters(register=add_adapter)
    plugins.hook.hub_register_destinations(register=add_destination)
    plugins.hook.hub_register_sources(register=add_source)
    plugins.hook.hub_register_routes(register=add_route)
    return reg


def _resolve_paths(config: Config, model: BaseModel) -> BaseModel:
    """Relative Path settings of a plugin are relative to the configuration file."""
    updates = {k: config.resolve(v) for k, v in model.__dict__.items()
               if isinstance(v, Path) and not v.is_absolute()}
    return model.model_copy(update=updates) if updates else model


def require_signing_libraries(config: Config) -> None:
    """Import PyJWT and cryptography now when an [auth.*] section signs with a key.

    hub.auth loads them only when a key is loaded (in the destination's factory, which in
    `serve` runs in the dispatch child): a broken install must still stop every process
    at start-up with a message naming the section, not when the first token is needed."""
    for name, section in config.auth.items():
        if section.type in ("helseid", "smart"):
            try:
                import hub.auth.keys  # noqa: F401
            except ImportError as exc:
                raise ConfigError(f"{config.path}: [auth.{name}] (type {section.type!r}) needs "
                                  f"PyJWT and cryptography, which failed to import: {exc}"
                                  ) from None
            return


def intake_priorities(adapters: Mapping[str, Adapter]) -> dict[str, int]:
    """Processing priority per source: its adapter's `intake_priority` (alarm adapters
    declare `Priority.ALARM`), the normal priority otherwise."""
    return {name: int(getattr(adapter, "intake_priority", Priority.NORMAL))
            for name, adapter in adapters.items()}


def worker_id(instance: str, pid: int | None = None) -> str:
    """Lease owner name: instance, host and process, unique among live workers."""
    return f"{instance}@{socket.gethostname()}:{pid or os.getpid()}"


class Hub:
    """One gateway instance: configuration, plugins, storage and stages."""

    def __init__(self, config: Config, plugins: PluginHost, registries: Registries,
                 mappings: MappingStore, db: Database, adapters: dict[str, Adapter],
                 source_settings: dict[str, tuple[SourceType, BaseModel]],
                 owner: bool = False, with_sources: bool = True) -> None:
        self.config = config
        self.plugins = plugins
        self.registries = registries
        self.mappings = mappings
        self.db = db
        self.repo = Repository(db)
        # The monitor's findings are journaled on a source of their own (hub.monitor).
        self.adapters = {**adapters, MONITOR_SOURCE: MonitorAdapter(mappings)}
        self.owner = owner  # this process owns the (SQLite) database and its leases
        self.worker = worker_id(config.hub.instance)
        self.rules = rules_from_config(config)
        self.destinations: dict[str, Destination] = {}
        # Destinations built for processing's hub_patient_context (register_enrichers).
        self.enrichers: dict[str, Any] = {}
        self.intake = Intake(self.repo, config.intake.max_batch, on_committed=self._wake_processor,
                             priorities=intake_priorities(self.adapters))
        self.sources: dict[str, Source] = {}
        # Sources hold their senders' secrets: only the process that serves them needs
        # them (an operator's `tryggbro status` must not).
        for name, (stype, settings) in (source_settings.items() if with_sources else ()):
            try:
                self.sources[name] = stype.factory(name, settings, self.intake)
            except ConfigError as exc:
                raise ConfigError(f"{config.path}: {exc}") from None
        self.health = Health()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._processor_wake: asyncio.Event | None = None
        self._dispatch_wake: dict[str, asyncio.Event] = {}
        self._stop: asyncio.Event | None = None
        self.http_port: int | None = None  # the bound HTTP port once serving ([http] port 0)
        self._notify_dispatch: Callable[[], None] | None = None
        self._supervisor: StageSupervisor | None = None

    # ---------------------------------------------------------------------------------
    # Building
    # ---------------------------------------------------------------------------------

    @classmethod
    def build(cls, config: Config, *, plugins: PluginHost | None = None, own: bool = False,
              migrate: bool = True, database_url: str | None = None,
              with_sources: bool = True) -> Hub:
        """Validate and wire everything. `own`: this process will run the stages (on
        SQLite only one process may). `with_sources=False`: validate the sources' settings
        but do not build them (no secrets needed: CLI commands, stage processes)."""
        if plugins is None:
            plugins = PluginHost()
            plugins.load_entry_points()
        registries = collect_registries(plugins)
        config.validate_references(list(registries.adapters), list(registries.destination_types),
                                   list(registries.source_types))
        require_signing_libraries(config)
        mappings = MappingStore.load(config.resolve(config.hub.mappings_dir))
        adapters: dict[str, Adapter] = {}
        source_settings: dict[str, tuple[SourceType, BaseModel]] = {}
        for name, src in config.sources.items():
            setup = AdapterSetup(name, src.options, mappings)
            try:
                adapters[name] = registries.adapters[src.adapter](setup)
            except ConfigError as exc:
                raise ConfigError(f"{config.path}: sources.{name}: {exc}") from None
            stype = registries.source_types[src.type]
            source_settings[name] = (stype, _resolve_paths(config, validate_type_settings(
                config, f"sources.{name}", stype.settings_model, src.type_settings())))
        url = database_url or config.database_url()
        db = open_database(url, pool_size=config.database.pool_size)
        try:
            if own:
                acquire_owner_lock(db)
            if migrate:
                upgrade(db)
            return cls(config, plugins, registries, mappings, db, adapters, source_settings,
                       owner=own, with_sources=with_sources)
        except Exception:
            db.dispose()
            raise

    def build_destinations(self) -> None:
        for name, dest in self.config.destinations.items():
            dtype = self.registries.destination_types[dest.type]
            settings = _resolve_paths(self.config, validate_type_settings(
                self.config, f"destinations.{name}", dtype.settings_model, dest.type_settings()))
            try:
                self.destinations[name] = dtype.factory(name, settings)
            except ConfigError as exc:
                raise ConfigError(f"{self.config.path}: {exc}") from None

    def register_enrichers(self) -> None:
        """Destinations that can tell about patients (a VKP destination with
        `enrich_patients = true`: `patient_context_plugin()` returns a hub_patient_context
        plugin) are built for this process's processing, apart from the dispatcher's
        (processing may run in a child process of its own), and registered as plugins."""
        for name, dest in self.config.destinations.items():
            if name in self.enrichers:
                continue
            dtype = self.registries.destination_types[dest.type]
            settings = _resolve_paths(self.config, validate_type_settings(
                self.config, f"destinations.{name}", dtype.settings_model, dest.type_settings()))
            if not getattr(settings, "enrich_patients", False):
                continue
            try:
                built = dtype.factory(name, settings)
            except ConfigError as exc:
                raise ConfigError(f"{self.config.path}: {exc}") from None
            plugin = built.patient_context_plugin()  # type: ignore[attr-defined]
            self.plugins.register(plugin, f"patient-context:{name}")
            self.enrichers[name] = built

    def pipeline(self, resolve: Callable[[Any], Any] | None = None) -> Pipeline:
        from hub.processing import Pipeline

        return Pipeline(
            hook=self.plugins.hook, adapters=self.adapters, mappings=self.mappings,
            rules=self.rules, destinations=list(self.config.destinations), repo=self.repo,
            resolve=resolve or self._resolve,
        )

    def processor(self) -> Processor:
        from hub.processing import Processor

        p = self.config.processing
        return Processor(self.repo, self.pipeline(), self.worker, batch_size=p.batch_size,
                         lease_seconds=p.lease_seconds, max_attempts=p.max_attempts)

    def _resolve(self, value: Any) -> Any:
        """Resolve a hook's awaitable result from the processing thread."""
        return resolve(value, self._loop)

    # ---------------------------------------------------------------------------------
    # Running
    # ---------------------------------------------------------------------------------

    def _wake_processor(self) -> None:
        loop, wake = self._loop, self._processor_wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    def _wake_dispatchers(self) -> None:
        loop = self._loop
        if loop is not None:
            for wake in self._dispatch_wake.values():
                loop.call_soon_threadsafe(wake.set)
        if self._notify_dispatch is not None:
            self._notify_dispatch()

    async def run(self, *, serve_http: bool, ready: Callable[[], None] | None = None,
                  handle_signals: bool = True, stages: Collection[str] = STAGES,
                  stage_processes: bool = False, wake_fd: int | None = None,
                  notify_fd: int | None = None) -> None:
        """Run until SIGINT/SIGTERM (or `stop()`).

        `serve_http`: HTTP intake, admin API and sources. `stages`: which of processing
        and dispatch run in this process; with `stage_processes` they run in supervised
        child processes instead (`tryggbro serve`). `wake_fd`/`notify_fd`: pipes to be
        woken through and to wake the next stage with, when stages live in other
        processes. `handle_signals=False` leaves signals to the caller (tests).
        """
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._processor_wake = asyncio.Event()
        if self.db.is_sqlite and self.owner:
            await asyncio.to_thread(self.repo.release_all_leases)
        tasks: list[asyncio.Task[None]] = []
        if stage_processes:
            self._supervisor = StageSupervisor(
                str(self.config.path), self.config.hub.instance, self.repo.release_leases,
                worker_id, processing_processes=self.config.processing.processes)
            self._supervisor.start()
            self.intake.on_committed = self._supervisor.wake_processing
            self._notify_dispatch = self._supervisor.wake_dispatch
            tasks.append(asyncio.create_task(self._supervisor.watch(), name="stages"))
        else:
            if notify_fd is not None:
                self._notify_dispatch = Notifier(notify_fd)
            if PROCESSING in stages:
                tasks.append(asyncio.create_task(self._process_loop(), name="processor"))
            if DISPATCH in stages:
                tasks.extend(self._start_dispatchers())
            if wake_fd is not None:
                watch_wake_pipe(self._loop, wake_fd, self._wake_local)
        self.health.tasks = tasks
        self.health.supervisor = self._supervisor
        if serve_http:
            self.intake.start()
            for source in self.sources.values():
                await source.start()
            if self.config.monitor.enabled:
                monitor = Monitor(self.repo, self.intake.submit,
                                  self.config.monitor.interval_seconds)
                tasks.append(asyncio.create_task(monitor.run(self._stop), name="monitor"))
                watch = OutboxWatch(self.repo, self.config.monitor)
                tasks.append(asyncio.create_task(watch.run(self._stop), name="outbox-watch"))
        log.info("tryggbro running", worker=self.worker, http=serve_http,
                 stages="child processes" if stage_processes else sorted(stages),
                 destinations=sorted(self.config.destinations), sources=sorted(self.sources),
                 database=self.db.dialect)
        if handle_signals:
            self._install_signal_handlers()
        try:
            if serve_http:
                await self._serve_http(ready)
            else:
                if ready:
                    ready()
                await self._stop.wait()
        finally:
            await self._shutdown(tasks, serve_http)

    def _start_dispatchers(self) -> list[asyncio.Task[None]]:
        assert self._stop is not None
        self.build_destinations()
        tasks = []
        for name, destination in self.destinations.items():
            wake = self._dispatch_wake[name] = asyncio.Event()
            dispatcher = Dispatcher(name, destination, self.repo, self.config.destinations[name],
                                    self.worker, self.plugins.hook)
            tasks.append(asyncio.create_task(dispatcher.run(self._stop, wake),
                                             name=f"dispatch:{name}"))
        return tasks

    def _wake_local(self) -> None:
        """A wake-up from another process: new messages or new deliveries."""
        if self._processor_wake is not None:
            self._processor_wake.set()
        for wake in self._dispatch_wake.values():
            wake.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _install_signal_handlers(self) -> None:
        assert self._loop is not None
        assert self._stop is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._stop.set)

    async def _serve_http(self, ready: Callable[[], None] | None) -> None:
        import uvicorn

        from hub.api.app import create_app
        from hub.api.slowclients import guarded_protocol

        app = create_app(self)
        # uvicorn has no deadline for a request head or body: guarded_protocol adds them
        # and the connection caps (docs/operations.md, "Slow clients").
        server = uvicorn.Server(uvicorn.Config(
            app, host=self.config.http.host, port=self.config.http.port,
            root_path=self.config.http.root_path, log_config=None, access_log=False,
            lifespan="off", timeout_keep_alive=30, h11_max_incomplete_event_size=64 * 1024,
            server_header=False, http=guarded_protocol(self.config.http),
        ))

        async def watch_stop() -> None:
            assert self._stop is not None
            await self._stop.wait()
            server.should_exit = True

        # Signals are ours (see run()): uvicorn would re-raise SIGTERM after its own
        # shutdown and kill the process before the stages stop gracefully.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        watcher = asyncio.create_task(watch_stop())
        if ready:
            async def announce() -> None:
                while not server.started:
                    await asyncio.sleep(0.02)
                if server.servers and server.servers[0].sockets:
                    self.http_port = server.servers[0].sockets[0].getsockname()[1]
                ready()
            announcer = asyncio.create_task(announce())
        try:
            await server.serve()
        finally:
            watcher.cancel()
            if ready:
                announcer.cancel()

    async def _process_loop(self) -> None:
        assert self._stop is not None
        assert self._processor_wake is not None
        self.register_enrichers()
        processor = self.processor()
        poll = self.config.processing.poll_seconds
        from hub.fhir import warm_up

        await asyncio.to_thread(warm_up)
        while not self._stop.is_set():
            # Cleared before the round, so a wake-up during the round is not lost.
            self._processor_wake.clear()
            try:
                handled, _ = await asyncio.to_thread(processor.run_batch)
            except Exception:
                log.exception("processing round failed; retrying")
                handled = 0
                await asyncio.sleep(poll)
            if handled:
                # Even a batch that planned no deliveries may lift the order barrier that
                # held back deliveries of newer messages (an alarm's), so dispatch looks.
                self._wake_dispatchers()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._processor_wake.wait(), timeout=poll)

    async def _shutdown(self, tasks: list[asyncio.Task[None]], served_http: bool) -> None:
        assert self._stop is not None
        self._stop.set()
        if served_http:
            for source in self.sources.values():
                try:
                    await source.stop()
                except Exception:
                    log.exception("source failed to stop")
            await asyncio.to_thread(self.intake.stop)
        if self._supervisor is not None:
            await self._supervisor.stop()
        _, pending = await asyncio.wait(tasks, timeout=15)
        for task in pending:
            task.cancel()
        for destination in [*self.destinations.values(), *self.enrichers.values()]:
            try:
                await destination.aclose()
            except Exception:
                log.exception("destination failed to close")
        log.info("tryggbro stopped", worker=self.worker)

    def close(self) -> None:
        self.db.dispose()


@dataclass
class Health:
    """What /readyz reports: are the stages' tasks and processes alive?"""

    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    supervisor: StageSupervisor | None = None

    def problems(self) -> Mapping[str, str]:
        found = dict(self.supervisor.problems()) if self.supervisor else {}
        for task in self.tasks:
            if task.done():
                exc = None if task.cancelled() else task.exception()
                found[task.get_name()] = f"stopped: {type(exc).__name__ if exc else 'cancelled'}"
        return found
