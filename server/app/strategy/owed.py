"""Charges members report they paid that the ledger may lack: their unreceipted, signed updates.

A node hands back, with its training reply, the updates it sealed that no
receipt covers yet (:mod:`client.owed`): a round whose replies never reached
the ServerApp (it died first), or whose charges it could not write. Each is
checked here as the member's own statement: the signature must verify under
the key the participant was admitted with (whatever the charge says, the
member spent it). The recorder then records each charge under the ledger run of the
Flower run its header names, once (a charge already there is not recorded
twice), and the node is told which it may forget. The update itself is not
opened or used: only the charge its signed header states.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import ConfigRecord

from common.envelope import Envelope, EnvelopeError, UpdateHeader, verify_signature
from common.protocol import strings_in
from ledger import ChargeFact

__all__ = ["OwedCharge", "OwedCharges"]

log = logging.getLogger(__name__)

OWED_PER_REPLY = 16
"""Reported updates read from one reply at most (a node sends at most 4)."""


@dataclass(frozen=True)
class OwedCharge:
    """A charge a member signed, for a round its update may not be recorded in."""

    flower_run_id: str
    round: int
    charge: ChargeFact
    ciphertext_sha256: str


class OwedCharges:
    """Checks the updates a reply reports as owed.

    Parameters
    ----------
    participants : mapping of str to Ed25519PublicKey
        Each admitted participant's signing key.
    """

    def __init__(self, participants: Mapping[str, Ed25519PublicKey]) -> None:
        self.participants = dict(participants)

    def take(
        self, records: Iterable[ConfigRecord | None], server_round: int, flower_run_id: str
    ) -> tuple[list[OwedCharge], list[tuple[str, str]]]:
        """The charges to record, and ``(participant, ciphertext sha256)`` for every report
        whose signature verified (recorded or not: the node may forget it).

        A report for a round this Flower run has not reached yet is not a charge
        paid; one that does not verify is logged and left (nobody to tell).
        """
        charges: list[OwedCharge] = []
        seen: list[tuple[str, str]] = []
        for record in records:
            for text in strings_in(record, "envelopes")[:OWED_PER_REPLY]:
                try:
                    envelope = Envelope.from_json(text)
                    header = UpdateHeader.parse(envelope.header)
                    public = self.participants.get(header.participant)
                    if public is None:
                        raise EnvelopeError("unknown-participant", f"{header.participant!r}")
                    verify_signature(envelope, public)
                except EnvelopeError as err:
                    log.warning("an owed update was not taken: %s", err)
                    continue
                digest = envelope.ciphertext_sha256()
                if (header.participant, digest) in seen:
                    continue
                seen.append((header.participant, digest))
                if header.run_id == flower_run_id and header.round >= server_round:
                    log.warning(
                        "%s reports an update of round %d as owed in round %d: not a past "
                        "round, not charged", header.participant, header.round, server_round,
                    )  # fmt: skip
                    continue
                charges.append(
                    OwedCharge(
                        header.run_id,
                        header.round,
                        ChargeFact(header.participant, header.privacy),
                        digest,
                    )
                )
        return charges, seen
