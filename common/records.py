"""Model weights <-> Flower ``ArrayRecord`` (named NumPy arrays, no pickle)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord
from numpy.typing import NDArray

__all__ = ["Arrays", "arrays_of", "record_of"]

Arrays = dict[str, NDArray[np.generic]]


def record_of(arrays: Arrays) -> ArrayRecord:
    """Wrap named arrays in an ``ArrayRecord`` (order preserved)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def arrays_of(record: ArrayRecord) -> Arrays:
    """An ``ArrayRecord`` as ``{name: ndarray}``."""
    return {name: array.numpy() for name, array in record.items()}
