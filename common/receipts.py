"""Signed tree heads and the receipts participants keep.

A *signed tree head* is the operator's Ed25519 signature over a Merkle tree
head: "the first ``tree_size`` ledger entries have RFC 6962 root ``root``, as
of ``at``". A *receipt* hands one participant that signed head, the ledger
entry recording its own update in a round, and the inclusion proof tying the
entry to the signed root. When the participant already holds an earlier
receipt, the new one also carries a consistency proof from that earlier
head, so the participant sees the ledger only ever grow.

Once a participant holds a receipt, the operator can no longer delete or
rewrite any of the first ``tree_size`` entries without the receipt
disagreeing with the ledger (``fedcommons audit verify --receipts``).

This module is shared: the ServerApp builds receipts, ClientApps verify and
store them (:class:`client.receipts.ReceiptBook`), auditors check them
against a ledger.

Wire formats: a head is a C2SP ``tlog-checkpoint`` signed note
(:mod:`common.note`), carried verbatim under ``checkpoint``; any transparency
tool opens it with the operator's verifier key. Heads signed before that are
canonical JSON whose body says ``"format": "fedcommons-checkpoint/v1"`` (kept:
signatures already given cover those bytes) and stay verifiable. Receipts
are ``fedcommons-receipt/v3`` (v2 could not carry a checkpoint; v1 named the
head ``checkpoint``); v1 and v2 are still read. A receipt may also carry, each
with its inclusion proof under the same head, the participant's contribution
value, its privacy charge and the round's valuation, so that the participant
checks its own entries (:mod:`client.own_entries`), and the run's members
entry, whose keys count the cosignatures that establish the head
(:mod:`client.quorum`); receipts without them stay valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.canonical import canonical_json
from common.errors import UserError
from common.merkle import ProofError, leaf_hash, verify_consistency, verify_inclusion
from common.quorum import QuorumError, RunMembers
from common.tree_head import TREE_HEAD_FORMAT, TreeHead, TreeHeadError, is_hex_digest

__all__ = [
    "NOT_RECEIPTS",
    "RECEIPT_FORMAT",
    "TREE_HEAD_FORMAT",
    "ForkError",
    "Receipt",
    "ReceiptError",
    "TreeHead",
    "TreeHeadError",
    "read_receipts",
]

RECEIPT_FORMAT = "fedcommons-receipt/v3"
NOT_RECEIPTS = frozenset({"sent", "refused"})
"""Subfolders of a node's receipts folder that hold no receipts: what it sent, what it refused."""
_RECEIPT_V1 = "fedcommons-receipt/v1"
_RECEIPT_V2 = "fedcommons-receipt/v2"


class ReceiptError(UserError, ValueError):
    """A receipt that is malformed, does not verify, or is not about this participant."""


class ForkError(ReceiptError):
    """A receipt whose signed head does not extend one the participant holds: a forked ledger."""


