"""What a client node does with its own data: pure functions over the policy."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from torch import nn
from torch.utils.data import DataLoader

from client.accountant import BudgetExhausted, locked_history
from client.enrolment import ParticipantState
from client.node_config import node_config_of
from common.arrays import Arrays
from common.dp import PlanExceedsBudget, epsilon_of, plan_round
from common.local_data import LocalData, load_local_data, to_examples
from common.model import build_model, frozen_sha256, get_arrays, set_arrays
from common.policy import Policy, PolicyError
from common.protocol import NodeConfig, PrivacyCharge, TrainConfig
from common.training import (
    EvalResult,
    Examples,
    TrainResult,
    evaluate,
    local_sgd,
    make_loader,
    resolve_device,
    train,
    train_private,
)

__all__ = ["ClientSetup", "RoundOutcome", "evaluate_global", "train_round"]


@dataclass(frozen=True)
class ClientSetup:
    """The run's policy, this node's identity and its validated local data.

    Built from Flower's context: the run config carries the policy, the
    SuperNode's ``node_config`` names the institution and its data folder.
    """

    policy: Policy
    institution: str
    data: LocalData
    examples: Examples
    """``data`` as the model takes it (text tokenized once per ClientApp)."""
    state_dir: Path | None = None
    encoder_cache: bool = True
    """Train BERT's top from cached frozen outputs (the node's ``encoder-cache``)."""

    def identity(self) -> ParticipantState:
        """This node's enrolment (keys, pinned consortium) in its state folder."""
        if self.state_dir is None:
            raise PolicyError(
                'SuperNode node config needs state-dir="..." (the folder '
                "'fedcommons client enroll' created): it holds this node's signing key"
            )
        return ParticipantState(self.state_dir)

    @classmethod
    def from_context(cls, context: Context) -> ClientSetup:
        return cls.from_configs(context.run_config, node_config_of(context))

    @classmethod
    def from_configs(
        cls, run_config: Mapping[str, Any], node_config: Mapping[str, Any]
    ) -> ClientSetup:
        policy = Policy.from_run_config(run_config)
        node = NodeConfig.from_mapping(node_config)
        torch.set_num_threads(node.torch_threads)
        if policy.privacy.dp and node.state_dir is None:
            raise PolicyError(
                'SuperNode node config needs state-dir="..." (a folder this node keeps): '
                "DP training stores its privacy accountant there across rounds and runs"
            )
        data = load_local_data(policy, node.data_dir)
        return cls(
            policy=policy,
            institution=node.institution,
            data=data,
            examples=to_examples(policy, data),
            state_dir=node.state_dir,
            encoder_cache=node.encoder_cache,
        )


@dataclass(frozen=True)
class RoundOutcome:
    weights: Arrays
    result: TrainResult
    charge: PrivacyCharge


def train_round(
    setup: ClientSetup, global_weights: Arrays, config: TrainConfig, *, flower_run_id: int = 0
) -> RoundOutcome:
    """Train the global weights locally, with DP-SGD unless the policy turned it off.

    With DP, the dataset's accountant history is restored first. The noise
    for the run (by ``flower_run_id``, the Flower run's id) is planned from the budget that is
    left, for the rounds left of the policy's plan (this one included), so
    the run fits; a plan that cannot fit, or a round that would push epsilon
    past the budget, is refused (:class:`~client.accountant.BudgetExhausted`)
    before any model is built or gradient computed. After training, the
    extended history is saved.
    """
    policy, privacy = setup.policy, setup.policy.privacy
    server_round, base_sha256 = config.server_round, config.base_sha256
    dataset_sha256 = setup.data.sha256()
    if not privacy.dp:
        model, trained, optimizer, loader = _prepare(
            setup, global_weights, server_round, base_sha256, shuffle=True
        )
        result = train(
            trained,
            loader,
            optimizer,
            policy.training.local_epochs,
            max_grad_norm=privacy.max_grad_norm,
        )
        charge = PrivacyCharge(
            False, math.inf, 0.0, 0.0, 0.0, result.steps, "none", 0.0, dataset_sha256, ""
        )
        return RoundOutcome(get_arrays(model), result, charge)

    if setup.state_dir is None:
        raise PolicyError("DP training needs the node's state-dir")
    with locked_history(
        setup.state_dir,
        institution=setup.institution,
        dataset_sha256=dataset_sha256,
        num_records=len(setup.data),
    ) as state:
        rounds_left = max(policy.federation.rounds - server_round + 1, 1)
        try:
            plan = plan_round(
                privacy,
                policy.training,
                num_records=len(setup.data),
                rounds_left=rounds_left,
                history=state.history,
                cache=state.derived_noise,
                plan_key=f"run={flower_run_id}",
            )
        except PlanExceedsBudget as err:
            raise BudgetExhausted(
                institution=setup.institution,
                dataset_sha256=dataset_sha256,
                spent=err.spent,
                budget=err.budget,
                next_eps=err.needed,
                rounds=err.rounds,
            ) from None
        next_eps = epsilon_of([*state.history, plan.entry], privacy.delta, privacy.accountant)
        if next_eps > privacy.epsilon:
            raise BudgetExhausted(
                institution=setup.institution,
                dataset_sha256=dataset_sha256,
                spent=state.epsilon(privacy.delta, privacy.accountant),
                budget=privacy.epsilon,
                next_eps=next_eps,
            )
        # Opacus replaces the loader's order with Poisson sampling.
        model, trained, optimizer, loader = _prepare(
            setup, global_weights, server_round, base_sha256, shuffle=False
        )
        result, state.history = train_private(
            trained,
            loader,
            optimizer,
            epochs=policy.training.local_epochs,
            plan=plan,
            max_grad_norm=privacy.max_grad_norm,
            grad_sample_mode=privacy.grad_sample_mode,
            accountant=privacy.accountant,
            history=state.history,
        )
        state.accountant, state.delta = privacy.accountant, privacy.delta
        state.epsilon_budget = privacy.epsilon
        charge = PrivacyCharge(
            dp=True,
            epsilon=state.epsilon(),
            delta=privacy.delta,
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=result.steps,
            accountant=privacy.accountant,
            max_grad_norm=privacy.max_grad_norm,
            dataset_sha256=dataset_sha256,
            history_sha256=state.sha256,
        )
    return RoundOutcome(get_arrays(model), result, charge)


