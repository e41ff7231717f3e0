"""Signed checkpoints and the receipts participants keep.

A *checkpoint* is the operator's Ed25519 signature over a Merkle tree head:
"the first ``tree_size`` ledger entries have RFC 6962 root ``root``, as of
``at``". A *receipt* hands one participant that checkpoint, the ledger entry
recording its own update in a round, and the inclusion proof tying the
entry to the signed root. When the participant already holds an earlier
receipt, the new one also carries a consistency proof from that earlier
head, so the participant sees the ledger only ever grow.

Once a participant holds a receipt, the operator can no longer delete or
rewrite any of the first ``tree_size`` entries without the receipt
disagreeing with the ledger (``fedcommons audit verify --receipts``).

This module is shared: the ServerApp builds receipts, ClientApps verify and
store them (:class:`ReceiptBook`), auditors check them against a ledger.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.canonical import canonical_json
from common.envelope import Envelope, UpdateHeader
from common.keys import key_id
from common.merkle import ProofError, leaf_hash, verify_consistency, verify_inclusion

__all__ = [
    "CHECKPOINT_FORMAT",
    "RECEIPTS",
    "RECEIPT_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "Receipt",
    "ReceiptBook",
    "ReceiptError",
    "read_receipts",
]

CHECKPOINT_FORMAT = "fedcommons-checkpoint/v1"
RECEIPT_FORMAT = "fedcommons-receipt/v1"
RECEIPTS = "fedcommons.receipts"
"""Name of the ConfigRecord (one JSON receipt per entry of its ``receipts`` list)."""


class CheckpointError(ValueError):
    """A checkpoint that is malformed or whose signature does not verify."""


class ReceiptError(ValueError):
    """A receipt that is malformed, does not verify, or is not about this participant."""


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head, as stored and as handed to participants."""

    tree_size: int
    root: str
    """Hex RFC 6962 root of the first ``tree_size`` entries."""
    at: str
    note: str
    key_id: str
    signature: str
    """Base64 Ed25519 signature over :meth:`body`."""

    def body(self) -> bytes:
        """The canonical bytes that are signed."""
        return canonical_json(
            {
                "format": CHECKPOINT_FORMAT,
                "tree_size": self.tree_size,
                "root": self.root,
                "at": self.at,
                "note": self.note,
            },
            floats_as_strings=True,
        )

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

    @classmethod
    def sign(
        cls, signer: Ed25519PrivateKey, *, tree_size: int, root: str, at: str, note: str
    ) -> Checkpoint:
        unsigned = cls(tree_size, root, at, note, key_id(signer.public_key()), "")
        signature = base64.b64encode(signer.sign(unsigned.body())).decode()
        return replace(unsigned, signature=signature)

    @classmethod
    def from_dict(cls, doc: Any, what: str = "checkpoint") -> Checkpoint:
        """Parse a checkpoint; :class:`CheckpointError` says which field is wrong."""
        if not isinstance(doc, dict):
            raise CheckpointError(f"{what} is not a JSON object")
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
            raise CheckpointError(f"{what} lacks {', '.join(missing)}")
        for name, kind in types.items():
            if not isinstance(doc[name], kind) or isinstance(doc[name], bool):
                raise CheckpointError(f"{what}: {name} must be {kind.__name__}, not {doc[name]!r}")
        if doc["tree_size"] < 0 or not _is_hex_digest(doc["root"]):
            raise CheckpointError(
                f"{what}: tree_size {doc['tree_size']} or root {doc['root']!r} is invalid"
            )
        return cls(**{name: doc[name] for name in types})


def _is_hex_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _hashes(values: Any, what: str) -> list[bytes]:
    if not isinstance(values, list) or not all(
        isinstance(v, str) and _is_hex_digest(v) for v in values
    ):
        raise ReceiptError(f"{what} must be a list of hex SHA-256 digests")
    return [bytes.fromhex(v) for v in values]


