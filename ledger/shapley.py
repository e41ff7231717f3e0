"""Valuing a round's participants: Shapley values from coalition utilities, in integers.

A coalition is a bitmask over the round's players (sorted by name: bit ``i``
is ``players[i]``); its utility is an integer (parts per million of the
validation accuracy, or of the negated loss) of the model aggregated from
its members' updates, and the empty coalition's is the round's starting
model's. A coalition's value is its utility minus the empty one's.

The integer maths (:func:`exact_values`, :func:`loo_values`,
:func:`gtg_values`) lives in :mod:`common.shapley`, shared with the nodes,
which recompute their own values from a receipt, and with ``audit verify``
(:mod:`ledger.verify.valuations`). Here: :func:`sample_gtg` draws
GTG-Shapley's permutations (guided: each player leads in turn, the rest
shuffled by a seeded generator) until the values converge, and
:func:`value_round` values a round by the policy's method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.shapley import (
    CachedUtility,
    Utility,
    add_marginals,
    exact_values,
    gtg_values,
    loo_values,
)

__all__ = [
    "MAX_PERMUTATIONS_PER_PLAYER",
    "RoundValues",
    "exact_values",
    "gtg_values",
    "loo_values",
    "sample_gtg",
    "value_round",
]

MAX_PERMUTATIONS_PER_PLAYER = 50
"""GTG-Shapley draws at most this many permutations per player, converged or not."""


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
    u, full = CachedUtility(utility), (1 << n) - 1
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
            add_marginals(permutation, u, grand, empty, truncation, sums, squares)
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
    u = CachedUtility(utility)
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
