"""Plugin entry point (group `tryggbro`, name `location`)."""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import RegisterAdapter
from tryggbro_location.adapter import LocationAdapter


@hookimpl
def hub_register_adapters(register: RegisterAdapter) -> None:
    register("location", LocationAdapter)
