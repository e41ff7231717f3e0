"""Shapley values of a round's participants from coalition utilities, in integers.

A coalition is a bitmask over the round's players (sorted by name: bit ``i``
is ``players[i]``); its utility is an integer (parts per million of the
validation accuracy, or of the negated loss) of the model aggregated from
its members' updates, and the empty coalition's is the round's starting
model's. A coalition's value is its utility minus the empty one's.

Every value is computed exactly from the integer utilities (fractions, then
rounded half to even), so anyone holding the recorded utilities, and for
GTG-Shapley the recorded permutations, recomputes the very same integers:
``audit verify`` recomputes them (:mod:`ledger.verify.valuations`).

- :func:`exact_values`: the Shapley formula over all 2^n coalitions.
- :func:`loo_values`: leave one out, ``u(N) - u(N \\ {i})``.
- :func:`gtg_values`: GTG-Shapley (Liu et al. 2022): the mean marginal
  contribution over sampled permutations, a permutation's tail truncated (0)
  once its prefix is within ``truncation`` of the grand coalition, and the
  whole round truncated (all 0) when its gain is below ``truncation``.
  :func:`sample_gtg` draws the permutations (guided: each player leads in
  turn, the rest shuffled by a seeded generator) until the values converge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "MAX_PERMUTATIONS_PER_PLAYER",
    "RoundValues",
    "exact_values",
    "gtg_values",
    "loo_values",
    "sample_gtg",
    "value_round",
]

Utility = Callable[[int], int]
"""A coalition's utility (an integer, parts per million) by its bitmask."""

MAX_PERMUTATIONS_PER_PLAYER = 50
"""GTG-Shapley draws at most this many permutations per player, converged or not."""


class _Cached:
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


def _rounded(value: Fraction) -> int:
    return round(value)  # half to even: the same integer everywhere


def exact_values(n: int, utility: Utility | Mapping[int, int]) -> list[int]:
    """Exact Shapley values of ``n`` players: ``sum |S|!(n-|S|-1)!/n! (u(S+i) - u(S))``."""
    u = _Cached(utility)
    weights = [math.factorial(s) * math.factorial(n - s - 1) for s in range(n)]
    values = []
    for i in range(n):
        bit, total = 1 << i, 0
        for mask in range(1 << n):
            if not mask & bit:
                total += weights[mask.bit_count()] * (u(mask | bit) - u(mask))
        values.append(_rounded(Fraction(total, math.factorial(n))))
    return values


def loo_values(n: int, utility: Utility | Mapping[int, int]) -> list[int]:
    """Leave-one-out values: the grand coalition's utility minus the one without each player."""
    u, full = _Cached(utility), (1 << n) - 1
    return [u(full) - u(full & ~(1 << i)) for i in range(n)]


def gtg_values(
    n: int,
    utility: Utility | Mapping[int, int],
    permutations: Sequence[Sequence[int]],
    truncation: int,
) -> list[int]:
    """GTG-Shapley's estimate from ``permutations`` (see the module docstring)."""
    u, full = _Cached(utility), (1 << n) - 1
    grand, empty = u(full), u(0)
    if abs(grand - empty) < truncation or not permutations:
        return [0] * n
    sums = [0] * n
    for permutation in permutations:
        _walk(permutation, u, grand, empty, truncation, sums)
    return [_rounded(Fraction(s, len(permutations))) for s in sums]


