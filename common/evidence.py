"""What a node saw the operator sign, kept so that several nodes can compare it.

A node appends to ``STATE/receipts/checkpoints.jsonl`` (one JSON object per
line, append-only: a line is never rewritten) every checkpoint it was shown
with a receipt (``shown``) and every checkpoint it cosigned, with its own
``cosignature/v1`` line (``cosigned``). The operator keeps the nodes'
cosignatures too, but a node that keeps only its receipts holds no copy of
what it vouched for; with this log it does, and so does its refusals folder
(``refused/``: each refused receipt with the head the node held).

:func:`signed_heads` reads everything signed that a node's folder holds: its
receipts, its refusals' evidence and this log. :func:`compare` puts several
nodes' folders side by side: two checkpoints the operator signed for the same
tree size with different roots, or two receipts whose inclusion proofs place
different entries at the same position, cannot both be true (the operator
showed different nodes different ledgers: equivocation). Each signed note is
kept verbatim, so the pair opens with any C2SP tool (Go's ``note.Open``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.errors import UserError
from common.receipts import Receipt, ReceiptError, TreeHead, TreeHeadError
from common.sent import unreceipted
from common.witness import Cosigned

__all__ = [
    "EVIDENCE_FILE",
    "EXIT_EQUIVOCATION",
    "Comparison",
    "Equivocation",
    "EvidenceError",
    "Seen",
    "append_json_lines",
    "compare",
    "read_json_lines",
    "record_checkpoints",
    "signed_heads",
]

EVIDENCE_FILE = "checkpoints.jsonl"
"""The node's append-only log of checkpoints shown and cosigned, in its receipts folder."""
EXIT_EQUIVOCATION = 3
"""``audit compare``'s exit code when the operator signed two ledgers."""


class EvidenceError(UserError, ValueError):
    """A folder that holds no node's receipts, or evidence that cannot be read."""


def record_checkpoints(
    receipts: Path, shown: Iterable[TreeHead], cosigned: Iterable[tuple[TreeHead, Cosigned]]
) -> int:
    """Append each checkpoint not yet logged to ``receipts/checkpoints.jsonl``; return how many.

    A line is appended (and flushed to disk) per new ``(kind, note, cosignature)``;
    what is already there is never rewritten, so the log only grows.
    """
    path = receipts / EVIDENCE_FILE
    held = {_key(doc) for doc in read_json_lines(path)}
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines: list[dict[str, Any]] = []
    items: list[tuple[str, TreeHead, str | None]] = [("shown", head, None) for head in shown]
    items += [("cosigned", head, c.line) for head, c in cosigned]
    for kind, head, line in items:
        if head.checkpoint is None:
            continue  # a JSON head from before checkpoints: nothing to open or cosign
        doc = {"kind": kind, "at": at, "tree_head": asdict(head), "cosignature": line}
        if _key(doc) not in held:
            held.add(_key(doc))
            lines.append(doc)
    append_json_lines(path, lines)
    return len(lines)


def append_json_lines(path: Path, docs: list[dict[str, Any]]) -> None:
    """Append one JSON object per line to ``path``, flushed to disk; nothing is rewritten."""
    if not docs:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as log:
        log.write("".join(json.dumps(doc, sort_keys=True) + "\n" for doc in docs))
        log.flush()
        os.fsync(log.fileno())