def _hashes(values: Any, what: str) -> list[bytes]:
    if not isinstance(values, list) or not all(
        isinstance(v, str) and is_hex_digest(v) for v in values
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
        Hex RFC 6962 inclusion proof of leaf ``seq`` in the signed head's tree.
    tree_head : TreeHead
        The signed tree head the proof leads to.
    previous_size, previous_root, consistency : optional
        The head of the last receipt this participant was given in the run, and
        the consistency proof from it to ``tree_head``.
    value_seq, value_payload, value_inclusion : optional
        The entry recording the participant's contribution value in the round
        (``contributions``), with its inclusion proof under the same head.
    charge_seq, charge_payload, charge_inclusion : optional
        The entry recording the participant's privacy charge for the round
        (``privacy_charges``), with its inclusion proof under the same head.
    valuation_seq, valuation_payload, valuation_inclusion : optional
        The round's valuation entry (``valuations``: players, coalition
        utilities), from which the participant recomputes its value.
    members_seq, members_payload, members_inclusion : optional
        The run's ``run-members`` entry (:mod:`common.quorum`): the members
        whose cosignatures establish the head, with their admitted keys.
    """

    participant: str
    run_id: str
    round: int
    seq: int
    payload: str
    inclusion: list[str]
    tree_head: TreeHead
    previous_size: int | None = None
    previous_root: str | None = None
    consistency: list[str] | None = None
    value_seq: int | None = None
    value_payload: str | None = None
    value_inclusion: list[str] | None = None
    charge_seq: int | None = None
    charge_payload: str | None = None
    charge_inclusion: list[str] | None = None
    valuation_seq: int | None = None
    valuation_payload: str | None = None
    valuation_inclusion: list[str] | None = None
    members_seq: int | None = None
    members_payload: str | None = None
    members_inclusion: list[str] | None = None

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

    def contribution(self) -> int | None:
        """The participant's value in the round (parts per million of utility), if carried."""
        if self.value_payload is None:
            return None
        row = self._own(self.value_payload, self.value_seq, "contribution", "value")
        value = row.get("value")
        if not isinstance(value, int) or isinstance(value, bool):
            raise ReceiptError(f"receipt entry {self.value_seq} holds no integer value")
        return value

    def charge(self) -> dict[str, Any] | None:
        """The participant's privacy charge in the round (a ``privacy_charges`` row), if carried."""
        if self.charge_payload is None:
            return None
        return self._own(self.charge_payload, self.charge_seq, "privacy-charge", "charge")

    def _own(self, payload: str, seq: int | None, kind: str, what: str) -> dict[str, Any]:
        """The row of entry ``seq``, a ``kind`` of this participant's in this round."""
        row = _row(payload, seq, kind)
        if row.get("round_number") != self.round or row.get("participant_id") != self.update().get(
            "participant_id"
        ):
            raise ReceiptError(
                f"receipt for round {self.round}: its {what} entry {seq} is for "
                "another round or participant"
            )
        return row

    def valuation(self) -> dict[str, Any] | None:
        """The round's valuation (a ``valuations`` row) the value was computed by, if carried."""
        if self.valuation_payload is None:
            return None
        row = _row(self.valuation_payload, self.valuation_seq, "valuation")
        named = None  # the valuation the value entry names, by row id
        if self.value_payload is not None:
            named = _row(self.value_payload, self.value_seq, "contribution").get("valuation_id")
        if row.get("round_number") != self.round or (
            named is not None and named != json.loads(self.valuation_payload).get("id")
        ):
            raise ReceiptError(
                f"receipt for round {self.round}: its valuation entry {self.valuation_seq} is "
                "for another round, or not the one its value entry names"
            )
        return row

    def members(self) -> RunMembers | None:
        """The run's members and quorum rule (its ``run-members`` entry), if carried."""
        if self.members_payload is None:
            return None
        try:
            return RunMembers.from_payload(
                self.members_payload, f"receipt for round {self.round}: entry {self.members_seq}"
            )
        except QuorumError as err:
            raise ReceiptError(str(err)) from None

    def verify(self, operator: Ed25519PublicKey, origin: str | None = None) -> None:
        """Check the signature, the inclusion proof and (if given) the consistency proof.

        ``origin``: the log the head must be a checkpoint of, if known.

        Raises
        ------
        ReceiptError
            Any of them fails; the message names which.
        """
        try:
            self.tree_head.verify(operator, origin)
        except TreeHeadError as err:
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
        root = bytes.fromhex(self.tree_head.root)
        self._included(self.payload, self.seq, self.inclusion, root)
        for what, seq, payload, proof in (
            ("value", self.value_seq, self.value_payload, self.value_inclusion),
            ("charge", self.charge_seq, self.charge_payload, self.charge_inclusion),
            ("valuation", self.valuation_seq, self.valuation_payload, self.valuation_inclusion),
            ("members", self.members_seq, self.members_payload, self.members_inclusion),
        ):
            if seq is None and payload is None:
                continue
            if seq is None or payload is None or not proof:
                raise ReceiptError(f"receipt for round {self.round}: an incomplete {what} proof")
            self._included(payload, seq, proof, root)
        self.contribution()  # each entry carried: this participant's, of this round
        self.charge()
        self.valuation()
        self.members()
        if self.previous_size is None:
            return
        if self.previous_root is None or self.consistency is None:
            raise ReceiptError(f"receipt for round {self.round}: an incomplete consistency proof")
        if self.previous_size < 1:
            raise ReceiptError(
                f"receipt for round {self.round}: a consistency proof from a tree of size "
                f"{self.previous_size} proves nothing (RFC 6962 defines none from the empty tree)"
            )
        try:
            verify_consistency(
                self.previous_size,
                self.tree_head.tree_size,
                bytes.fromhex(self.previous_root),
                root,
                _hashes(self.consistency, "the consistency proof"),
            )
        except (ProofError, ValueError) as err:
            raise ForkError(
                f"receipt for round {self.round}: the tree of size {self.tree_head.tree_size} "
                f"does not extend the one of size {self.previous_size} the participant was "
                f"given before: the ledger was rewritten ({err})"
            ) from None

    def _included(self, payload: str, seq: int, proof: list[str], root: bytes) -> None:
        """Raise unless ``payload`` is canonical and entry ``seq`` of the signed tree."""
        try:
            doc = json.loads(payload)
        except ValueError:
            raise ReceiptError(f"receipt for round {self.round}: entry {seq} is not JSON") from None
        if canonical_json(doc, floats_as_strings=True).decode("ascii") != payload:
            raise ReceiptError(f"receipt for round {self.round}: entry {seq} is not canonical")
        try:
            verify_inclusion(
                leaf_hash(payload.encode("ascii")),
                seq,
                self.tree_head.tree_size,
                _hashes(proof, "the inclusion proof"),
                root,
            )
        except ProofError as err:
            raise ReceiptError(
                f"receipt for round {self.round}: entry {seq} is not in the signed tree "
                f"of size {self.tree_head.tree_size} ({err})"
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
        formats = (RECEIPT_FORMAT, _RECEIPT_V2, _RECEIPT_V1)
        if not isinstance(doc, dict) or doc.get("format") not in formats:
            raise ReceiptError(f"{source} is not a FedCommons receipt (format {RECEIPT_FORMAT})")
        head_key = "checkpoint" if doc.get("format") == _RECEIPT_V1 else "tree_head"
        try:
            tree_head = TreeHead.from_dict(doc.get(head_key), f"{source}'s tree head")
        except TreeHeadError as err:
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
            "value_seq": (int, type(None)),
            "value_payload": (str, type(None)),
            "value_inclusion": (list, type(None)),
            "charge_seq": (int, type(None)),
            "charge_payload": (str, type(None)),
            "charge_inclusion": (list, type(None)),
            "valuation_seq": (int, type(None)),
            "valuation_payload": (str, type(None)),
            "valuation_inclusion": (list, type(None)),
            "members_seq": (int, type(None)),
            "members_payload": (str, type(None)),
            "members_inclusion": (list, type(None)),
        }
        for name, kinds in fields.items():
            value = doc.get(name)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ReceiptError(f"{source}: {name} is missing or has the wrong type ({value!r})")
        if doc["seq"] < 0 or doc["seq"] >= tree_head.tree_size:
            raise ReceiptError(
                f"{source}: entry {doc['seq']} is outside the signed head's {tree_head.tree_size}"
            )
        _hashes(doc["inclusion"], f"{source}'s inclusion proof")
        if doc["consistency"] is not None:
            _hashes(doc["consistency"], f"{source}'s consistency proof")
        for what in ("value", "charge", "valuation", "members"):
            if doc.get(f"{what}_inclusion") is not None:
                _hashes(doc[f"{what}_inclusion"], f"{source}'s {what} inclusion proof")
            seq = doc.get(f"{what}_seq")
            if seq is not None and not 0 <= seq < tree_head.tree_size:
                raise ReceiptError(f"{source}: {what} entry {seq} is outside the head")
        if doc["previous_root"] is not None and not is_hex_digest(doc["previous_root"]):
            raise ReceiptError(f"{source}: previous_root is not a hex SHA-256 digest")
        values: dict[str, Any] = {name: doc.get(name) for name in fields}
        return cls(tree_head=tree_head, **values)


