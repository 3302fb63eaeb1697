"""Plugin entry point (group `tryggbro`, name `supervision`)."""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import RegisterAdapter
from tryggbro_supervision.adapter import SupervisionAdapter


@hookimpl
def hub_register_adapters(register: RegisterAdapter) -> None:
    register("supervision", SupervisionAdapter)
