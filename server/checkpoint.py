"""Per-round global-model checkpoints: safetensors files with the round number."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from safetensors import safe_open
from safetensors.numpy import save_file

from common.envelope import Envelope

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint", "save_envelopes"]

Arrays = dict[str, NDArray[np.generic]]


def save_checkpoint(directory: Path, server_round: int, arrays: Arrays, model_sha256: str) -> Path:
    """Write ``round-NNNN.safetensors`` atomically and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"round-{server_round:04d}.safetensors"
    partial = path.with_suffix(".partial")
    save_file(
        {k: np.ascontiguousarray(v) for k, v in arrays.items()},
        str(partial),
        metadata={"round": str(server_round), "model_sha256": model_sha256},
    )
    os.replace(partial, path)
    return path


def save_envelopes(directory: Path, server_round: int, envelopes: Mapping[str, Envelope]) -> Path:
    """Keep a round's accepted sealed updates as evidence: ``round-NNNN-updates/NAME.json``.

    They are ciphertext (only the aggregator key opens them); with them an
    auditor can re-check each update's signature against the ledger's hashes.
    """
    folder = directory / f"round-{server_round:04d}-updates"
    folder.mkdir(parents=True, exist_ok=True)
    for participant, envelope in envelopes.items():
        path = folder / f"{participant}.json"
        partial = path.with_suffix(".partial")
        partial.write_text(envelope.to_json(), encoding="ascii")
        os.replace(partial, path)
    return folder


def load_checkpoint(path: Path) -> tuple[int, Arrays]:
    """Read a checkpoint back as (round, arrays)."""
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if "round" not in metadata:
            raise ValueError(f"{path}: not a FedCommons checkpoint (no round metadata)")
        arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return int(metadata["round"]), arrays


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint of the highest round in ``directory``, if any."""
    candidates = sorted(directory.glob("round-*.safetensors"))
    return candidates[-1] if candidates else None
