"""Plugin entry point (group `tryggbro`, name `doorlock`)."""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import RegisterAdapter
from tryggbro_doorlock.adapter import DoorLockAdapter


@hookimpl
def hub_register_adapters(register: RegisterAdapter) -> None:
    register("doorlock", DoorLockAdapter)