def _prepare(
    setup: ClientSetup,
    global_weights: Arrays,
    server_round: int,
    base_sha256: str | None,
    *,
    shuffle: bool,
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, DataLoader[tuple[torch.Tensor, ...]]]:
    """The global model, the part of it to train, this node's optimizer and its data loader.

    Only the trainable part arrives; when the server names the frozen base
    model's hash, this node's own frozen weights must match it. A BERT model
    whose lower layers are frozen trains only its top, from this node's
    cache of the frozen layers' outputs (:mod:`client.encoder_cache`): the
    same parameters, records and sampling, without the frozen forward pass.
    """
    policy = setup.policy
    model = build_model(policy.model, policy.federation.seed)
    mine = frozen_sha256(model) if base_sha256 is not None or policy.model.name == "bert" else ""
    if base_sha256 is not None and mine != base_sha256:
        raise PolicyError(
            f"the frozen base model here (sha256 {mine[:16]}...) is not the server's "
            f"({base_sha256[:16]}...): both must load the same base model "
            f"('model.base-model' = {policy.model.base_model!r})"
        )
    set_arrays(model, global_weights)
    model.to(resolve_device(policy.training.device))
    trained, examples = _trained_part(setup, model, mine)
    loader = make_loader(
        examples,
        policy.training.batch_size,
        shuffle=shuffle,
        seed=policy.federation.seed + server_round,
    )
    learning_rate = policy.training.learning_rate_at(server_round, policy.federation.rounds)
    optimizer = local_sgd(model, learning_rate, policy.training.momentum)
    return model, trained, optimizer, loader


def _trained_part(
    setup: ClientSetup, model: nn.Module, base_sha256: str
) -> tuple[nn.Module, Examples]:
    """``model`` and its examples, or its top and the cached frozen outputs (BERT, k > 0)."""
    if setup.policy.model.name != "bert" or setup.state_dir is None or not setup.encoder_cache:
        return model, setup.examples
    from common.bert import EncodedText, TextClassifier

    if not isinstance(model, TextClassifier) or not isinstance(setup.examples, EncodedText):
        return model, setup.examples
    from client.encoder_cache import cached_frozen_outputs
    from common.bert_top import frozen_layers, top_view

    k = frozen_layers(model)
    if k == 0:
        return model, setup.examples
    outputs = cached_frozen_outputs(
        setup.state_dir,
        model,
        setup.examples,
        k=k,
        base_sha256=base_sha256,
        dataset_sha256=setup.data.sha256(),
        max_length=setup.policy.model.max_length,
    )
    return top_view(model, k), outputs


def evaluate_global(setup: ClientSetup, global_weights: Arrays) -> EvalResult:
    model = build_model(setup.policy.model, setup.policy.federation.seed)
    set_arrays(model, global_weights)
    model.to(resolve_device(setup.policy.training.device))
    return evaluate(model, setup.examples)
