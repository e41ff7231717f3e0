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

from common.arrays import Arrays, arrays_of, record_of
from common.bert_top import scoring_view
from common.keys import (
    encode_public,
    load_ed25519_key,
    load_x25519_key,
    passphrase_from_env,
)
from common.local_data import load_local_data, server_split_path, to_examples
from common.model import build_model, frozen_sha256, get_arrays, set_arrays
from common.policy import Policy
from common.protocol import TrainConfig
from common.training import Examples, evaluate
from ledger import Ledger, finish_run
from server.app.grid import PollingGrid, QuorumLost
from server.app.reference import class_scorer, reference_trainer
from server.app.run_start import open_run
from server.app.strategy import (
    ClaimCheck,
    ConsortiumStrategy,
    Defences,
    LedgerRecorder,
    LicenceCheck,
    OwedCharges,
    RoundFailed,
    UpdateGate,
    UpdateIntake,
    build_aggregator,
    expected_tensors,
)
from server.app.valuation import Valuer
from server.app.valuation.batched import batch_evaluator
from server.deploy import DeployConfig

__all__ = ["app"]

log = logging.getLogger(__name__)

app = ServerApp()


def _load_server_split(policy: Policy, deploy: DeployConfig, name: str) -> Examples:
    path = server_split_path(policy, deploy.server_data_dir, name)
    return to_examples(policy, load_local_data(policy, path))


def _log_to_run_log() -> None:
    """Put the ServerApp's own INFO lines (rounds, phases, receipts) in Flower's run log.

    Flower mirrors the ServerApp's stderr into the log ``flwr log`` shows.
    """
    logger = logging.getLogger("server")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # once, whatever else (Ray) set up on the root logger


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the policy's rounds (or the rest of a run being resumed) and record them."""
    _log_to_run_log()
    policy = Policy.from_run_config(context.run_config)
    deploy = DeployConfig.from_environment()
    validation = _load_server_split(policy, deploy, "validation")
    test = _load_server_split(policy, deploy, "test")
    model = build_model(policy.model, policy.federation.seed)
    # BERT: the validation texts go through the frozen layers once; each score runs the top
    scorer, scored_validation = scoring_view(model, validation)

    def score(data: Examples, weights: Arrays) -> tuple[float, float]:
        set_arrays(model, weights)
        result = evaluate(scorer if data is scored_validation else model, data)
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
    opened = open_run(
        ledger,
        policy,
        deploy,
        flower_run_id=context.run_id,
        initial=initial,
        base_sha256=base_sha256,
    )
    point, federation = opened.point, policy.federation
    licence_check = LicenceCheck(opened.licences, purpose=federation.purpose)
    gate = UpdateGate(
        flower_run_id=str(context.run_id),
        aggregator_key=aggregator,
        participants=opened.participants,
        expected=expected_tensors(initial),
        base_model_sha256=base_sha256,
        accepted_before=opened.accepted_before,
        left_out={
            name: (opened.admitted[name], reason)
            for name, reason in opened.left_out.items()
            if name in opened.admitted
        },
    )
    recorder = LedgerRecorder(
        ledger,
        opened.run_id,
        flower_run_id=str(context.run_id),
        snapshot_dir=deploy.snapshot_dir,
        signer=signer,
    )
    strategy = ConsortiumStrategy(
        build_aggregator(federation),
        intake=UpdateIntake(
            gate,
            privacy=policy.privacy,
            licence_check=licence_check,
            claims=ClaimCheck(opened.records),
        ),
        licence_check=licence_check,
        evaluator=lambda weights: score(scored_validation, weights),
        min_nodes=federation.min_nodes,
        recorder=recorder,
        rounds_done=point.rounds_done,
        defences=Defences.of(
            federation,
            # the trusted set: the operator's validation split, which no member sees or sends
            reference_trainer(policy, model, validation),
            class_scorer(model, validation, policy.model.num_classes),
        ),
        owed=OwedCharges(opened.admitted),  # a suspended member's past spend too
        valuer=Valuer(
            policy.valuation,
            federation.seed,
            # the CNN's coalition models are scored many at once; BERT's one by one
            batch_evaluator(model, validation) if policy.model.name == "cnn" else None,
        ),
    )
    weights = point.weights if point.weights is not None else initial
    if point.rounds_done:
        log.info("resuming run %d after round %d", opened.run_id, point.rounds_done)
        strategy.restore(weights, point.server_state)
        strategy.outbox.queue(recorder.resume(point.rounds_done))
    status, test_loss, test_accuracy, reason = "interrupted", None, None, None
    polling = PollingGrid(
        grid,
        federation.poll_interval,
        quorum=federation.min_nodes,
        quorum_wait=federation.round_timeout,
    )
    try:
        if opened.recovery is not None:  # the members trained it: no one trains it again
            log.info(
                "recovering round %d from the %d replies the crashed run kept",
                point.rounds_done + 1,
                len(opened.recovery.replies),
            )
            weights = strategy.recover_round(
                weights, opened.recovery.replies, opened.recovery.carrier
            )
        rounds_left = federation.rounds - strategy.rounds_done
        if rounds_left > 0:
            result = strategy.start(
                grid=polling,
                initial_arrays=record_of(weights),
                num_rounds=rounds_left,
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
            weights = arrays_of(result.arrays)
        # The last round's receipts: the only ones no train message carried; then
        # the members' cosignatures on the last checkpoint: each node counts its quorum.
        for what, deliver in (
            ("last round's receipts", strategy.deliver_receipts),
            ("witness quorum", strategy.deliver_quorum),
        ):
            started = time.monotonic()
            outcome = deliver(polling, federation.round_timeout)
            if outcome:
                log.info(
                    "%s (%.1f s): %s",
                    what,
                    time.monotonic() - started,
                    "; ".join(f"{k} {v}" for k, v in sorted(outcome.items())),
                )
        test_loss, test_accuracy = score(test, weights)
        status = "finished"
        log.info("test accuracy %.4f, loss %.4f", test_accuracy, test_loss)
    except (RoundFailed, QuorumLost) as err:
        status, reason = "failed", str(err)
        log.error("run stopped: %s", reason)
        raise
    except BaseException as err:  # a signal, a lost SuperLink, a crash: the run can resume
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            reason = "interrupted: the ServerApp was stopped (Ctrl-C, SIGTERM or 'flwr stop')"
        else:
            reason = f"interrupted: {type(err).__name__}: {err}"
        log.error("run interrupted: %s", reason)
        raise
    finally:
        ledger.transact(
            lambda session: finish_run(
                session,
                opened.run_id,
                status,
                test_accuracy=test_accuracy,
                test_loss=test_loss,
                reason=reason,
            ),
            what=f"recording how run {opened.run_id} ended",
        )
        ledger.close()
