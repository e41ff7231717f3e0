"""The policy's [federation] section: rounds, sampling, the aggregation rule and its defences.

Kept apart from the other sections because its keys check each other: a
robust rule needs enough nodes for the attackers it must tolerate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from common.licences import PURPOSES
from common.policy.spec import NUMBER_OR_WORD, PolicyError, Section, fraction, positive, spec

__all__ = ["AGGREGATORS", "NORM_BOUND_WORDS", "TRUST_MODES", "FederationConfig"]

AGGREGATORS = ("fedavg", "trimmed-mean", "median", "krum", "multi-krum", "bulyan")
NORM_BOUND_WORDS = ("adaptive", "reference", "off")
TRUST_MODES = ("reference", "off")


def _norm_bound(v: float | str) -> bool:
    return v in NORM_BOUND_WORDS if isinstance(v, str) else positive(v)


@dataclass(frozen=True)
class FederationConfig(Section):
    """How rounds are run.

    Parameters
    ----------
    rounds : int (default: 8)
        Number of federated rounds.
    min_nodes : int (default: 3)
        Nodes that must be connected and take part in every round.
    fraction_train : float (default: 1.0)
        Fraction of connected nodes sampled for training each round.
    fraction_evaluate : float (default: 0.0)
        Fraction sampled for client-side evaluation; 0 skips it (the server
        evaluates the global model on its own validation split every round).
    round_timeout : float (default: 600.0)
        Seconds the server waits for replies in one round.
    poll_interval : float (default: 0.2)
        Seconds between the ServerApp's polls for replies.
    seed : int (default: 42)
        Seed for model initialisation, partitioning and data order.
    server_learning_rate : float (default: 1.0)
        FedAvgM server learning rate applied to the averaged update.
    server_momentum : float (default: 0.0)
        FedAvgM server momentum; with 0 and a server learning rate of 1 the
        strategy is plain FedAvg. Momentum averages the clients' DP noise
        over rounds.
    purpose : str (default: "research")
        What the run is for (``research``, ``education`` or ``commercial``):
        data whose licence does not allow it is refused at admission and its
        updates from then on.
    aggregator : str (default: "fedavg")
        Flower's aggregation rule: ``fedavg`` (FedAvgM, with the server
        learning rate and momentum above), ``trimmed-mean`` (FedTrimmedAvg),
        ``median`` (FedMedian), ``krum``, ``multi-krum`` or ``bulyan``.
    byzantine : int (default: 0)
        Attackers the robust rule must tolerate: the coordinate-wise median
        needs ``min-nodes >= 2 f + 1`` (a majority of honest updates), Krum and
        Multi-Krum ``min-nodes >= 2 f + 3``, Bulyan ``min-nodes >= 4 f + 3``; a
        trimmed mean must cut at least ``f`` updates at each end.
    trim_fraction : float (default: 0.2)
        ``trimmed-mean``: share of the updates cut at each end, per coordinate.
    update_norm_bound : float or str (default: "adaptive")
        Each update's L2 norm (as a difference from the round's global model)
        is clipped to this bound before aggregation: a number, ``"adaptive"``
        (the ``update-norm-quantile`` of the round's norms, as Flower's
        adaptive clipping targets a quantile), ``"reference"`` (the norm of
        the round's reference update, which no member can move) or ``"off"``.
    update_norm_quantile : float (default: 0.5)
        The quantile of the round's update norms an adaptive bound is set to.
    trust : str (default: "reference")
        ``"reference"``: trust bootstrapping (FLTrust): each round the server
        trains the global model on its validation split, and each update is
        rescaled to that reference update's norm and weighted by the positive
        part of its cosine similarity to it, over whichever ``aggregator``;
        ``"off"``: updates are weighted by their example counts.
    evidence_cosine : float (default: 0.99)
        Two members' updates more similar than this (cosine) are recorded as
        near-identical: evidence of collusion.
    evidence_class_drop : float (default: 0.4)
        A round that loses this much of one class's validation accuracy while
        the others hold is recorded, with the members whose update alone does it.
    """

    SECTION: ClassVar[str] = "federation"
    rounds: int = field(
        default=8,
        metadata=spec("rounds", int, lambda v: 1 <= v <= 10_000, "an integer from 1 to 10000"),
    )
    min_nodes: int = field(
        default=3, metadata=spec("min-nodes", int, lambda v: v >= 1, "an integer >= 1")
    )
    fraction_train: float = field(
        default=1.0,
        metadata=spec("fraction-train", float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    )
    fraction_evaluate: float = field(
        default=0.0, metadata=spec("fraction-evaluate", float, fraction, "a number in [0, 1]")
    )
    round_timeout: float = field(
        default=600.0, metadata=spec("round-timeout", float, positive, "a number of seconds > 0")
    )
    poll_interval: float = field(
        default=0.2,
        metadata=spec(
            "poll-interval",
            float,
            lambda v: 0.01 <= v <= 10.0,
            "a number of seconds from 0.01 to 10",
        ),
    )
    seed: int = field(default=42, metadata=spec("seed", int, lambda v: v >= 0, "an integer >= 0"))
    server_learning_rate: float = field(
        default=1.0,
        metadata=spec(
            "server-learning-rate", float, lambda v: positive(v) and v <= 10, "a number in (0, 10]"
        ),
    )
    server_momentum: float = field(
        default=0.0,
        metadata=spec("server-momentum", float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    )
    purpose: str = field(
        default="research",
        metadata=spec("purpose", str, lambda v: v in PURPOSES, f"one of: {', '.join(PURPOSES)}"),
    )
    aggregator: str = field(
        default="fedavg",
        metadata=spec(
            "aggregator", str, lambda v: v in AGGREGATORS, f"one of: {', '.join(AGGREGATORS)}"
        ),
    )
    byzantine: int = field(
        default=0, metadata=spec("byzantine", int, lambda v: v >= 0, "an integer >= 0")
    )
    trim_fraction: float = field(
        default=0.2,
        metadata=spec("trim-fraction", float, lambda v: 0.0 < v < 0.5, "a number in (0, 0.5)"),
    )
    update_norm_bound: float | str = field(
        default="adaptive",
        metadata=spec(
            "update-norm-bound",
            NUMBER_OR_WORD,
            _norm_bound,
            'a number > 0, "adaptive", "reference" or "off"',
        ),
    )
    update_norm_quantile: float = field(
        default=0.5,
        metadata=spec(
            "update-norm-quantile", float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"
        ),
    )

    trust: str = field(
        default="reference",
        metadata=spec(
            "trust", str, lambda v: v in TRUST_MODES, f"one of: {', '.join(TRUST_MODES)}"
        ),
    )
    evidence_cosine: float = field(
        default=0.99,
        metadata=spec("evidence-cosine", float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    )
    evidence_class_drop: float = field(
        default=0.4,
        metadata=spec("evidence-class-drop", float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    )

    def __post_init__(self) -> None:
        """Refuse combinations Flower's rules cannot honour."""
        n, f, rule = self.min_nodes, self.byzantine, self.aggregator
        needed = {
            "median": 2 * f + 1,
            "krum": 2 * f + 3,
            "multi-krum": 2 * f + 3,
            "bulyan": 4 * f + 3,
        }.get(rule)
        if needed is not None and n < needed:
            raise PolicyError(
                f"federation.aggregator = {rule!r} tolerating {f} attacker(s) needs "
                f"min-nodes >= {needed}, got {n}"
            )
        if rule == "trimmed-mean" and math.floor(self.trim_fraction * n) < f:
            raise PolicyError(
                f"federation.trim-fraction = {self.trim_fraction} cuts "
                f"{math.floor(self.trim_fraction * n)} of {n} updates at each end, fewer than "
                f"the {f} declared attacker(s)"
            )
        if rule == "fedavg" and f > 0:
            raise PolicyError(
                f"federation.byzantine = {f} but fedavg tolerates no attacker: choose a robust "
                "federation.aggregator (trimmed-mean, median, krum, multi-krum, bulyan)"
            )
        if rule != "fedavg" and (self.server_momentum != 0.0 or self.server_learning_rate != 1.0):
            raise PolicyError(
                f"federation.server-momentum and server-learning-rate apply to fedavg only, "
                f"not to {rule!r}: leave them at 0 and 1"
            )
