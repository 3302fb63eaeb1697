"""Plugin entry point (group `tryggbro`, name `sia-dc09`): a source type and an adapter."""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import RegisterAdapter, RegisterSource
from tryggbro_siadc09.adapter import SiaDc09Adapter
from tryggbro_siadc09.source import SOURCE_TYPE


@hookimpl
def hub_register_adapters(register: RegisterAdapter) -> None:
    register("sia-dc09", SiaDc09Adapter)


@hookimpl
def hub_register_sources(register: RegisterSource) -> None:
    register(SOURCE_TYPE)
