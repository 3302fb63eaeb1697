"""Processing and dispatch as child processes of `tryggbro serve`.

Python runs one thread of bytecode at a time, and intake, processing (FHIR validation)
and dispatch (HTTP) together need about 4 ms of CPU per event (bench/RESULTS.md). Giving
processing and dispatch a process each lets the gateway use every core, and keeps HTTP
intake answering alarms while a backlog is worked off.

- The parent keeps HTTP intake and the SQLite ownership lock; children never outlive it
  (the kernel kills them when it dies, `PR_SET_PDEATHSIG`).
- Wake-ups cross process boundaries through pipes: intake wakes processing, processing
  wakes dispatch, so latency does not depend on polling. Polling remains the fallback.
- A child that dies is restarted; the leases it held are released at once.
- Children run at a lower scheduling priority: when the CPU is scarce, acknowledging
  alarms comes first and processing catches up when the load drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.logging import get_logger

log = get_logger("hub.stages")

PROCESSING = "processing"
DISPATCH = "dispatch"
STAGES = (PROCESSING, DISPATCH)
_PR_SET_PDEATHSIG = 1
_RESTART_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)


STAGE_NICENESS = 15  # intake (acknowledging alarms) gets the CPU first when it is scarce


def become_stage_process(parent_pid: int) -> None:
    """Set up a stage child: die with the parent, yield the CPU to intake."""
    die_with_parent(parent_pid)
    with contextlib.suppress(OSError):
        os.nice(STAGE_NICENESS)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class Notifier:
    """Wakes a stage in another process by writing one byte to a pipe; never blocks."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    def __call__(self) -> None:
        # A full pipe has a wake-up pending already; a closed one has no reader.
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.fd, b"\x01")


def watch_wake_pipe(loop: asyncio.AbstractEventLoop, fd: int, wake: Callable[[], None]) -> None:
    """Call `wake` whenever bytes arrive on `fd` (stop watching at end of file)."""
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(fd)
            return
        wake()

    loop.add_reader(fd, readable)


@dataclass
class Child:
    stage: str
    args: list[str]
    pass_fds: tuple[int, ...]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0


@dataclass
class StageSupervisor:
    """Starts, watches and stops the stage processes of one `serve`."""

    config_path: str
    instance: str
    release_leases: Callable[[str], Any]
    worker_id: Callable[[str, int], str]
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    children: dict[str, Child] = field(default_factory=dict)
    processing_processes: int = 1
    wake_dispatch: Notifier | None = None
    _wake_processors: list[Notifier] = field(default_factory=list)
    _fds: list[int] = field(default_factory=list)
    _stopping: bool = False

    def start(self) -> None:
        disp_r, disp_w = os.pipe()  # processing -> dispatch
        self._fds = [disp_r, disp_w]
        self.wake_dispatch = Notifier(disp_w)
        parent = str(os.getpid())
        base = [sys.executable, "-m", "hub.cli", "--config", self.config_path, "stage"]
        for n in range(1, self.processing_processes + 1):
            proc_r, proc_w = os.pipe()  # intake (parent) -> this processing process
            self._fds += [proc_r, proc_w]
            self._wake_processors.append(Notifier(proc_w))
            name = PROCESSING if self.processing_processes == 1 else f"{PROCESSING}-{n}"
            self.children[name] = Child(
                name, [*base, PROCESSING, "--parent", parent, "--wake-fd", str(proc_r),
                       "--notify-fd", str(disp_w)], (proc_r, disp_w))
        self.children[DISPATCH] = Child(DISPATCH, [*base, DISPATCH, "--parent", parent,
                                                   "--wake-fd", str(disp_r)], (disp_r,))
        for child in self.children.values():
            self._spawn(child)

    def wake_processing(self) -> None:
        """New messages are journaled: wake every processing process."""
        for notify in self._wake_processors:
            notify()

    def _spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.args, pass_fds=child.pass_fds, env=dict(self.env))
        log.info("stage process started", stage=child.stage, pid=child.proc.pid)

    async def watch(self) -> None:
        """Restart children that exit, releasing their leases first."""
        while not self._stopping:
            await asyncio.sleep(0.1)
            for child in self.children.values():
                proc = child.proc
                if proc is None or proc.poll() is None or self._stopping:
                    continue
                log.error("stage process exited; restarting it", stage=child.stage,
                          pid=proc.pid, returncode=proc.returncode, restarts=child.restarts)
                await asyncio.to_thread(self.release_leases,
                                        self.worker_id(self.instance, proc.pid))
                delay = _RESTART_BACKOFF[min(child.restarts, len(_RESTART_BACKOFF) - 1)]
                child.restarts += 1
                await asyncio.sleep(delay)
                if not self._stopping:
                    self._spawn(child)

    def problems(self) -> dict[str, str]:
        found = {}
        for child in self.children.values():
            if child.proc is None or child.proc.poll() is not None:
                found[f"stage:{child.stage}"] = "not running (restarting)"
        return found

    async def stop(self, timeout: float = 15.0) -> None:
        self._stopping = True
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in self.children.values():
            if child.proc is None:
                continue
            try:
                await asyncio.wait_for(asyncio.to_thread(child.proc.wait), timeout)
            except TimeoutError:
                log.error("stage process did not stop; killing it", stage=child.stage)
                child.proc.kill()
                await asyncio.to_thread(child.proc.wait)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)

