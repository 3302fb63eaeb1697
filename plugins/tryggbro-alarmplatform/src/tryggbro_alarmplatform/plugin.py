"""Plugin entry point (group `tryggbro`, name `alarmplatform`)."""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import RegisterAdapter
from tryggbro_alarmplatform.adapter import AlarmPlatformAdapter


@hookimpl
def hub_register_adapters(register: RegisterAdapter) -> None:
    register("alarmplatform", AlarmPlatformAdapter)
