"""Opening the sealed updates of one run: every check, in a fixed order.

For each envelope the :class:`UpdateGate` checks, and stops at the first
failure:

1. the header parses (``malformed``);
2. it names an admitted participant (``unknown-participant``);
3. the signature verifies with that participant's registered key (``bad-signature``);
4. the header is bound to this run, this round and the model the server sent
   (``wrong-run``, ``replay`` for an earlier round, ``wrong-round``, ``wrong-model``);
5. it is the participant's first update this round (``duplicate``);
6. it decrypts (``undecryptable``);
7. the tensors have the expected names, shapes and dtypes and are finite
   (``malformed-tensors``, ``wrong-names``, ``wrong-shape``, ``wrong-dtype``,
   ``non-finite``).

A failure raises :class:`~common.envelope.EnvelopeError` with that reason;
the strategy rejects that update only and records the reason in the ledger.

:class:`UpdateIntake` takes a round's replies through the gate and then the
run's own rules (the privacy charge the update signed must fit the policy,
its dataset's licence must still allow the run, the metrics must be finite
numbers), and sorts them into accepted updates, ready for Flower's
aggregation, and exclusions with their reasons.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import Message, MetricRecord, RecordDict
from safetensors import SafetensorError
from safetensors.numpy import load

from common.arrays import Arrays, arrays_to_bytes, record_of
from common.envelope import (
    Envelope,
    EnvelopeError,
    UpdateHeader,
    decrypt,
    envelope_of,
    verify_signature,
)
from common.keys import key_id
from common.policy import PrivacyConfig
from common.protocol import (
    ARRAYS,
    ENVELOPE,
    METRICS,
    NUM_EXAMPLES,
    SEAL_SECONDS,
    TRAIN_LOSS,
    TRAIN_SECONDS,
    ExclusionCode,
    PrivacyCharge,
    Refusal,
)
from server.ledger import ChargeFact, ExclusionFact, UpdateFact
from server.strategy.admission import LicenceGate

__all__ = [
    "Accepted",
    "OpenedUpdate",
    "RoundIntake",
    "TensorSpec",
    "UpdateGate",
    "UpdateIntake",
    "expected_tensors",
]

TensorSpec = tuple[tuple[int, ...], str]
"""A tensor's shape and NumPy dtype name."""


def expected_tensors(arrays: Arrays) -> dict[str, TensorSpec]:
    """The names, shapes and dtypes an update of ``arrays`` must have."""
    return {name: (tuple(a.shape), a.dtype.name) for name, a in arrays.items()}


@dataclass(frozen=True)
class OpenedUpdate:
    """A verified, decrypted update and the evidence the ledger keeps of it."""

    header: UpdateHeader
    arrays: Arrays
    plaintext_sha256: str
    ciphertext_sha256: str
    signature: str
    """Base64 of the Ed25519 signature."""
    signer_key_id: str
    """Id of the participant's registered key, which verified the signature."""
    arrays_sha256: str
    """:func:`common.model.arrays_sha256` of ``arrays``: the update's canonical identity."""
    arrays_bytes: int
    """Size of ``arrays`` serialised canonically (what travelled, before sealing)."""


