"""What travels between the ClientApp and the ServerApp, named and parsed in one place.

A training message carries Flower's ``ArrayRecord`` (the global model's
trainable part) and a ``ConfigRecord`` (:class:`TrainConfig`). A training
reply carries a sealed update (:mod:`common.envelope`) and a ``MetricRecord``
(:data:`TRAIN_LOSS`, ...); the weights and the privacy charge
(:class:`PrivacyCharge`) are inside the envelope. A node that does not train
replies with a Flower ``Error`` whose code (:class:`ExclusionCode`) says why and
whose reason is a small JSON document naming the institution
(:class:`Refusal`), so the server can record the exclusion against the right
participant. Each SuperNode's ``node_config`` is parsed once into
:class:`NodeConfig`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from common.errors import UserError

if TYPE_CHECKING:  # the records come from Flower; this module does not need it to load
    from flwr.app import ConfigRecord

__all__ = [
    "AGGREGATOR_KEY",
    "ARRAYS",
    "BASE_SHA256",
    "CHARGES_RECORDED",
    "CONFIG",
    "ENVELOPE",
    "ESTABLISHED_SIZE",
    "META",
    "METRICS",
    "NUM_EXAMPLES",
    "OWED_CHARGES",
    "RECEIPTS",
    "RECEIPTS_PENDING",
    "RECEIPTS_STORED",
    "SEAL_SECONDS",
    "SERVER_ROUND",
    "TRAIN_LOSS",
    "TRAIN_SECONDS",
    "ExclusionCode",
    "NodeConfig",
    "NodeConfigError",
    "PrivacyCharge",
    "Refusal",
    "TrainConfig",
    "strings_in",
]

# -- record names -------------------------------------------------------------
ARRAYS = "arrays"
"""``ArrayRecord`` of a training or evaluation message (Flower's FedAvg default)."""
CONFIG = "config"
"""``ConfigRecord`` of a training message (Flower's FedAvg default)."""
METRICS = "metrics"
"""``MetricRecord`` of a reply."""
ENVELOPE = "envelope"
"""``ConfigRecord`` that carries a sealed update in a training reply."""
RECEIPTS = "fedcommons.receipts"
"""``ConfigRecord`` of receipts (one JSON receipt per entry of its ``receipts`` list)."""
META = "meta"
"""``ConfigRecord`` naming the institution in an evaluation reply."""
OWED_CHARGES = "fedcommons.owed-charges"
"""``ConfigRecord`` of a training reply: the node's earlier sealed updates that no receipt
or acknowledgement covers yet (one JSON envelope per entry of its ``envelopes`` list),
so the ledger can record each charge its signed header states."""
CHARGES_RECORDED = "fedcommons.charges-recorded"
"""``ConfigRecord`` of a message to a node: the ciphertext hashes (``ciphertexts``) of the
owed updates whose charges the ledger now holds; the node stops reporting them."""


def strings_in(record: ConfigRecord | None, key: str) -> list[str]:
    """The strings a peer's ``record`` lists under ``key`` (none if absent or malformed)."""
    if record is None:
        return []
    values = record.get(key, [])
    if not isinstance(values, list):
        return []
    return [v for v in values if isinstance(v, str)]


# -- training config keys -----------------------------------------------------
SERVER_ROUND = "server-round"
"""The round number (Flower's FedAvg adds it to every training config)."""
BASE_SHA256 = "base-sha256"
"""SHA-256 of the frozen base model every node must hold."""
AGGREGATOR_KEY = "aggregator-key"
"""The aggregator's X25519 public key (base64) updates are sealed to."""

# -- reply metric names -------------------------------------------------------
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
SEAL_SECONDS = "seal-seconds"
RECEIPTS_STORED = "receipts-stored"
RECEIPTS_PENDING = "receipts-pending"
"""Receipts the node keeps whose checkpoint has not reached its witness quorum yet."""
ESTABLISHED_SIZE = "established-size"
"""The size of the largest checkpoint the node saw established by its quorum (0: none)."""


class ExclusionCode(IntEnum):
    """Why a node is left out of a round: the Flower error code and the ledger's code."""

    BAD_INPUT = 400
    """Input the participant must fix (data, node config, privacy state)."""
    BUDGET_EXHAUSTED = 403
    """The round would push the dataset's epsilon past its budget."""
    RECEIPT_REJECTED = 409
    """A receipt from the server did not verify, so this node stops contributing."""
    REJECTED = 422
    """The server rejected the reply (malformed, or outside the policy)."""
    SUSPENDED = 423
    """The member is suspended (``operator suspend``): its node is not asked to train."""
    LICENCE = 451
    """The node's data licence does not allow the run's purpose (any more)."""
    UNAVAILABLE = 503
    """Flower could not reach the node (its SuperNode is gone) or its ClientApp crashed."""
    NO_REPLY = 504
    """The node did not answer within the round's timeout."""

    @classmethod
    def of_reply(cls, code: int) -> ExclusionCode:
        """The exclusion for a reply's error code: a node's own refusal keeps its code; any
        code of Flower's own (below 100: node unavailable, ClientApp crashed) is
        :attr:`UNAVAILABLE`."""
        try:
            return cls(code)
        except ValueError:
            return cls.UNAVAILABLE

    @property
    def label(self) -> str:
        """A few words for people (logs, reports)."""
        return _LABELS[self]


_LABELS = {
    ExclusionCode.BAD_INPUT: "bad input",
    ExclusionCode.BUDGET_EXHAUSTED: "privacy budget",
    ExclusionCode.RECEIPT_REJECTED: "receipt rejected",
    ExclusionCode.REJECTED: "update rejected",
    ExclusionCode.SUSPENDED: "suspended",
    ExclusionCode.LICENCE: "licence",
    ExclusionCode.UNAVAILABLE: "unavailable",
    ExclusionCode.NO_REPLY: "no reply",
}


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
class TrainConfig:
    """The ``config`` record of a training message, parsed once.

    Parameters
    ----------
    server_round : int
        The round (1-based).
    base_sha256 : str or None
        The frozen base model's hash, when the server names one.
    aggregator_key : str or None
        The aggregator's public key the update must be sealed to.
    """

    server_round: int
    base_sha256: str | None = None
    aggregator_key: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainConfig:
        """Validate a training config; raises ``ValueError`` naming the bad key."""
        server_round = record.get(SERVER_ROUND)
        if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 1:
            raise ValueError(
                f"the training config's '{SERVER_ROUND}' must be a round number >= 1, "
                f"got {server_round!r}"
            )
        texts: dict[str, str | None] = {}
        for key in (BASE_SHA256, AGGREGATOR_KEY):
            value = record.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"the training config's '{key}' must be text, got {value!r}")
            texts[key] = value
        return cls(server_round, texts[BASE_SHA256], texts[AGGREGATOR_KEY])

    def server_fields(self) -> dict[str, str]:
        """What the server adds to Flower's config (Flower adds the round itself)."""
        values = {BASE_SHA256: self.base_sha256, AGGREGATOR_KEY: self.aggregator_key}
        return {key: value for key, value in values.items() if value is not None}


