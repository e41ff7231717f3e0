"""Signed tree heads: the operator's signature over the ledger's Merkle tree head.

A signed tree head (:class:`common.tree_head.TreeHead`) says "the first
``tree_size`` entries have RFC 6962 root ``root``". Once signed and handed
out, any rewrite of those entries, or a deletion below that size, no longer
matches it. Heads are signed as C2SP checkpoints of the log's origin
(:func:`log_origin`); participants' cosignatures are kept beside them
(:mod:`ledger.cosignatures`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common.consortium import default_log_origin
from common.merkle_log import MerkleLog
from common.note import NoteError, check_key_name
from common.receipts import TREE_HEAD_FORMAT, Receipt, TreeHead, TreeHeadError
from ledger.members import members_entry
from ledger.schema import (
    ChainTip,
    Charge,
    Contribution,
    LedgerEntry,
    LedgerTreeHead,
    LogOrigin,
    Participant,
    Round,
    RoundUpdate,
    Valuation,
    utcnow,
)

__all__ = [
    "TREE_HEAD_FORMAT",
    "LedgerTree",
    "TreeHead",
    "TreeHeadError",
    "log_origin",
    "round_receipts",
    "set_log_origin",
    "sign_tree_head",
    "tree_head_from_columns",
    "tree_head_from_row",
]


class LedgerTree:
    """The entries' leaf hashes, read once and extended as the ledger grows.

    A signer that signs a head every round reads only the entries appended
    since its last head. The leaves go into a :class:`~common.merkle_log.MerkleLog`,
    which keeps every complete subtree head, so a tree head or a proof for
    any size read so far costs O(log n) hashes rather than a pass over all
    the leaves.
    """

    def __init__(self) -> None:
        self._log = MerkleLog()

    @property
    def leaves(self) -> Sequence[bytes]:
        """The leaf hashes read so far, in seq order (a live view: do not modify it)."""
        return self._log.leaves

    @property
    def size(self) -> int:
        """Number of entries read so far."""
        return self._log.size

    def sync(self, session: Session) -> int:
        """Read the entries appended since the last call; return the tree size."""
        for leaf in session.scalars(
            select(LedgerEntry.leaf_hash)
            .where(LedgerEntry.seq >= self._log.size)
            .order_by(LedgerEntry.seq)
        ):
            self._log.append(bytes.fromhex(leaf))
        return self._log.size

    def root(self, size: int | None = None) -> bytes:
        """Head of the tree of the first ``size`` entries (default: all read so far)."""
        return self._log.root(size)

    def inclusion(self, seq: int, size: int) -> list[str]:
        """Hex inclusion proof of entry ``seq`` in the tree of the first ``size`` entries."""
        return [h.hex() for h in self._log.inclusion_proof(seq, size)]

    def consistency(self, old_size: int, new_size: int) -> list[str]:
        """Hex consistency proof from the tree of ``old_size`` entries to ``new_size``."""
        return [h.hex() for h in self._log.consistency_proof(old_size, new_size)]


def set_log_origin(session: Session, origin: str) -> str:
    """Record the log's origin (``operator init``); refused once another is recorded."""
    try:
        check_key_name(origin)
    except NoteError as err:
        raise TreeHeadError(f"log origin: {err}") from None
    held = session.get(LogOrigin, 1)
    if held is not None and held.origin != origin:
        raise TreeHeadError(
            f"this ledger's log is {held.origin!r} already: its origin never changes"
        )
    if held is None:
        session.add(LogOrigin(id=1, origin=origin))
        session.flush()
    return origin


def log_origin(session: Session, operator: Ed25519PublicKey) -> str:
    """The log's origin; a ledger without one (made before v12) gets the operator key's."""
    held = session.get(LogOrigin, 1)
    return (
        held.origin if held is not None else set_log_origin(session, default_log_origin(operator))
    )


