"""Robust aggregation: Flower's rules chosen by the policy, the update-norm bound, and a record.

:func:`build_aggregator` maps ``federation.aggregator`` to Flower's own
strategy (``FedAvgM``, ``FedTrimmedAvg``, ``FedMedian``, ``Krum``,
``MultiKrum``, ``Bulyan``), which the consortium strategy wraps; nothing of
their maths is written here. :class:`NormBound` clips each update, as a
difference from the round's global model, to ``federation.update-norm-bound``
(a number, or ``adaptive``: a quantile of the round's norms, the target
Flower's adaptive clipping uses). :func:`rule_effects` says, for the ledger,
which updates the rule left out and how much of each it did not use, by
running Flower's own selection (``select_multikrum``) on the same replies or
by ranking each coordinate as the coordinate-wise rules do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)
from flwr.serverapp.strategy.multikrum import select_multikrum

from common.arrays import Arrays
from common.policy import FederationConfig
from ledger import DefenceFact

__all__ = ["NormBound", "build_aggregator", "flat", "rule_effects"]


def build_aggregator(federation: FederationConfig) -> FedAvg:
    """Flower's strategy for ``federation.aggregator``, sampling as the policy says."""
    n, f = federation.min_nodes, federation.byzantine

    def make(cls: type[FedAvg], **settings: Any) -> FedAvg:
        return cls(
            fraction_train=federation.fraction_train,
            fraction_evaluate=federation.fraction_evaluate,
            min_train_nodes=n,
            min_evaluate_nodes=n,
            min_available_nodes=n,
            **settings,
        )

    rule = federation.aggregator
    if rule == "fedavg":
        return make(
            FedAvgM,
            server_learning_rate=federation.server_learning_rate,
            server_momentum=federation.server_momentum,
        )
    if rule == "trimmed-mean":
        return make(FedTrimmedAvg, beta=federation.trim_fraction)
    if rule == "median":
        return make(FedMedian)
    if rule == "krum":
        return make(Krum, num_malicious_nodes=f)
    if rule == "multi-krum":
        return make(MultiKrum, num_malicious_nodes=f, num_nodes_to_select=max(1, n - f))
    if rule == "bulyan":
        return make(Bulyan, num_malicious_nodes=f)
    raise ValueError(f"unknown aggregator {rule!r}")  # the policy allows none other


def flat(arrays: Arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays.values()])


@dataclass(frozen=True)
class NormBound:
    """Clips each update's L2 norm (its difference from the global model) before aggregation.

    Parameters
    ----------
    bound : float or str
        A fixed bound (> 0), ``"adaptive"`` (the ``quantile`` of the round's
        norms), ``"reference"`` (the norm of the round's reference update, see
        :mod:`.trust`) or ``"off"``.
    quantile : float (default: 0.5)
        Which quantile of the round's norms an adaptive bound is.
    """

    bound: float | str
    quantile: float = 0.5

    def apply(
        self,
        global_weights: Arrays,
        updates: Sequence[tuple[str, Arrays]],
        reference_norm: float | None = None,
    ) -> tuple[list[Arrays], list[DefenceFact]]:
        """The updates, each clipped to the bound, and a fact for every one that was.

        ``reference_norm`` is the round's reference update's norm, which a
        ``"reference"`` bound needs.
        """
        if self.bound == "off" or not updates:
            return [arrays for _, arrays in updates], []
        deltas = [{k: a[k].astype(np.float64) - global_weights[k] for k in a} for _, a in updates]
        norms = [float(np.linalg.norm(flat(d))) for d in deltas]
        if self.bound == "reference":
            if reference_norm is None:
                raise ValueError("a reference norm bound needs the round's reference update")
            limit, how = reference_norm, "the norm of the reference update on the trusted set"
        elif isinstance(self.bound, str):
            limit, how = (
                float(np.quantile(norms, self.quantile)),
                (f"adaptive: the {self.quantile:g} quantile of this round's {len(norms)} norms"),
            )
        else:
            limit, how = float(self.bound), "the policy's fixed bound"
        clipped: list[Arrays] = []
        facts: list[DefenceFact] = []
        for (institution, arrays), delta, norm in zip(updates, deltas, norms, strict=True):
            if norm <= limit or limit <= 0 or not math.isfinite(norm):
                clipped.append(arrays)
                continue
            scale = limit / norm
            clipped.append(
                {k: (global_weights[k] + delta[k] * scale).astype(arrays[k].dtype) for k in arrays}
            )
            facts.append(
                DefenceFact(
                    institution,
                    "norm-bound",
                    "clipped",
                    f"update norm {norm:.6g} clipped to {limit:.6g} ({how})",
                    norm_before=norm,
                    norm_after=limit,
                )
            )
        return clipped, facts


def _ranks(stack: np.ndarray) -> np.ndarray:
    """Each update's rank (0 = smallest) in every coordinate."""
    return np.argsort(np.argsort(stack, axis=0, kind="stable"), axis=0, kind="stable")


def rule_effects(
    federation: FederationConfig,
    institutions: Sequence[str],
    contents: Sequence[RecordDict],
    arrays: Sequence[Arrays],
) -> list[DefenceFact]:
    """Which updates ``federation.aggregator`` discards, and what share of each it trims.

    ``contents`` are the replies Flower's rule receives (in order), ``arrays``
    their decrypted weights.
    """
    rule, f, n = federation.aggregator, federation.byzantine, len(contents)
    if rule == "fedavg" or n == 0:
        return []
    facts: list[DefenceFact] = []
    chosen = list(range(n))
    if rule in ("krum", "multi-krum", "bulyan"):
        keep = {"krum": 1, "multi-krum": max(1, federation.min_nodes - f)}.get(rule, n - 2 * f)
        selected = select_multikrum(list(contents), num_malicious_nodes=f, num_nodes_to_select=keep)
        chosen = [i for i, c in enumerate(contents) if any(c is s for s in selected)]
        facts += [
            DefenceFact(
                institutions[i],
                rule,
                "discarded",
                f"not among the {keep} update(s) with the lowest Krum scores of {n}",
                share=1.0,
            )
            for i in range(n)
            if i not in chosen
        ]
        if rule != "bulyan":
            return facts
    stack = np.stack([flat(arrays[i]) for i in chosen])
    m = len(chosen)
    if rule == "trimmed-mean":
        cut = int(federation.trim_fraction * m)
        ranks = _ranks(stack)
        unused = (ranks < cut) | (ranks >= m - cut)
        how = f"cut among the {cut} lowest or highest of {m}"
    elif rule == "median":
        ranks = _ranks(stack)
        middle = {m // 2} if m % 2 else {m // 2 - 1, m // 2}
        unused = ~np.isin(ranks, list(middle))
        how = "not the median"
    else:  # bulyan: the beta values closest to the coordinate-wise median
        beta = m - 2 * f
        distance = np.abs(stack - np.median(stack, axis=0))
        unused = _ranks(distance) >= beta
        how = f"not among the {beta} closest of {m} to the median"
    for row, i in enumerate(chosen):
        share = float(unused[row].mean())
        if share > 0:
            facts.append(
                DefenceFact(
                    institutions[i],
                    rule,
                    "trimmed",
                    f"{share:.1%} of its coordinates unused ({how})",
                    share=share,
                )
            )
    return facts
