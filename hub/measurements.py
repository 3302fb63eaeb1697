"""The DHO measurement code table (`mappings/measurements.toml`): types, codes, units.

Loaded and checked once at start-up (through `MappingStore.load`). Unit conversions are
exact Decimal arithmetic from decimal strings; see the table's header for the rounding
rule. Also the range check of a measurement against the patient's measurement plan
(vkp-alert-code 5.1), shared by the processing step and the built-in mapping.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from hub.domain.model import Enrolment, Event, Measurement, MeasurementPlan, Priority, Quantity
from hub.errors import ConfigError, MappingError

FILE_NAME = "measurements.toml"
_CODE = re.compile(r"^[0-9]{1,18}(-[0-9])?$")


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    display: str | None = None


@dataclass(frozen=True, slots=True)
class Conversion:
    """canonical = value × multiply / divide, rounded half-up to `decimals` if given."""

    multiply: Decimal = Decimal(1)
    divide: Decimal | None = None
    decimals: int | None = None

    def apply(self, value: Decimal) -> Decimal:
        result = value * self.multiply
        if self.divide is not None:
            result = result / self.divide
        if self.decimals is not None:
            result = result.quantize(Decimal(1).scaleb(-self.decimals), rounding=ROUND_HALF_UP)
        return result


@dataclass(frozen=True, slots=True)
class MeasurementType:
    key: str
    display: str
    loinc: Code
    profile: str
    snomed: Code | None = None
    mdc: tuple[str, ...] = ()
    unit: str | None = None  # canonical UCUM code; None for a panel
    unit_display: str | None = None
    units: Mapping[str, Conversion] = field(default_factory=dict)
    components: tuple[str, ...] = ()

    def conversion(self, unit: str) -> Conversion:
        if unit == self.unit:
            return Conversion()
        found = self.units.get(unit)
        if found is None:
            accepted = ", ".join([self.unit or "", *self.units])
            raise MappingError(
                f"unit {unit!r} is not accepted for {self.key} (accepted UCUM units: "
                f"{accepted}); add a conversion to {FILE_NAME} if it is right")
        return found

    def to_canonical(self, value: Decimal, unit: str) -> Quantity:
        """The value in this type's canonical UCUM unit; an unknown unit is a MappingError."""
        if self.unit is None:
            raise MappingError(f"{self.key} is a panel: it has components, not a value")
        if not value.is_finite():
            raise MappingError(f"{self.key}: {value} is not a measured value")
        return Quantity(self.conversion(unit).apply(value), self.unit)


class MeasurementTable:
    """All measurement types of one code table, by type key and by MDC code."""

    def __init__(self, file: Path, types: Mapping[str, MeasurementType]) -> None:
        self.file = file
        self._types = dict(types)
        self._by_mdc = {code: t for t in self._types.values() for code in t.mdc}

    def __contains__(self, key: object) -> bool:
        return key in self._types

    def __iter__(self) -> Any:
        return iter(self._types.values())

    def type(self, key: str) -> MeasurementType:
        try:
            return self._types[key]
        except KeyError:
            raise MappingError(
                f"measurement type {key!r} is not in {self.file.name} (known: "
                f"{', '.join(sorted(self._types))})") from None

    def by_mdc(self, code: str) -> MeasurementType:
        try:
            return self._by_mdc[code]
        except KeyError:
            raise MappingError(
                f"MDC code {code!r} is not a known measurement (known: "
                f"{', '.join(sorted(self._by_mdc))}); add it to {self.file.name}") from None


def load(path: Path) -> MeasurementTable:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    raw_types = data.get("types")
    if not isinstance(raw_types, dict) or not raw_types:
        raise ConfigError(f"{path}: expected [types.<key>] tables")
    types = {key: _type(path, key, value) for key, value in raw_types.items()}
    mdc_owner: dict[str, str] = {}
    for t in types.values():
        for code in t.mdc:
            if code in mdc_owner:
                raise ConfigError(f"{path}: MDC code {code} is in both [types.{mdc_owner[code]}] "
                                  f"and [types.{t.key}]")
            mdc_owner[code] = t.key
        for comp in t.components:
            if comp not in types or types[comp].unit is None:
                raise ConfigError(f"{path}: [types.{t.key}] component {comp!r} is not a "
                                  "measurement type with a unit")
    return MeasurementTable(path, types)


