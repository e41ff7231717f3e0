"""How a policy section is declared: field specs, type checks and clear errors.

Each section is a frozen dataclass whose fields carry a spec (kebab-case key,
type, check, and the words for what is allowed); :class:`Section` builds one
from a ``{key: value}`` table and names the key of any bad value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, ClassVar

from common.errors import UserError

__all__ = [
    "INT_OR_WORD",
    "NUMBER_OR_WORD",
    "PolicyError",
    "Scalar",
    "Section",
    "fraction",
    "open_fraction",
    "positive",
    "spec",
]

Scalar = bool | int | float | str


class PolicyError(UserError, ValueError):
    """A policy value is missing, of the wrong type or out of range."""


def spec(
    key: str, kind: Any, check: Callable[[Any], bool] | None = None, allowed: str = ""
) -> dict[str, Any]:
    return {"key": key, "kind": kind, "check": check, "allowed": allowed}


def _coerce(key: str, value: Any, kind: Any, allowed: str) -> Scalar:
    """Check ``value``'s TOML type against ``kind`` (ints are accepted as floats)."""
    named = kind
    if kind == NUMBER_OR_WORD:  # a number, or one of a few words the check allows
        if isinstance(value, str):
            return value
        kind = float
    if kind == INT_OR_WORD:  # a whole number, or one of a few words the check allows
        if isinstance(value, str):
            return value
        kind = int
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (kind is str and isinstance(value, str))
    )
    if not ok:
        raise PolicyError(
            f"policy key '{key}' must be {_KIND_NAMES[named]} ({allowed}), "
            f"got {value!r} ({type(value).__name__})"
        )
    return float(value) if kind is float else value


NUMBER_OR_WORD = (float, str)
"""A field ``kind`` for a value that is a number or a word (``update-norm-bound``)."""

INT_OR_WORD = (int, str)
"""A field ``kind`` for a value that is a whole number or a word (``witness.quorum``)."""

_KIND_NAMES: dict[Any, str] = {
    NUMBER_OR_WORD: "a number or a word",
    INT_OR_WORD: "a whole number or a word",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}


class Section:
    """Mixin: build a frozen section from a ``{kebab-key: value}`` mapping."""

    SECTION: ClassVar[str]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Any:
        specs = {f.metadata["key"]: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise PolicyError(
                f"unknown policy key '{cls.SECTION}.{unknown[0]}'; "
                f"keys allowed in [{cls.SECTION}]: {', '.join(sorted(specs))}"
            )
        kwargs: dict[str, Any] = {}
        for key, f in specs.items():
            if key not in values:
                continue
            full = f"{cls.SECTION}.{key}"
            meta = f.metadata
            value = _coerce(full, values[key], meta["kind"], meta["allowed"])
            if meta["check"] is not None and not meta["check"](value):
                raise PolicyError(f"policy key '{full}' must be {meta['allowed']}, got {value!r}")
            kwargs[f.name] = value
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Scalar]:
        return {
            f.metadata["key"]: getattr(self, f.name)
            for f in fields(self)  # type: ignore[arg-type]
        }


def positive(v: Any) -> bool:
    return bool(v > 0 and math.isfinite(v))


def fraction(v: Any) -> bool:
    return bool(0.0 <= v <= 1.0)


def open_fraction(v: Any) -> bool:
    return bool(0.0 < v < 1.0)
