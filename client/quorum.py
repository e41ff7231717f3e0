"""A node's witness quorum: a checkpoint counts once enough of the run's members vouched for it.

A receipt proves that the operator signed a ledger holding this node's
update; it does not prove that other nodes were shown the same ledger. A
node therefore treats a checkpoint as **established** only when members of
the run cosigned it, at least the quorum of its ``run-members`` entry
(:mod:`common.quorum`) and never fewer than a majority, the node itself
counted. Their keys come from that entry, proven under a checkpoint this
node checked; the message that brings the cosignatures brings only the
lines, and each line must verify on this very checkpoint with the member's
admitted key. A checkpoint is established with all those before it: the
node only ever holds checkpoints that extend one another.

Receipts under a checkpoint not yet established are **pending**. The
cosignatures on the checkpoint a node holds arrive with its next message
(the next train message, or the queries that close the run). The run's last
message says it is the last (``final``): a receipt still pending then is
refused (``no-quorum``), moved to ``refused/`` with the evidence, so the node
never relies on a ledger that the other members did not vouch for. With a
majority of honest members, two forks cannot both reach a majority quorum:
the members on the smaller side refuse theirs.

Kept in the receipts folder, append-only: ``established.jsonl`` (each
established checkpoint, as a cosigned note, with its cosigners) and
``members.jsonl`` (each member's key, pinned the first time a run named it:
a later run that names another key for it is refused, ``member-key``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from common.evidence import append_json_lines, read_json_lines
from common.keys import KeyFileError, decode_ed25519_public
from common.note import NoteError, SignatureLine, verify_cosignature
from common.quorum import RunMembers
from common.receipts import Receipt, TreeHead

__all__ = [
    "ESTABLISHED_FILE",
    "MEMBERS_FILE",
    "Established",
    "Quorum",
    "established",
    "member_problem",
    "pending",
]

ESTABLISHED_FILE = "established.jsonl"
MEMBERS_FILE = "members.jsonl"


@dataclass(frozen=True)
class Established:
    """A checkpoint this node saw cosigned by its quorum: who, out of how many, and the note."""

    tree_size: int
    root: str
    cosigners: tuple[str, ...]
    required: int
    members: int
    run_id: int
    note: str


@dataclass(frozen=True)
class Quorum:
    """What a message's cosignatures did for one checkpoint this node holds.

    ``counted``: the run's members whose lines verified (this node included);
    ``ignored``: why each other line did not count (not a member, does not
    verify: forged or replayed from another checkpoint).
    """

    head: TreeHead
    members: RunMembers
    counted: tuple[str, ...]
    ignored: tuple[str, ...]
    lines: tuple[str, ...] = ()
    """The counted members' lines (this node's own included when the message carried it)."""

    @property
    def reached(self) -> bool:
        return len(self.counted) >= self.members.required

    def describe(self) -> str:
        named = ", ".join(self.counted) or "nobody"
        return (
            f"the checkpoint of size {self.head.tree_size} is cosigned by {len(self.counted)} of "
            f"the {len(self.members.members)} members of run {self.members.run_id} ({named}); "
            f"the quorum is {self.members.required}"
        )

    def record(self) -> Established:
        note = str(self.head.checkpoint) + "".join(self.lines)
        return Established(
            self.head.tree_size,
            self.head.root,
            self.counted,
            self.members.required,
            len(self.members.members),
            self.members.run_id,
            note,
        )


def count(head: TreeHead, members: RunMembers, me: str, lines: Iterable[str]) -> Quorum:
    """The members whose cosignature lines verify on ``head`` with their admitted keys.

    This node (``me``) counts if it is a member: it checked and cosigned the head.
    """
    text = head.body().decode("utf-8")
    counted = {me} if me in members.members else set()
    kept: dict[str, str] = {}
    ignored = []
    for raw in lines:
        try:
            line = SignatureLine.parse(raw)
        except NoteError as err:
            ignored.append(f"a malformed cosignature line ({err})")
            continue
        key = members.members.get(line.name)
        if key is None:
            ignored.append(f"{line.name} cosigned, but is no member of run {members.run_id}")
            continue
        try:
            verify_cosignature(text, line, decode_ed25519_public(key))
        except (NoteError, KeyFileError) as err:
            ignored.append(
                f"{line.name}'s line does not verify on this checkpoint with its admitted key "
                f"({err}): forged, or replayed from another checkpoint"
            )
            continue
        counted.add(line.name)
        kept.setdefault(line.name, line.line())
    return Quorum(
        head, members, tuple(sorted(counted)), tuple(ignored), tuple(kept[n] for n in sorted(kept))
    )


def member_problem(receipt: Receipt, me: str, my_key: str | None, folder: Path) -> str | None:
    """Why ``receipt``'s members entry cannot be relied on, or ``None``; pins new members.

    The node must be a member of the run, with its own key, and every member
    the node saw before must keep the key it was pinned with.
    """
    members = receipt.members()
    if members is None:
        return None  # no quorum can be counted: the receipt stays pending
    if members.members.get(me) is None:
        return (
            f"not-a-member: run {members.run_id}'s members entry does not list {me}, the "
            "node that took part: the operator left it out of the quorum"
        )
    if my_key is not None and members.members[me] != my_key:
        return (
            f"not-a-member: run {members.run_id}'s members entry lists {me} with another key "
            "than this node's: whoever holds that key could cosign in its name"
        )
    pinned = pinned_members(folder)
    for name, key in sorted(members.members.items()):
        if name in pinned and pinned[name] != key:
            return (
                f"member-key: run {members.run_id}'s members entry gives {name} another key "
                f"than the one this node pinned for it: the operator substituted a member's key"
            )
    new = [(n, k) for n, k in sorted(members.members.items()) if n not in pinned]
    if new:
        at = _now()
        append_json_lines(
            folder / MEMBERS_FILE,
            [
                {"institution": n, "public_key": k, "run_id": members.run_id, "at": at}
                for n, k in new
            ],
        )
    return None


def pinned_members(folder: Path) -> dict[str, str]:
    """Each member's key as this node first saw it, by name."""
    pinned: dict[str, str] = {}
    for doc in read_json_lines(folder / MEMBERS_FILE):
        name, key = doc.get("institution"), doc.get("public_key")
        if isinstance(name, str) and isinstance(key, str):
            pinned.setdefault(name, key)
    return pinned


def established(folder: Path) -> list[Established]:
    """The checkpoints this node saw established, oldest first."""
    return [
        Established(**{**doc, "cosigners": tuple(doc["cosigners"])})
        for doc in read_json_lines(folder / ESTABLISHED_FILE)
    ]


def established_size(folder: Path) -> int:
    """The size of the largest established checkpoint (0: none)."""
    return max((e.tree_size for e in established(folder)), default=0)


def establish(folder: Path, quorum: Quorum, size: int) -> Established | None:
    """Log ``quorum``'s checkpoint as established, unless one of ``size`` or larger already is."""
    if not quorum.reached or quorum.head.tree_size <= size:
        return None
    record = quorum.record()
    append_json_lines(folder / ESTABLISHED_FILE, [asdict(record)])
    return record


def pending(receipts: Iterable[Receipt], size: int) -> list[Receipt]:
    """The receipts whose checkpoint is larger than ``size``, the largest established."""
    return [r for r in receipts if r.tree_head.tree_size > size]


def cosigned_head(head: TreeHead, quorum: Quorum) -> TreeHead:
    """``head`` with the counted members' lines appended: the cosigned note, as a head."""
    return replace(head, checkpoint=quorum.record().note)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
