"""Differential-privacy maths for DP-SGD: plans, epsilon, and the checks before training.

The maths is Opacus's (``opacus.accountants``). This module only plans a
round (noise multiplier, sample rate, steps) and computes epsilon for an
accountant history; keeping that history between rounds is the client's
bookkeeping (:mod:`client.accountant`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.validators import ModuleValidator
from torch import nn

from common.errors import UserError
from common.policy import PrivacyConfig, TrainingConfig

__all__ = [
    "DPPlan",
    "HistoryEntry",
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


def plan_round(
    privacy: PrivacyConfig,
    training: TrainingConfig,
    *,
    num_records: int,
    planned_rounds: int,
    cache: dict[str, float] | None = None,
) -> DPPlan:
    """The noise, sample rate and steps of one round for a dataset of ``num_records``.

    An explicit ``privacy.noise-multiplier`` is used as it is; otherwise the
    multiplier is derived once from the budget so that ``planned_rounds``
    rounds of ``local-epochs`` epochs spend ``privacy.epsilon`` in full. The
    derivation (a binary search over the accountant, about a second) is kept
    in ``cache`` under its inputs, so later rounds look it up.
    """
    check_delta(privacy.delta, num_records)
    batches = math.ceil(num_records / training.batch_size)
    sample_rate = 1.0 / batches
    steps = training.local_epochs * batches
    sigma = privacy.noise_multiplier
    key = (
        f"{privacy.accountant}:eps={privacy.epsilon!r}:delta={privacy.delta!r}:"
        f"q={sample_rate!r}:steps={steps * planned_rounds}"
    )
    if sigma == 0.0 and cache is not None and key in cache:
        sigma = cache[key]
    elif sigma == 0.0:
        try:
            sigma = get_noise_multiplier(
                target_epsilon=privacy.epsilon,
                target_delta=privacy.delta,
                sample_rate=sample_rate,
                steps=steps * planned_rounds,
                accountant=privacy.accountant,
            )
        except ValueError as err:
            raise PrivacyError(
                f"cannot reach epsilon = {privacy.epsilon} in {planned_rounds} rounds "
                f"of {steps} steps: {err}"
            ) from err
        if cache is not None:
            cache[key] = float(sigma)
    return DPPlan(noise_multiplier=float(sigma), sample_rate=sample_rate, steps=steps)
