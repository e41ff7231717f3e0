"""Epsilon for people and for JSON (light: no ML stack, so auditors can import it)."""

from __future__ import annotations

import math

__all__ = ["epsilon_for_json", "format_epsilon"]


def format_epsilon(value: float) -> str:
    """Epsilon for people: ``"∞"`` when DP is off."""
    return "∞" if math.isinf(value) else f"{value:.3f}"


def epsilon_for_json(value: float) -> float | str:
    """JSON has no infinity: DP-off epsilon is written as the string ``"inf"``."""
    return "inf" if math.isinf(value) else value
