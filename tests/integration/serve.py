"""`tryggbro serve` as a real subprocess: started, probed, killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.helpers import ENV, ROOT, SOURCE_KEY
from tests.peers.medplum import free_port


def toml_config(tmp: Path, port: int, base_url: str, *, db_url: str | None = None,
                extra: str = "") -> Path:
    db = db_url or f"sqlite:///{tmp}/hub.db"
    path = tmp / "tryggbro.toml"
    path.write_text(f"""
[hub]
instance = "crash-test"
mappings_dir = "{ROOT / 'mappings'}"

[database]
url = "{db}"

[http]
host = "127.0.0.1"
port = {port}

[admin]
viewer_tokens_env = "TEST_VIEWER_TOKENS"
operator_tokens_env = "TEST_OPERATOR_TOKENS"

[processing]
poll_seconds = 0.05
lease_seconds = 5

[sources.alarmplatform]
adapter = "alarmplatform"
auth = "api-key"
api_key_env = "TEST_ALARMPLATFORM_KEY"

[destinations.ehr]
type = "fhir-rest"
base_url = "{base_url}"
timeout_seconds = 3
poll_seconds = 0.05
lease_seconds = 10
[destinations.ehr.retry]
base_seconds = 0.05
cap_seconds = 0.5
alarm_cap_seconds = 0.5

[[routes]]
name = "device-health"
match = {{ categories = ["device_health"] }}
action = "filter"

[[routes]]
name = "alarms"
match = {{ categories = ["safety_alarm"] }}
destinations = ["ehr"]
{extra}
""")
    return path


def cli(config: Path, *args: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **ENV, **(env or {})}, check=False)


class ServeProcess:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, crash_at: str | None = None, timeout: float = 30.0) -> None:
        env = {**os.environ, **ENV}
        env.pop("TRYGGBRO_CRASH_AT", None)
        if crash_at:
            env["TRYGGBRO_CRASH_AT"] = crash_at
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub.cli", "--config", str(self.config), "serve"],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if crash_at and self.proc.poll() == -signal.SIGKILL:
                return  # the crash point was reached while starting: that is the test
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n"
                                     f"{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"serve not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(timeout=10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def post(self, event: dict[str, Any], timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"{self.url}/ingest/alarmplatform", method="POST",
            data=json.dumps(event).encode(),
            headers={"x-api-key": SOURCE_KEY, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


def new_port() -> int:
    return free_port()