def _row(payload: str, seq: int | None, kind: str) -> dict[str, Any]:
    """The row a ledger entry of ``kind`` states; :class:`ReceiptError` if it states another."""
    doc = json.loads(payload)
    row = doc.get("row") if isinstance(doc, dict) else None
    if not isinstance(row, dict) or doc.get("kind") != kind:
        raise ReceiptError(f"receipt entry {seq} does not record a {kind}")
    return row


def read_receipts(folder: Path) -> Iterator[tuple[Path, Receipt]]:
    """Every receipt under ``folder`` (``*.json``, recursively, sorted).

    A node's ``sent/`` and ``refused/`` folders are skipped (:data:`NOT_RECEIPTS`):
    they hold what it sent and the receipts it refused, read by
    :func:`common.evidence.signed_heads`.

    Raises
    ------
    ReceiptError
        ``folder`` is missing, holds no receipt, or a file in it is not a valid receipt.
    """
    if not folder.is_dir():
        raise ReceiptError(f"no receipts folder at {folder}")
    paths = sorted(  # not what a node keeps beside them: its sent updates and refusals
        p for p in folder.rglob("*.json") if p.is_file() and p.parent.name not in NOT_RECEIPTS
    )
    if not paths:
        raise ReceiptError(f"{folder} holds no receipts (*.json)")
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ReceiptError(f"cannot read {path}: {err}") from None
        yield path, Receipt.from_json(text, str(path))