class UpdateGate:
    """Verifies and decrypts the sealed updates of one run.

    Parameters
    ----------
    run_id : str
        Flower's id of this run; an update bound to another run is rejected.
    aggregator_key : X25519PrivateKey
        The aggregator's private key, which updates are encrypted to.
    participants : mapping of str to Ed25519PublicKey
        Admitted participants and their registered signing keys.
    expected : mapping of str to TensorSpec
        Names, shapes and dtypes of the trainable parameters.
    base_model_sha256 : str
        Hash of the frozen base model every update must be built on.
    """

    def __init__(
        self,
        *,
        run_id: str,
        aggregator_key: X25519PrivateKey,
        participants: Mapping[str, Ed25519PublicKey],
        expected: Mapping[str, TensorSpec],
        base_model_sha256: str,
    ) -> None:
        self.run_id = run_id
        self.aggregator_key = aggregator_key
        self.participants = dict(participants)
        self.expected = dict(expected)
        self.base_model_sha256 = base_model_sha256
        self.round = 0
        self.model_sha256 = ""
        self._seen: set[str] = set()

    def begin_round(self, server_round: int, model_sha256: str) -> None:
        """Expect updates for ``server_round`` trained from the model with ``model_sha256``."""
        if server_round <= self.round:
            raise ValueError(f"round {server_round} does not follow round {self.round}")
        self.round, self.model_sha256 = server_round, model_sha256
        self._seen.clear()

    def open(self, envelope: Envelope) -> OpenedUpdate:
        """Run every check on ``envelope``; :class:`EnvelopeError` names the first failure."""
        header = UpdateHeader.parse(envelope.header)
        public = self.participants.get(header.participant)
        if public is None:
            raise EnvelopeError(
                "unknown-participant",
                f"{header.participant!r} is not an admitted participant of this consortium",
            )
        verify_signature(envelope, public)
        self._check_binding(header)
        if header.participant in self._seen:
            raise EnvelopeError(
                "duplicate",
                f"a second update from {header.participant!r} in round {self.round}",
            )
        self._seen.add(header.participant)
        plaintext = decrypt(envelope, header, self.aggregator_key)
        arrays = self._tensors(plaintext)
        canonical = arrays_to_bytes(arrays)  # serialised once, for its hash and size
        return OpenedUpdate(
            header=header,
            arrays=arrays,
            plaintext_sha256=hashlib.sha256(plaintext).hexdigest(),
            ciphertext_sha256=envelope.ciphertext_sha256(),
            signature=base64.b64encode(envelope.signature).decode(),
            signer_key_id=key_id(public),  # the registered key that verified it
            arrays_sha256=hashlib.sha256(canonical).hexdigest(),
            arrays_bytes=len(canonical),
        )

    def _check_binding(self, header: UpdateHeader) -> None:
        if header.run_id != self.run_id:
            raise EnvelopeError(
                "wrong-run", f"the update is for run {header.run_id}, this is run {self.run_id}"
            )
        if header.round < self.round:
            raise EnvelopeError(
                "replay", f"an update from round {header.round} replayed in round {self.round}"
            )
        if header.round != self.round:
            raise EnvelopeError(
                "wrong-round", f"the update claims round {header.round}; this is {self.round}"
            )
        if header.model_sha256 != self.model_sha256:
            raise EnvelopeError(
                "wrong-model",
                f"trained from model {header.model_sha256[:16]}..., not this round's "
                f"global model {self.model_sha256[:16]}...",
            )
        if header.base_model_sha256 != self.base_model_sha256:
            raise EnvelopeError(
                "wrong-model",
                f"built on base model {header.base_model_sha256[:16]}..., not "
                f"{self.base_model_sha256[:16]}...",
            )

    def _tensors(self, plaintext: bytes) -> Arrays:
        try:
            arrays: Arrays = dict(load(plaintext))
        except (SafetensorError, ValueError, TypeError) as err:
            raise EnvelopeError(
                "malformed-tensors", f"the plaintext is not safetensors: {err}"
            ) from err
        if set(arrays) != set(self.expected):
            missing = sorted(set(self.expected) - set(arrays))
            extra = sorted(set(arrays) - set(self.expected))
            raise EnvelopeError("wrong-names", f"missing {missing}, unexpected {extra}")
        for name, (shape, dtype) in self.expected.items():
            array = arrays[name]
            if tuple(array.shape) != shape:
                raise EnvelopeError(
                    "wrong-shape", f"'{name}' has shape {tuple(array.shape)}, expected {shape}"
                )
            if array.dtype.name != dtype:
                raise EnvelopeError(
                    "wrong-dtype", f"'{name}' has dtype {array.dtype.name}, expected {dtype}"
                )
            if not np.all(np.isfinite(array)):
                raise EnvelopeError("non-finite", f"'{name}' holds NaN or infinite values")
        return {name: arrays[name] for name in self.expected}  # the model's order


@dataclass(frozen=True)
class Accepted:
    """An update that passed every check: the decrypted reply and what the ledger keeps."""

    message: Message
    """The reply with its content replaced by the decrypted arrays and their weight."""
    update: UpdateFact
    charge: ChargeFact
    envelope: Envelope


@dataclass
class RoundIntake:
    """A round's replies, sorted."""

    accepted: list[Accepted] = field(default_factory=list)
    exclusions: list[ExclusionFact] = field(default_factory=list)


