"""Privacy accounting: one persistent accountant history per (institution, dataset).

The maths is Opacus's (``opacus.accountants``); this module keeps the
bookkeeping: a history of ``(noise_multiplier, sample_rate, steps)`` entries
that survives every round and every run touching the same dataset, stored as
JSON (never pickle) in the client's own state folder and keyed by the
dataset's manifest hash. A fresh accountant per round would forget earlier
rounds and under-report epsilon; restoring this history before every round
is what keeps the figure honest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.validators import ModuleValidator
from torch import nn

from common.policy import ACCOUNTANTS, PrivacyConfig, TrainingConfig

__all__ = [
    "AccountantHistory",
    "BudgetExhausted",
    "DPPlan",
    "HistoryEntry",
    "PrivacyError",
    "PrivacyStateError",
    "check_delta",
    "check_model_for_dp",
    "epsilon_for_json",
    "epsilon_of",
    "format_epsilon",
    "history_path",
    "list_histories",
    "locked_history",
    "plan_round",
]

HISTORY_FORMAT = "fedcommons.accountant-history"
HISTORY_VERSION = 1
PRIVACY_DIR = "privacy"

HistoryEntry = tuple[float, float, int]
"""One accountant entry: (noise multiplier, sample rate, steps)."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PrivacyError(ValueError):
    """A privacy setting cannot be honoured (bad delta, a model Opacus cannot train)."""


class PrivacyStateError(PrivacyError):
    """An accountant history file is corrupt or belongs to another dataset."""


class BudgetExhausted(PrivacyError):
    """Training the coming round would push epsilon past the budget."""

    def __init__(
        self, *, institution: str, dataset_sha256: str, spent: float, budget: float, next_eps: float
    ) -> None:
        self.institution = institution
        self.dataset_sha256 = dataset_sha256
        self.spent = spent
        self.budget = budget
        self.next_epsilon = next_eps
        super().__init__(
            f"privacy budget exhausted for {institution} (dataset {dataset_sha256[:12]}): "
            f"epsilon spent {spent:.3f} of {budget:.3f}; this round would reach {next_eps:.3f}"
        )


def format_epsilon(value: float) -> str:
    """Epsilon for people: ``"∞"`` when DP is off."""
    return "∞" if math.isinf(value) else f"{value:.3f}"


def epsilon_for_json(value: float) -> float | str:
    """JSON has no infinity: DP-off epsilon is written as the string ``"inf"``."""
    return "inf" if math.isinf(value) else value


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


def _history_sha256(history: list[HistoryEntry]) -> str:
    canonical = json.dumps([list(e) for e in history], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class AccountantHistory:
    """The persistent accountant state of one (institution, dataset).

    Parameters
    ----------
    institution : str
        Who owns the dataset.
    dataset_sha256 : str
        Manifest hash of the dataset (:meth:`common.data.ImageData.sha256`).
    num_records : int
        Records in the dataset.
    history : list of (float, float, int)
        Opacus accountant history: (noise multiplier, sample rate, steps).
    accountant, delta, epsilon_budget
        The settings in force when the history was last charged, so that
        ``fedcommons client budget`` can report without a policy.
    """

    institution: str
    dataset_sha256: str
    num_records: int
    history: list[HistoryEntry] = field(default_factory=list)
    accountant: str = "rdp"
    delta: float = 1e-5
    epsilon_budget: float = 8.0
    updated_at: str = ""
    derived_noise: dict[str, float] = field(default_factory=dict)
    """Noise multipliers derived from budgets (see :func:`plan_round`), by their inputs."""

    @property
    def sha256(self) -> str:
        """SHA-256 of the canonical history: what the ledger records per charge."""
        return _history_sha256(self.history)

    def epsilon(self, delta: float | None = None, accountant: str | None = None) -> float:
        return epsilon_of(self.history, delta or self.delta, accountant or self.accountant)

    @property
    def steps(self) -> int:
        return sum(entry[2] for entry in self.history)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": HISTORY_FORMAT,
                "version": HISTORY_VERSION,
                "institution": self.institution,
                "dataset_sha256": self.dataset_sha256,
                "num_records": self.num_records,
                "accountant": self.accountant,
                "delta": self.delta,
                "epsilon_budget": self.epsilon_budget,
                "history": [list(e) for e in self.history],
                "history_sha256": self.sha256,
                "updated_at": self.updated_at,
                "derived_noise": self.derived_noise,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, source: str) -> AccountantHistory:
        """Parse and validate a history file; anything unexpected is an error, never a reset."""
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise PrivacyStateError(f"{source} is not valid JSON ({err}); it is corrupt") from err
        if not isinstance(doc, dict) or doc.get("format") != HISTORY_FORMAT:
            raise PrivacyStateError(f"{source} is not a FedCommons accountant history")
        if doc.get("version") != HISTORY_VERSION:
            raise PrivacyStateError(
                f"{source} has history version {doc.get('version')!r}; "
                f"this FedCommons reads version {HISTORY_VERSION}"
            )
        try:
            history = [_entry(raw) for raw in doc["history"]]
            state = cls(
                institution=_typed(doc, "institution", str),
                dataset_sha256=_typed(doc, "dataset_sha256", str),
                num_records=_typed(doc, "num_records", int),
                history=history,
                accountant=_typed(doc, "accountant", str),
                delta=float(_typed(doc, "delta", (int, float))),
                epsilon_budget=float(_typed(doc, "epsilon_budget", (int, float))),
                updated_at=_typed(doc, "updated_at", str),
                derived_noise=_noise_cache(doc.get("derived_noise", {})),
            )
            recorded = _typed(doc, "history_sha256", str)
        except (KeyError, TypeError, ValueError) as err:
            raise PrivacyStateError(f"{source} is corrupt: {err}") from err
        if not _SHA256.match(state.dataset_sha256) or state.accountant not in ACCOUNTANTS:
            raise PrivacyStateError(f"{source} is corrupt: bad dataset hash or accountant")
        if recorded != state.sha256:
            raise PrivacyStateError(
                f"{source} is corrupt: its history does not match its recorded sha256 "
                "(edited or damaged); refusing to train rather than reset the budget"
            )
        return state