def _type(path: Path, key: str, v: Any) -> MeasurementType:
    where = f"{path}: [types.{key}]"
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(v) - {"display", "loinc", "snomed", "mdc", "profile", "unit", "unit_display",
                        "units", "components"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    for name in ("display", "profile"):
        if not isinstance(v.get(name), str) or not v[name]:
            raise ConfigError(f"{where}: {name}: required, a string")
    loinc = _code(where, "loinc", v.get("loinc"))
    if loinc is None:
        raise ConfigError(f"{where}: loinc: required ({{ code, display }})")
    mdc = v.get("mdc", [])
    if not isinstance(mdc, list) or not all(isinstance(c, str) and c.isdigit() for c in mdc):
        raise ConfigError(f"{where}: mdc: a list of numeric code strings")
    components = v.get("components", [])
    unit = v.get("unit")
    if components and unit is not None:
        raise ConfigError(f"{where}: a panel (components) has no unit of its own")
    if not components and not isinstance(unit, str):
        raise ConfigError(f"{where}: unit: required, a UCUM code string")
    units: dict[str, Conversion] = {}
    for name, conv in (v.get("units") or {}).items():
        units[name] = _conversion(f"{where} units.{name!r}", conv)
    return MeasurementType(
        key=key, display=v["display"], loinc=loinc, profile=v["profile"],
        snomed=_code(where, "snomed", v.get("snomed")), mdc=tuple(mdc), unit=unit,
        unit_display=v.get("unit_display", unit), units=units, components=tuple(components))


def _code(where: str, name: str, value: Any) -> Code | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("code"), str) \
            or not _CODE.match(value["code"]):
        raise ConfigError(f"{where}: {name}: expected {{ code = \"…\", display = \"…\" }} "
                          "with a numeric code")
    return Code(value["code"], value.get("display"))


def _decimal(where: str, name: str, value: Any) -> Decimal:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a decimal string (\"0.001\"), not "
                          f"{type(value).__name__}: floats are not exact")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise ConfigError(f"{where}: {name} = {value!r} is not a decimal") from None
    if not result.is_finite() or result <= 0:
        raise ConfigError(f"{where}: {name} = {value!r} must be a positive number")
    return result


def _conversion(where: str, value: Any) -> Conversion:
    if not isinstance(value, dict) or set(value) - {"multiply", "divide", "decimals"}:
        raise ConfigError(f"{where}: expected {{ multiply = \"…\", divide = \"…\", decimals = N }}")
    multiply = _decimal(where, "multiply", value.get("multiply", "1"))
    divide = _decimal(where, "divide", value["divide"]) if "divide" in value else None
    decimals = value.get("decimals")
    if decimals is not None and (not isinstance(decimals, int) or not 0 <= decimals <= 6):
        raise ConfigError(f"{where}: decimals must be an integer 0..6")
    if divide is not None and decimals is None:
        raise ConfigError(f"{where}: a conversion that divides needs `decimals` (the quotient "
                          "may not terminate; say where to round)")
    return Conversion(multiply, divide, decimals)


# ---------------------------------------------------------------------------------------
# Range check against the measurement plan (vkp-alert-code 5.1)
# ---------------------------------------------------------------------------------------

OUT_OF_RANGE_CODE = "5.1"  # vkp-alert-code: Oppsummerende varsel (summary alert)


@dataclass(frozen=True, slots=True)
class RangeFinding:
    """One value outside the plan's range. Carries the value: for the receiver, never logs."""

    type: str
    value: Quantity
    low: Decimal | None
    high: Decimal | None

    @property
    def below(self) -> bool:
        return self.low is not None and self.value.value < self.low


def _plan_bound(table: MeasurementTable, plan: MeasurementPlan,
                bound: Decimal | None) -> Decimal | None:
    if bound is None or plan.unit is None:
        return bound
    return table.type(plan.type).to_canonical(bound, plan.unit).value


def out_of_range(measurement: Measurement, enrolment: Enrolment,
                 table: MeasurementTable) -> list[RangeFinding]:
    """Values (or components) outside the enrolment's plan for their type, in canonical
    units. A measurement without a value (data absent) is never out of range."""
    parts: Sequence[tuple[str, Quantity | None]] = (
        [(c.type, c.value) for c in measurement.components]
        if measurement.components else [(measurement.type, measurement.value)])
    findings = []
    for type_key, quantity in parts:
        plan = enrolment.plan_for(type_key)
        if plan is None or quantity is None or (plan.low is None and plan.high is None):
            continue
        low, high = _plan_bound(table, plan, plan.low), _plan_bound(table, plan, plan.high)
        if (low is not None and quantity.value < low) or \
                (high is not None and quantity.value > high):
            findings.append(RangeFinding(type_key, quantity, low, high))
    return findings


# Ahead of routine measurements, behind alarms: a DHO alert is reviewed by the follow-up
# service in its working hours, not dispatched like a safety alarm, and is never given up
# on silently either (it is below the alarm threshold, so the normal retry policy applies).
OUT_OF_RANGE_PRIORITY = int(Priority.NORMAL) + 20
OUT_OF_RANGE_SEVERITY = "moderate"
OUT_OF_RANGE_DETAIL = "Måling utenfor grenseverdi"  # coded text, no values: it is logged


def assess(event: Event, enrolment: Enrolment, table: MeasurementTable) -> Event:
    """The event as the patient's plan sees it: a measurement outside its range becomes a
    5.1 alert (code, severity, priority); others are returned unchanged."""
    m = event.measurement
    if m is None or m.data_absent or not out_of_range(m, enrolment, table):
        return event
    return replace(event, code=OUT_OF_RANGE_CODE,
                   severity=event.severity or OUT_OF_RANGE_SEVERITY,
                   priority=max(event.effective_priority, OUT_OF_RANGE_PRIORITY),
                   detail=event.detail or OUT_OF_RANGE_DETAIL)
