"""Epsilon for people and for JSON (light: no ML stack, so auditors can import it)."""

from __future__ import annotations

import math

__all__ = ["epsilon_for_json", "format_epsilon", "over_budget"]


def format_epsilon(value: float) -> str:
    """Epsilon for people: ``"∞"`` when DP is off."""
    return "∞" if math.isinf(value) else f"{value:.3f}"


def epsilon_for_json(value: float) -> float | str:
    """JSON has no infinity: DP-off epsilon is written as the string ``"inf"``."""
    return "inf" if math.isinf(value) else value


def over_budget(spent: float, budget: float) -> str:
    """What a budget refusal adds to the epsilon it would reach, e.g.
    ``"over the budget of 8.000 (spent so far: 7.412)"``.

    A budget already spent past (an earlier run's larger budget) says so, so
    the figure reads as what it is.
    """
    already = ", already over it" if spent > budget else ""
    return f"over the budget of {budget:.3f} (spent so far: {spent:.3f}{already})"