def _typed(doc: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"'{key}' has the wrong type ({type(value).__name__})")
    return value


def _noise_cache(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise TypeError("'derived_noise' must be an object")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"derived noise {key!r} = {value!r} is not a positive number")
    return {str(k): float(v) for k, v in raw.items()}


def _entry(raw: Any) -> HistoryEntry:
    if not isinstance(raw, list) or len(raw) != 3:
        raise ValueError(f"history entry {raw!r} is not [noise, sample_rate, steps]")
    sigma, rate, steps = raw
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"history entry {raw!r}: steps must be a positive integer")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"history entry {raw!r}: noise multiplier must be >= 0")
    if not (isinstance(rate, (int, float)) and 0 < rate <= 1):
        raise ValueError(f"history entry {raw!r}: sample rate must be in (0, 1]")
    return (float(sigma), float(rate), steps)


def history_path(state_dir: Path, dataset_sha256: str) -> Path:
    """Where the history of one dataset lives inside a client's state folder."""
    return state_dir / PRIVACY_DIR / f"{dataset_sha256}.json"


def _read(path: Path) -> AccountantHistory:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PrivacyStateError(f"{path} is not UTF-8 text; it is corrupt") from err
    return AccountantHistory.from_json(text, str(path))


def _write_atomically(path: Path, state: AccountantHistory) -> None:
    state.updated_at = datetime.now(timezone.utc).isoformat()
    tmp = path.with_suffix(".json.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(state.to_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def locked_history(
    state_dir: Path, *, institution: str, dataset_sha256: str, num_records: int
) -> Iterator[AccountantHistory]:
    """Restore a dataset's history, hold it exclusively, and save it on success.

    The file is locked for the whole block so that two runs on the same
    dataset cannot charge it concurrently and lose a charge. A missing file
    starts an empty history; a file for another institution or dataset, or
    one that does not parse, raises :class:`PrivacyStateError`. If the block
    raises, nothing is written.
    """
    path = history_path(state_dir, dataset_sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f"{dataset_sha256}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():
                state = _read(path)
                if state.dataset_sha256 != dataset_sha256 or state.institution != institution:
                    raise PrivacyStateError(
                        f"{path} belongs to {state.institution!r}, dataset "
                        f"{state.dataset_sha256[:12]}, not to {institution!r}, dataset "
                        f"{dataset_sha256[:12]}: a foreign history file"
                    )
                if state.num_records != num_records:
                    raise PrivacyStateError(
                        f"{path} was charged for {state.num_records} records, the dataset "
                        f"now has {num_records}"
                    )
            else:
                state = AccountantHistory(institution, dataset_sha256, num_records)
            before = state.sha256
            yield state
            if state.sha256 != before or not path.exists():
                _write_atomically(path, state)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def list_histories(state_dir: Path) -> list[AccountantHistory]:
    """Every dataset history in a client's state folder (each validated)."""
    folder = state_dir / PRIVACY_DIR
    if not state_dir.is_dir():
        raise PrivacyStateError(f"state folder {state_dir} does not exist")
    return [_read(path) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []
