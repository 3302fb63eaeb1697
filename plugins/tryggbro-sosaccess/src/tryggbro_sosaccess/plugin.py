"""Plugin entry point (group `tryggbro`, name `sos-access`): the receiver and its adapter."""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import RegisterAdapter, RegisterSource, SourceType
from tryggbro_sosaccess.adapter import SosAccessAdapter
from tryggbro_sosaccess.source import SosAccessSettings, build_sos_access_source


@hookimpl
def hub_register_adapters(register: RegisterAdapter) -> None:
    register("sos-access", SosAccessAdapter)


@hookimpl
def hub_register_sources(register: RegisterSource) -> None:
    register(SourceType("sos-access", SosAccessSettings, build_sos_access_source))