@dataclass(frozen=True)
class Receipt:
    """Proof handed to ``participant`` that its update of ``round`` is in the signed ledger.

    Parameters
    ----------
    participant : str
        Whose update the entry records.
    run_id : str
        Flower's run id (decimal text, as in the update's header).
    round : int
        The round the update was accepted in.
    seq : int
        The entry's position in the ledger (its leaf index).
    payload : str
        The entry's canonical JSON payload (its leaf is ``SHA-256(0x00 ‖ payload)``).
    inclusion : list of str
        Hex RFC 6962 inclusion proof of leaf ``seq`` in the checkpoint's tree.
    checkpoint : Checkpoint
        The signed tree head the proof leads to.
    previous_size, previous_root, consistency : optional
        The head of the last receipt this participant was given in the run, and
        the consistency proof from it to ``checkpoint``.
    """

    participant: str
    run_id: str
    round: int
    seq: int
    payload: str
    inclusion: list[str]
    checkpoint: Checkpoint
    previous_size: int | None = None
    previous_root: str | None = None
    consistency: list[str] | None = None

    @property
    def file_name(self) -> str:
        return f"run-{self.run_id}-round-{self.round:04d}.json"

    def update(self) -> dict[str, Any]:
        """The ledger row the entry states (``round_updates``)."""
        doc = json.loads(self.payload)
        row = doc.get("row") if isinstance(doc, dict) else None
        if not isinstance(row, dict) or doc.get("kind") != "update":
            raise ReceiptError(f"receipt entry {self.seq} does not record an update")
        return row

    def verify(self, operator: Ed25519PublicKey) -> None:
        """Check the signature, the inclusion proof and (if given) the consistency proof.

        Raises
        ------
        ReceiptError
            Any of them fails; the message names which.
        """
        try:
            self.checkpoint.verify(operator)
        except CheckpointError as err:
            raise ReceiptError(f"receipt for round {self.round}: {err}") from None
        self.verify_proofs()

    def verify_proofs(self) -> None:
        """:meth:`verify` without the signature: the proofs lead to the head it carries."""
        try:
            doc = json.loads(self.payload)
        except ValueError:
            raise ReceiptError(f"receipt for round {self.round}: the entry is not JSON") from None
        if canonical_json(doc, floats_as_strings=True).decode("ascii") != self.payload:
            raise ReceiptError(f"receipt for round {self.round}: the entry is not canonical JSON")
        self.update()
        root = bytes.fromhex(self.checkpoint.root)
        try:
            verify_inclusion(
                leaf_hash(self.payload.encode("ascii")),
                self.seq,
                self.checkpoint.tree_size,
                _hashes(self.inclusion, "the inclusion proof"),
                root,
            )
        except ProofError as err:
            raise ReceiptError(
                f"receipt for round {self.round}: entry {self.seq} is not in the signed tree "
                f"of size {self.checkpoint.tree_size} ({err})"
            ) from None
        if self.previous_size is None:
            return
        if self.previous_root is None or self.consistency is None:
            raise ReceiptError(f"receipt for round {self.round}: an incomplete consistency proof")
        try:
            verify_consistency(
                self.previous_size,
                self.checkpoint.tree_size,
                bytes.fromhex(self.previous_root),
                root,
                _hashes(self.consistency, "the consistency proof"),
            )
        except (ProofError, ValueError) as err:
            raise ReceiptError(
                f"receipt for round {self.round}: the tree of size {self.checkpoint.tree_size} "
                f"does not extend the one of size {self.previous_size} the participant was "
                f"given before: the ledger was rewritten ({err})"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["format"] = RECEIPT_FORMAT
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "receipt") -> Receipt:
        """Parse a receipt; :class:`ReceiptError` says what is wrong with it."""
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise ReceiptError(f"{source} is not JSON: {err}") from None
        if not isinstance(doc, dict) or doc.get("format") != RECEIPT_FORMAT:
            raise ReceiptError(f"{source} is not a FedCommons receipt (format {RECEIPT_FORMAT})")
        try:
            checkpoint = Checkpoint.from_dict(doc.get("checkpoint"), f"{source}'s checkpoint")
        except CheckpointError as err:
            raise ReceiptError(str(err)) from None
        fields: dict[str, tuple[type, ...]] = {
            "participant": (str,),
            "run_id": (str,),
            "round": (int,),
            "seq": (int,),
            "payload": (str,),
            "inclusion": (list,),
            "previous_size": (int, type(None)),
            "previous_root": (str, type(None)),
            "consistency": (list, type(None)),
        }
        for name, kinds in fields.items():
            value = doc.get(name)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ReceiptError(f"{source}: {name} is missing or has the wrong type ({value!r})")
        if doc["seq"] < 0 or doc["seq"] >= checkpoint.tree_size:
            raise ReceiptError(
                f"{source}: entry {doc['seq']} is outside the checkpoint's {checkpoint.tree_size}"
            )
        _hashes(doc["inclusion"], f"{source}'s inclusion proof")
        if doc["consistency"] is not None:
            _hashes(doc["consistency"], f"{source}'s consistency proof")
        if doc["previous_root"] is not None and not _is_hex_digest(doc["previous_root"]):
            raise ReceiptError(f"{source}: previous_root is not a hex SHA-256 digest")
        return cls(checkpoint=checkpoint, **{name: doc[name] for name in fields})


