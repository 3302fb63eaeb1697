"""Medplum FHIR R4 engine (in memory) as a real EHR stand-in for integration tests.

Why: the hub's FHIR delivery must be tested against real third-party FHIR logic (conditional
create/update, If-Match, transactions, validation), not against our own mocks. The engine is
npm ``@medplum/fhir-router`` 5.2.13 behind the small loopback shell in ``medplum/server.mjs``
(see docs/peers.md §B1). Install once with ``npm ci`` in ``tests/peers/medplum``.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

MEDPLUM_DIR = Path(__file__).resolve().parent / "medplum"
"""Folder holding package.json, package-lock.json and server.mjs."""

HOST = "127.0.0.1"
BASE_PATH = "/fhir/R4"
READY_MARKER = "ready"
DEFAULT_STARTUP_TIMEOUT = 30.0
FHIR_JSON = "application/fhir+json"

ParamValue = str | int | float | Sequence[str | int | float]


class MedplumPeerError(RuntimeError):
    """The Medplum peer could not be started or answered unexpectedly."""


@functools.lru_cache(maxsize=4)
def node_major_version(node: str = "node") -> int:
    """Major version of the Node binary (decides whether --experimental-websocket is needed)."""
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise MedplumPeerError(f"cannot run {node!r} --version: {exc}") from exc
    try:
        return int(out.lstrip("v").split(".", 1)[0])
    except ValueError as exc:
        raise MedplumPeerError(f"unexpected `{node} --version` output: {out!r}") from exc


def free_port(host: str = HOST) -> int:
    """A TCP port that is free right now (bind port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class MedplumPeer:
    """Runs ``node server.mjs`` on 127.0.0.1 and offers tiny stdlib-only FHIR helpers.

    Usage::

        with MedplumPeer() as fhir:
            post_to(fhir.base_url)
            assert fhir.read("DetectedIssue", "x") is not None
    """

    def __init__(
        self,
        *,
        strict: bool = True,
        port: int | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        node: str = "node",
        extra_env: Mapping[str, str] | None = None,
        app_dir: Path = MEDPLUM_DIR,
    ) -> None:
        self._strict = strict
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._node = node
        self._extra_env = dict(extra_env or {})
        self.app_dir = app_dir
        self._port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._stdout_lines: queue.Queue[str | None] = queue.Queue()
        self._stderr_chunks: list[str] = []
        self._stderr_lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self.ready_line: str | None = None
        """The line the server printed when it became ready (includes its startup time)."""

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port the server listens on (valid after start())."""
        if self._port is None:
            raise MedplumPeerError("MedplumPeer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """FHIR base URL, e.g. ``http://127.0.0.1:12345/fhir/R4`` (no trailing slash)."""
        return f"http://{HOST}:{self.port}{BASE_PATH}"

    @property
    def pid(self) -> int:
        """Process id of the node server (for CPU accounting in benchmarks)."""
        if self._proc is None:
            raise MedplumPeerError("MedplumPeer is not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the node process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The node command line; the websocket flag is needed only before Node 22."""
        cmd = [self._node]
        if node_major_version(self._node) < 22:
            cmd.append("--experimental-websocket")
        cmd.append("server.mjs")
        return cmd

    def start(self) -> Self:
        """Start the server and block until it prints its ready line (or raise with its stderr)."""
        if self._proc is not None:
            raise MedplumPeerError("MedplumPeer already started")
        if not (self.app_dir / "node_modules" / "@medplum" / "fhir-router").is_dir():
            raise MedplumPeerError(
                f"Medplum packages are not installed: run `npm ci` in {self.app_dir} "
                "(tests/peers/medplum) first"
            )
        if shutil.which(self._node) is None:
            raise MedplumPeerError(
                f"{self._node!r} not found on PATH: the Medplum peer needs Node.js"
            )
        port = self._requested_port or free_port()
        env = {
            **os.environ,
            **self._extra_env,
            "PORT": str(port),
            "STRICT": "1" if self._strict else "0",
        }
        self._stdout_lines = queue.Queue()
        self._stderr_chunks = []
        self._proc = subprocess.Popen(
            self.command(),
            cwd=self.app_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        self._readers = [
            _daemon(self._pump_stdout, self._proc.stdout, "medplum-stdout"),
            _daemon(self._pump_stderr, self._proc.stderr, "medplum-stderr"),
        ]
        try:
            self.ready_line = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._port = port
        return self

    def _wait_ready(self) -> str:
        """Wait for the ready line; fail early if the process exits."""
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MedplumPeerError(
                    f"Medplum peer did not print {READY_MARKER!r} within "
                    f"{self._startup_timeout:g} s"
                    f"; stderr:\n{self._stderr_text(wait=0.2)}"
                )
            try:
                line = self._stdout_lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the process is exiting
                code = self._proc.wait(timeout=5)
                raise MedplumPeerError(
                    f"Medplum peer exited with code {code} before becoming ready; stderr:\n"
                    f"{self._stderr_text(wait=1.0)}"
                )
            if READY_MARKER in line:
                return line.strip()

    def stop(self) -> None:
        """Terminate the node process (SIGTERM, then SIGKILL) and reap its reader threads."""
        proc, self._proc = self._proc, None
        self._port = None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for reader in self._readers:
            reader.join(timeout=5)
        self._readers = []
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def stderr(self) -> str:
        """Everything the server wrote to stderr so far (for diagnostics)."""
        return self._stderr_text()

    def _pump_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            self._stdout_lines.put(line)
        self._stdout_lines.put(None)

    def _pump_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            with self._stderr_lock:
                self._stderr_chunks.append(line)

    def _stderr_text(self, wait: float = 0.0) -> str:
        if wait and self._readers:
            self._readers[-1].join(timeout=wait)
        with self._stderr_lock:
            text = "".join(self._stderr_chunks)
        return text or "(empty)"

    # -- stdlib FHIR helpers -------------------------------------------------------------------

    def url(self, path: str = "") -> str:
        """Absolute URL for a path relative to the FHIR base (``"Patient/1"``, ``"/Patient/1"``)."""
        return f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], Any]:
        """One FHIR call with urllib; returns (status, lower-cased headers, parsed JSON or None).

        HTTP error statuses are returned, not raised, so tests can assert 400/404/412 directly.
        """
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url(path), data=data, method=method.upper())
        req.add_header("Accept", FHIR_JSON)
        if data is not None:
            req.add_header("Content-Type", FHIR_JSON)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, resp_headers, raw = resp.status, resp.headers.items(), resp.read()
        except urllib.error.HTTPError as err:
            status, resp_headers, raw = err.code, err.headers.items(), err.read()
        parsed = json.loads(raw) if raw.strip() else None
        return status, {k.lower(): v for k, v in resp_headers}, parsed

    def answers(self) -> dict[str, int]:
        """How many answers the server gave so far, by ``"METHOD status"`` (``"POST 400"``),
        since it started (the peer may be shared: compare two readings)."""
        with urllib.request.urlopen(f"http://{HOST}:{self.port}/__peer/answers",
                                    timeout=10) as resp:
            counts: dict[str, int] = json.loads(resp.read())
        return counts

    def search(self, resource_type: str, /, **params: ParamValue) -> list[dict[str, Any]]:
        """Search; return the matched resources.

        ``_count=5`` works as a keyword; pass names like ``subject:Patient.identifier`` as
        ``**{"subject:Patient.identifier": v}``; list values repeat the parameter (AND).
        """
        query = urllib.parse.urlencode(_flatten(params.items()))
        status, _, bundle = self.request(
            "GET", f"{resource_type}?{query}" if query else resource_type
        )
        if status != 200 or not isinstance(bundle, dict):
            raise MedplumPeerError(f"search {resource_type}?{query} -> {status}: {bundle!r}")
        return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]

    def read(self, resource_type: str, id: str, /) -> dict[str, Any] | None:
        """Read one resource by id; None when the server answers 404 (or 410)."""
        status, _, resource = self.request(
            "GET", f"{resource_type}/{urllib.parse.quote(id, safe='')}"
        )
        if status in (404, 410):
            return None
        if status != 200 or not isinstance(resource, dict):
            raise MedplumPeerError(f"read {resource_type}/{id} -> {status}: {resource!r}")
        return resource


def _flatten(items: Iterable[tuple[str, ParamValue]]) -> list[tuple[str, str]]:
    """Expand list values into repeated query parameters (FHIR AND semantics)."""
    out: list[tuple[str, str]] = []
    for key, value in items:
        if isinstance(value, str | int | float):
            out.append((key, str(value)))
        else:
            out.extend((key, str(v)) for v in value)
    return out


def _daemon(target: Callable[[IO[str]], None], stream: IO[str], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, args=(stream,), name=name, daemon=True)
    thread.start()
    return thread
