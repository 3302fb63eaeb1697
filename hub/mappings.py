"""Code tables as data: national code systems and vendor code mappings.

Layout of the mappings folder:

- ``codesystems/<name>.toml`` — a national code system (e.g. ``vkp-alert-code``) with
  its canonical ``url`` and a ``[codes]`` table of code → display;
- ``<table>.toml`` — a vendor mapping table: sections of ``key → code``. A section that
  names a ``codesystem`` has every target checked against it at start-up, so a typo in a
  mapping stops the gateway at start instead of failing alarms at night;
- ``measurements.toml`` — the DHO measurement code table (types → LOINC, SNOMED CT, MDC,
  UCUM units and conversions), loaded by ``hub.measurements``.

A vendor adds codes by editing the table; no code changes.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub import measurements as _measurements
from hub.errors import ConfigError, MappingError


@dataclass(frozen=True, slots=True)
class CodeSystem:
    name: str
    url: str
    codes: Mapping[str, str]  # code → display
    file: Path

    def display(self, code: str) -> str:
        return self.codes[code]

    def __contains__(self, code: object) -> bool:
        return code in self.codes


@dataclass(frozen=True, slots=True)
class MappingSection:
    table: str
    name: str
    entries: Mapping[str, str]
    file: Path
    codesystem: str | None = None
    default: str | None = None

    def lookup(self, key: str) -> str:
        """The mapped value for `key`, the section's default, or a MappingError saying where
        to add it."""
        found = self.entries.get(key)
        if found is not None:
            return found
        if self.default is not None:
            return self.default
        known = ", ".join(sorted(self.entries)) or "(none)"
        raise MappingError(
            f"{self.file.name} [{self.name}] has no mapping for {key!r} "
            f"(known: {known}); add it to the table and reprocess the message"
        )

    def get(self, key: str) -> str | None:
        return self.entries.get(key, self.default)


@dataclass(frozen=True, slots=True)
class MappingTable:
    name: str
    file: Path
    sections: Mapping[str, MappingSection]
    settings: Mapping[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> MappingSection:
        try:
            return self.sections[name]
        except KeyError:
            raise ConfigError(
                f"{self.file}: missing section [{name}] (have: {', '.join(sorted(self.sections))})"
            ) from None


class MappingStore:
    """All code systems and mapping tables of one mappings folder, loaded once."""

    def __init__(self, directory: Path, codesystems: dict[str, CodeSystem],
                 tables: dict[str, MappingTable],
                 measurements: _measurements.MeasurementTable | None = None) -> None:
        self.directory = directory
        self._codesystems = codesystems
        self._tables = tables
        self._measurements = measurements

    @classmethod
    def load(cls, directory: Path) -> MappingStore:
        if not directory.is_dir():
            raise ConfigError(f"mappings folder {directory} does not exist")
        codesystems = {}
        cs_dir = directory / "codesystems"
        for path in sorted(cs_dir.glob("*.toml")) if cs_dir.is_dir() else []:
            data = _read(path)
            url, codes = data.get("url"), data.get("codes")
            if not isinstance(url, str) or not isinstance(codes, dict) or not codes:
                raise ConfigError(f"{path}: expected a string 'url' and a non-empty [codes] table")
            codesystems[path.stem] = CodeSystem(
                path.stem, url, {str(k): str(v) for k, v in codes.items()}, path
            )
        tables = {}
        measurements = None
        for path in sorted(directory.glob("*.toml")):
            if path.name == _measurements.FILE_NAME:
                measurements = _measurements.load(path)
            else:
                tables[path.stem] = _load_table(path, codesystems)
        return cls(directory, codesystems, tables, measurements)

    def codesystem(self, name: str) -> CodeSystem:
        try:
            return self._codesystems[name]
        except KeyError:
            raise ConfigError(
                f"code system {name!r} not found: expected {self.directory / 'codesystems'}/"
                f"{name}.toml"
            ) from None

    def table(self, name: str) -> MappingTable:
        try:
            return self._tables[name]
        except KeyError:
            raise ConfigError(
                f"mapping table {name!r} not found: expected {self.directory / name}.toml"
            ) from None

    @property
    def measurements(self) -> _measurements.MeasurementTable:
        """The DHO measurement code table; a ConfigError if the folder has none."""
        if self._measurements is None:
            raise ConfigError(f"measurement code table not found: expected "
                              f"{self.directory / _measurements.FILE_NAME}")
        return self._measurements

    @property
    def codesystems(self) -> Mapping[str, CodeSystem]:
        return self._codesystems

    @property
    def tables(self) -> Mapping[str, MappingTable]:
        return self._tables


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def _load_table(path: Path, codesystems: Mapping[str, CodeSystem]) -> MappingTable:
    data = _read(path)
    sections: dict[str, MappingSection] = {}
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(value, dict):
            settings[key] = value
            continue
        entries = value.get("map")
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: [{key}] needs a [{key}.map] table of key = \"code\"")
        bad = [k for k, v in entries.items() if not isinstance(v, str)]
        if bad:
            raise ConfigError(f"{path}: [{key}.map] values must be strings (see {', '.join(bad)})")
        cs_name = value.get("codesystem")
        default = value.get("default")
        if cs_name is not None:
            cs = codesystems.get(cs_name)
            if cs is None:
                raise ConfigError(
                    f"{path}: [{key}] codesystem = {cs_name!r} is not a known code system "
                    f"(known: {', '.join(sorted(codesystems)) or 'none'})"
                )
            targets = dict(entries)
            if default is not None:
                targets["(default)"] = default
            wrong = {k: v for k, v in targets.items() if v not in cs}
            if wrong:
                listed = ", ".join(f"{k} = {v!r}" for k, v in sorted(wrong.items()))
                raise ConfigError(f"{path}: [{key}] maps to codes not in {cs_name}: {listed}")
        allowed = value.get("allowed")
        if isinstance(allowed, list):
            wrong_values = sorted({v for v in entries.values() if v not in allowed})
            if wrong_values:
                raise ConfigError(
                    f"{path}: [{key}] values {wrong_values} are not among allowed {allowed}"
                )
        sections[key] = MappingSection(
            path.stem, key, dict(entries), path, cs_name,
            str(default) if default is not None else None,
        )
    return MappingTable(path.stem, path, sections, settings)
