"""Collusion evidence: what a round's updates show that the defences alone do not say.

Three signs, each recorded in the ledger as a defence entry with the
members named (rule ``near-identical``, ``zero-weight`` or ``class-drop``,
action ``suspected``), so a member or an auditor sees them in ``audit show``
and on the dashboard beside the round's values:

- **near-identical updates**: two members' updates (as differences from the
  global model, as they sent them) with a cosine similarity above
  ``federation.evidence-cosine``. Honest members train on different data
  with their own DP noise; two updates that agree to 0.99 were coordinated
  (or one copied the other). A threshold of 1 turns the check off.
- **repeatedly weighted zero**: a member whose update the trust weighting
  (:mod:`.trust`) gave weight 0 in two or more of the run's rounds.
- **one class dropping**: the round's model lost at least
  ``federation.evidence-class-drop`` of one class's validation accuracy
  while the other classes held (their mean fell by less than a third of
  that); a member is named if its update alone drops that class by as much,
  both from the last round and from the members' median. An honest member
  whose data lack the class can be named too: the detail gives the numbers,
  the judgement is the consortium's.

Evidence is not a verdict: nothing here excludes anyone. ``operator
suspend`` does, as a ledger entry of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from common.arrays import Arrays, arrays_sha256
from ledger import SUSPECTED, DefenceFact
from server.app.strategy.trust import flat_delta

__all__ = ["SUSPECTED", "ClassScorer", "Evidence"]

ClassScorer = Callable[[Arrays], np.ndarray]
"""``weights -> accuracy per class`` on the server's validation split."""


class Evidence:
    """Collects a run's collusion evidence, round by round.

    Parameters
    ----------
    cosine : float
        Updates more similar than this are near-identical.
    class_drop : float
        A drop in one class's accuracy (a fraction, e.g. 0.2) that is flagged.
    class_scorer : callable, optional
        Per-class accuracy of weights on the validation split; without it
        the per-class check is off.
    """

    def __init__(
        self, cosine: float, class_drop: float, class_scorer: ClassScorer | None = None
    ) -> None:
        self.cosine, self.class_drop, self.class_scorer = cosine, class_drop, class_scorer
        self.zero_rounds: Counter[str] = Counter()
        self._scored: tuple[str, np.ndarray] | None = None
        """The last round's model (its hash) and its scores: the next round's start."""

    def twins(
        self, global_weights: Arrays, updates: Sequence[tuple[str, Arrays]]
    ) -> dict[str, list[tuple[str, float]]]:
        """Each member whose update is near-identical to others': those others, and the cosine."""
        names = [name for name, _ in updates]
        deltas = [flat_delta(global_weights, arrays) for _, arrays in updates]
        norms = [float(np.linalg.norm(d)) for d in deltas]
        twins: dict[str, list[tuple[str, float]]] = {}
        for i in range(len(deltas)):
            for j in range(i + 1, len(deltas)):
                if norms[i] == 0 or norms[j] == 0 or not np.isfinite(norms[i] * norms[j]):
                    continue
                similarity = min(1.0, float(deltas[i] @ deltas[j]) / (norms[i] * norms[j]))
                if similarity > self.cosine and names[i] != names[j]:
                    twins.setdefault(names[i], []).append((names[j], similarity))
                    twins.setdefault(names[j], []).append((names[i], similarity))
        return twins

    def near_identical(self, twins: dict[str, list[tuple[str, float]]]) -> list[DefenceFact]:
        """A fact for each member in ``twins`` (see :meth:`twins`)."""
        return [
            DefenceFact(
                name,
                "near-identical",
                SUSPECTED,
                "update near-identical to "
                + ", ".join(f"{other}'s (cosine {s:.4f})" for other, s in others)
                + f": above the policy's {self.cosine:g}",
                share=max(s for _, s in others),
            )
            for name, others in sorted(twins.items())
        ]

    def weighted_zero(self, server_round: int, names: Sequence[str]) -> list[DefenceFact]:
        """Count this round's zero-weight members; a fact for each at two rounds or more."""
        facts = []
        for name in names:
            self.zero_rounds[name] += 1
            count = self.zero_rounds[name]
            if count >= 2:
                facts.append(
                    DefenceFact(
                        name,
                        "zero-weight",
                        SUSPECTED,
                        f"weighted zero by the reference update in {count} rounds of this run "
                        f"(round {server_round} the latest)",
                        share=1.0,
                    )
                )
        return facts

    def _class_scores(self, weights: Arrays) -> np.ndarray:
        """Per-class accuracy of ``weights``; a round's end model is scored once, not again
        as the next round's start."""
        assert self.class_scorer is not None
        key = arrays_sha256(weights)
        if self._scored is None or self._scored[0] != key:
            self._scored = (key, self.class_scorer(weights))
        return self._scored[1]

    def class_drops(
        self, before: Arrays, after: Arrays, updates: Sequence[tuple[str, Arrays]]
    ) -> list[DefenceFact]:
        """If one class dropped while the rest held, the members whose update alone drops it."""
        if self.class_scorer is None or not updates:
            return []
        old, new = self._class_scores(before), self._class_scores(after)
        present = ~(np.isnan(old) | np.isnan(new))
        facts: list[DefenceFact] = []
        for c in np.flatnonzero(present):
            others = present.copy()
            others[c] = False
            drop = float(old[c] - new[c])
            rest = float(np.mean(old[others] - new[others])) if others.any() else 0.0
            if drop < self.class_drop or rest >= self.class_drop / 3:
                continue
            alone = {name: float(self.class_scorer(arrays)[c]) for name, arrays in updates}
            typical = float(np.median(list(alone.values())))
            for name, accuracy in alone.items():
                if old[c] - accuracy >= self.class_drop and typical - accuracy >= self.class_drop:
                    facts.append(
                        DefenceFact(
                            name,
                            "class-drop",
                            SUSPECTED,
                            f"class {c} accuracy fell {old[c]:.2f} -> {new[c]:.2f} this round "
                            f"while the others held (mean change {-rest:+.2f}); with this "
                            f"update alone class {c} goes to {accuracy:.2f} (the members' "
                            f"median {typical:.2f})",
                            share=drop,
                        )
                    )
        return facts
