"""The FedCommons ServerApp: wiring only (policy -> data, model, ledger, strategy)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.datasets import load_local_data, server_split_path, to_examples
from common.envelope import AGGREGATOR_KEY
from common.keys import (
    decode_ed25519_public,
    encode_public,
    load_ed25519_key,
    load_x25519_key,
    passphrase_from_env,
)
from common.licences import Licence
from common.model import arrays_sha256, build_model, frozen_sha256, get_arrays, set_arrays
from common.policy import Policy
from common.records import Arrays, arrays_of, record_of
from common.training import Examples, evaluate
from server.grid import PollingGrid
from server.intake import UpdateGate, expected_tensors
from server.ledger import Ledger, admitted_datasets, admitted_keys, finish_run, start_run
from server.strategy import LedgerFedAvg, RoundFailed

__all__ = ["app"]

log = logging.getLogger(__name__)

app = ServerApp()


def _load_server_split(policy: Policy, name: str) -> Examples:
    if not policy.deploy.server_data_dir:
        raise ValueError(
            "run config key 'deploy.server-data-dir' is empty: "
            "the server needs its validation and test data"
        )
    path = server_split_path(policy, policy.deploy.server_data_dir, name)
    return to_examples(policy, load_local_data(policy, path))


def _aggregator_key(policy: Policy) -> X25519PrivateKey:
    if not policy.deploy.aggregator_key:
        raise ValueError(
            "run config key 'deploy.aggregator-key' is empty: updates are encrypted to "
            "the aggregator, so the server needs its private key ('fedcommons operator init')"
        )
    return load_x25519_key(Path(policy.deploy.aggregator_key), passphrase=passphrase_from_env())


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the policy's rounds of FedAvg and record them."""
    policy = Policy.from_run_config(context.run_config)
    validation = _load_server_split(policy, "validation")
    test = _load_server_split(policy, "test")
    model = build_model(policy.model, policy.federation.seed)

    def score(data: Examples, weights: Arrays) -> tuple[float, float]:
        set_arrays(model, weights)
        result = evaluate(model, data)
        return result.loss, result.accuracy

    initial = get_arrays(model)  # the trainable part: all that travels
    base_sha256 = frozen_sha256(model)  # the frozen rest, which every node loads itself
    aggregator = _aggregator_key(policy)
    if not policy.deploy.ledger_url:
        raise ValueError(
            "run config key 'deploy.ledger-url' is empty: only participants admitted "
            "in the ledger may contribute, so the server needs it"
        )
    ledger = Ledger(policy.deploy.ledger_url)
    with ledger.session() as session:
        participants = {
            name: decode_ed25519_public(key, f"{name}'s signing key in the ledger")
            for name, key in admitted_keys(session).items()
        }
        licences = {
            key: Licence.from_dict(terms) for key, terms in admitted_datasets(session).items()
        }
        run_id = start_run(
            session,
            policy_sha256=policy.sha256(),
            policy_toml=policy.to_toml(),
            model=policy.model.name,
            dataset=policy.data.dataset,
            initial_model_sha256=arrays_sha256(initial),
            base_model_sha256=base_sha256,
            planned_rounds=policy.federation.rounds,
            flower_run_id=context.run_id,
        ).id
    gate = UpdateGate(
        run_id=str(context.run_id),
        aggregator_key=aggregator,
        participants=participants,
        expected=expected_tensors(initial),
        base_model_sha256=base_sha256,
    )

    operator_key = (
        load_ed25519_key(Path(policy.deploy.operator_key), passphrase=passphrase_from_env())
        if policy.deploy.operator_key
        else None
    )
    strategy = LedgerFedAvg(
        ledger=ledger,
        run_id=run_id,
        evaluator=lambda weights: score(validation, weights),
        checkpoint_dir=Path(policy.deploy.checkpoint_dir) if policy.deploy.checkpoint_dir else None,
        min_nodes=policy.federation.min_nodes,
        privacy=policy.privacy,
        gate=gate,
        checkpoint_signer=operator_key,
        licences=licences,
        purpose=policy.federation.purpose,
        fraction_train=policy.federation.fraction_train,
        fraction_evaluate=policy.federation.fraction_evaluate,
        server_learning_rate=policy.federation.server_learning_rate,
        server_momentum=policy.federation.server_momentum,
    )
    status, test_loss, test_accuracy, reason = "failed", None, None, None
    polling = PollingGrid(grid, policy.federation.poll_interval)
    try:
        result = strategy.start(
            grid=polling,
            initial_arrays=record_of(initial),
            num_rounds=policy.federation.rounds,
            timeout=policy.federation.round_timeout,
            train_config=ConfigRecord(
                {
                    "base-sha256": base_sha256,
                    AGGREGATOR_KEY: encode_public(aggregator.public_key()),
                }
            ),
            evaluate_fn=strategy.finish_round,
        )
        # The last round's receipts: the only ones no train message carried.
        delivering = time.monotonic()
        delivered = strategy.deliver_receipts(polling, policy.federation.round_timeout)
        if delivered:
            log.info(
                "last round's receipts (%.1f s): %s",
                time.monotonic() - delivering,
                ", ".join(f"{k} {v}" for k, v in sorted(delivered.items())),
            )
        final = arrays_of(result.arrays)
        test_loss, test_accuracy = score(test, final)
        status = "finished"
        log.info("test accuracy %.4f, loss %.4f", test_accuracy, test_loss)
    except RoundFailed as err:
        reason = str(err)
        log.error("run stopped: %s", reason)
        raise
    finally:
        with ledger.session() as session:
            finish_run(
                session,
                run_id,
                status,
                test_accuracy=test_accuracy,
                test_loss=test_loss,
                reason=reason,
            )
        ledger.close()
