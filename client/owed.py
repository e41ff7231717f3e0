"""Charges this node paid for that the ledger may not hold: its sealed updates nobody receipted.

A node keeps each update it seals (``receipts/sent/run-R-round-NNNN.envelope.json``)
until the ledger covers it: a receipt for it, or the server's word that the
charge its signed header states is recorded (:data:`~common.protocol.CHARGES_RECORDED`).
Every training reply hands the server those still owed, oldest first, at most
:data:`OWED_MAX` (:data:`~common.protocol.OWED_CHARGES`; never the update just
sealed): when a server died before recording a round's charges, or a round's
replies never reached it, it records each charge from the header this node
signed, so the ledger never holds less privacy spent than the node spent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ConfigRecord

from common.atomic import write_atomic
from common.envelope import Envelope, EnvelopeError, UpdateHeader
from common.protocol import strings_in

__all__ = ["OWED_MAX", "acknowledged_of", "forget", "keep_sealed", "owed", "owed_record"]

OWED_MAX = 4
"""Sealed updates one reply reports at most (each is a whole update, ciphertext included)."""

_KEPT = re.compile(r"^run-(?P<run>.+)-round-(?P<round>\d{4,})\.envelope\.json$")


def _kept_path(sent: Path, envelope: Envelope) -> Path:
    header = UpdateHeader.parse(envelope.header)
    return sent / f"run-{header.run_id}-round-{header.round:04d}.envelope.json"


def keep_sealed(receipts: Path, envelope: Envelope) -> Path:
    """Keep ``envelope`` (in the receipts folder ``receipts``) until the ledger covers it."""
    return write_atomic(_kept_path(receipts / "sent", envelope), envelope.to_json())


def owed(receipts: Path, besides: Envelope | None = None) -> list[Envelope]:
    """The kept updates no receipt covers yet, oldest first (at most :data:`OWED_MAX`).

    A kept update whose receipt arrived is forgotten here; one that cannot be
    read is left where it is (it is evidence) and not reported.
    """
    found: list[tuple[int, str, Envelope]] = []
    for path in sorted((receipts / "sent").glob("run-*-round-*.envelope.json")):
        match = _KEPT.match(path.name)
        if match is None:
            continue
        if (receipts / f"run-{match['run']}-round-{match['round']}.json").exists():
            path.unlink(missing_ok=True)  # receipted: the ledger holds it
            continue
        try:
            envelope = Envelope.from_json(path.read_text(encoding="utf-8"))
        except (OSError, EnvelopeError):
            continue
        if besides is not None and envelope.ciphertext_sha256() == besides.ciphertext_sha256():
            continue
        found.append((path.stat().st_mtime_ns, path.name, envelope))
    return [envelope for _, _, envelope in sorted(found, key=lambda f: (f[0], f[1]))][:OWED_MAX]


def forget(receipts: Path, ciphertexts: Iterable[str]) -> int:
    """Forget the kept updates whose charges the server says the ledger holds; how many."""
    wanted, gone = set(ciphertexts), 0
    for path in (receipts / "sent").glob("run-*-round-*.envelope.json"):
        try:
            envelope = Envelope.from_json(path.read_text(encoding="utf-8"))
        except (OSError, EnvelopeError):
            continue
        if envelope.ciphertext_sha256() in wanted:
            path.unlink(missing_ok=True)
            gone += 1
    return gone


def owed_record(envelopes: list[Envelope]) -> ConfigRecord:
    """The reply's record of owed updates."""
    return ConfigRecord({"envelopes": [e.to_json() for e in envelopes]})


def acknowledged_of(record: ConfigRecord | None) -> list[str]:
    """The ciphertext hashes a server's message acknowledges (none if it carries none)."""
    return strings_in(record, "ciphertexts")
