"""FHIR R4 in the VKP R4 shape: builders and validation.

The only package that imports fhir.resources (and only its R4B models). Everything else
in the hub handles FHIR as plain JSON dicts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hub.fhir.vkp import transaction_bundle

if TYPE_CHECKING:
    from hub.fhir.validate import structure_problems, validate_bundle, warm_up

# hub.fhir.validate imports the fhir.resources models (~1 s): the built-in mappings import
# hub.fhir.vkp (plain dicts) in every process that loads the plugins, including `serve`'s
# intake process, which never validates. Validation loads on first use of these names.
_FROM_VALIDATE = frozenset({"structure_problems", "validate_bundle", "warm_up"})


def __getattr__(name: str) -> Any:
    if name in _FROM_VALIDATE:
        from hub.fhir import validate

        return getattr(validate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["structure_problems", "transaction_bundle", "validate_bundle", "warm_up"]
