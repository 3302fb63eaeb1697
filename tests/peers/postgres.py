"""Throwaway PostgreSQL cluster built from Debian's server binaries.

Why: the outbox claim (``FOR UPDATE SKIP LOCKED``) must be tested on a real PostgreSQL, and
Docker is not available (docs/peers.md §G). ``initdb`` refuses to run as root, so as root the
server binaries run as the ``postgres`` system user created by the Debian package. Only
subprocesses of the PostgreSQL binaries are used, so this module has no third-party imports.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

PG_LIB_ROOT = Path("/usr/lib/postgresql")
"""Debian layout: one ``<major>/bin`` folder per installed server version."""

HOST = "127.0.0.1"
SUPERUSER = "postgres"
SERVICE_USER = "postgres"
DEFAULT_STARTUP_TIMEOUT = 30.0
_RESERVED = frozenset({"port", "listen_addresses", "unix_socket_directories"})
SettingValue = str | int | float | bool


class PostgresPeerError(RuntimeError):
    """The throwaway cluster could not be created, started or used."""


def find_bin_dir(root: Path = PG_LIB_ROOT) -> Path:
    """Return ``/usr/lib/postgresql/<highest version>/bin``; raise naming the apt package."""
    candidates: list[tuple[tuple[int, ...], Path]] = []
    if root.is_dir():
        for child in root.iterdir():
            if re.fullmatch(r"\d+(\.\d+)*", child.name) and (child / "bin" / "initdb").is_file():
                candidates.append((tuple(int(p) for p in child.name.split(".")), child / "bin"))
    if not candidates:
        raise PostgresPeerError(
            f"no PostgreSQL server binaries under {root}/<version>/bin; "
            "install them with `apt-get install postgresql` (Debian package)"
        )
    bin_dir = max(candidates)[1]
    for tool in ("initdb", "pg_ctl", "pg_isready", "psql"):
        if not (bin_dir / tool).is_file():
            raise PostgresPeerError(
                f"{bin_dir / tool} is missing; reinstall with `apt-get install postgresql`"
            )
    return bin_dir


def free_port(host: str = HOST) -> int:
    """A TCP port that is free right now (bind port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_literal(value: SettingValue) -> str:
    """Render a setting as a postgresql.conf literal (strings single-quoted, quotes doubled)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _libpq_value(value: str) -> str:
    """Quote a value for a libpq keyword/value connection string when needed."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


class PostgresCluster:
    """A private PostgreSQL cluster in a temp dir, listening on 127.0.0.1 with trust auth.

    Usage::

        with PostgresCluster({"synchronous_commit": "off"}) as pg:
            url = pg.create_database("outbox")   # postgresql+psycopg://postgres@127.0.0.1:PORT/outbox
    """

    def __init__(
        self,
        settings: Mapping[str, SettingValue] | None = None,
        *,
        bin_dir: Path | None = None,
        port: int | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    ) -> None:
        self.settings: dict[str, SettingValue] = dict(settings or {})
        clash = _RESERVED.intersection(self.settings)
        if clash:
            raise ValueError(f"settings {sorted(clash)} are managed by PostgresCluster itself")
        self._bin_dir = bin_dir
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._base: Path | None = None
        self._port: int | None = None
        self._started = False

    # -- paths and addresses -------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """Folder with initdb, pg_ctl, pg_isready and psql (highest installed version)."""
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return self._bin_dir

    @property
    def base_dir(self) -> Path:
        """Temp dir holding data/, the socket dir and the server log (removed by stop())."""
        if self._base is None:
            raise PostgresPeerError("PostgresCluster is not started")
        return self._base

    @property
    def data_dir(self) -> Path:
        """PGDATA of the throwaway cluster."""
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """Unix socket dir inside the temp dir (never the shared /var/run/postgresql)."""
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        """Server log; its content is put into startup errors."""
        return self.base_dir / "server.log"

    @property
    def host(self) -> str:
        """Always 127.0.0.1: the cluster never listens on other interfaces."""
        return HOST

    @property
    def port(self) -> int:
        """TCP port of the running server."""
        if self._port is None:
            raise PostgresPeerError("PostgresCluster is not started")
        return self._port

    @property
    def running(self) -> bool:
        """True between a successful start() and stop()."""
        return self._started

    def url(self, name: str = "postgres") -> str:
        """SQLAlchemy URL for database ``name`` (psycopg 3 driver)."""
        db = urllib.parse.quote(name, safe="")
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{db}"

    def dsn(self, name: str = "postgres") -> str:
        """libpq keyword/value connection string for database ``name``."""
        parts = {"host": HOST, "port": str(self.port), "user": SUPERUSER, "dbname": name}
        return " ".join(f"{k}={_libpq_value(v)}" for k, v in parts.items())

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """initdb, write settings, start, wait for pg_isready (or raise with the server log)."""
        if self._started:
            raise PostgresPeerError("PostgresCluster already started")
        bin_dir = self.bin_dir
        self._base = Path(tempfile.mkdtemp(prefix="tryggbro-pg-"))
        try:
            self.socket_dir.mkdir()
            if self._as_root():
                account = _service_account()
                for path in (self._base, self.socket_dir):
                    os.chown(path, account.pw_uid, account.pw_gid)
            self._server_cmd(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                "initdb",
            )
            self._port = self._requested_port or free_port()
            self._write_settings()
            self._server_cmd(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-W",
                    "start",
                ],
                "pg_ctl start",
            )
            self._started = True
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_settings(self) -> None:
        """Append our network settings and the caller's settings to postgresql.auto.conf."""
        assert self._port is not None
        lines = {
            "listen_addresses": _conf_literal(HOST),
            "port": str(self._port),
            "unix_socket_directories": _conf_literal(str(self.socket_dir)),
            **{k: _conf_literal(v) for k, v in self.settings.items()},
        }
        with (self.data_dir / "postgresql.auto.conf").open("a", encoding="utf-8") as fh:
            fh.write("# written by tests/peers/postgres.py\n")
            fh.writelines(f"{k} = {v}\n" for k, v in lines.items())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        isready = [
            str(self.bin_dir / "pg_isready"),
            "-q",
            "-h",
            HOST,
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-t",
            "2",
        ]
        checked_alive_at = time.monotonic()
        while time.monotonic() < deadline:
            if (
                subprocess.run(
                    isready,
                    env=_client_env(),
                    check=False,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ).returncode
                == 0
            ):
                return
            if time.monotonic() - checked_alive_at > 1.0:
                checked_alive_at = time.monotonic()
                if not self._postmaster_alive():
                    raise PostgresPeerError(
                        f"PostgreSQL exited during startup; server log:\n{self._log_text()}"
                    )
            time.sleep(0.1)
        raise PostgresPeerError(
            f"PostgreSQL not ready on {HOST}:{self.port} within {self._startup_timeout:g} s; "
            f"server log:\n{self._log_text()}"
        )

    def _postmaster_alive(self) -> bool:
        status = self._run_server(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"]
        )
        return status.returncode == 0

    def stop(self) -> None:
        """Stop immediately (no checkpoint: the data is thrown away) and remove the temp dir."""
        base, self._base = self._base, None
        started, self._started = self._started, False
        self._port = None
        if base is None:
            return
        try:
            if started and (base / "data" / "postmaster.pid").exists():
                self._run_server(
                    [
                        str(self.bin_dir / "pg_ctl"),
                        "-D",
                        str(base / "data"),
                        "-m",
                        "immediate",
                        "-w",
                        "-t",
                        "30",
                        "stop",
                    ],
                    cwd=base,
                )
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -----------------------------------------------------------------------------

    def psql(self, sql: str, database: str = "postgres", *, extra_args: Sequence[str] = ()) -> str:
        """Run SQL with the cluster's own psql binary; return unaligned, tuples-only output."""
        cmd = [
            str(self.bin_dir / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            *extra_args,
            "-c",
            sql,
            self.dsn(database),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=_client_env(), check=False, timeout=60
        )
        if proc.returncode != 0:
            raise PostgresPeerError(
                f"psql failed ({proc.returncode}) for {sql!r}: {proc.stderr.strip()}"
            )
        return proc.stdout.strip()

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` and return its SQLAlchemy URL."""
        self.psql(f"CREATE DATABASE {_ident(name)}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE ``name`` (WITH FORCE, so open test connections do not block it)."""
        self.psql(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    # -- running server binaries as the right user ---------------------------------------------

    @staticmethod
    def _as_root() -> bool:
        return os.geteuid() == 0

    def _wrap(self, cmd: list[str]) -> list[str]:
        """Prefix with ``runuser -u postgres --`` when we are root (initdb/postgres refuse root)."""
        if not self._as_root():
            return cmd
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresPeerError("running as root but `runuser` (util-linux) is not available")
        return [runuser, "-u", SERVICE_USER, "--", *cmd]

    def _run_server(
        self, cmd: list[str], cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the right user; cwd is the cluster dir because the service
        user may not be allowed into the caller's cwd."""
        return subprocess.run(
            self._wrap(cmd),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            cwd=str(cwd or self.base_dir),
            env=_client_env(),
        )

    def _server_cmd(self, cmd: list[str], what: str) -> None:
        proc = self._run_server(cmd)
        if proc.returncode != 0:
            hint = (
                f"\n(as root the binaries run as {SERVICE_USER!r}, which must be able to reach "
                f"{self.base_dir}; check TMPDIR)"
                if self._as_root()
                else ""
            )
            raise PostgresPeerError(
                f"{what} failed with code {proc.returncode}:\n{proc.stdout}{proc.stderr}"
                f"\nserver log:\n{self._log_text()}{hint}"
            )

    def _log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace") or "(empty)"
        except (OSError, PostgresPeerError):
            return "(no server log)"


def _service_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        raise PostgresPeerError(
            f"running as root but there is no {SERVICE_USER!r} system user; "
            "`apt-get install postgresql` creates it"
        ) from exc


def _client_env() -> dict[str, str]:
    """The caller's environment minus PG* variables that could redirect our connections."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
