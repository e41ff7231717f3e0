"""What a node sent: one record per sealed update, kept in its receipts folder.

When a node seals an update it writes ``receipts/sent/run-R-round-NNNN.json``:
the ciphertext's SHA-256 and the signature the ledger entry must record, and
what its signed header states (the example count and the privacy charge its
own accountant computed: ε, δ, noise, q, steps, the manifest hash). A
receipt is checked against that record (:mod:`client.own_entries`), and the
record stays after the receipt arrives, so the folder always says every
update the node sent.

:func:`unreceipted` lists the updates sent for which the folder holds no
kept receipt: the operator withheld it, never recorded the update, refused
it (the ledger then records an exclusion), or the run has not delivered it
yet (the last round's receipts come with the closing query). It reads files
only, so ``fedcommons client check`` and an auditor's ``audit compare`` both
call it on a node's folder. Records written before the header was kept hold
the hash and signature only; their run and round come from the file name.

Example (``sent/run-7-round-0003.json``)::

    {"ciphertext_sha256": "9f86…", "num_examples": 120, "participant": "uni-a",
     "privacy": {"dataset_sha256": "…", "epsilon": 2.5, "noise_multiplier": 1.1,
                 "sample_rate": 0.0625, "steps": 32, …},
     "round": 3, "run_id": "7", "sent_at": "2026-12-07T19:30:00Z", "signature": "…"}
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.envelope import Envelope, UpdateHeader

__all__ = ["SENT_FOLDER", "SentUpdate", "Unreceipted", "read_sent", "unreceipted"]

SENT_FOLDER = "sent"
"""The subfolder of a node's receipts folder that records what it sent."""

_NAME = re.compile(r"^run-(?P<run>.+)-round-(?P<round>\d{4,})\.json$")


@dataclass(frozen=True)
class SentUpdate:
    """One update a node sealed and sent, as its ``sent/`` record states it.

    ``num_examples`` and ``privacy`` (the header's charge, an infinite ε written
    ``"inf"``) are ``None`` in records older than this field.
    """

    run_id: str
    round: int
    participant: str
    ciphertext_sha256: str
    signature: str
    num_examples: int | None = None
    privacy: dict[str, Any] | None = None
    sent_at: str | None = None

    @property
    def file_name(self) -> str:
        return f"run-{self.run_id}-round-{self.round:04d}.json"

    @classmethod
    def of(cls, envelope: Envelope) -> SentUpdate:
        """The record of ``envelope``, sealed and about to be sent."""
        header = UpdateHeader.parse(envelope.header)
        privacy = {
            key: "inf" if isinstance(value, float) and math.isinf(value) else value
            for key, value in header.privacy.as_dict().items()
        }
        return cls(
            run_id=header.run_id,
            round=header.round,
            participant=header.participant,
            ciphertext_sha256=envelope.ciphertext_sha256(),
            signature=base64.b64encode(envelope.signature).decode(),
            num_examples=header.num_examples,
            privacy=privacy,
            sent_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> SentUpdate:
        """Read a ``sent/`` record; ``ValueError`` (or ``OSError``) says what is wrong."""
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path} is not named run-R-round-NNNN.json")
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), str) for k in ("participant", "ciphertext_sha256", "signature")
        ):
            raise ValueError(f"{path} is not a record of a sent update")
        examples, privacy = doc.get("num_examples"), doc.get("privacy")
        return cls(
            run_id=match["run"],
            round=int(match["round"]),
            participant=doc["participant"],
            ciphertext_sha256=doc["ciphertext_sha256"],
            signature=doc["signature"],
            num_examples=examples if isinstance(examples, int) else None,
            privacy=privacy if isinstance(privacy, dict) else None,
            sent_at=doc.get("sent_at") if isinstance(doc.get("sent_at"), str) else None,
        )


def read_sent(receipts: Path) -> list[SentUpdate]:
    """Every update the node with receipts folder ``receipts`` recorded sending, in order.

    Records that cannot be read are skipped (they are kept as they are).
    """
    found = []
    for path in sorted((receipts / SENT_FOLDER).glob("run-*-round-*.json")):
        try:
            found.append(SentUpdate.read(path))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda s: (s.run_id, s.round))


@dataclass(frozen=True)
class Unreceipted:
    """An update sent without a kept receipt, and what the folder says of it.

    ``refused``: the kind of each refusal recorded for its round (``misstated``,
    ``fork``, …), empty if no receipt for it ever arrived.
    """

    sent: SentUpdate
    refused: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for people."""
        what = f"run {self.sent.run_id} round {self.sent.round}"
        if self.refused:
            return f"{what}: its receipt was refused ({', '.join(self.refused)})"
        return (
            f"{what}: no receipt (withheld, never recorded, or excluded; or, in the run's "
            "last round, not delivered yet)"
        )


def unreceipted(receipts: Path) -> list[Unreceipted]:
    """The updates the node with receipts folder ``receipts`` sent and holds no receipt for."""
    refusals: dict[tuple[str, int], list[str]] = {}
    for path in sorted((receipts / "refused").glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            receipt = doc["receipt"]
            key = (str(receipt["run_id"]), int(receipt["round"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        refusals.setdefault(key, []).append(str(doc.get("kind", "refused")))
    return [
        Unreceipted(sent, tuple(refusals.get((sent.run_id, sent.round), [])))
        for sent in read_sent(receipts)
        if not (receipts / sent.file_name).is_file()
    ]
