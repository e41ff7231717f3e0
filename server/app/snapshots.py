"""Per-round snapshots of the global model, and the sealed updates each round accepted.

A *snapshot* is the global model after a round: ``round-NNNN.safetensors``
with the round number and the model's sha256 in its metadata. Beside it,
``round-NNNN-updates/NAME.json`` keeps each accepted sealed update as
evidence (ciphertext: only the aggregator key opens it). They are kept as
soon as the round's replies are accepted, before anything is aggregated or
recorded, with ``round-NNNN-replies.json`` (each reply's node and its
unsigned metrics): a ServerApp that dies before the round is recorded leaves
what a resumed run needs to recover the round without asking the members to
train (and spend privacy budget) again (:func:`kept_replies`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from common.arrays import Arrays, arrays_sha256
from common.atomic import write_atomic
from common.envelope import Envelope, EnvelopeError
from common.errors import UserError

__all__ = [
    "KeptReply",
    "SnapshotError",
    "checked_snapshot",
    "keep_replies",
    "kept_replies",
    "latest_snapshot",
    "load_server_state",
    "load_snapshot",
    "save_envelopes",
    "save_server_state",
    "save_snapshot",
    "server_state_path",
    "snapshot_path",
]


def snapshot_path(directory: Path, server_round: int) -> Path:
    """Where round ``server_round``'s snapshot lives in ``directory``."""
    return directory / f"round-{server_round:04d}.safetensors"


def save_snapshot(directory: Path, server_round: int, arrays: Arrays, model_sha256: str) -> Path:
    """Write the round's snapshot atomically and return its path."""
    data = save(
        {k: np.ascontiguousarray(v) for k, v in arrays.items()},
        metadata={"round": str(server_round), "model_sha256": model_sha256},
    )
    return write_atomic(snapshot_path(directory, server_round), data)


def server_state_path(directory: Path, server_round: int) -> Path:
    """Where the aggregator's state after round ``server_round`` lives (FedAvgM's momentum)."""
    return directory / f"round-{server_round:04d}-server.safetensors"


def save_server_state(directory: Path, server_round: int, state: Arrays) -> Path:
    """Keep the aggregator's state after a round, to resume from it."""
    data = save(
        {k: np.ascontiguousarray(v) for k, v in state.items()},
        metadata={"round": str(server_round)},
    )
    return write_atomic(server_state_path(directory, server_round), data)


def load_server_state(directory: Path, server_round: int) -> Arrays:
    """The aggregator's state after ``server_round``; empty if none was kept."""
    path = server_state_path(directory, server_round)
    if not path.is_file():
        return {}
    return load_snapshot(path)[1]


def save_envelopes(directory: Path, server_round: int, envelopes: Mapping[str, Envelope]) -> Path:
    """Keep a round's accepted sealed updates as evidence: ``round-NNNN-updates/NAME.json``.

    They are ciphertext (only the aggregator key opens them); with them an
    auditor can re-check each update's signature against the ledger's hashes.
    """
    folder = _updates_folder(directory, server_round)
    folder.mkdir(parents=True, exist_ok=True)
    for participant, envelope in envelopes.items():
        write_atomic(folder / f"{participant}.json", envelope.to_json())
    return folder


@dataclass(frozen=True)
class KeptReply:
    """An accepted reply as the ServerApp keeps it until its round is recorded."""

    envelope: Envelope
    """The sealed, signed update (ciphertext; it binds run, round, model and charge)."""
    node_id: int
    """The node that sent it (as the SuperLink numbered it then)."""
    metrics: dict[str, float]
    """The reply's unsigned metrics (training loss and seconds)."""


def _updates_folder(directory: Path, server_round: int) -> Path:
    return directory / f"round-{server_round:04d}-updates"


def _replies_path(directory: Path, server_round: int) -> Path:
    return directory / f"round-{server_round:04d}-replies.json"


def keep_replies(directory: Path, server_round: int, replies: Mapping[str, KeptReply]) -> None:
    """Keep a round's accepted replies (each written atomically) before anything else."""
    save_envelopes(directory, server_round, {n: r.envelope for n, r in replies.items()})
    doc = {n: {"node_id": r.node_id, "metrics": r.metrics} for n, r in sorted(replies.items())}
    write_atomic(_replies_path(directory, server_round), json.dumps(doc, sort_keys=True).encode())


def kept_replies(directory: Path, server_round: int) -> dict[str, KeptReply]:
    """The replies kept for ``server_round`` (empty if none were); each is checked again
    (signature, binding, tensors) when its round is recovered.

    Raises
    ------
    SnapshotError
        A kept file is unreadable or the two files disagree.
    """
    path = _replies_path(directory, server_round)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        kept = {}
        for name, reply in doc.items():
            envelope_file = _updates_folder(directory, server_round) / f"{name}.json"
            kept[name] = KeptReply(
                Envelope.from_json(envelope_file.read_text()),
                int(reply["node_id"]),
                {str(k): float(v) for k, v in reply["metrics"].items()},
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EnvelopeError) as err:
        raise SnapshotError(
            f"the replies kept for round {server_round} are unreadable: {err}"
        ) from None
    return kept


def load_snapshot(path: Path) -> tuple[int, Arrays]:
    """Read a snapshot (or a released model) back as (round, arrays)."""
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if "round" not in metadata:
            raise ValueError(f"{path}: not a FedCommons model snapshot (no round metadata)")
        arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return int(metadata["round"]), arrays


class SnapshotError(UserError, ValueError):
    """A round's snapshot is missing, unreadable, or not the model the ledger records."""

    def __init__(self, message: str, *, mismatch: bool = False) -> None:
        super().__init__(message)
        self.mismatch = mismatch


def checked_snapshot(directory: Path, server_round: int, model_sha256: str) -> Arrays:
    """Round ``server_round``'s snapshot, refused unless it holds the model ``model_sha256``.

    Raises
    ------
    SnapshotError
        The file is missing or unreadable, or holds another round or model
        (``mismatch``).
    """
    path = snapshot_path(directory, server_round)
    if not path.is_file():
        raise SnapshotError(f"the snapshot of round {server_round} is missing: no {path}")
    try:
        number, arrays = load_snapshot(path)
    except Exception as err:
        raise SnapshotError(f"cannot read the snapshot {path}: {err}") from None
    found = arrays_sha256(arrays)
    if number != server_round or found != model_sha256:
        raise SnapshotError(
            f"{path} holds model {found} (round {number}); the ledger records "
            f"{model_sha256} for round {server_round}",
            mismatch=True,
        )
    return arrays


def latest_snapshot(directory: Path) -> Path | None:
    """The snapshot of the highest round in ``directory``, if any."""
    candidates = sorted(
        p for p in directory.glob("round-*.safetensors") if not p.stem.endswith("-server")
    )
    return candidates[-1] if candidates else None
