"""What travels between the ClientApp and the ServerApp besides the weights.

A training reply carries, next to Flower's ``ArrayRecord`` and the
``MetricRecord`` that FedAvg averages, two ``ConfigRecord``\\ s: ``meta`` (who
sent it) and ``privacy`` (what the round cost the dataset's budget). A node
that does not train replies with a Flower ``Error`` whose code says why and
whose reason is a small JSON document naming the institution, so the server
can record the exclusion against the right participant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

from flwr.app import ConfigRecord

__all__ = [
    "BAD_INPUT",
    "BUDGET_EXHAUSTED",
    "META",
    "PRIVACY",
    "PrivacyCharge",
    "Refusal",
]

BAD_INPUT = 400
"""Error code: input the participant must fix (data, node config, privacy state)."""
BUDGET_EXHAUSTED = 403
"""Error code: the round would push the dataset's epsilon past its budget."""

RECEIPT_REJECTED = 409
"""Error code: a receipt from the server did not verify, so this node stops contributing."""

META = "meta"
PRIVACY = "privacy"


@dataclass(frozen=True)
class Refusal:
    """Why a node did not train, as carried in ``Error.reason``."""

    institution: str | None
    detail: str

    def to_reason(self) -> str:
        return json.dumps({"institution": self.institution, "detail": self.detail})

    @classmethod
    def from_reason(cls, reason: str) -> Refusal:
        """Parse a reason; one not written by :meth:`to_reason` is kept whole as the detail."""
        try:
            doc = json.loads(reason)
        except ValueError:
            return cls(None, reason)
        if not isinstance(doc, dict) or not isinstance(doc.get("detail"), str):
            return cls(None, reason)
        institution = doc.get("institution")
        return cls(institution if isinstance(institution, str) else None, doc["detail"])


@dataclass(frozen=True)
class PrivacyCharge:
    """What one round cost a dataset's privacy budget (``epsilon`` is cumulative).

    With DP off, ``dp`` is false and ``epsilon`` is infinite.
    """

    dp: bool
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    max_grad_norm: float
    dataset_sha256: str
    history_sha256: str

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PrivacyCharge:
        """Validate a reply's ``privacy`` record; raises ``ValueError`` naming the bad key."""
        kinds: dict[str, tuple[type, ...]] = {
            "bool": (bool,),
            "int": (int,),
            "float": (int, float),
            "str": (str,),
        }
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in record:
                raise ValueError(f"privacy record lacks '{key}'")
            value: Any = record[key]
            kind = kinds[str(f.type)]
            if (isinstance(value, bool) and bool not in kind) or not isinstance(value, kind):
                raise ValueError(f"privacy record '{key}' has the wrong type: {value!r}")
            values[f.name] = float(cast(float, value)) if float in kind else value
        charge = cls(**values)
        if charge.dp and not (0.0 <= charge.epsilon < math.inf and 0.0 < charge.delta < 1.0):
            raise ValueError(
                f"privacy record has epsilon {charge.epsilon} and delta {charge.delta}"
            )
        return charge

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
