"""MLLP receivers from other projects, as subprocesses on 127.0.0.1 (peers.md §C).

- `hl7apy_peer()`: hl7apy 1.3.5 MLLPServer (closes the connection after each message);
- `python_hl7_peer()`: python-hl7 0.4.5 asyncio server (persistent connections);
- `node_hl7_peer(code)`: node-hl7-server 2.5.0 answering `code` (AA/AE/AR) to every
  message; on a persistent connection it re-sends the ACKs of all earlier messages.
  Installed by `make node-hl7` (npm ci in tests/peers/node-hl7).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.peers.medplum import free_port

PEERS = Path(__file__).resolve().parent
NODE_HL7 = PEERS / "node-hl7"


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                    timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"peer did not listen on {port} within {timeout} s")


@contextlib.contextmanager
def _run(cmd: list[str], port: int, cwd: Path | None = None) -> Iterator[int]:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def hl7apy_peer() -> contextlib.AbstractContextManager[int]:
    port = free_port()
    return _run([sys.executable, str(PEERS / "hl7apy_ack_server.py"), str(port)], port)


def node_hl7_peer(code: str = "AA") -> contextlib.AbstractContextManager[int]:
    # A missing peer is an error naming the command that installs it, never a skip.
    if not (NODE_HL7 / "node_modules" / "node-hl7-server").is_dir():
        raise RuntimeError(f"node-hl7-server is not installed in {NODE_HL7}: run `make node-hl7`")
    port = free_port()
    return _run(["node", "ack-server.cjs", str(port), code], port, cwd=NODE_HL7)


def python_hl7_peer() -> contextlib.AbstractContextManager[int]:
    port = free_port()
    return _run([sys.executable, str(PEERS / "python_hl7_ack_server.py"), str(port)], port)
