"""The demo's data: the embedded sets, held-out splits and partitions among institutions.

Real federations bring their own data; these helpers only make the
embedded demo (and the benchmarks) split one public data set the way a
consortium's members might hold it: IID, or label-skewed (Dirichlet).
"""

from __future__ import annotations

from typing import Protocol, Self, TypeVar

import numpy as np
from numpy.typing import NDArray

from common.errors import UserError
from common.images import ImageData

__all__ = [
    "PartitionError",
    "load_digits_data",
    "partition_dirichlet",
    "partition_iid",
    "split_holdout",
]


class PartitionError(UserError, ValueError):
    """The data cannot be split among that many institutions; the message names the limit."""


def load_digits_data() -> ImageData:
    """Scikit-learn's 1,797 real 8x8 hand-written digits (shipped with the package)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    return ImageData(images, bunch.target.astype(np.int64), "sklearn.datasets.load_digits")


class _Labelled(Protocol):
    @property
    def labels(self) -> NDArray[np.int64]: ...

    def __len__(self) -> int: ...

    def subset(self, index: NDArray[np.int64]) -> Self: ...


LabelledT = TypeVar("LabelledT", bound=_Labelled)


def split_holdout(
    data: LabelledT, validation_fraction: float, test_fraction: float, seed: int
) -> tuple[LabelledT, LabelledT, LabelledT]:
    """Stratified split into (train, validation, test) of images or texts."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(data))
    rest, test = train_test_split(
        index, test_size=test_fraction, stratify=data.labels, random_state=seed
    )
    train, val = train_test_split(
        rest,
        test_size=validation_fraction / (1.0 - test_fraction),
        stratify=data.labels[rest],
        random_state=seed + 1,
    )
    return data.subset(train), data.subset(val), data.subset(test)


def partition_iid(num_examples: int, num_partitions: int, seed: int) -> list[NDArray[np.int64]]:
    """Shuffle and cut into ``num_partitions`` parts whose sizes differ by at most one.

    Raises
    ------
    PartitionError
        Fewer examples than parts: each part needs one at least.
    """
    if num_partitions < 1 or num_examples < num_partitions:
        raise PartitionError(
            f"cannot split {num_examples} training examples among {num_partitions} "
            f"institutions: an IID split gives each one example at least, so at most "
            f"{num_examples} institutions"
        )
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def partition_dirichlet(
    labels: NDArray[np.int64],
    num_partitions: int,
    alpha: float,
    seed: int,
    min_size: int = 10,
) -> list[NDArray[np.int64]]:
    """Label-skewed split: each class is divided by proportions drawn from Dir(alpha).

    Draws are repeated (with the same generator, so the result stays a function
    of ``seed``) until every partition has at least ``min_size`` examples.

    Raises
    ------
    PartitionError
        No draw gave every part ``min_size`` examples; the message names the
        most parts this ``alpha`` and ``seed`` split the labels into.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    parts = _dirichlet_draws(labels, num_partitions, alpha, seed, min_size)
    if parts is not None:
        return parts
    most = _most_dirichlet_parts(labels, alpha, seed, min_size, below=num_partitions)
    raise PartitionError(
        f"cannot split {len(labels)} training examples among {num_partitions} institutions "
        f"with {min_size} examples each: a non-IID split (Dirichlet alpha={alpha:g}, seed "
        f"{seed}) gives them to at most {most} institutions; use fewer, a larger alpha, or an "
        "IID split"
    )


def _dirichlet_draws(
    labels: NDArray[np.int64], num_partitions: int, alpha: float, seed: int, min_size: int
) -> list[NDArray[np.int64]] | None:
    """The first of up to 1,000 draws that gives every part ``min_size`` examples, if any."""
    if num_partitions < 1 or len(labels) < num_partitions * min_size:
        return None
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    return None


def _most_dirichlet_parts(
    labels: NDArray[np.int64], alpha: float, seed: int, min_size: int, below: int
) -> int:
    """The most parts (fewer than ``below``) a draw succeeds for, by bisection; 0 if none."""
    low, high = 0, min(below, len(labels) // min_size + 1)  # low draws, high does not
    while high - low > 1:
        middle = (low + high) // 2
        if _dirichlet_draws(labels, middle, alpha, seed, min_size) is None:
            high = middle
        else:
            low = middle
    return low
