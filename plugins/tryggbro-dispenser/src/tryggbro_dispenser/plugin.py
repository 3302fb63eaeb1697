"""Plugin entry point (group `tryggbro`, name `dispenser`)."""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import RegisterAdapter
from tryggbro_dispenser.adapter import DispenserAdapter


@hookimpl
def hub_register_adapters(register: RegisterAdapter) -> None:
    register("dispenser", DispenserAdapter)
