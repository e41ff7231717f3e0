"""The FedCommons ServerApp: wiring only (policy + deploy settings -> data, ledger, strategy).

The policy comes from Flower's run config, which every ClientApp also
receives; the operator's own settings (ledger, keys, data, snapshots) come
from the operator folder named by ``$FEDCOMMONS_OPERATOR_DIR``
(:mod:`server.deploy`), which never leaves the operator's machine.
"""

from __future__ import annotations

import logging
import time

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvgM

from common.arrays import Arrays, arrays_of, arrays_sha256, record_of
from common.keys import (
    decode_ed25519_public,
    encode_public,
    load_ed25519_key,
    load_x25519_key,
    passphrase_from_env,
)
from common.licences import Licence
from common.local_data import load_local_data, server_split_path, to_examples
from common.model import build_model, frozen_sha256, get_arrays, set_arrays
from common.policy import Policy
from common.protocol import TrainConfig
from common.training import Examples, evaluate
from server.deploy import DeployConfig
from server.grid import PollingGrid
from server.ledger import Ledger, admitted_datasets, admitted_keys, finish_run, start_run
from server.strategy import (
    ConsortiumStrategy,
    LedgerRecorder,
    LicenceGate,
    RoundFailed,
    UpdateGate,
    UpdateIntake,
    expected_tensors,
)

__all__ = ["app"]

log = logging.getLogger(__name__)

app = ServerApp()


def _load_server_split(policy: Policy, deploy: DeployConfig, name: str) -> Examples:
    path = server_split_path(policy, deploy.server_data_dir, name)
    return to_examples(policy, load_local_data(policy, path))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the policy's rounds and record them."""
    policy = Policy.from_run_config(context.run_config)
    deploy = DeployConfig.from_environment()
    validation = _load_server_split(policy, deploy, "validation")
    test = _load_server_split(policy, deploy, "test")
    model = build_model(policy.model, policy.federation.seed)

    def score(data: Examples, weights: Arrays) -> tuple[float, float]:
        set_arrays(model, weights)
        result = evaluate(model, data)
        return result.loss, result.accuracy

    initial = get_arrays(model)  # the trainable part: all that travels
    base_sha256 = frozen_sha256(model)  # the frozen rest, which every node loads itself
    passphrase = passphrase_from_env()
    aggregator = load_x25519_key(deploy.aggregator_key, passphrase=passphrase)
    signer = (
        load_ed25519_key(deploy.operator_key, passphrase=passphrase)
        if deploy.operator_key
        else None
    )
    ledger = Ledger(deploy.ledger_url)
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
    federation = policy.federation
    licence_gate = LicenceGate(licences, purpose=federation.purpose)
    gate = UpdateGate(
        run_id=str(context.run_id),
        aggregator_key=aggregator,
        participants=participants,
        expected=expected_tensors(initial),
        base_model_sha256=base_sha256,
    )
    strategy = ConsortiumStrategy(
        FedAvgM(
            fraction_train=federation.fraction_train,
            fraction_evaluate=federation.fraction_evaluate,
            min_train_nodes=federation.min_nodes,
            min_evaluate_nodes=federation.min_nodes,
            min_available_nodes=federation.min_nodes,
            server_learning_rate=federation.server_learning_rate,
            server_momentum=federation.server_momentum,
        ),
        intake=UpdateIntake(gate, privacy=policy.privacy, licences=licence_gate),
        licences=licence_gate,
        evaluator=lambda weights: score(validation, weights),
        min_nodes=federation.min_nodes,
        recorder=LedgerRecorder(
            ledger,
            run_id,
            flower_run_id=str(context.run_id),
            snapshot_dir=deploy.snapshot_dir,
            signer=signer,
        ),
    )
    status, test_loss, test_accuracy, reason = "failed", None, None, None
    polling = PollingGrid(grid, federation.poll_interval)
    try:
        result = strategy.start(
            grid=polling,
            initial_arrays=record_of(initial),
            num_rounds=federation.rounds,
            timeout=federation.round_timeout,
            train_config=ConfigRecord(
                dict(
                    TrainConfig(
                        server_round=1,  # Flower sets each round's own number
                        base_sha256=base_sha256,
                        aggregator_key=encode_public(aggregator.public_key()),
                    ).server_fields()
                )
            ),
            evaluate_fn=strategy.finish_round,
        )
        # The last round's receipts: the only ones no train message carried.
        delivering = time.monotonic()
        delivered = strategy.deliver_receipts(polling, federation.round_timeout)
        if delivered:
            log.info(
                "last round's receipts (%.1f s): %s",
                time.monotonic() - delivering,
                ", ".join(f"{k} {v}" for k, v in sorted(delivered.items())),
            )
        test_loss, test_accuracy = score(test, arrays_of(result.arrays))
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
