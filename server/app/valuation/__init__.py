"""Who contributed how much: each round's accepted updates valued on the validation split.

A coalition's model is rebuilt from the updates the round already received,
with no retraining (as GTG-Shapley does): the example-weighted mean of its
members' accepted (norm-bounded) updates, FedAvg's rule, whatever rule
aggregated the round itself; the empty coalition is the round's starting
model. Its utility is the model's validation accuracy (or negated loss), in
parts per million; :mod:`ledger.shapley` turns those integers into values.
:mod:`.batched` scores many coalition models at once (it needs torch).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from common.arrays import Arrays
from common.policy import ValuationConfig
from ledger.shapley import RoundValues, value_round

__all__ = ["BatchEvaluator", "CoalitionUtility", "Valuer", "batched", "to_ppm"]

log = logging.getLogger(__name__)

BatchEvaluator = Callable[[Sequence[Arrays]], list[tuple[float, float]]]
"""Maps several weight sets to their ``(loss, accuracy)``, in order (see :mod:`.batched`,
which needs torch: imported only where a model is, never by the ledger's verifier)."""

PPM = 1_000_000
WORST_LOSS = 1e6
"""A coalition model whose loss is not finite is scored as this loss."""


def to_ppm(x: float) -> int:
    """``x`` in parts per million, rounded to an integer."""
    return round(x * PPM)


class CoalitionUtility:
    """The utility (parts per million) of the model aggregated from a coalition's updates.

    Parameters
    ----------
    start : Arrays
        The round's starting (global) model: the empty coalition.
    updates : sequence of (institution, arrays, weight)
        The round's accepted updates, as aggregated, with the weight each
        had in the aggregate (the example count it signed, or its trust
        weight: a coalition is valued on the aggregate the round used).
    evaluator : callable
        ``(loss, accuracy)`` of weights on the server's validation split.
    utility : str
        ``"accuracy"`` or ``"loss"`` (the negated loss).
    batch : BatchEvaluator, optional
        Scores many weight sets at once (:mod:`.batched`); with it,
        :meth:`prefetch` scores a known set of coalitions in a few passes.
    """

    def __init__(
        self,
        start: Arrays,
        updates: Sequence[tuple[str, Arrays, float]],
        evaluator: Callable[[Arrays], tuple[float, float]],
        utility: str = "accuracy",
        batch: BatchEvaluator | None = None,
    ) -> None:
        ordered = sorted(updates, key=lambda item: item[0])
        self.players = tuple(name for name, _, _ in ordered)
        if len(set(self.players)) != len(self.players):
            raise ValueError(f"one update per institution, got {list(self.players)}")
        self.start = start
        self.stacked = {
            k: np.stack([np.asarray(a[k], np.float64) for _, a, _ in ordered]) for k in start
        }
        self.examples = np.array([float(n) for _, _, n in ordered])
        self.evaluator = evaluator
        self.utility = utility
        self.batch = batch
        self._known: dict[int, int] = {}

    def model(self, mask: int) -> Arrays:
        """The coalition's model: its members' weighted mean (the start if empty, or if all
        its members weigh nothing)."""
        members = np.array([bool(mask >> i & 1) for i in range(len(self.players))])
        if mask == 0 or self.examples[members].sum() <= 0:
            return self.start
        weights = self.examples[members] / self.examples[members].sum()
        return {
            k: np.tensordot(weights, stack[members], axes=1).astype(self.start[k].dtype)
            for k, stack in self.stacked.items()
        }

    def prefetch(self, masks: Iterable[int]) -> None:
        """Score ``masks`` together (with a batch evaluator; otherwise on demand)."""
        wanted = [m for m in masks if m not in self._known]
        if self.batch is None or not wanted:
            return
        try:
            scored = self.batch([self.model(m) for m in wanted])
        except RuntimeError as err:  # an operation torch.func cannot batch: one by one
            log.warning("coalition models scored one by one (%s)", err)
            self.batch = None
            return
        for mask, scores in zip(wanted, scored, strict=True):
            self._known[mask] = self._ppm(*scores)

    def __call__(self, mask: int) -> int:
        if mask in self._known:
            return self._known.pop(mask)
        return self._ppm(*self.evaluator(self.model(mask)))

    def _ppm(self, loss: float, accuracy: float) -> int:
        if self.utility == "accuracy":
            return to_ppm(accuracy)
        return -to_ppm(loss if math.isfinite(loss) else WORST_LOSS)


@dataclass(frozen=True)
class Valuer:
    """Values each round's accepted updates as the policy's ``[valuation]`` says.

    Parameters
    ----------
    config : ValuationConfig
        Method, utility, GTG-Shapley's truncation and convergence.
    seed : int
        The run's seed; round ``r`` samples with ``seed`` and ``r``.
    batch : BatchEvaluator, optional
        Scores many coalition models at once where the model allows (the
        CNN): exact Shapley and leave-one-out score their coalitions with it.
    """

    config: ValuationConfig
    seed: int
    batch: BatchEvaluator | None = None

    def value(
        self,
        server_round: int,
        start: Arrays,
        updates: Sequence[tuple[str, Arrays, float]],
        evaluator: Callable[[Arrays], tuple[float, float]],
    ) -> RoundValues | None:
        """The round's values, or ``None`` when valuation is off or nothing was accepted."""
        if self.config.method == "none" or not updates:
            return None
        started = time.perf_counter()
        utility = CoalitionUtility(start, updates, evaluator, self.config.utility, self.batch)
        n, full = len(utility.players), (1 << len(updates)) - 1
        if self.config.method == "shapley" and n <= self.config.exact_max:
            utility.prefetch(range(1 << n))
        elif self.config.method == "loo":
            utility.prefetch([0, full, *(full & ~(1 << i) for i in range(n))])
        values = value_round(
            utility.players,
            utility,
            method=self.config.method,
            exact_max=self.config.exact_max,
            truncation=to_ppm(self.config.truncation),
            convergence=self.config.convergence,
            seed=self.seed * 1_000_003 + server_round,
            prefetch=utility.prefetch,
            max_evaluations=self.config.max_evaluations,
        )
        return replace(values, seconds=time.perf_counter() - started, utility=self.config.utility)
