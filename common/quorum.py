"""The members a run's checkpoints must be cosigned by, and how many of them.

When a run starts, the server appends one ``run-members`` entry to the
ledger: the run's id, every member admitted by then with the signing key it
was admitted with, and the quorum rule of the policy's ``[witness]`` section.
Every receipt of the run carries that entry with its inclusion proof
(:mod:`common.receipts`), so a node reads the members' keys from the
consortium's own records, under a checkpoint the operator signed, and never
from the message that brings their cosignatures (:mod:`client.quorum`).

The quorum is counted over the members admitted to the run, the node itself
included, so leaving members out of a round does not shrink it; a node
requires at least a majority whatever the policy says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.errors import UserError
from common.keys import KeyFileError, decode_ed25519_public

__all__ = ["RUN_MEMBERS", "QuorumError", "RunMembers", "majority", "required_quorum"]

RUN_MEMBERS = "run-members"
"""The kind of the ledger entry naming a run's members and its quorum rule."""


class QuorumError(UserError, ValueError):
    """A quorum rule that the run's members cannot meet, or a malformed members entry."""


def majority(members: int) -> int:
    """More than half of ``members``."""
    return members // 2 + 1


def required_quorum(rule: str | int, members: int) -> int:
    """The cosigners ``rule`` (``"majority"`` or a number) asks of ``members`` members.

    Raises
    ------
    QuorumError
        A number below a majority (two forks could both reach it) or above
        the members (no checkpoint could ever be established).
    """
    if members < 1:
        raise QuorumError("no member is admitted: nobody could cosign the run's checkpoints")
    least = majority(members)
    if rule == "majority":
        return least
    if not isinstance(rule, int) or isinstance(rule, bool):
        raise QuorumError(f"quorum rule {rule!r} is neither 'majority' nor a number")
    if rule < least:
        raise QuorumError(
            f"witness quorum {rule} is below a majority of the {members} members admitted "
            f"({least}): two forks of the ledger could both reach it; use 'majority' or "
            f"{least} to {members}"
        )
    if rule > members:
        raise QuorumError(
            f"witness quorum {rule} but only {members} member(s) admitted: no checkpoint "
            f"could ever be established; use 'majority' or {least} to {members}"
        )
    return rule


@dataclass(frozen=True)
class RunMembers:
    """A ``run-members`` entry: the run, its members' signing keys (base64), the rule."""

    run_id: int
    members: dict[str, str]
    rule: str | int = "majority"

    @property
    def required(self) -> int:
        """Cosigners a node requires: the rule's number, and never less than a majority."""
        least = majority(len(self.members))
        return least if self.rule == "majority" else max(least, int(self.rule))

    def doc(self) -> dict[str, Any]:
        """The entry's document (:func:`ledger.entries.append_entry` adds kind and time)."""
        return {
            "run_id": self.run_id,
            "quorum": self.rule,
            "members": [
                {"institution": name, "public_key": key}
                for name, key in sorted(self.members.items())
            ],
        }

    @classmethod
    def from_payload(cls, payload: str, where: str = "the run-members entry") -> RunMembers:
        """Parse an entry's canonical payload; :class:`QuorumError` says what is wrong."""
        try:
            doc = json.loads(payload)
        except ValueError:
            raise QuorumError(f"{where} is not JSON") from None
        if not isinstance(doc, dict) or doc.get("kind") != RUN_MEMBERS:
            raise QuorumError(f"{where} is not a {RUN_MEMBERS} entry")
        run_id, rule, listed = doc.get("run_id"), doc.get("quorum"), doc.get("members")
        if not isinstance(run_id, int) or isinstance(run_id, bool):
            raise QuorumError(f"{where} names no run")
        if not (rule == "majority" or (isinstance(rule, int) and not isinstance(rule, bool))):
            raise QuorumError(f"{where} states quorum {rule!r}, neither 'majority' nor a number")
        if not isinstance(listed, list):
            raise QuorumError(f"{where} lists no members")
        members: dict[str, str] = {}
        for item in listed:
            name = item.get("institution") if isinstance(item, dict) else None
            key = item.get("public_key") if isinstance(item, dict) else None
            if not isinstance(name, str) or not isinstance(key, str) or name in members:
                raise QuorumError(f"{where} lists a member without a name and key, or twice")
            try:
                decode_ed25519_public(key)
            except KeyFileError as err:
                raise QuorumError(f"{where}: {name}'s key is not an Ed25519 key ({err})") from None
            members[name] = key
        return cls(run_id, members, rule)
