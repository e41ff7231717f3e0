"""Signed tree heads: C2SP checkpoints, and the JSON heads signed before them.

A signed tree head says "the first ``tree_size`` ledger entries have RFC 6962
root ``root``". New heads are C2SP ``tlog-checkpoint`` notes signed by the
operator under the log's origin (:mod:`common.note`), so any transparency
tool can check them; participants add their cosignatures. Heads signed
before checkpoints are canonical JSON (``"format": "fedcommons-checkpoint/v1"``)
with an Ed25519 signature and stay verifiable.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.canonical import canonical_json
from common.errors import UserError
from common.keys import key_id
from common.note import (
    CheckpointBody,
    NoteError,
    SignatureLine,
    sign_note,
    signature_lines,
    verify_signed,
)

__all__ = ["TREE_HEAD_FORMAT", "TreeHead", "TreeHeadError", "is_hex_digest"]

TREE_HEAD_FORMAT = "fedcommons-checkpoint/v1"
"""The ``format`` inside a JSON head's body (its v1 name is kept: it is signed)."""


class TreeHeadError(UserError, ValueError):
    """A signed tree head that is malformed or whose signature does not verify."""


@dataclass(frozen=True)
class TreeHead:
    """A signed tree head, as stored and as handed to participants.

    A C2SP checkpoint when ``checkpoint`` holds its signed note (the operator's
    signature line, and any witnesses' cosignatures after it); otherwise a
    head signed before checkpoints, whose canonical JSON :meth:`body` holds
    ``at`` and ``note`` too.
    """

    tree_size: int
    root: str
    """Hex RFC 6962 root of the first ``tree_size`` entries."""
    at: str
    note: str
    """What the head was signed after (signed only in the JSON form)."""
    key_id: str
    signature: str
    """Base64 Ed25519 signature over :meth:`body` (of a checkpoint: its signature line's)."""
    checkpoint: str | None = None
    """The C2SP signed note, verbatim; ``None`` for a JSON head."""

    @cached_property
    def parsed(self) -> tuple[str, list[SignatureLine], CheckpointBody]:
        """A checkpoint's signed text, its signature lines and what it states (parsed once).

        Raises
        ------
        TreeHeadError
            A JSON head, or a checkpoint that is not a well-formed signed note.
        """
        if self.checkpoint is None:
            raise TreeHeadError(f"the tree head at size {self.tree_size} is no checkpoint")
        try:
            text, lines = signature_lines(self.checkpoint)
            return text, lines, CheckpointBody.parse(text)
        except NoteError as err:
            raise TreeHeadError(f"the checkpoint at size {self.tree_size}: {err}") from None

    @property
    def origin(self) -> str | None:
        """The log identity a checkpoint names (``None`` for a JSON head)."""
        return self.parsed[2].origin if self.checkpoint is not None else None

    def body(self) -> bytes:
        """The bytes that are signed: a checkpoint's text, or a JSON head's canonical body."""
        if self.checkpoint is not None:
            return self.parsed[0].encode("utf-8")
        return canonical_json(
            {
                "format": TREE_HEAD_FORMAT,
                "tree_size": self.tree_size,
                "root": self.root,
                "at": self.at,
                "note": self.note,
            },
            floats_as_strings=True,
        )

    def witnesses(self) -> list[SignatureLine]:
        """The signature lines after the operator's: cosignatures, unchecked."""
        return self.parsed[1][1:] if self.checkpoint is not None else []

    def verify(self, operator: Ed25519PublicKey, origin: str | None = None) -> None:
        """Raise :class:`TreeHeadError` unless ``operator`` signed this tree head.

        A checkpoint must be signed under its origin line and state this
        head's size and root; with ``origin`` it must name that log.
        """
        if key_id(operator) != self.key_id:
            raise TreeHeadError(
                f"the tree head at size {self.tree_size} names signing key "
                f"{self.key_id[:16]}..., not the operator key {key_id(operator)[:16]}..."
            )
        if self.checkpoint is not None:
            self.check_checkpoint(origin, operator)
            return
        try:
            operator.verify(base64.b64decode(self.signature, validate=True), self.body())
        except (InvalidSignature, binascii.Error, ValueError):
            raise TreeHeadError(
                f"the signature of the tree head at size {self.tree_size} does not verify"
            ) from None

    def check_checkpoint(
        self, origin: str | None = None, operator: Ed25519PublicKey | None = None
    ) -> None:
        """Raise :class:`TreeHeadError` unless the checkpoint states this head.

        Its size and root must be this head's, its first signature line this
        head's ``signature``; with ``origin`` it must name that log, and with
        ``operator`` that key must have signed it under its origin.
        """
        text, lines, stated = self.parsed
        if (stated.tree_size, stated.root.hex()) != (self.tree_size, self.root):
            raise TreeHeadError(
                f"the checkpoint states size {stated.tree_size} and root "
                f"{stated.root.hex()[:16]}..., not the head's {self.tree_size} and "
                f"{self.root[:16]}..."
            )
        if origin is not None and stated.origin != origin:
            raise TreeHeadError(
                f"the checkpoint at size {self.tree_size} is of log {stated.origin!r}, "
                f"not of this consortium's log {origin!r}"
            )
        if operator is not None:
            try:
                verify_signed(text, lines, stated.origin, operator)
            except NoteError as err:
                raise TreeHeadError(f"the checkpoint at size {self.tree_size}: {err}") from None
        if self.signature != base64.b64encode(lines[0].key_id + lines[0].signature).decode():
            raise TreeHeadError(
                f"the tree head at size {self.tree_size}: its signature field is not its "
                "checkpoint's first (the operator's) signature"
            )

    @classmethod
    def sign(
        cls,
        signer: Ed25519PrivateKey,
        *,
        tree_size: int,
        root: str,
        at: str,
        note: str,
        origin: str | None,
    ) -> TreeHead:
        """Sign a checkpoint of log ``origin`` (``None``: the JSON form heads had before)."""
        public_id = key_id(signer.public_key())
        if origin is None:
            unsigned = cls(tree_size, root, at, note, public_id, "")
            signature = base64.b64encode(signer.sign(unsigned.body())).decode()
            return replace(unsigned, signature=signature)
        try:
            text = CheckpointBody(origin, tree_size, bytes.fromhex(root)).text()
            signed = sign_note(text, origin, signer)
        except (NoteError, ValueError) as err:
            raise TreeHeadError(f"cannot sign a checkpoint of {origin!r}: {err}") from None
        line = signature_lines(signed)[1][0]
        signature = base64.b64encode(line.key_id + line.signature).decode()
        return cls(tree_size, root, at, note, public_id, signature, signed)

    @classmethod
    def from_dict(cls, doc: Any, what: str = "tree head") -> TreeHead:
        """Parse a signed tree head; :class:`TreeHeadError` says which field is wrong."""
        if not isinstance(doc, dict):
            raise TreeHeadError(f"{what} is not a JSON object")
        types = {
            "tree_size": int,
            "root": str,
            "at": str,
            "note": str,
            "key_id": str,
            "signature": str,
        }
        missing = sorted(set(types) - set(doc))
        if missing:
            raise TreeHeadError(f"{what} lacks {', '.join(missing)}")
        for name, kind in types.items():
            if not isinstance(doc[name], kind) or isinstance(doc[name], bool):
                raise TreeHeadError(f"{what}: {name} must be {kind.__name__}, not {doc[name]!r}")
        if doc["tree_size"] < 0 or not is_hex_digest(doc["root"]):
            raise TreeHeadError(
                f"{what}: tree_size {doc['tree_size']} or root {doc['root']!r} is invalid"
            )
        checkpoint = doc.get("checkpoint")
        if checkpoint is not None and not isinstance(checkpoint, str):
            raise TreeHeadError(f"{what}: checkpoint must be the signed note's text")
        head = cls(**{name: doc[name] for name in types}, checkpoint=checkpoint)
        if checkpoint is not None:
            try:
                head.check_checkpoint()
            except TreeHeadError as err:
                raise TreeHeadError(f"{what}: {err}") from None
        return head


def is_hex_digest(value: str) -> bool:
    """Whether ``value`` is a lower-case hex SHA-256 digest."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)
