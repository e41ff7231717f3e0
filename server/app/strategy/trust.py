"""Trust bootstrapping: each update weighted by how far it points where the trusted data lead.

In the manner of FLTrust (Cao et al., NDSS 2021). Each round the server
trains the round's global model on a small set it trusts (the operator's
validation split) exactly as a member trains, without DP: the difference is
the round's *reference update* ``g0``. Every member's update ``g_i`` (as a
difference from the global model) is then

- weighted by the positive part of its cosine similarity to the reference,
  ``max(0, cos(g_i, g0))``: an update pointing away from the reference
  weighs nothing, whatever its norm or its example count;
- rescaled to the reference's norm, so no update, however long, and no
  number of identical updates can move the model further than the trusted
  data would.

The colluders cannot move the reference: it depends only on the global
model and the operator's data. What it cannot stop is an update that points
*with* the reference in most directions and against it in a few (a targeted
attack on one class): that is what :mod:`.evidence`'s per-class check looks
for.

:func:`trust_weigh` works on any of Flower's rules: FedAvg(M) averages
the rescaled updates weighted by trust (the num-examples weight each reply
carries is replaced by the trust weight); the coordinate-wise and Krum
rules receive the rescaled updates with positive trust and ignore weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from common.arrays import Arrays
from ledger import DefenceFact

__all__ = ["Reference", "TrustRound", "flat_delta", "trust_weigh"]

Reference = Callable[[Arrays, int], Arrays]
"""``(global weights, round) -> weights`` after training on the trusted set."""


def flat_delta(global_weights: Arrays, weights: Arrays) -> np.ndarray:
    """``weights - global_weights`` as one float64 vector (the update)."""
    return np.concatenate(
        [(np.asarray(weights[k], np.float64) - global_weights[k]).ravel() for k in global_weights]
    )


@dataclass(frozen=True)
class TrustRound:
    """What trust weighting made of a round's updates.

    Attributes
    ----------
    arrays : list of Arrays
        Each update rescaled to the reference's norm (as weights: global + update).
    weights : list of float
        Each update's trust weight, ``max(0, cosine)``; they sum to 1 unless all are 0.
    cosines : list of float
        Each update's cosine similarity to the reference.
    reference_norm : float
        The reference update's L2 norm.
    facts : list of DefenceFact
        One per update: its cosine, weight and rescaling.
    """

    arrays: list[Arrays]
    weights: list[float]
    cosines: list[float]
    reference_norm: float
    facts: list[DefenceFact]


def trust_weigh(
    global_weights: Arrays, updates: Sequence[tuple[str, Arrays]], reference: np.ndarray
) -> TrustRound:
    """Weigh and rescale ``updates`` (institution, weights) against the flat ``reference``."""
    n0 = float(np.linalg.norm(reference))
    cosines, scaled, norms = [], [], []
    for _, arrays in updates:
        delta = flat_delta(global_weights, arrays)
        norm = float(np.linalg.norm(delta))
        finite = bool(np.isfinite(norm)) and norm > 0 and n0 > 0
        norms.append(norm)
        cosines.append(float(delta @ reference) / (norm * n0) if finite else 0.0)
        scaled.append(_rescaled(global_weights, arrays, n0 / norm if finite else 0.0))
    raw = [max(0.0, c) for c in cosines]
    total = sum(raw)
    weights = [r / total if total > 0 else 0.0 for r in raw]
    facts = [
        _fact(name, norm, cosine, weight, n0)
        for (name, _), norm, cosine, weight in zip(updates, norms, cosines, weights, strict=True)
    ]
    return TrustRound(scaled, weights, cosines, n0, facts)


def _rescaled(global_weights: Arrays, arrays: Arrays, scale: float) -> Arrays:
    return {
        k: (
            global_weights[k] + (np.asarray(arrays[k], np.float64) - global_weights[k]) * scale
        ).astype(arrays[k].dtype)
        for k in arrays
    }


def _fact(
    institution: str, norm: float, cosine: float, weight: float, reference_norm: float
) -> DefenceFact:
    if weight > 0:
        action = "weighted"
        detail = (
            f"cosine {cosine:+.3f} to the reference update: weight {weight:.1%} of the round; "
            f"norm {norm:.4g} rescaled to the reference's {reference_norm:.4g}"
        )
    else:
        action = "weighted zero"
        detail = (
            f"cosine {cosine:+.3f} to the reference update (norm {norm:.4g}): not pointing "
            "where the trusted data lead, so weight 0"
        )
    return DefenceFact(
        institution,
        "trust",
        action,
        detail,
        norm_before=norm,
        norm_after=reference_norm,
        share=None if weight > 0 else 1.0,
    )
