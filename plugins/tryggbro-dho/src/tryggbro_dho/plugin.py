"""Plugin entry point (group `tryggbro`, name `dho`)."""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import RegisterAdapter
from tryggbro_dho.phd import PhdFhirAdapter
from tryggbro_dho.vendor import DhoJsonAdapter


@hookimpl
def hub_register_adapters(register: RegisterAdapter) -> None:
    register("dho-json", DhoJsonAdapter)
    register("phd-fhir", PhdFhirAdapter)
