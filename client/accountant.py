"""The privacy accountant a node keeps: one persistent history per (institution, dataset).

A history of ``(noise_multiplier, sample_rate, steps)`` entries survives every
round and every run touching the same dataset. It is stored as JSON (never
pickle) in the node's own state folder, keyed by the dataset's manifest
hash, and checksummed. A fresh accountant per round would forget earlier
rounds and under-report epsilon; restoring this history before every round
is what keeps the figure honest. The maths is :mod:`common.dp`'s (Opacus).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.atomic import write_atomic
from common.dp import HistoryEntry, PrivacyError, epsilon_of
from common.epsilon import over_budget
from common.policy import ACCOUNTANTS

__all__ = [
    "AccountantHistory",
    "BudgetExhausted",
    "PrivacyStateError",
    "history_path",
    "list_histories",
    "locked_history",
]

HISTORY_FORMAT = "fedcommons.accountant-history"
HISTORY_VERSION = 1
PRIVACY_DIR = "privacy"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PrivacyStateError(PrivacyError):
    """An accountant history file is corrupt or belongs to another dataset."""


class BudgetExhausted(PrivacyError):
    """The budget left cannot cover the run's plan, or the coming round would pass it."""

    def __init__(
        self,
        *,
        institution: str,
        dataset_sha256: str,
        spent: float,
        budget: float,
        next_eps: float,
        rounds: int | None = None,
    ) -> None:
        self.institution = institution
        self.dataset_sha256 = dataset_sha256
        self.spent = spent
        self.budget = budget
        self.next_epsilon = next_eps
        what = (
            f"the {rounds} round(s) left of this run's plan would bring epsilon to at least "
            f"{next_eps:.3f}"
            if rounds is not None
            else f"this round would bring epsilon to {next_eps:.3f}"
        )
        super().__init__(
            f"privacy budget exhausted for {institution} (dataset {dataset_sha256[:12]}): "
            f"{what}, {over_budget(spent, budget)}; nothing was trained"
        )


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
        Manifest hash of the dataset (:meth:`common.images.ImageData.sha256`).
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
    if not path.is_file():
        raise PrivacyStateError(
            f"{path} is not a file (a folder or something else is where this dataset's "
            "accountant history belongs); move it away, then try again"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PrivacyStateError(f"{path} is not UTF-8 text; it is corrupt") from err
    except OSError as err:
        raise PrivacyStateError(f"cannot read {path}: {err.strerror}") from err
    return AccountantHistory.from_json(text, str(path))


def _write_atomically(path: Path, state: AccountantHistory) -> None:
    state.updated_at = datetime.now(timezone.utc).isoformat()
    write_atomic(path, state.to_json() + "\n")


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
    if state_dir.exists() and not state_dir.is_dir():
        raise PrivacyStateError(f"{state_dir} is not a folder: give the node's state folder")
    if not state_dir.is_dir():
        raise PrivacyStateError(f"state folder {state_dir} does not exist")
    if folder.exists() and not folder.is_dir():
        raise PrivacyStateError(f"{folder} is not a folder: it should hold the privacy histories")
    return [_read(path) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []
