"""What a client node does with its own data: pure functions over the policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Context

from common.data import ImageData, load_image_data
from common.model import build_model, get_arrays, set_arrays
from common.policy import Policy, PolicyError
from common.records import Arrays
from common.training import EvalResult, TrainResult, evaluate, local_sgd, make_loader, train

__all__ = ["ClientSetup", "evaluate_global", "train_round"]


@dataclass(frozen=True)
class ClientSetup:
    """The run's policy, this node's identity and its validated local data.

    Built from Flower's context: the run config carries the policy, the
    SuperNode's ``node_config`` names the institution and its data folder.
    """

    policy: Policy
    institution: str
    data: ImageData

    @classmethod
    def from_context(cls, context: Context) -> ClientSetup:
        return cls.from_configs(context.run_config, context.node_config)

    @classmethod
    def from_configs(
        cls, run_config: Mapping[str, Any], node_config: Mapping[str, Any]
    ) -> ClientSetup:
        policy = Policy.from_run_config(run_config)
        for key in ("institution", "data-dir"):
            if not isinstance(node_config.get(key), str) or not node_config[key]:
                raise PolicyError(
                    f'SuperNode node config needs {key}="..." (got {node_config.get(key)!r})'
                )
        threads = node_config.get("torch-threads", 1)
        if isinstance(threads, int) and threads > 0:
            torch.set_num_threads(threads)
        data = load_image_data(
            str(node_config["data-dir"]),
            num_classes=policy.model.num_classes,
            image_size=policy.model.image_size,
        )
        return cls(policy=policy, institution=str(node_config["institution"]), data=data)


def train_round(
    setup: ClientSetup, global_weights: Arrays, config: Mapping[str, Any]
) -> tuple[Arrays, TrainResult]:
    """Train the global weights locally; returns the new weights and the loss."""
    policy = setup.policy
    model = build_model(policy.model, policy.federation.seed)
    set_arrays(model, global_weights)
    server_round = int(config.get("server-round", 0))
    loader = make_loader(
        setup.data,
        policy.training.batch_size,
        shuffle=True,
        seed=policy.federation.seed + server_round,
    )
    optimizer = local_sgd(model, policy.training.learning_rate, policy.training.momentum)
    result = train(model, loader, optimizer, policy.training.local_epochs)
    return get_arrays(model), result


def evaluate_global(setup: ClientSetup, global_weights: Arrays) -> EvalResult:
    model = build_model(setup.policy.model, setup.policy.federation.seed)
    set_arrays(model, global_weights)
    return evaluate(model, setup.data)
