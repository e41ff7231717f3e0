"""Differential-privacy maths for DP-SGD: plans, epsilon, and the checks before training.

The maths is Opacus's (``opacus.accountants``). This module only plans a
round (noise multiplier, sample rate, steps) and computes epsilon for an
accountant history; keeping that history between rounds is the client's
bookkeeping (:mod:`client.accountant`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from opacus.accountants import create_accountant
from opacus.validators import ModuleValidator
from torch import nn

from common.epsilon import over_budget
from common.errors import UserError
from common.policy import PrivacyConfig, TrainingConfig

__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "DPPlan",
    "HistoryEntry",
    "PlanExceedsBudget",
    "PrivacyError",
    "check_delta",
    "check_model_for_dp",
    "epsilon_of",
    "plan_round",
]

HistoryEntry = tuple[float, float, int]
"""One accountant entry: (noise multiplier, sample rate, steps)."""


class PrivacyError(UserError, ValueError):
    """A privacy setting cannot be honoured (bad delta, a model Opacus cannot train)."""


def epsilon_of(history: list[HistoryEntry], delta: float, accountant: str) -> float:
    """Epsilon of a whole history under ``accountant`` (0 for an empty history)."""
    if not history:
        return 0.0
    entries = tuple((float(s), float(q), int(n)) for s, q, n in history)
    return _epsilon(entries, float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon(history: tuple[HistoryEntry, ...], delta: float, accountant: str) -> float:
    """Kept per process: a PRV epsilon costs ~0.4 s, and plans ask for the same ones again."""
    acc = create_accountant(mechanism=accountant)
    acc.load_state_dict({"history": list(history), "mechanism": acc.mechanism()})
    return float(acc.get_epsilon(delta=delta))


def check_delta(delta: float, num_records: int) -> None:
    """Refuse ``delta >= 1/N``: such a delta allows publishing a whole record."""
    if num_records < 1:
        raise PrivacyError("cannot train with DP on an empty dataset")
    if delta >= 1.0 / num_records:
        raise PrivacyError(
            f"privacy.delta = {delta:g} must be below 1/N = {1.0 / num_records:.3g} for a "
            f"dataset of N = {num_records} records; lower privacy.delta"
        )


def check_model_for_dp(model: nn.Module) -> None:
    """Refuse a model Opacus cannot train with per-sample clipping (e.g. BatchNorm).

    Raises
    ------
    PrivacyError
        Naming each offending module and what to use instead.
    """
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        details = "; ".join(str(e) for e in errors)
        raise PrivacyError(
            f"the model cannot be trained with DP-SGD: {details}. "
            "Replace BatchNorm with GroupNorm (opacus.validators.ModuleValidator.fix does this)"
        )


@dataclass(frozen=True)
class DPPlan:
    """What one round of DP-SGD will do, fixed before any gradient is computed.

    Parameters
    ----------
    noise_multiplier : float
        Gaussian noise multiplier for every step.
    sample_rate : float
        Poisson sampling rate, ``1 / ceil(N / batch_size)`` as Opacus uses it.
    steps : int
        Optimizer steps this round (``local_epochs * ceil(N / batch_size)``,
        empty Poisson batches included: each still releases a noisy step).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    @property
    def entry(self) -> HistoryEntry:
        return (self.noise_multiplier, self.sample_rate, self.steps)


MAX_NOISE_MULTIPLIER = 100.0
"""The most noise a derived plan may add: beyond it an update is all noise, so a plan
that would need more cannot be covered by the budget left, and is refused."""


class PlanExceedsBudget(PrivacyError):
    """The budget left cannot cover the rounds planned for this run."""

    def __init__(self, *, spent: float, budget: float, needed: float, rounds: int) -> None:
        self.spent, self.budget, self.needed, self.rounds = spent, budget, needed, rounds
        super().__init__(
            f"the {rounds} round(s) planned would bring epsilon to at least {needed:.3f}, "
            f"{over_budget(spent, budget)}"
        )


