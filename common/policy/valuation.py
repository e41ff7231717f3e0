"""The policy's [valuation] section: how each round's contributions are valued.

After a round is aggregated, the server values every accepted update by the
validation utility of models aggregated from coalitions of the round's
updates (no retraining): exact Shapley values for small rounds, GTG-Shapley's
truncated permutation sampling for large ones, or leave-one-out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from common.policy.spec import Section, positive, spec

__all__ = ["VALUATION_METHODS", "VALUATION_UTILITIES", "ValuationConfig"]

VALUATION_METHODS = ("shapley", "gtg", "loo", "none")
VALUATION_UTILITIES = ("accuracy", "loss")


@dataclass(frozen=True)
class ValuationConfig(Section):
    """How a round's accepted updates are valued.

    Parameters
    ----------
    method : str (default: "shapley")
        ``shapley``: exact Shapley values up to ``exact-max`` participants,
        GTG-Shapley above; ``gtg``: always GTG-Shapley; ``loo``: leave one
        out (the grand coalition's utility minus the coalition without it);
        ``none``: not valued.
    exact_max : int (default: 10)
        The most participants exact Shapley values are computed for (2^n
        coalition models are evaluated).
    utility : str (default: "accuracy")
        A coalition's utility on the server's validation split: its accuracy,
        or its negated loss.
    truncation : float (default: 0.002)
        GTG-Shapley: a round whose utility gain is smaller is not sampled (all
        values 0), and a permutation stops being evaluated once its prefix is
        this close to the grand coalition's utility (in utility units: 0.002 is
        0.2 points of accuracy).
    convergence : float (default: 0.2)
        GTG-Shapley: sampling stops when every value's standard error is at
        most this share of the spread (standard deviation) of the values, so
        the sampling noise is small beside the differences between
        participants (0.2: a correlation with the exact values near 0.98).
    max_evaluations : int (default: 2048)
        GTG-Shapley: sampling also stops once this many coalition models were
        scored (at the end of a block of ``n`` permutations), bounding how long
        a round's valuation delays the next round.
    """

    SECTION: ClassVar[str] = "valuation"
    method: str = field(
        default="shapley",
        metadata=spec(
            "method",
            str,
            lambda v: v in VALUATION_METHODS,
            "one of: " + ", ".join(VALUATION_METHODS),
        ),
    )
    exact_max: int = field(
        default=10,
        metadata=spec("exact-max", int, lambda v: 1 <= v <= 16, "an integer from 1 to 16"),
    )
    utility: str = field(
        default="accuracy",
        metadata=spec(
            "utility",
            str,
            lambda v: v in VALUATION_UTILITIES,
            "one of: " + ", ".join(VALUATION_UTILITIES),
        ),
    )
    truncation: float = field(
        default=0.002,
        metadata=spec("truncation", float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    )
    convergence: float = field(
        default=0.2,
        metadata=spec("convergence", float, lambda v: positive(v) and v <= 1, "a number in (0, 1]"),
    )
    max_evaluations: int = field(
        default=2048,
        metadata=spec(
            "max-evaluations", int, lambda v: 2 <= v <= 10**7, "an integer from 2 to 10000000"
        ),
    )