def tree_head_from_columns(
    row_id: int,
    tree_size: int,
    root_hash: str,
    body: str,
    signer_key_id: str,
    signature: str,
    checkpoint: str | None = None,
    signed_at: str | None = None,
    label: str | None = None,
) -> TreeHead:
    """The signed tree head a stored row's columns hold; :class:`TreeHeadError` if inconsistent."""
    if checkpoint is not None:
        head = TreeHead(
            tree_size, root_hash, signed_at or "", label or "", signer_key_id, signature, checkpoint
        )
        try:
            head.check_checkpoint()
        except TreeHeadError as err:
            raise TreeHeadError(
                f"tree head {row_id}'s columns disagree with its checkpoint: {err}"
            ) from None
        if head.body().decode("utf-8") != body:
            raise TreeHeadError(f"tree head {row_id}'s columns disagree with its checkpoint")
        return head
    try:
        doc = json.loads(body)
        head = TreeHead(
            tree_size=int(doc["tree_size"]),
            root=str(doc["root"]),
            at=str(doc["at"]),
            note=str(doc["note"]),
            key_id=signer_key_id,
            signature=signature,
        )
    except (ValueError, KeyError, TypeError) as err:
        raise TreeHeadError(f"tree head {row_id} has a malformed body: {err}") from None
    if head.body().decode() != body or doc.get("format") != TREE_HEAD_FORMAT:
        raise TreeHeadError(f"tree head {row_id}'s body is not in canonical form")
    if (head.tree_size, head.root) != (tree_size, root_hash):
        raise TreeHeadError(f"tree head {row_id}'s columns disagree with its signed body")
    return head


def tree_head_from_row(row: LedgerTreeHead) -> TreeHead:
    """The signed tree head a stored row holds; :class:`TreeHeadError` if it is inconsistent."""
    return tree_head_from_columns(
        row.id,
        row.tree_size,
        row.root_hash,
        row.body,
        row.key_id,
        row.signature,
        row.checkpoint,
        row.signed_at,
        row.label,
    )


def sign_tree_head(
    session: Session, signer: Ed25519PrivateKey, note: str, tree: LedgerTree | None = None
) -> TreeHead:
    """Sign the current tree head and store it; appends wait until it is stored.

    Parameters
    ----------
    tree : LedgerTree, optional
        The leaves read so far, extended here; without it all leaves are read.
    """
    size = session.execute(
        update(ChainTip)
        .where(ChainTip.id == 1)
        .values(size=ChainTip.size)  # takes the append lock without changing anything
        .returning(ChainTip.size)
    ).scalar_one()
    tree = tree if tree is not None else LedgerTree()
    if tree.sync(session) != size:
        raise TreeHeadError(f"the head says {size} entries but {len(tree.leaves)} are stored")
    head = TreeHead.sign(
        signer,
        tree_size=size,
        root=tree.root().hex(),
        at=utcnow().isoformat(timespec="seconds"),
        note=note,
        origin=log_origin(session, signer.public_key()),
    )
    session.add(
        LedgerTreeHead(
            tree_size=head.tree_size,
            root_hash=head.root,
            body=head.body().decode(),
            key_id=head.key_id,
            signature=head.signature,
            checkpoint=head.checkpoint,
            signed_at=head.at,
            label=head.note,
        )
    )
    session.flush()
    return head


