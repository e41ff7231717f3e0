"""Many coalition models scored at once: one vectorised forward pass per chunk of models.

Exact Shapley values need every coalition's model scored on the validation
split; for a model as small as the digits CNN the cost is Python's, not the
arithmetic's. :func:`batch_evaluator` stacks the weights of up to ``chunk``
models and runs them through the module together with ``torch.func``
(``vmap`` over ``functional_call``), giving the same loss and accuracy as
scoring each in turn (checked in ``tests/server/test_contributions.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from common.arrays import Arrays
from common.training import Examples
from server.app.valuation import BatchEvaluator

__all__ = ["batch_evaluator"]


def batch_evaluator(model: nn.Module, data: Examples, chunk: int = 32) -> BatchEvaluator:
    """Score weight sets for ``model`` on ``data`` (all of it at once) in chunks of ``chunk``."""
    *tensors, labels = data.tensors()
    # standard strides (a size-1 channel axis may carry others), as vmap's group norm needs
    inputs = tuple(t.clone(memory_format=torch.contiguous_format) for t in tensors)
    count = len(data)

    def forward(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, params, inputs)  # type: ignore[no-any-return]

    def score(weights: Sequence[Arrays]) -> list[tuple[float, float]]:
        model.eval()
        results: list[tuple[float, float]] = []
        for start in range(0, len(weights), chunk):
            part = weights[start : start + chunk]
            params = {
                name: torch.from_numpy(np.stack([np.asarray(w[name]) for w in part]))
                for name in part[0]
            }
            with torch.no_grad():
                logits = vmap(forward)(params)  # (models, examples, classes)
                losses = nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    labels.repeat(len(part)),
                    reduction="none",
                ).reshape(len(part), count)
                correct = (logits.argmax(dim=2) == labels).sum(dim=1)
            results += [
                (float(loss), int(hits) / count)
                for loss, hits in zip(losses.sum(dim=1) / count, correct, strict=True)
            ]
        return results

    return score
