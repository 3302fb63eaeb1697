"""FHIR R4 in the VKP R4 shape: builders and validation.

The only package that imports fhir.resources (and only its R4B models). Everything else
in the hub handles FHIR as plain JSON dicts.
"""

from __future__ import annotations

from hub.fhir.validate import structure_problems, validate_bundle, warm_up
from hub.fhir.vkp import transaction_bundle

__all__ = ["structure_problems", "transaction_bundle", "validate_bundle", "warm_up"]
