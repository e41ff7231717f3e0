"""The update intake: a round's replies sorted into accepted updates and exclusions.

:class:`UpdateIntake` takes each reply through the :class:`~server.app.strategy.gate.UpdateGate`
(signature, binding, decryption, tensors) and then the run's own rules (the
privacy charge the update signed must fit the policy, its dataset's licence
must still allow the run, the metrics must be finite numbers). An accepted
update is handed to Flower's aggregation decrypted and weighted by the
example count its participant signed; every other reply, a node's refusal,
Flower's word that a node is gone, and a node that never answered become
exclusions with their reasons.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flwr.app import Error, Message, MetricRecord, RecordDict

from common.arrays import Arrays, record_of
from common.envelope import (
    Envelope,
    EnvelopeError,
    UpdateHeader,
    envelope_of,
)
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
from ledger import ChargeFact, ExclusionFact, UpdateFact
from server.app.strategy.claims import ClaimCheck
from server.app.strategy.gate import UpdateGate
from server.app.strategy.licence_check import LicenceCheck

__all__ = ["Accepted", "RoundIntake", "UpdateIntake", "sender"]


@dataclass(frozen=True)
class Accepted:
    """An update that passed every check: the decrypted reply and what the ledger keeps."""

    message: Message
    """The reply with its content replaced by the decrypted arrays and their weight."""
    arrays: Arrays
    """The decrypted arrays the message carries (as opened, before any defence)."""
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
    licence_check : LicenceCheck
        Each update's dataset must be admitted, under a licence that allows the run.
    claims : ClaimCheck, optional
        Each update's example count must not exceed its admitted dataset's
        record count (default: not checked).
    arrayrecord_key, weighted_by_key : str
        Where the aggregation strategy reads the arrays and the weight
        (Flower's FedAvg: ``"arrays"``, ``"num-examples"``).
    """

    def __init__(
        self,
        gate: UpdateGate,
        *,
        privacy: PrivacyConfig,
        licence_check: LicenceCheck,
        claims: ClaimCheck | None = None,
        arrayrecord_key: str = ARRAYS,
        weighted_by_key: str = NUM_EXAMPLES,
    ) -> None:
        self.gate = gate
        self.privacy = privacy
        self.licence_check = licence_check
        self.claims = claims if claims is not None else ClaimCheck(None)
        self.arrayrecord_key = arrayrecord_key
        self.weighted_by_key = weighted_by_key
        self._institution_of: dict[int, str] = {}  # learnt from verified updates
        self._suspended_at: dict[int, str] = {}  # learnt from updates suspended members signed

    @property
    def nodes(self) -> dict[str, int]:
        """Each institution's node, as its last verified update showed it."""
        return {name: node for node, name in self._institution_of.items()}

    def institution_of(self, node_id: int) -> str | None:
        """The institution whose verified update came from ``node_id``, if any did."""
        return self._institution_of.get(node_id)

    def suspended_at(self, node_id: int) -> str | None:
        """The suspended member whose signed update came from ``node_id``, if one did."""
        return self._suspended_at.get(node_id)

    def begin_round(
        self, server_round: int, model_sha256: str, flower_run_id: str | None = None
    ) -> None:
        """Expect updates for ``server_round`` trained from the model with ``model_sha256``
        (bound to the Flower run ``flower_run_id``, if not this one)."""
        self.gate.begin_round(server_round, model_sha256, flower_run_id)

    def take(
        self, replies: Iterable[Message], asked: Mapping[str, int] | None = None
    ) -> RoundIntake:
        """Open and check every reply; sort them into accepted updates and exclusions.

        ``asked`` maps each request's message id to the node it went to (see
        :func:`sender`).
        """
        intake = RoundIntake()
        for message in replies:
            node_id = sender(message, asked or {})
            if message.has_error():
                intake.exclusions.append(self._refused(node_id, message.error))
                continue
            try:
                intake.accepted.append(self._accept(message))
            except EnvelopeError as err:
                if err.reason == "suspended":  # signed by the member: its node is not asked again
                    self._suspended_at[node_id] = _claimed(message) or ""
                reason = f"update rejected ({err.reason}): {err.detail}"
                intake.exclusions.append(
                    ExclusionFact(_claimed(message), node_id, ExclusionCode.REJECTED, reason)
                )
        return intake

    def _refused(self, node_id: int, error: Error) -> ExclusionFact:
        """A node's refusal, or Flower's word that the node or its ClientApp is gone."""
        refusal = Refusal.from_reason(error.reason or "")
        code = ExclusionCode.of_reply(error.code)
        detail = refusal.detail
        if code != error.code:  # one of Flower's own codes
            detail = f"Flower error {error.code}: {detail}"
        return ExclusionFact(
            refusal.institution or self.institution_of(node_id), node_id, code, detail
        )

    def missing(self, sent: Iterable[int], answered: Iterable[int]) -> list[ExclusionFact]:
        """Who was asked (node ids ``sent``) and did not answer within the round's timeout."""
        answered = set(answered)
        return [
            ExclusionFact(
                self.institution_of(node),
                node,
                ExclusionCode.NO_REPLY,
                "no answer within the round's timeout",
            )
            for node in sorted(set(sent) - answered)
        ]

    def _accept(self, message: Message) -> Accepted:
        envelope = envelope_of(message.content.config_records.get(ENVELOPE))
        started = time.perf_counter()
        opened = self.gate.open(envelope)
        open_seconds = time.perf_counter() - started
        header = opened.header
        self._institution_of[message.metadata.src_node_id] = header.participant
        self._check_charge(header.privacy)
        self.licence_check.check_update(header)
        self.claims.check(header)
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
        charge = ChargeFact(header.participant, header.privacy)
        return Accepted(message, opened.arrays, update, charge, envelope)

    def _check_charge(self, charge: PrivacyCharge) -> None:
        """Reject an update whose signed privacy charge breaks the policy."""
        if self.privacy.dp and not charge.dp:
            raise EnvelopeError("privacy", "trained without DP, but the policy requires DP")
        if charge.dp and charge.epsilon > self.privacy.epsilon * (1 + 1e-9):
            raise EnvelopeError(
                "privacy",
                f"reports epsilon {charge.epsilon:.4f}, past the budget {self.privacy.epsilon}",
            )


def sender(reply: Message, asked: Mapping[str, int]) -> int:
    """The node ``reply`` answers for: the one its request went to, by ``asked`` (message ids).

    Flower writes the error for a node that is gone itself, from the
    SuperLink's own node id; the request it answers names the node.
    """
    return asked.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


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
