"""Plugin entry point (group `tryggbro`, name `nursecall`)."""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import RegisterAdapter
from tryggbro_nursecall.adapter import NurseCallAdapter


@hookimpl
def hub_register_adapters(register: RegisterAdapter) -> None:
    register("nursecall", NurseCallAdapter)
