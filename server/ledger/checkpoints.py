"""Signed checkpoints: the operator's Ed25519 signature over the Merkle tree head.

A checkpoint says "the first ``tree_size`` entries have RFC 6962 root
``root``, as of ``at``". Once signed and handed out, any rewrite of those
entries, or a deletion below that size, no longer matches it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.keys import key_id
from common.merkle import root as merkle_root
from server.ledger.entries import canonical_payload
from server.ledger.schema import LedgerCheckpoint, LedgerEntry, LedgerHead, utcnow

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "sign_checkpoint"]

CHECKPOINT_FORMAT = "fedcommons-checkpoint/v1"


class CheckpointError(ValueError):
    """A checkpoint that is malformed or whose signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head, as stored and as handed to participants."""

    tree_size: int
    root: str
    at: str
    note: str
    key_id: str
    signature: str
    """Base64 Ed25519 signature over :meth:`body`."""

    def body(self) -> bytes:
        return canonical_payload(
            {
                "format": CHECKPOINT_FORMAT,
                "tree_size": self.tree_size,
                "root": self.root,
                "at": self.at,
                "note": self.note,
            }
        ).encode("ascii")

    def verify(self, operator: Ed25519PublicKey) -> None:
        """Raise :class:`CheckpointError` unless ``operator`` signed this checkpoint."""
        if key_id(operator) != self.key_id:
            raise CheckpointError(
                f"checkpoint at size {self.tree_size} names signing key {self.key_id[:16]}..., "
                f"not the operator key {key_id(operator)[:16]}..."
            )
        try:
            operator.verify(base64.b64decode(self.signature, validate=True), self.body())
        except (InvalidSignature, binascii.Error, ValueError):
            raise CheckpointError(
                f"the signature of the checkpoint at size {self.tree_size} does not verify"
            ) from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_row(cls, row: LedgerCheckpoint) -> Checkpoint:
        try:
            doc = json.loads(row.body)
            checkpoint = cls(
                tree_size=int(doc["tree_size"]),
                root=str(doc["root"]),
                at=str(doc["at"]),
                note=str(doc["note"]),
                key_id=row.key_id,
                signature=row.signature,
            )
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint {row.id} has a malformed body: {err}") from None
        if checkpoint.body().decode() != row.body or doc.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint {row.id}'s body is not in canonical form")
        if (checkpoint.tree_size, checkpoint.root) != (row.tree_size, row.root_hash):
            raise CheckpointError(f"checkpoint {row.id}'s columns disagree with its signed body")
        return checkpoint


def sign_checkpoint(session: Session, signer: Ed25519PrivateKey, note: str) -> Checkpoint:
    """Sign the current tree head and store it; appends wait until it is stored."""
    size = session.execute(
        update(LedgerHead)
        .where(LedgerHead.id == 1)
        .values(size=LedgerHead.size)  # takes the append lock without changing anything
        .returning(LedgerHead.size)
    ).scalar_one()
    leaves = [
        bytes.fromhex(h)
        for h in session.scalars(select(LedgerEntry.leaf_hash).order_by(LedgerEntry.seq))
    ]
    if len(leaves) != size:
        raise CheckpointError(f"the head says {size} entries but {len(leaves)} are stored")
    unsigned = Checkpoint(
        tree_size=size,
        root=merkle_root(leaves).hex(),
        at=utcnow().isoformat(timespec="seconds"),
        note=note,
        key_id=key_id(signer.public_key()),
        signature="",
    )
    checkpoint = Checkpoint(
        **{**asdict(unsigned), "signature": base64.b64encode(signer.sign(unsigned.body())).decode()}
    )
    session.add(
        LedgerCheckpoint(
            tree_size=checkpoint.tree_size,
            root_hash=checkpoint.root,
            body=checkpoint.body().decode(),
            key_id=checkpoint.key_id,
            signature=checkpoint.signature,
        )
    )
    session.flush()
    return checkpoint