class NodeConfigError(UserError, ValueError):
    """A SuperNode's ``node_config`` lacks a key or has one of the wrong type."""


@dataclass(frozen=True)
class NodeConfig:
    """A SuperNode's ``node_config``: which institution it is and where its files are.

    Parameters
    ----------
    institution : str
        The institution this node trains for.
    data_dir : Path
        Its data (a file or folder the ClientApp reads).
    state_dir : Path or None
        Its own state folder (``fedcommons client enroll`` created it): keys,
        the pinned consortium, the privacy accountant, receipts.
    torch_threads : int (default: 1)
        Threads each ClientApp may use.
    encoder_cache : bool (default: True)
        BERT with frozen lower layers: keep their outputs for this node's
        texts in the state folder and train only the top from them (the same
        result; ``encoder-cache=false`` runs the whole model every step).
    """

    institution: str
    data_dir: Path
    state_dir: Path | None = None
    torch_threads: int = 1
    encoder_cache: bool = True

    @classmethod
    def from_mapping(cls, node_config: Mapping[str, Any]) -> NodeConfig:
        """Parse Flower's ``context.node_config``; :class:`NodeConfigError` names the key."""
        values: dict[str, str] = {}
        for key in ("institution", "data-dir"):
            value = node_config.get(key)
            if not isinstance(value, str) or not value:
                raise NodeConfigError(f'SuperNode node config needs {key}="..." (got {value!r})')
            values[key] = value
        state = node_config.get("state-dir")
        if state is not None and not isinstance(state, str):
            raise NodeConfigError(f"SuperNode node config state-dir must be text, got {state!r}")
        threads = node_config.get("torch-threads", 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise NodeConfigError(
                f"SuperNode node config torch-threads must be an integer >= 1, got {threads!r}"
            )
        cache = node_config.get("encoder-cache", True)
        if not isinstance(cache, bool):
            raise NodeConfigError(
                f"SuperNode node config encoder-cache must be true or false, got {cache!r}"
            )
        return cls(
            institution=values["institution"],
            data_dir=Path(values["data-dir"]),
            state_dir=Path(state) if state else None,
            torch_threads=threads,
            encoder_cache=cache,
        )

    def to_flag(self) -> str:
        """The ``flower-supernode --node-config`` string that parses back to this."""
        parts = [f'institution="{self.institution}"', f'data-dir="{self.data_dir.resolve()}"']
        if self.state_dir is not None:
            parts.append(f'state-dir="{self.state_dir.resolve()}"')
        parts.append(f"torch-threads={self.torch_threads}")
        if not self.encoder_cache:
            parts.append("encoder-cache=false")
        return " ".join(parts)


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

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PrivacyCharge:
        """Validate a ``privacy`` mapping (kebab-case keys); ``ValueError`` names the bad key."""
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
