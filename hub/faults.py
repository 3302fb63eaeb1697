"""Named crash points for the crash tests (reliability.md §5.2, recipe A).

`TRYGGBRO_CRASH_AT=<point>:<n>` makes the process kill itself with SIGKILL the n-th time
it passes `<point>`: no cleanup, no flush, exactly like a power cut to the process.
Unset (always, in production) a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

CRASH_ENV = "TRYGGBRO_CRASH_AT"
POINTS = frozenset({
    "after_commit_before_ack",  # intake committed, the sender has no answer yet
    "mid_group_commit",  # intake's multi-row insert done, its transaction not committed
    "after_claim",  # deliveries leased, nothing sent
    "after_send_before_mark",  # the destination answered, the outcome is not recorded
    "mid_processing",  # inside a processing batch, before its commit
})


def _parse(value: str | None) -> dict[str, int]:
    if not value:
        return {}
    name, _, count = value.partition(":")
    if name not in POINTS:
        raise ValueError(f"{CRASH_ENV}: unknown crash point {name!r}; known: {sorted(POINTS)}")
    return {name: int(count or "1")}


_armed = _parse(os.environ.get(CRASH_ENV))
_counts: dict[str, int] = {}
_lock = threading.Lock()


def crashpoint(name: str) -> None:
    if not _armed or name not in _armed:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] >= _armed[name]:
            os.kill(os.getpid(), signal.SIGKILL)
