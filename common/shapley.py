"""The integer maths of contribution values: Shapley values recomputed from coalition utilities.

A coalition is a bitmask over a round's players (sorted by name: bit ``i`` is
``players[i]``); its utility is an integer (parts per million). Every value
is computed exactly from the integer utilities (fractions, then rounded half
to even), so anyone holding a round's recorded utilities, and for
GTG-Shapley its recorded permutations, recomputes the very same integers: the
server when it values a round (:mod:`ledger.shapley`), ``audit verify``
(:mod:`ledger.verify.valuations`) and a node checking its own value in a
receipt (:mod:`client.own_entries`).

- :func:`exact_values`: the Shapley formula over all 2^n coalitions.
- :func:`loo_values`: leave one out, ``u(N) - u(N \\ {i})``.
- :func:`gtg_values`: GTG-Shapley (Liu et al. 2022): the mean marginal
  contribution over sampled permutations, a permutation's tail truncated (0)
  once its prefix is within ``truncation`` of the grand coalition, and the
  whole round truncated (all 0) when its gain is below ``truncation``.
- :func:`recompute_values`: each player's value by a recorded method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction

__all__ = [
    "CachedUtility",
    "Utility",
    "add_marginals",
    "exact_values",
    "gtg_values",
    "loo_values",
    "recompute_values",
    "rounded",
]

Utility = Callable[[int], int]
"""A coalition's utility (an integer, parts per million) by its bitmask."""


class CachedUtility:
    """A utility evaluated at most once per coalition; the record of every evaluation."""

    def __init__(self, utility: Utility | Mapping[int, int]) -> None:
        self.utility = utility
        self.seen: dict[int, int] = {}

    def __call__(self, mask: int) -> int:
        if mask not in self.seen:
            if callable(self.utility):
                self.seen[mask] = int(self.utility(mask))
            elif mask in self.utility:
                self.seen[mask] = int(self.utility[mask])
            else:
                raise ValueError(f"the utility of coalition {mask:#x} is not recorded")
        return self.seen[mask]


def rounded(value: Fraction) -> int:
    return round(value)  # half to even: the same integer everywhere


def exact_values(n: int, utility: Utility | Mapping[int, int]) -> list[int]:
    """Exact Shapley values of ``n`` players: ``sum |S|!(n-|S|-1)!/n! (u(S+i) - u(S))``."""
    u = CachedUtility(utility)
    weights = [math.factorial(s) * math.factorial(n - s - 1) for s in range(n)]
    values = []
    for i in range(n):
        bit, total = 1 << i, 0
        for mask in range(1 << n):
            if not mask & bit:
                total += weights[mask.bit_count()] * (u(mask | bit) - u(mask))
        values.append(rounded(Fraction(total, math.factorial(n))))
    return values


def loo_values(n: int, utility: Utility | Mapping[int, int]) -> list[int]:
    """Leave-one-out values: the grand coalition's utility minus the one without each player."""
    u, full = CachedUtility(utility), (1 << n) - 1
    return [u(full) - u(full & ~(1 << i)) for i in range(n)]


def gtg_values(
    n: int,
    utility: Utility | Mapping[int, int],
    permutations: Sequence[Sequence[int]],
    truncation: int,
) -> list[int]:
    """GTG-Shapley's estimate from ``permutations`` (see the module docstring)."""
    u, full = CachedUtility(utility), (1 << n) - 1
    grand, empty = u(full), u(0)
    if abs(grand - empty) < truncation or not permutations:
        return [0] * n
    sums = [0] * n
    for permutation in permutations:
        add_marginals(permutation, u, grand, empty, truncation, sums)
    return [rounded(Fraction(s, len(permutations))) for s in sums]


def add_marginals(
    permutation: Sequence[int],
    u: CachedUtility,
    grand: int,
    empty: int,
    truncation: int,
    sums: list[int],
    squares: list[int] | None = None,
) -> None:
    """Add each player's marginal contribution along ``permutation`` to ``sums`` (and squares)."""
    prefix, before = 0, empty
    for player in permutation:
        prefix |= 1 << player
        if abs(grand - before) < truncation:
            continue  # within-round truncation: the rest add (about) nothing
        after = u(prefix)
        sums[player] += after - before
        if squares is not None:
            squares[player] += (after - before) ** 2
        before = after


def recompute_values(
    method: str,
    players: Sequence[str],
    utilities: Mapping[int, int],
    permutations: Sequence[Sequence[int]] = (),
    truncation: int = 0,
) -> dict[str, int]:
    """Each player's value by ``method`` (``shapley``, ``loo`` or ``gtg``) from the record.

    Raises ``ValueError`` if the record names an unknown method, a coalition
    outside its players, or lacks a utility the method needs.
    """
    n = len(players)
    if any(not 0 <= mask < 1 << n for mask in utilities):
        raise ValueError(f"a coalition outside the round's {n} players is recorded")
    if any(sorted(p) != list(range(n)) for p in permutations):
        raise ValueError("a recorded permutation is not a permutation of the round's players")
    if method == "shapley":
        values = exact_values(n, utilities)
    elif method == "loo":
        values = loo_values(n, utilities)
    elif method == "gtg":
        values = gtg_values(n, utilities, permutations, truncation)
    else:
        raise ValueError(f"unknown valuation method {method!r}")
    return dict(zip(players, values, strict=True))
