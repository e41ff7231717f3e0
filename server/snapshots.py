"""Per-round snapshots of the global model, and the sealed updates each round accepted.

A *snapshot* is the global model after a round: ``round-NNNN.safetensors``
with the round number and the model's sha256 in its metadata. Beside it,
``round-NNNN-updates/NAME.json`` keeps each accepted sealed update as
evidence (ciphertext: only the aggregator key opens it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from common.arrays import Arrays
from common.atomic import write_atomic
from common.envelope import Envelope

__all__ = ["latest_snapshot", "load_snapshot", "save_envelopes", "save_snapshot", "snapshot_path"]


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


def save_envelopes(directory: Path, server_round: int, envelopes: Mapping[str, Envelope]) -> Path:
    """Keep a round's accepted sealed updates as evidence: ``round-NNNN-updates/NAME.json``.

    They are ciphertext (only the aggregator key opens them); with them an
    auditor can re-check each update's signature against the ledger's hashes.
    """
    folder = directory / f"round-{server_round:04d}-updates"
    folder.mkdir(parents=True, exist_ok=True)
    for participant, envelope in envelopes.items():
        write_atomic(folder / f"{participant}.json", envelope.to_json())
    return folder


def load_snapshot(path: Path) -> tuple[int, Arrays]:
    """Read a snapshot (or a released model) back as (round, arrays)."""
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if "round" not in metadata:
            raise ValueError(f"{path}: not a FedCommons model snapshot (no round metadata)")
        arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return int(metadata["round"]), arrays


def latest_snapshot(directory: Path) -> Path | None:
    """The snapshot of the highest round in ``directory``, if any."""
    candidates = sorted(directory.glob("round-*.safetensors"))
    return candidates[-1] if candidates else None