def round_receipts(
    session: Session,
    tree: LedgerTree,
    head: TreeHead,
    *,
    round_id: int,
    server_round: int,
    flower_run_id: str,
    previous: Mapping[str, TreeHead],
    contributions: Mapping[str, int] | None = None,
) -> list[Receipt]:
    """A receipt for every update recorded in round ``round_id``, under ``head``.

    Parameters
    ----------
    tree : LedgerTree
        Synced at least up to ``head.tree_size`` (as :func:`sign_tree_head` leaves it).
    previous : mapping
        The last signed head each participant was given, if any: its receipt
        then carries a consistency proof from that head.
    contributions : mapping, optional
        The entry recording each participant's value in the round, by name:
        its receipt then carries that entry, the round's valuation entry and
        their inclusion proofs too.

    Each receipt carries the run's ``run-members`` entry (:mod:`ledger.members`)
    with its inclusion proof: the members whose cosignatures establish ``head``
    (:mod:`client.quorum`). Each receipt also carries the participant's privacy
    charge for the round, with its inclusion proof, when exactly one is recorded under ``head`` (a
    round retried after a crash may hold the charge of an update never
    receipted beside the one of the update recorded: then none), so the node
    checks its own entries against what it sent (:mod:`client.own_entries`).
    """
    size = head.tree_size
    contributions = contributions or {}
    recorded = session.get_one(Round, round_id)
    charges: dict[str, int] = {
        name: seq
        for name, seq, count in session.execute(
            select(Participant.name, func.max(Charge.entry_seq), func.count(Charge.id))
            .join(Charge, Charge.participant_id == Participant.id)
            .where(
                Charge.run_id == recorded.run_id,
                Charge.round_number == recorded.number,
                Charge.entry_seq < size,
            )
            .group_by(Participant.name)
        )
        if seq is not None and count == 1
    }
    valuations: dict[int, int] = {
        value_seq: valuation_seq
        for value_seq, valuation_seq in session.execute(
            select(Contribution.entry_seq, Valuation.entry_seq)
            .join(Valuation, Valuation.id == Contribution.valuation_id)
            .where(Contribution.entry_seq.in_(list(contributions.values())))
        )
        if value_seq is not None and valuation_seq is not None
    }
    members = members_entry(session, recorded.run_id)
    wanted = [*contributions.values(), *charges.values(), *valuations.values()]
    payloads: dict[int, str] = {
        seq: payload
        for seq, payload in session.execute(
            select(LedgerEntry.seq, LedgerEntry.payload).where(LedgerEntry.seq.in_(wanted))
        )
    }

    def proven(what: str, seq: int | None, name: str) -> dict[str, Any]:
        """Entry ``seq`` (``name``'s ``what``) with its inclusion proof, as receipt fields."""
        if seq is None:
            return {}
        if seq >= size:
            raise TreeHeadError(f"{name}'s {what} (entry {seq}) is not under the signed head")
        return {
            f"{what}_seq": seq,
            f"{what}_payload": payloads[seq],
            f"{what}_inclusion": tree.inclusion(seq, size),
        }

    rows = session.execute(
        select(Participant.name, LedgerEntry.seq, LedgerEntry.payload)
        .join(RoundUpdate, RoundUpdate.participant_id == Participant.id)
        .join(LedgerEntry, LedgerEntry.seq == RoundUpdate.entry_seq)
        .where(RoundUpdate.round_id == round_id)
        .order_by(LedgerEntry.seq)
    )
    receipts = []
    for name, seq, payload in rows:
        if seq >= size:
            raise TreeHeadError(f"{name}'s update (entry {seq}) is not under the signed head")
        before = previous.get(name)
        value_seq = contributions.get(name)
        receipts.append(
            Receipt(
                participant=name,
                run_id=flower_run_id,
                round=server_round,
                seq=seq,
                payload=payload,
                inclusion=tree.inclusion(seq, size),
                tree_head=head,
                previous_size=before.tree_size if before else None,
                previous_root=before.root if before else None,
                consistency=tree.consistency(before.tree_size, size) if before else None,
                **proven("value", value_seq, name),
                **proven("charge", charges.get(name), name),
                **proven("valuation", valuations.get(value_seq) if value_seq else None, name),
                **_members_proof(members, tree, size),
            )
        )
    return receipts


def _members_proof(members: tuple[int, str] | None, tree: LedgerTree, size: int) -> dict[str, Any]:
    """The run's members entry and its inclusion proof under the head, as receipt fields."""
    if members is None or members[0] >= size:
        return {}
    seq, payload = members
    return {
        "members_seq": seq,
        "members_payload": payload,
        "members_inclusion": tree.inclusion(seq, size),
    }
