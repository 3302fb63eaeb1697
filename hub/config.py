"""Configuration: one TOML file, validated at start-up.

Every error names the file, the key and what was expected. Secrets never live in the
file: keys ending in ``_env`` name the environment variable that holds them.
Relative paths are resolved against the folder of the configuration file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from hub.auth.settings import CONTEXT_KEY as AUTH_CONTEXT_KEY
from hub.auth.settings import RESERVED as RESERVED_AUTH_NAMES
from hub.auth.settings import AuthSection, resolve_paths
from hub.errors import ConfigError

DEFAULT_CONFIG_ENV = "TRYGGBRO_CONFIG"

# Keys that would hold a secret in clear; the message says what to write instead.
_SECRET_KEY = re.compile(
    r"(^|_)(api_key|apikey|secret|secrets|token|tokens|password|passwd|private_key)$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubSettings(Strict):
    instance: str = Field("tryggbro", description="name of this gateway in logs and worker ids")
    data_dir: Path = Path("var")
    mappings_dir: Path = Path("mappings")
    stage_processes: bool = Field(
        True, description="serve runs processing and dispatch in child processes")


class DatabaseSettings(Strict):
    url: str = "sqlite:///var/tryggbro.db"
    url_env: str | None = Field(
        None, description="environment variable holding the URL (use when it has a password)"
    )
    pool_size: int = Field(5, ge=1, le=100)

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        if url.password:
            raise ValueError("contains a password: put the URL in an environment variable and "
                             "name it with url_env")
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("expected a sqlite:/// or postgresql+psycopg:// URL")
        return value


class HttpSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    root_path: str = ""
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=3600,
        description="the request line and headers must arrive within this (408 and close)")
    body_timeout_seconds: float = Field(
        60.0, gt=0, le=3600, description="a request body must be complete this long after its head")
    max_connections: int = Field(1024, ge=1, le=1_000_000)
    max_connections_per_ip: int = Field(256, ge=1, le=1_000_000)


class AdminSettings(Strict):
    viewer_tokens_env: str | None = Field(
        None, description="env var with comma-separated bearer tokens for read-only access"
    )
    operator_tokens_env: str | None = Field(
        None, description="env var with comma-separated bearer tokens that may also retry"
    )
    max_page_size: int = Field(500, ge=1, le=10_000)


class LoggingSettings(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    redaction_key_env: str | None = Field(
        None, description="env var with the key for fødselsnummer pseudonyms in logs"
    )


class ProcessingSettings(Strict):
    processes: int = Field(
        2, ge=1, le=32, description="processing processes under serve (CPU-bound: FHIR "
        "validation); more help work off a backlog on several cores")
    batch_size: int = Field(100, ge=1, le=5000)
    lease_seconds: float = Field(30.0, gt=0)
    max_attempts: int = Field(5, ge=1, description="processing crashes before a message fails")
    poll_seconds: float = Field(0.5, gt=0)


RESERVED_SOURCE = "tryggbro-monitor"  # hub.monitor journals its findings on this source


class MonitorSettings(Strict):
    enabled: bool = Field(True, description="run the scheduled checks in the serving process")
    interval_seconds: float = Field(
        60.0, gt=0, description="how often devices out of contact and missing DHO "
        "measurements are looked for")
    outbox_age_alert_seconds: float = Field(
        600.0, gt=0, description="alert when a destination's oldest undelivered delivery "
        "is older than this")
    outbox_age_alarm_alert_seconds: float = Field(
        60.0, gt=0, description="the same for alarm deliveries (sooner)")
    outbox_check_seconds: float = Field(
        10.0, gt=0, description="how often the outbox age is checked (and logged on change)")

    @model_validator(mode="after")
    def _alarms_sooner(self) -> MonitorSettings:
        if self.outbox_age_alarm_alert_seconds > self.outbox_age_alert_seconds:
            raise ValueError("outbox_age_alarm_alert_seconds must not exceed "
                             "outbox_age_alert_seconds: alarms are alerted on sooner")
        return self


class IntakeSettings(Strict):
    max_batch: int = Field(256, ge=1, le=10_000, description="messages per group commit")


class RetrySettings(Strict):
    base_seconds: float = Field(1.0, gt=0)
    cap_seconds: float = Field(900.0, gt=0)
    alarm_cap_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(25, ge=1)
    escalate_after_attempts: int = Field(5, ge=1)
    pause_seconds: float = Field(60.0, gt=0)


class SourceSettings(BaseModel):
    """Common keys of a ``[sources.X]`` table; the rest belongs to its type's model."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str = "http"
    adapter: str
    options: dict[str, Any] = Field(default_factory=dict)

    def type_settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DestinationSettings(BaseModel):
    """Common keys of a ``[destinations.X]`` table; the rest belongs to its type's model."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str
    concurrency: int = Field(8, ge=1, le=256)
    batch_size: int = Field(64, ge=1, le=1000)
    lease_seconds: float = Field(120.0, gt=0)
    poll_seconds: float = Field(0.5, gt=0)
    retry: RetrySettings = RetrySettings()

    def type_settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MatchSettings(Strict):
    sources: list[str] = []
    categories: list[str] = []
    kinds: list[str] = []
    codes: list[str] = []
    severities: list[str] = []
    municipalities: list[str] = []


class RouteSettings(Strict):
    name: str
    match: MatchSettings = MatchSettings()
    action: Literal["deliver", "filter"] = "deliver"
    destinations: list[str] = []
    priority: int | None = None


class Config(Strict):
    hub: HubSettings = HubSettings()
    database: DatabaseSettings = DatabaseSettings()
    http: HttpSettings = HttpSettings()
    admin: AdminSettings = AdminSettings()
    logging: LoggingSettings = LoggingSettings()
    intake: IntakeSettings = IntakeSettings()
    processing: ProcessingSettings = ProcessingSettings()
    monitor: MonitorSettings = MonitorSettings()
    sources: dict[str, SourceSettings] = {}
    destinations: dict[str, DestinationSettings] = {}
    routes: list[RouteSettings] = []
    auth: dict[str, AuthSection] = Field(
        default_factory=dict, description="named OAuth clients (HelseID, SMART) that "
        "destinations refer to with auth = \"<name>\"")

    @field_validator("auth")
    @classmethod
    def _auth_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if name in RESERVED_AUTH_NAMES:
                raise ValueError(f"[auth.{name}]: the name is reserved; choose another")
        return value

    # Set by the loader, not by the file.
    path: Path = Path("tryggbro.toml")

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, p: Path) -> Path:
        return p if p.is_absolute() else (self.base_dir / p)

    def auth_sections(self) -> dict[str, Any]:
        """The [auth.X] sections with their relative paths resolved (the validation context
        that turns a destination's ``auth = "X"`` into an `AuthBinding`)."""
        return {name: resolve_paths(section, self.base_dir) for name, section in self.auth.items()}

    def database_url(self) -> str:
        """The effective database URL, relative SQLite paths resolved against the file."""
        if self.database.url_env:
            raw = require_env(self, "database.url_env", self.database.url_env)
        else:
            raw = self.database.url
        url = make_url(raw)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            db = Path(url.database)
            url = url.set(database=str(self.resolve(db)))
        if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        return url.render_as_string(hide_password=False)

    def validate_references(self, adapters: Sequence[str], destination_types: Sequence[str],
                            source_types: Sequence[str]) -> None:
        """Check names that only exist once plugins are loaded."""
        problems = []
        for name, src in self.sources.items():
            if name == RESERVED_SOURCE:
                problems.append(f"sources.{name}: the name is reserved for the hub's own "
                                "scheduled checks; choose another")
            if src.adapter not in adapters:
                problems.append(f"sources.{name}.adapter: no adapter named {src.adapter!r} is "
                                f"loaded (loaded: {', '.join(sorted(adapters)) or 'none'})")
            if src.type not in source_types:
                problems.append(f"sources.{name}.type: no source type {src.type!r} is loaded "
                                f"(loaded: {', '.join(sorted(source_types)) or 'none'})")
        for name, dest in self.destinations.items():
            if dest.type not in destination_types:
                problems.append(
                    f"destinations.{name}.type: no destination type {dest.type!r} is loaded "
                    f"(loaded: {', '.join(sorted(destination_types)) or 'none'})")
        names = [r.name for r in self.routes]
        for i, route in enumerate(self.routes):
            if names.count(route.name) > 1:
                problems.append(f"routes[{i}].name: {route.name!r} is used more than once")
            if route.action == "deliver" and not route.destinations:
                problems.append(f"routes[{i}] ({route.name}): a deliver route needs destinations")
            if route.action == "filter" and route.destinations:
                problems.append(f"routes[{i}] ({route.name}): a filter route takes no destinations")
            for dest_name in route.destinations:
                if dest_name not in self.destinations:
                    problems.append(f"routes[{i}] ({route.name}).destinations: no destination "
                                    f"named {dest_name!r} (have: "
                                    f"{', '.join(sorted(self.destinations)) or 'none'})")
        if problems:
            raise ConfigError("\n".join(f"{self.path}: {p}" for p in problems))


def require_env(config: Config, key: str, env_name: str) -> str:
    """The value of a secret's environment variable, or a ConfigError naming the key."""
    value = os.environ.get(env_name)
    if value is None or value == "":
        raise ConfigError(f"{config.path}: {key}: environment variable {env_name} is not set")
    return value


def env_list(config: Config, key: str, env_name: str | None) -> list[str]:
    """Comma-separated secrets (several keys allow rotation without downtime)."""
    if env_name is None:
        return []
    return [v.strip() for v in require_env(config, key, env_name).split(",") if v.strip()]


def _find_secrets(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found.extend(_find_secrets(value, dotted + "."))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    found.extend(_find_secrets(item, f"{dotted}[{i}]."))
        elif _SECRET_KEY.search(key):
            found.append(dotted)
    return found


def _mask_url(value: str) -> str:
    """A URL as it may appear in an error: never with its password."""
    try:
        return make_url(value).render_as_string(hide_password=True)
    except ArgumentError:
        return "(a URL)"


def format_validation_error(path: Path, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = prefix + ".".join(str(p) for p in err["loc"]) if err["loc"] else prefix.rstrip(".")
        got = err.get("input")
        if isinstance(got, str) and "://" in got:
            got = _mask_url(got)
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        if err["type"] == "missing":
            shown = ""
        lines.append(f"{path}: {loc or '(top level)'}: {err['msg']}{shown}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a configuration file (default: $TRYGGBRO_CONFIG or ./tryggbro.toml)."""
    file = Path(path or os.environ.get(DEFAULT_CONFIG_ENV) or "tryggbro.toml")
    try:
        with file.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{file}: configuration file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    return config_from_dict(data, file)


def config_from_dict(data: Mapping[str, Any], file: Path) -> Config:
    secrets = _find_secrets(data)
    if secrets:
        keys = ", ".join(secrets)
        raise ConfigError(
            f"{file}: {keys}: secrets must not be written in the configuration file; put the "
            f"value in an environment variable and name it with a key ending in _env "
            f"(for example api_key_env = \"TRYGGBRO_SOURCE_KEY\")"
        )
    if "path" in data:
        raise ConfigError(f"{file}: path: unknown key")
    try:
        return Config.model_validate({**data, "path": file.absolute()})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(file, exc)) from None


def validate_type_settings(config: Config, key: str, model: type[BaseModel],
                           values: Mapping[str, Any]) -> BaseModel:
    """Validate a source's or destination's type-specific keys with the type's model."""
    try:
        return model.model_validate(dict(values),
                                    context={AUTH_CONTEXT_KEY: config.auth_sections()})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(config.path, exc, prefix=key + ".")) from None