class UpdateIntake:
    """Takes a round's replies through the :class:`UpdateGate` and the run's own rules.

    Parameters
    ----------
    gate : UpdateGate
        Verifies and decrypts each sealed update.
    privacy : PrivacyConfig
        The run's privacy policy: an update trained without DP when DP is
        required, or reporting an epsilon past the budget, is rejected.
    licences : LicenceGate
        Each update's dataset must be admitted, under a licence that allows the run.
    arrayrecord_key, weighted_by_key : str
        Where the aggregation strategy reads the arrays and the weight
        (Flower's FedAvg: ``"arrays"``, ``"num-examples"``).
    """

    def __init__(
        self,
        gate: UpdateGate,
        *,
        privacy: PrivacyConfig,
        licences: LicenceGate,
        arrayrecord_key: str = ARRAYS,
        weighted_by_key: str = NUM_EXAMPLES,
    ) -> None:
        self.gate = gate
        self.privacy = privacy
        self.licences = licences
        self.arrayrecord_key = arrayrecord_key
        self.weighted_by_key = weighted_by_key
        self._institution_of: dict[int, str] = {}  # learnt from verified updates

    @property
    def nodes(self) -> dict[str, int]:
        """Each institution's node, as its last verified update showed it."""
        return {name: node for node, name in self._institution_of.items()}

    def institution_of(self, node_id: int) -> str | None:
        """The institution whose verified update came from ``node_id``, if any did."""
        return self._institution_of.get(node_id)

    def begin_round(self, server_round: int, model_sha256: str) -> None:
        """Expect updates for ``server_round`` trained from the model with ``model_sha256``."""
        self.gate.begin_round(server_round, model_sha256)

    def take(self, replies: Iterable[Message]) -> RoundIntake:
        """Open and check every reply; sort it into accepted updates and exclusions."""
        intake = RoundIntake()
        for message in replies:
            node_id = message.metadata.src_node_id
            if message.has_error():
                refusal = Refusal.from_reason(message.error.reason or "")
                intake.exclusions.append(
                    ExclusionFact(refusal.institution, node_id, message.error.code, refusal.detail)
                )
                continue
            try:
                intake.accepted.append(self._accept(message))
            except EnvelopeError as err:
                reason = f"update rejected ({err.reason}): {err.detail}"
                intake.exclusions.append(
                    ExclusionFact(_claimed(message), node_id, ExclusionCode.REJECTED, reason)
                )
        return intake

    def _accept(self, message: Message) -> Accepted:
        envelope = envelope_of(message.content.config_records.get(ENVELOPE))
        started = time.perf_counter()
        opened = self.gate.open(envelope)
        open_seconds = time.perf_counter() - started
        header = opened.header
        self._institution_of[message.metadata.src_node_id] = header.participant
        self._check_charge(header.privacy)
        self.licences.check_update(header)
        metrics = message.content.metric_records.get(METRICS, MetricRecord())
        train_loss = _metric(metrics, TRAIN_LOSS)
        train_seconds = _metric(metrics, TRAIN_SECONDS)
        # From here on the aggregation sees the decrypted update, weighted by
        # the example count the participant signed.
        message.content = RecordDict(
            {
                self.arrayrecord_key: record_of(opened.arrays),
                METRICS: MetricRecord(
                    {self.weighted_by_key: header.num_examples, TRAIN_LOSS: train_loss}
                ),
            }
        )
        update = UpdateFact(
            institution=header.participant,
            num_examples=header.num_examples,
            train_loss=train_loss,
            update_sha256=opened.arrays_sha256,
            update_bytes=opened.arrays_bytes,
            train_seconds=train_seconds,
            ciphertext_sha256=opened.ciphertext_sha256,
            plaintext_sha256=opened.plaintext_sha256,
            signature=opened.signature,
            signer_key_id=opened.signer_key_id,
            seal_seconds=_optional_metric(metrics, SEAL_SECONDS),
            open_seconds=open_seconds,
        )
        return Accepted(message, update, ChargeFact(header.participant, header.privacy), envelope)

    def _check_charge(self, charge: PrivacyCharge) -> None:
        """Reject an update whose signed privacy charge breaks the policy."""
        if self.privacy.dp and not charge.dp:
            raise EnvelopeError("privacy", "trained without DP, but the policy requires DP")
        if charge.dp and charge.epsilon > self.privacy.epsilon * (1 + 1e-9):
            raise EnvelopeError(
                "privacy",
                f"reports epsilon {charge.epsilon:.4f}, past the budget {self.privacy.epsilon}",
            )


def _claimed(message: Message) -> str | None:
    """Who an unusable update claims to be from (unverified; for the record only)."""
    record = message.content.config_records.get(ENVELOPE)
    header = record.get("header") if record is not None else None
    if isinstance(header, bytes):
        with contextlib.suppress(EnvelopeError):
            return UpdateHeader.parse(header).participant
    return None


def _optional_metric(metrics: MetricRecord, key: str) -> float | None:
    """A finite number the node reported, or ``None`` (unsigned: for the record only)."""
    value = metrics.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _metric(metrics: MetricRecord, key: str) -> float:
    """A finite number the node must report; the reply is malformed without it.

    The ledger cannot hold NaN (SQLite stores it as NULL), so a missing or
    non-finite value is refused here rather than failing the round later.
    """
    value = _optional_metric(metrics, key)
    if value is None:
        raise EnvelopeError(
            "malformed", f"the reply's metric {key!r} is missing or not a finite number"
        )
    return value
