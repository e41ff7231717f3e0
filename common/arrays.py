"""Model weights as named NumPy arrays: their canonical bytes, hash and Flower record.

Light on purpose (NumPy and safetensors, no torch): the server's intake,
releases and auditors hash weights without loading a model.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from numpy.typing import NDArray
from safetensors.numpy import save as save_safetensors

__all__ = ["Arrays", "arrays_of", "arrays_sha256", "arrays_to_bytes", "record_of"]

Arrays = dict[str, NDArray[Any]]
"""Named arrays (any dtype): a model's weights or an update."""


def record_of(arrays: Arrays) -> ArrayRecord:
    """Wrap named arrays in an ``ArrayRecord`` (order preserved)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def arrays_of(record: ArrayRecord) -> Arrays:
    """An ``ArrayRecord`` as ``{name: ndarray}``."""
    return {name: array.numpy() for name, array in record.items()}


def arrays_to_bytes(arrays: Arrays) -> bytes:
    """Canonical safetensors serialisation (no pickle)."""
    return save_safetensors({k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())})


def arrays_sha256(arrays: Arrays) -> str:
    """SHA-256 of :func:`arrays_to_bytes`: the identity of a model or an update."""
    return hashlib.sha256(arrays_to_bytes(arrays)).hexdigest()