def _walk(
    permutation: Sequence[int],
    u: _Cached,
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


def _prefix(permutation: Sequence[int], length: int) -> int:
    mask = 0
    for player in permutation[:length]:
        mask |= 1 << player
    return mask


def sample_gtg(
    n: int,
    utility: Utility,
    *,
    truncation: int,
    convergence: float,
    rng: np.random.Generator,
    max_permutations: int | None = None,
    prefetch: Callable[[list[int]], None] | None = None,
    max_evaluations: int | None = None,
) -> tuple[list[tuple[int, ...]], dict[int, int]]:
    """Draw GTG-Shapley's permutations until the values converge.

    Permutation ``k`` starts with player ``k mod n`` (guided sampling) and
    shuffles the others. After every ``n`` permutations from ``2n`` on, it
    stops when every estimate's standard error is at most ``convergence``
    times the spread (standard deviation) of the estimates, or of a tenth
    of the average share of the gain if the values hardly differ: the
    sampling noise is then small beside the differences between participants
    (``0.2`` keeps their correlation with the exact values near 0.98). It
    also stops after ``max_permutations`` (default
    :data:`MAX_PERMUTATIONS_PER_PLAYER` per player), or at the end of the
    first block after which ``max_evaluations`` coalitions were scored. Returns the
    permutations and every utility evaluated (the record
    :func:`gtg_values` needs). Permutations are drawn ``n`` at a time;
    ``prefetch``, if given, is handed every prefix of each block first, so a
    batch evaluator can score them together (the draws and the result are
    the same either way).
    """
    u, full = _Cached(utility), (1 << n) - 1
    grand, empty = u(full), u(0)
    gain = abs(grand - empty)
    permutations: list[tuple[int, ...]] = []
    if gain < truncation or n == 0:
        return permutations, u.seen
    limit = max_permutations or MAX_PERMUTATIONS_PER_PLAYER * n
    sums, squares = [0] * n, [0] * n
    while len(permutations) < limit:
        block: list[tuple[int, ...]] = []
        for lead in range(min(n, limit - len(permutations))):
            rest = [int(p) for p in rng.permutation(n) if p != lead]
            block.append((lead, *rest))
        if prefetch is not None:
            prefetch(sorted({_prefix(p, j) for p in block for j in range(1, n)} - set(u.seen)))
        for permutation in block:
            permutations.append(permutation)
            _walk(permutation, u, grand, empty, truncation, sums, squares)
        k = len(permutations)
        if max_evaluations is not None and len(u.seen) >= max_evaluations:
            break
        if k % n == 0 and k >= 2 * n:
            mean = np.array(sums, dtype=np.float64) / k
            variance = np.maximum(np.array(squares, dtype=np.float64) / k - mean**2, 0.0)
            error = float(np.sqrt(variance / (k - 1)).max())
            if error <= convergence * max(float(mean.std()), 0.1 * gain / n):
                break
    return permutations, u.seen


@dataclass(frozen=True)
class RoundValues:
    """A round's valuation: enough to recompute every value from the record.

    Parameters
    ----------
    method : str
        ``shapley`` (exact), ``gtg`` or ``loo``.
    players : tuple of str
        The institutions whose updates were accepted, sorted; bit ``i`` of a
        coalition is ``players[i]``.
    utilities : mapping of int to int
        Every evaluated coalition's utility (parts per million).
    values : mapping of str to int
        Each player's value (parts per million of utility).
    truncation : int
        GTG-Shapley's truncation, in the utilities' units.
    permutations : tuple of tuple of int
        GTG-Shapley's sampled permutations, in order.
    seconds : float
        How long the valuation took (not part of what is recomputed).
    utility : str
        What a coalition's utility measured: ``accuracy`` or ``loss`` (negated).
    """

    method: str
    players: tuple[str, ...]
    utilities: Mapping[int, int]
    values: Mapping[str, int]
    truncation: int = 0
    permutations: tuple[tuple[int, ...], ...] = ()
    seconds: float = field(default=0.0, compare=False)
    utility: str = field(default="accuracy", compare=False)

    @property
    def evaluations(self) -> int:
        """Coalition models evaluated (the empty one, the round's starting model, included)."""
        return len(self.utilities)

    @property
    def gain(self) -> int:
        """The grand coalition's utility minus the starting model's."""
        return self.utilities[(1 << len(self.players)) - 1] - self.utilities[0]

    def to_doc(self) -> dict[str, Any]:
        """The record's JSON form (integers and strings only)."""
        return {
            "method": self.method,
            "players": list(self.players),
            "utilities": [[mask, u] for mask, u in sorted(self.utilities.items())],
            "values": dict(sorted(self.values.items())),
            "truncation": self.truncation,
            "permutations": [list(p) for p in self.permutations],
        }

    @classmethod
    def from_doc(
        cls, doc: Mapping[str, Any], seconds: float = 0.0, utility: str = "accuracy"
    ) -> RoundValues:
        """Parse :meth:`to_doc`'s form; ``ValueError`` says what is malformed."""
        try:
            players = tuple(str(p) for p in doc["players"])
            utilities = {int(m): int(u) for m, u in doc["utilities"]}
            values = {str(k): int(v) for k, v in doc["values"].items()}
            permutations = tuple(tuple(int(i) for i in p) for p in doc["permutations"])
            return cls(
                str(doc["method"]),
                players,
                utilities,
                values,
                int(doc["truncation"]),
                permutations,
                seconds,
                utility,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"a malformed valuation record: {err!r}") from None


def value_round(
    players: Sequence[str],
    utility: Utility,
    *,
    method: str,
    exact_max: int,
    truncation: int,
    convergence: float,
    seed: int,
    prefetch: Callable[[list[int]], None] | None = None,
    max_evaluations: int | None = None,
) -> RoundValues:
    """Value ``players`` (sorted) by ``method``; ``shapley`` turns to GTG above ``exact_max``.

    ``prefetch`` lets GTG-Shapley hand each block's coalitions to a batch
    evaluator before it walks them, and ``max_evaluations`` bounds its cost
    (see :func:`sample_gtg`).
    """
    n = len(players)
    if list(players) != sorted(set(players)):
        raise ValueError("players must be distinct and sorted")
    u = _Cached(utility)
    permutations: list[tuple[int, ...]] = []
    if method == "shapley" and n <= exact_max:
        values = exact_values(n, u)
    elif method == "loo":
        values = loo_values(n, u)
    elif method in ("shapley", "gtg"):
        method = "gtg"
        rng = np.random.default_rng(seed)
        permutations, _ = sample_gtg(
            n,
            u,
            truncation=truncation,
            convergence=convergence,
            rng=rng,
            prefetch=prefetch,
            max_evaluations=max_evaluations,
        )
        values = gtg_values(n, u, permutations, truncation)
    else:
        raise ValueError(f"unknown valuation method {method!r}")
    u(0), u((1 << n) - 1)  # the gain is always on record
    return RoundValues(
        method,
        tuple(players),
        dict(u.seen),
        dict(zip(players, values, strict=True)),
        truncation if method == "gtg" else 0,
        tuple(permutations),
    )
