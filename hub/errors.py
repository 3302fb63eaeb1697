"""Errors the hub raises on purpose, each carrying what an operator or sender needs."""

from __future__ import annotations


class HubError(Exception):
    """Base for errors the hub expects and explains."""


class ConfigError(HubError):
    """The configuration file is wrong; the message names the file, the key and why."""


class InputError(HubError):
    """A sender's input cannot be accepted.

    `slug` names the problem type (RFC 9457 `type`), `status` the HTTP status to answer,
    and the message says exactly what is wrong (never echoing personal data).
    """

    def __init__(self, slug: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.slug = slug
        self.detail = detail
        self.status = status


class MappingError(HubError):
    """An event cannot be turned into FHIR: a missing code mapping, a missing field."""


class ValidationFailure(HubError):
    """Mapped FHIR resources break R4 structure or a VKP rule; lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class StorageError(HubError):
    """The database refused or is unsafe to use (e.g. durability settings are wrong)."""
