"""Deterministic identifiers: a replay or a resend produces the same ids, so the same
resources are updated instead of duplicated (reliability.md §3.1).

Ids are UUIDv5 over source and vendor keys: opaque, never all digits, and never carrying
a fødselsnummer.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from hub.domain.model import PersonId

# Fixed for the life of the project: changing it changes every resource id we emit.
TRYGGBRO_NAMESPACE = uuid.UUID("6f1c3b0e-8a4d-5e0f-9d2b-7a51c4e0b9a3")


def resource_id(source: str, business_key: str, resource_type: str) -> str:
    """Id of the FHIR resource of `resource_type` that describes `business_key`."""
    return str(uuid.uuid5(TRYGGBRO_NAMESPACE, f"{source}|{business_key}|{resource_type}"))


def bundle_id(source: str, dedup_key: str, seq: int) -> str:
    """Id of the Bundle carrying event `seq` of the message `dedup_key`."""
    return str(uuid.uuid5(TRYGGBRO_NAMESPACE, f"{source}|{dedup_key}|{seq}|Bundle"))


# Order keys appear in logs, metrics and indexes; the payload they sit beside holds the
# identity number anyway, so this keeps it out of sight, not out of reach of DB readers.
_ORDER_KEY_SALT = b"tryggbro-order-key-v1"


def order_key(person: PersonId) -> str:
    """Pseudonymous per-patient ordering key: stable, but no identity number in clear."""
    digest = hmac.new(_ORDER_KEY_SALT, f"{person.system}|{person.value}".encode(), hashlib.sha256)
    return digest.hexdigest()[:32]