def read_receipts(folder: Path) -> Iterator[tuple[Path, Receipt]]:
    """Every receipt under ``folder`` (``*.json``, recursively, sorted).

    Raises
    ------
    ReceiptError
        ``folder`` is missing, holds no receipt, or a file in it is not a valid receipt.
    """
    if not folder.is_dir():
        raise ReceiptError(f"no receipts folder at {folder}")
    paths = sorted(p for p in folder.rglob("*.json") if p.is_file() and p.parent.name != "sent")
    if not paths:
        raise ReceiptError(f"{folder} holds no receipts (*.json)")
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ReceiptError(f"cannot read {path}: {err}") from None
        yield path, Receipt.from_json(text, str(path))


class ReceiptBook:
    """A participant's receipts folder: what it sent, and the receipts it accepted.

    ``sent/run-R-round-NNNN.json`` records the hash and signature of each update
    the node sealed; ``run-R-round-NNNN.json`` is the verified receipt for it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def sent_folder(self) -> Path:
        return self.folder / "sent"

    def record_sent(self, envelope: Envelope) -> Path:
        """Remember what was sent, so a receipt can be matched to this node's own update."""
        header = UpdateHeader.parse(envelope.header)
        path = self.sent_folder / f"run-{header.run_id}-round-{header.round:04d}.json"
        doc = {
            "participant": header.participant,
            "ciphertext_sha256": envelope.ciphertext_sha256(),
            "signature": base64.b64encode(envelope.signature).decode(),
        }
        _write_atomic(path, json.dumps(doc, sort_keys=True, indent=2) + "\n")
        return path

    def receipts(self, run_id: str | None = None) -> list[Receipt]:
        """The receipts accepted so far, of every run or of ``run_id`` only."""
        pattern = f"run-{run_id}-round-*.json" if run_id is not None else "run-*.json"
        return [
            Receipt.from_json(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(self.folder.glob(pattern))
        ]

    def accept(self, receipt: Receipt, operator: Ed25519PublicKey, participant: str) -> Path:
        """Verify ``receipt`` as ``participant`` and store it; :class:`ReceiptError` if it fails.

        Beyond :meth:`Receipt.verify`, the entry must record the very update this
        node sent (its ciphertext hash and signature), and a consistency proof
        must start from a head this node really holds.
        """
        if receipt.participant != participant:
            raise ReceiptError(f"a receipt for {receipt.participant!r} was sent to {participant!r}")
        receipt.verify(operator)
        sent_path = self.sent_folder / receipt.file_name
        try:
            sent = json.loads(sent_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ReceiptError(
                f"a receipt for run {receipt.run_id} round {receipt.round}, but this node has "
                f"no record of sending an update then ({sent_path})"
            ) from None
        row = receipt.update()
        for column in ("ciphertext_sha256", "signature"):
            if row.get(column) != sent.get(column):
                raise ReceiptError(
                    f"the receipt's ledger entry {receipt.seq} for round {receipt.round} records "
                    f"another update than the one this node sent ({column} differs)"
                )
        if receipt.previous_size is not None:  # the head it extends was given in this run
            held = {
                r.checkpoint.tree_size: r.checkpoint.root
                for r in self.receipts(run_id=receipt.run_id)
            }
            if (
                receipt.previous_size in held
                and held[receipt.previous_size] != receipt.previous_root
            ):
                raise ReceiptError(
                    f"the receipt for round {receipt.round} extends a head of size "
                    f"{receipt.previous_size} with another root than the one this node holds: "
                    "the ledger was forked"
                )
        path = self.folder / receipt.file_name
        text = receipt.to_json()
        if path.exists() and path.read_text(encoding="utf-8") == text:
            return path  # delivered again: already stored
        if path.exists():
            raise ReceiptError(
                f"{path} already holds another receipt for run {receipt.run_id} round "
                f"{receipt.round}: the operator signed two different ledgers"
            )
        _write_atomic(path, text)
        return path


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