def plan_round(
    privacy: PrivacyConfig,
    training: TrainingConfig,
    *,
    num_records: int,
    rounds_left: int,
    history: Sequence[HistoryEntry] = (),
    cache: dict[str, float] | None = None,
    plan_key: str = "",
) -> DPPlan:
    """The noise, sample rate and steps of one round for a dataset of ``num_records``.

    Budget-safe: the plan covers ``rounds_left`` rounds (this one included)
    on top of the dataset's ``history``, so it always fits the budget that is
    left. An explicit ``privacy.noise-multiplier`` is used as it is, once the
    whole plan is checked to fit; otherwise the multiplier is derived so that
    the history and the planned rounds spend ``privacy.epsilon`` in full. The
    derivation (a bisection over the accountant) is kept in ``cache`` under
    ``plan_key`` (one per run) and its inputs, so the run's later rounds,
    and a node that missed some, use the same noise and stay within budget.

    Raises
    ------
    PlanExceedsBudget
        The budget left cannot cover the planned rounds (even at
        :data:`MAX_NOISE_MULTIPLIER`, or at the explicit multiplier).
    """
    check_delta(privacy.delta, num_records)
    if rounds_left < 1:
        raise PrivacyError(f"a plan needs at least one round left, not {rounds_left}")
    batches = math.ceil(num_records / training.batch_size)
    sample_rate = 1.0 / batches
    steps = training.local_epochs * batches
    total = steps * rounds_left
    key = (
        f"{plan_key}:{privacy.accountant}:eps={privacy.epsilon!r}:delta={privacy.delta!r}:"
        f"q={sample_rate!r}:steps={steps}"
    )
    sigma = privacy.noise_multiplier
    if sigma == 0.0 and cache is not None and plan_key and key in cache:
        sigma = cache[key]  # derived at this run's first round: the plan still fits
    elif sigma == 0.0:
        sigma = _noise_for_budget(privacy, list(history), sample_rate, total, rounds_left)
        if cache is not None and plan_key:
            cache[key] = sigma
    else:
        planned = [*history, (sigma, sample_rate, total)]
        needed = epsilon_of(planned, privacy.delta, privacy.accountant)
        if needed > privacy.epsilon:
            spent = epsilon_of(list(history), privacy.delta, privacy.accountant)
            raise PlanExceedsBudget(
                spent=spent, budget=privacy.epsilon, needed=needed, rounds=rounds_left
            )
    return DPPlan(noise_multiplier=float(sigma), sample_rate=sample_rate, steps=steps)


def _noise_for_budget(
    privacy: PrivacyConfig,
    history: list[HistoryEntry],
    sample_rate: float,
    steps: int,
    rounds: int,
) -> float:
    """The least noise multiplier with which ``history`` plus ``steps`` fits the budget.

    A root search on the accountant's epsilon, which falls as the noise
    grows; the answer returned is on the safe side (its epsilon is within
    budget).
    """

    def spends(sigma: float) -> float:  # epsilon_of is memoised
        planned = [*history, (sigma, sample_rate, steps)]
        return epsilon_of(planned, privacy.delta, privacy.accountant)

    budget = privacy.epsilon
    if privacy.accountant != "rdp":
        # PRV is tighter than RDP but each evaluation costs ~0.4 s: bracket it
        # with the RDP answer (fast), which PRV's noise is at most, when it fits.
        rdp = _noise_for_budget(replace(privacy, accountant="rdp"), history, sample_rate, steps,
                                rounds)  # fmt: skip
        if spends(rdp) <= budget and spends(0.75 * rdp) > budget:
            return _least_fitting(spends, budget, 0.75 * rdp, rdp)
    if spends(MAX_NOISE_MULTIPLIER) > budget:
        raise PlanExceedsBudget(
            spent=epsilon_of(history, privacy.delta, privacy.accountant),
            budget=budget,
            needed=spends(MAX_NOISE_MULTIPLIER),
            rounds=rounds,
        )
    high = MAX_NOISE_MULTIPLIER
    while spends(high / 2) <= budget and high > 1e-3:  # bracket quickly from above
        high /= 2
    return _least_fitting(spends, budget, high / 2, high)


def _least_fitting(
    spends: Callable[[float], float], budget: float, low: float, high: float
) -> float:
    """The least noise in [low, high] (to 0.1 %) whose epsilon fits; ``high`` fits, ``low`` not.

    Regula falsi (the Illinois variant) on epsilon, which falls smoothly as
    the noise grows: a handful of accountant calls instead of bisection's
    dozen, and the answer is always a noise that was checked to fit.
    """
    f_low, f_high = spends(low) - budget, spends(high) - budget
    side = 0
    while high - low > 1e-3 * high:
        middle = high - f_high * (high - low) / (f_high - f_low)
        if not low < middle < high:  # rounding: fall back to halving
            middle = (low + high) / 2
        middle = min(max(middle, low + 1e-4 * high), high - 1e-4 * high)
        f_middle = spends(middle) - budget
        if f_middle <= 0:
            high, f_high = middle, f_middle
            if side == -1:
                f_low /= 2
            side = -1
        else:
            low, f_low = middle, f_middle
            if side == 1:
                f_high /= 2
            side = 1
    return high
