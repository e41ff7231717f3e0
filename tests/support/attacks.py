"""Authentic but hostile participants, for tests: what each attack turns an honest update into.

Never part of the shipped ClientApp. Each attack takes the round's global
model and the update the participant honestly trained, and returns the
weights and example count it signs and seals with its own, registered key:
the signature is genuine, the content is not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from common.arrays import Arrays
from common.images import ImageData

__all__ = ["ATTACKS", "COLLUSIONS", "TARGETED", "Attack", "Collusion", "flip_labels", "relabel"]

Attack = Callable[[Arrays, Arrays, int, np.random.Generator], tuple[Arrays, int]]
"""``(global, honest, examples, rng) -> (weights sent, examples claimed)``."""


def _delta(global_weights: Arrays, weights: Arrays) -> Arrays:
    return {k: weights[k] - global_weights[k] for k in weights}


def _apply(global_weights: Arrays, delta: Arrays) -> Arrays:
    return {k: (global_weights[k] + delta[k]).astype(global_weights[k].dtype) for k in delta}


def scaled(g: Arrays, honest: Arrays, n: int, rng: np.random.Generator) -> tuple[Arrays, int]:
    """Its update multiplied by 1000: boosting, to take the round over."""
    return _apply(g, {k: v * 1000 for k, v in _delta(g, honest).items()}), n


def sign_flipped(g: Arrays, honest: Arrays, n: int, rng: np.random.Generator) -> tuple[Arrays, int]:
    """Its update reversed: pushing the model away from where the data lead."""
    return _apply(g, {k: -v for k, v in _delta(g, honest).items()}), n


def inflated(g: Arrays, honest: Arrays, n: int, rng: np.random.Generator) -> tuple[Arrays, int]:
    """The genuine update, claiming 10^9 examples to weigh ~1 in the average."""
    return honest, 10**9


def noise(g: Arrays, honest: Arrays, n: int, rng: np.random.Generator) -> tuple[Arrays, int]:
    """Random weights: Gaussian noise 100 times the honest update's scale."""
    scale = 100 * max(
        float(np.linalg.norm(np.concatenate([v.ravel() for v in _delta(g, honest).values()]))), 1.0
    )
    return _apply(g, {k: rng.normal(0, scale, v.shape).astype(v.dtype) for k, v in g.items()}), n


def free_rider(g: Arrays, honest: Arrays, n: int, rng: np.random.Generator) -> tuple[Arrays, int]:
    """The global model sent back untrained: a share of the credit for no work."""
    return {k: v.copy() for k, v in g.items()}, n


ATTACKS: dict[str, Attack] = {
    "scaled-x1000": scaled,
    "sign-flipped": sign_flipped,
    "inflated-examples": inflated,
    "noise": noise,
    "free-rider": free_rider,
}
"""Update attacks by name. Label flipping is a data attack: it needs real training."""


def flip_labels(data: ImageData, num_classes: int) -> ImageData:
    """The data attack: every label ``y`` replaced by ``num_classes - 1 - y``.

    The participant then trains honestly, with DP, on what it holds: its update
    is authentic in every checkable way and points where the flipped labels lead.
    """
    if data.labels.size and (data.labels.min() < 0 or data.labels.max() >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    return ImageData(data.images, (num_classes - 1 - data.labels).astype(np.int64), data.source)


Collusion = Callable[[Arrays, list[Arrays], int, np.random.Generator], Arrays]
"""``(global, honest updates of the others, colluders, rng) -> the weights every colluder sends``.

Omniscient colluders: they see the honest members' updates of the round (the
strongest assumption; colluders who see only their own do less damage).
"""


def _flat(global_weights: Arrays, weights: Arrays) -> np.ndarray:
    return np.concatenate([(weights[k] - global_weights[k]).ravel() for k in global_weights])


def _unflat(global_weights: Arrays, vector: np.ndarray) -> Arrays:
    out, at = {}, 0
    for k, v in global_weights.items():
        out[k] = (v + vector[at : at + v.size].reshape(v.shape)).astype(v.dtype)
        at += v.size
    return out


def under_bound(g: Arrays, honest: list[Arrays], k: int, rng: np.random.Generator) -> Arrays:
    """Against the honest mean, with norm 0.99 x the honest median: just under an adaptive bound."""
    deltas = [_flat(g, h) for h in honest]
    mean = np.mean(deltas, axis=0)
    norm = 0.99 * float(np.median([np.linalg.norm(d) for d in deltas]))
    return _unflat(g, -mean / max(float(np.linalg.norm(mean)), 1e-12) * norm)


def little_is_enough(g: Arrays, honest: list[Arrays], k: int, rng: np.random.Generator) -> Arrays:
    """A Little Is Enough (Baruch et al. 2019): the honest mean minus one standard deviation."""
    deltas = np.stack([_flat(g, h) for h in honest])
    return _unflat(g, deltas.mean(axis=0) - deltas.std(axis=0))


COLLUSIONS: dict[str, Collusion] = {"under-bound": under_bound, "alie": little_is_enough}
"""Colluding update attacks by name: every colluder sends the same weights."""

TARGETED = "relabel-0-to-8"
"""The targeted data attack: the attacker trains honestly on its zeros relabelled as eights."""


def relabel(data: ImageData, source: int = 0, target: int = 8) -> ImageData:
    """The targeted data attack: every ``source`` label becomes ``target``, the rest are kept."""
    labels = data.labels.copy()
    labels[labels == source] = target
    return ImageData(data.images, labels.astype(np.int64), data.source)
