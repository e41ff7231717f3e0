"""A node's cache of its texts' frozen-encoder outputs, kept in its state folder.

Computed once per (base model hash, dataset hash, max length, frozen depth
``k``) by :func:`common.bert_top.frozen_outputs`, then every round trains
only the model's top from it. The cache is this node's own derived data:
it lives beside the accountant history in the state folder and is never
sent anywhere. When the node's dataset changes, the caches of the data it
no longer holds are removed the next time a cache is written; removing the
state folder removes them all.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from common.atomic import write_atomic_with
from common.bert import EncodedText, TextClassifier
from common.bert_top import FrozenOutputs, frozen_outputs

__all__ = ["CACHE_DIR", "cached_frozen_outputs"]

log = logging.getLogger(__name__)

CACHE_DIR = "encoder-cache"


def cached_frozen_outputs(
    state_dir: Path,
    model: TextClassifier,
    encoded: EncodedText,
    *,
    k: int,
    base_sha256: str,
    dataset_sha256: str,
    max_length: int,
) -> FrozenOutputs:
    """Layer ``k``'s outputs for this node's texts: read from its cache, or computed and kept."""
    key = hashlib.sha256(f"{base_sha256}:{dataset_sha256}:{max_length}:{k}".encode()).hexdigest()
    folder = state_dir / CACHE_DIR
    path = folder / f"{dataset_sha256}-{key[:32]}.npz"
    if path.is_file():
        try:
            cached = _read(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            log.warning("recomputing the encoder cache %s: it cannot be read (%s)", path, err)
        else:
            if len(cached) == len(encoded) and np.array_equal(cached.labels, encoded.labels):
                return cached
            log.warning("recomputing the encoder cache %s: it does not match the data", path)
    started = time.perf_counter()
    outputs = frozen_outputs(model, encoded, k)
    write_atomic_with(path, lambda handle: _write(handle, outputs))
    for other in folder.glob("*.npz"):
        if not other.name.startswith(f"{dataset_sha256}-"):  # data this node no longer has
            other.unlink(missing_ok=True)
    log.info("encoder cache for %d texts (layer %d) written in %.1f s",
             len(encoded), k, time.perf_counter() - started)  # fmt: skip
    return outputs


def _write(handle: BinaryIO, outputs: FrozenOutputs) -> None:
    np.savez(
        handle,
        hidden=outputs.hidden,
        attention_mask=outputs.attention_mask,
        labels=outputs.labels,
    )


def _read(path: Path) -> FrozenOutputs:
    with np.load(path, allow_pickle=False) as doc:
        outputs = FrozenOutputs(
            np.asarray(doc["hidden"], dtype=np.float32),
            np.asarray(doc["attention_mask"], dtype=np.int64),
            np.asarray(doc["labels"], dtype=np.int64),
        )
    if outputs.hidden.ndim != 3 or outputs.attention_mask.shape != outputs.hidden.shape[:2]:
        raise ValueError(f"shapes {outputs.hidden.shape} and {outputs.attention_mask.shape}")
    return outputs
