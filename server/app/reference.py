"""The server's side of trust bootstrapping: the reference update and per-class scores.

Both work on the operator's validation split, the trusted set (the members
never see it and cannot change it). The reference update is the global model
trained on it exactly as a member trains (the policy's optimizer, local
epochs, learning-rate schedule, batch size and gradient clipping), without
DP: it never leaves the server.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import nn

from common.arrays import Arrays
from common.model import get_arrays, set_arrays
from common.policy import Policy
from common.training import Examples, class_accuracy, local_sgd, make_loader, train

__all__ = ["class_scorer", "reference_trainer"]


def reference_trainer(
    policy: Policy, model: nn.Module, trusted: Examples
) -> Callable[[Arrays, int], Arrays]:
    """``(global weights, round) -> weights`` trained on ``trusted`` as a member trains."""
    if len(trusted) == 0:
        raise ValueError("the trusted set is empty: a reference update needs examples")
    training = policy.training

    def train_reference(weights: Arrays, server_round: int) -> Arrays:
        set_arrays(model, weights)
        loader = make_loader(
            trusted,
            training.batch_size,
            shuffle=True,
            seed=policy.federation.seed + server_round,
        )
        rate = training.learning_rate_at(server_round, policy.federation.rounds)
        optimizer = local_sgd(model, rate, training.momentum)
        train(
            model,
            loader,
            optimizer,
            training.local_epochs,
            max_grad_norm=policy.privacy.max_grad_norm,
        )
        return get_arrays(model)

    return train_reference


def class_scorer(
    model: nn.Module, data: Examples, num_classes: int
) -> Callable[[Arrays], np.ndarray]:
    """``weights -> accuracy per class`` on ``data``."""

    def score(weights: Arrays) -> np.ndarray:
        set_arrays(model, weights)
        return class_accuracy(model, data, num_classes)

    return score