def _key(doc: dict[str, Any]) -> tuple[Any, ...]:
    head = doc.get("tree_head") or {}
    return (doc.get("kind"), head.get("checkpoint"), doc.get("cosignature"))


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of an append-only log, one per line (none if it does not exist).

    Raises
    ------
    EvidenceError
        The file cannot be read, or a line is not a JSON object (the log was edited).
    """
    if not path.exists():
        return []
    docs = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise EvidenceError(f"cannot read {path}: {err}") from None
    for number, line in enumerate(text.splitlines(), 1):
        try:
            doc = json.loads(line)
        except ValueError:
            raise EvidenceError(f"{path}, line {number}: not a JSON object") from None
        if not isinstance(doc, dict):
            raise EvidenceError(f"{path}, line {number}: not a JSON object")
        docs.append(doc)
    return docs


@dataclass(frozen=True)
class Seen:
    """A head the operator signed, where a node keeps it, and who cosigned it there."""

    head: TreeHead
    source: str
    """The file that holds it (a receipt, a refusal, or the node's log with its line number)."""
    cosigners: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    """Cosignature lines kept beside the note (a node's own), not yet in its text."""

    def signed_note(self) -> str:
        """The checkpoint with every cosignature line known for it: a C2SP cosigned note."""
        text = str(self.head.checkpoint)
        return text + "".join(line for line in self.lines if line not in text)


def _receipt_folder(folder: Path) -> Path:
    """A node's receipts folder, given it or the node's state folder."""
    if (folder / "receipts").is_dir() and not (folder / EVIDENCE_FILE).exists():
        return folder / "receipts"
    return folder


def signed_heads(folder: Path) -> tuple[list[Seen], list[tuple[str, Receipt]]]:
    """Every signed head a node's folder holds, and its receipts (kept or refused).

    ``folder`` is a node's state folder or its receipts folder. Heads come
    from the kept receipts, from each refusal (the refused receipt's head and
    the head the node held then) and from the node's checkpoint log.

    Raises
    ------
    EvidenceError
        ``folder`` is missing, or a file in it cannot be read as what it should be.
    """
    root = _receipt_folder(folder)
    if not root.is_dir():
        raise EvidenceError(f"no node folder at {folder}")
    seen: list[Seen] = []
    receipts: list[tuple[str, Receipt]] = []
    for path in sorted(root.glob("run-*.json")):
        receipt = _read_receipt(path.read_text(encoding="utf-8"), str(path))
        receipts.append((str(path), receipt))
        seen.append(Seen(receipt.tree_head, str(path), _names(receipt.tree_head)))
    for path in sorted((root / "refused").glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            refused = Receipt.from_json(json.dumps(doc["receipt"]), f"{path}: the refused receipt")
        except (OSError, ValueError, KeyError, TypeError, ReceiptError) as err:
            raise EvidenceError(f"{path} is no refusal this node recorded: {err}") from None
        receipts.append((f"{path} (refused: {doc.get('kind')})", refused))
        seen.append(Seen(refused.tree_head, f"{path} (refused)", _names(refused.tree_head)))
        if doc.get("held_head") is not None:
            held = _read_head(doc["held_head"], f"{path}: the head held")
            seen.append(Seen(held, f"{path} (the head held then)", _names(held)))
    log = root / EVIDENCE_FILE
    if log.exists():
        for number, doc in enumerate(read_json_lines(log), 1):
            head = _read_head(doc.get("tree_head"), f"{log}, line {number}")
            names = _names(head)
            lines: tuple[str, ...] = ()
            if doc.get("kind") == "cosigned" and isinstance(doc.get("cosignature"), str):
                lines = (doc["cosignature"],)
                names = tuple(sorted({*names, _signer(doc["cosignature"])}))
            seen.append(Seen(head, f"{log}, line {number} ({doc.get('kind')})", names, lines))
    if not seen:
        raise EvidenceError(f"{folder} holds no receipts, refusals or checkpoint log")
    return seen, receipts


def _read_receipt(text: str, source: str) -> Receipt:
    try:
        return Receipt.from_json(text, source)
    except ReceiptError as err:
        raise EvidenceError(str(err)) from None


def _read_head(doc: Any, what: str) -> TreeHead:
    try:
        return TreeHead.from_dict(doc, what)
    except TreeHeadError as err:
        raise EvidenceError(str(err)) from None


def _names(head: TreeHead) -> tuple[str, ...]:
    return tuple(sorted(line.name for line in head.witnesses()))


def _signer(line: str) -> str:
    """The key name a signature line (``— name base64``) is signed under."""
    parts = line.strip().split(" ")
    return parts[1] if len(parts) == 3 else "?"


@dataclass(frozen=True)
class Equivocation:
    """Two operator-signed statements that cannot both be true."""

    tree_size: int
    first: Seen
    second: Seen
    seq: int | None = None
    """For two receipts placing different entries at one position: that position."""

    def describe(self) -> list[str]:
        """What a person reads: the claim, then each signed note with its cosigners."""
        if self.seq is None:
            claim = (
                f"the operator signed two checkpoints of size {self.tree_size} with different "
                f"roots ({self.first.head.root[:16]}... and {self.second.head.root[:16]}...)"
            )
        else:
            claim = (
                f"the operator signed two ledgers that hold different entries at position "
                f"{self.seq} (checkpoints of size {self.first.head.tree_size} and "
                f"{self.second.head.tree_size})"
            )
        lines = [claim]
        for seen in (self.first, self.second):
            cosigners = ", ".join(seen.cosigners) or "nobody"
            lines += [f"  in {seen.source}, cosigned by {cosigners}:"]
            lines += [f"    {text}" for text in seen.signed_note().rstrip("\n").split("\n")]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "seq": self.seq,
            "checkpoints": [
                {
                    "source": seen.source,
                    "root": seen.head.root,
                    "cosigners": list(seen.cosigners),
                    "note": seen.signed_note(),
                }
                for seen in (self.first, self.second)
            ],
        }


@dataclass
class Comparison:
    """What several nodes' folders show, put side by side."""

    folders: list[str]
    heads: int = 0
    """Operator-signed checkpoints read (the same one held twice counts twice)."""
    unsigned: list[str] = field(default_factory=list)
    """Heads that do not verify with the operator's key: no evidence against it."""
    equivocations: list[Equivocation] = field(default_factory=list)
    unreceipted: list[str] = field(default_factory=list)
    """Per folder, each update the node sent and holds no receipt for (withheld, or
    refused): not equivocation, but what the node should ask the operator about."""


def compare(
    folders: Sequence[Path], operator: Ed25519PublicKey, origin: str | None = None
) -> Comparison:
    """Read each node's folder and name every equivocation among what the operator signed.

    Only heads that verify with ``operator`` (and name ``origin``, if given)
    count: anything else proves nothing against the operator and is listed
    in :attr:`Comparison.unsigned`. One equivocation is reported per tree
    size (the first pair of different roots) and per disagreeing position.
    """
    result = Comparison([str(f) for f in folders])
    by_size: dict[int, dict[str, Seen]] = {}
    entries: dict[int, tuple[str, Seen]] = {}
    reported: set[int] = set()
    for folder in folders:
        seen, receipts = signed_heads(folder)
        result.unreceipted += [
            f"{folder}: {item.describe()}" for item in unreceipted(_receipt_folder(folder))
        ]
        for item in seen:
            try:
                item.head.verify(operator, origin)
            except TreeHeadError as err:
                result.unsigned.append(f"{item.source}: {err}")
                continue
            result.heads += 1
            roots = by_size.setdefault(item.head.tree_size, {})
            held = roots.get(item.head.root)
            if held is None:
                roots[item.head.root] = item
            else:  # the same checkpoint held elsewhere: gather its cosigners
                names = tuple(sorted({*held.cosigners, *item.cosigners}))
                lines = held.lines + tuple(x for x in item.lines if x not in held.lines)
                roots[item.head.root] = Seen(held.head, held.source, names, lines)
        for source, receipt in receipts:
            try:
                receipt.verify(operator, origin)
            except ReceiptError:
                continue  # its proofs do not hold: it places nothing anywhere
            here = Seen(receipt.tree_head, source, _names(receipt.tree_head))
            first = entries.setdefault(receipt.seq, (receipt.payload, here))
            if first[0] != receipt.payload and receipt.seq not in reported:
                reported.add(receipt.seq)
                result.equivocations.append(
                    Equivocation(receipt.tree_head.tree_size, first[1], here, receipt.seq)
                )
    for size in sorted(by_size):
        differing = list(by_size[size].values())
        if len(differing) > 1:
            result.equivocations.append(Equivocation(size, differing[0], differing[1]))
    return result
