"""Resuming a run after a crash, on a real ledger with real sealed updates and snapshots.

A run records round 1, then "crashes" in round 2 (its charges for round 2
recorded, the round not). The resumed run starts from round 1's snapshot,
refuses every envelope sealed before the crash with its reason, and gives
receipts that extend the heads handed out before; a resume that cannot be
made is refused with nothing written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message
from flwr.serverapp.strategy import FedAvgM
from sqlalchemy import func, select
from typer.testing import CliRunner

from common.arrays import Arrays, arrays_of, arrays_sha256
from common.envelope import Envelope
from common.keys import write_private_key
from common.policy import Policy, PrivacyConfig
from common.receipts import Receipt
from fedcommons.cli import app
from fedcommons.startup import free_port
from ledger import (
    ChargeFact,
    ExclusionFact,
    Ledger,
    LedgerUnreachable,
    enrol_participant,
    finish_run,
    start_run,
)
from ledger.provenance import privacy_rows
from ledger.report import ledger_report
from ledger.runs import request_resume
from ledger.schema import LedgerEntry, Run
from ledger.verify import verify_ledger
from server.app.run_start import OpenedRun, open_run
from server.app.snapshots import save_snapshot, snapshot_path
from server.app.strategy import (
    ConsortiumStrategy,
    LedgerRecorder,
    LicenceCheck,
    RoundFailed,
    UpdateGate,
    UpdateIntake,
    expected_tensors,
)
from server.deploy import OperatorFiles
from server.operator.consortium import init_consortium
from server.operator.flower import FlwrCli, write_connection
from server.operator.follow import SuperLinkLost, follow_run
from server.operator.operate import follow_with_progress
from tests.support.sealed_updates import (
    AGGREGATOR,
    BASE,
    RUN,
    SIGNERS,
    begin_round,
    make_charge,
    reply_carrying,
    seal_for,
    server_task_identity,
)

pytestmark = pytest.mark.usefixtures("server_task_identity")
assert server_task_identity  # imported so that pytest finds the fixture

POLICY = Policy().with_overrides({"federation.rounds": 3, "federation.min-nodes": 2})
ZEROS: Arrays = {"w": np.zeros(2, np.float32)}
NEW_RUN = RUN + 1000
OPERATOR = Ed25519PrivateKey.generate()


@dataclass
class Crashed:
    """A run that recorded round 1 and crashed in round 2."""

    ledger: Ledger
    run_id: int
    operator: OperatorFiles
    after_round_1: Arrays
    receipts_round_1: list[Receipt]
    sealed: dict[int, dict[str, Envelope]]
    """The updates each round's nodes sealed, before the crash."""


def _strategy(
    ledger: Ledger,
    run_id: int,
    snapshots: Path,
    flower_run: int,
    gate: UpdateGate,
    done: int = 0,
    aggregator: FedAvgM | None = None,
) -> tuple[ConsortiumStrategy, LedgerRecorder]:
    recorder = LedgerRecorder(
        ledger, run_id, flower_run_id=str(flower_run), snapshot_dir=snapshots, signer=OPERATOR
    )
    licence_check = LicenceCheck(None)
    strategy = ConsortiumStrategy(
        aggregator or FedAvgM(min_available_nodes=1),
        intake=UpdateIntake(gate, privacy=PrivacyConfig(epsilon=8.0), licence_check=licence_check),
        licence_check=licence_check,
        evaluator=lambda w: (0.5, 0.5),
        min_nodes=2,
        recorder=recorder,
        rounds_done=done,
    )
    return strategy, recorder


def _gate(flower_run: int, accepted: set[str] | None = None) -> UpdateGate:
    return UpdateGate(
        flower_run_id=str(flower_run),
        aggregator_key=AGGREGATOR,
        participants={n: SIGNERS[n].public_key() for n in ("inst0", "inst1")},
        expected=expected_tensors(ZEROS),
        base_model_sha256=BASE,
        accepted_before=accepted or set(),
    )


NODES = {"inst0": 10, "inst1": 11}


def _sealed(number: int, model: Arrays, run: int = RUN) -> dict[str, Envelope]:
    return {
        name: seal_for(name, {"w": np.full(2, 1.0 + i, np.float32)}, 5, server_round=number,
                       model=model, charge=make_charge(1.0 + number), run=run)
        for i, name in enumerate(NODES)
    }  # fmt: skip


def _replies(envelopes: dict[str, Envelope]) -> list[Message]:
    """Fresh reply messages (the intake replaces an accepted reply's content)."""
    return [reply_carrying(NODES[name], envelope) for name, envelope in envelopes.items()]


@pytest.fixture
def crashed(url: str, tmp_path: Path) -> Crashed:
    return _crash(url, tmp_path)


def _crash(url: str, tmp_path: Path, aggregator: FedAvgM | None = None) -> Crashed:
    """Record round 1, charge round 2, then stop as a killed ServerApp would."""
    operator = init_consortium(
        tmp_path / "op", name="t", superlink="127.0.0.1:9", hosts=["127.0.0.1"], ledger_url=url
    )
    write_private_key(tmp_path / "signing.pem", OPERATOR)
    deploy = operator.deploy().with_values(
        {"operator-key": str(tmp_path / "signing.pem")}, operator.root, "test"
    )
    operator.deploy_file.write_text(deploy.to_toml(operator.root))
    ledger = Ledger(url)
    with ledger.session() as s:
        for name in ("inst0", "inst1"):
            enrol_participant(s, name, "academia")
        run_id = start_run(
            s,
            policy_sha256=POLICY.sha256(),
            policy_toml=POLICY.to_toml(),
            model="cnn",
            dataset="digits",
            initial_model_sha256=arrays_sha256(ZEROS),
            planned_rounds=3,
            flower_run_id=RUN,
        ).id
    strategy, _ = _strategy(
        ledger, run_id, operator.snapshot_dir, RUN, _gate(RUN), aggregator=aggregator
    )
    sealed = {1: _sealed(1, ZEROS)}
    begin_round(strategy, 1, ZEROS, nodes=(10, 11))
    arrays, _ = strategy.aggregate_train(1, _replies(sealed[1]))
    assert arrays is not None
    strategy.finish_round(1, arrays)
    receipts = [r for name in ("inst0", "inst1") for r in strategy.outbox.pending(name)]
    after = arrays_of(arrays)
    sealed[2] = _sealed(2, after)
    begin_round(strategy, 2, after, nodes=(10, 11))
    strategy.aggregate_train(2, _replies(sealed[2]))  # charged; then the crash
    return Crashed(ledger, run_id, operator, after, receipts, sealed)


def _forget_kept(crashed: Crashed, number: int = 2) -> None:
    """As if the crash came before round ``number``'s replies were kept: it is trained again."""
    snapshots = crashed.operator.snapshot_dir
    shutil.rmtree(snapshots / f"round-{number:04d}-updates")
    (snapshots / f"round-{number:04d}-replies.json").unlink()


def _resume(crashed: Crashed) -> OpenedRun:
    """Ask for the resume, then open the run as the next ServerApp does."""
    with crashed.ledger.session() as s:
        request_resume(s, crashed.run_id)
    return open_run(
        crashed.ledger, POLICY, crashed.operator.deploy(), flower_run_id=NEW_RUN,
        initial=ZEROS, base_sha256=BASE,
    )  # fmt: skip


def _resumed_strategy(
    crashed: Crashed, opened: OpenedRun, aggregator: FedAvgM | None = None
) -> tuple[ConsortiumStrategy, LedgerRecorder]:
    """The new Flower run's strategy, numbering its rounds after those recorded."""
    return _strategy(
        crashed.ledger, crashed.run_id, crashed.operator.snapshot_dir, NEW_RUN,
        _gate(NEW_RUN, opened.accepted_before), done=opened.point.rounds_done,
        aggregator=aggregator,
    )  # fmt: skip


def test_a_resumed_run_goes_on_from_its_last_snapshot(crashed: Crashed) -> None:
    _forget_kept(crashed)
    opened = _resume(crashed)
    assert (opened.run_id, opened.point.rounds_done) == (crashed.run_id, 1)
    assert opened.point.weights is not None
    assert arrays_sha256(opened.point.weights) == arrays_sha256(crashed.after_round_1)
    with crashed.ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert run["status"] == "running"
    assert [(f["flower_run_id"], f["first_round"]) for f in run["flower_runs"]] == [
        (str(RUN), 1), (str(NEW_RUN), 2),
    ]  # fmt: skip
    # round 2's charges from before the crash stay: spent is spent
    assert [c["round"] for c in run["privacy_charges"]] == [1, 1, 2, 2]
    verify_ledger(crashed.ledger, OPERATOR.public_key())
    # a second ServerApp with the same policy starts a new run: only one takes it over
    again = open_run(
        crashed.ledger, POLICY, crashed.operator.deploy(), flower_run_id=NEW_RUN + 1,
        initial=ZEROS, base_sha256=BASE,
    )  # fmt: skip
    assert again.run_id != crashed.run_id and again.point.rounds_done == 0
    crashed.ledger.close()


def test_the_card_counts_a_round_paid_for_twice_and_says_so(crashed: Crashed) -> None:
    """Round 2 trained again after a crash: the card's epsilon is the members' true spend
    (the last charge), and it names the charged round the model does not use."""
    _forget_kept(crashed)
    opened = _resume(crashed)
    strategy, _ = _resumed_strategy(crashed, opened)
    begin_round(strategy, 1, crashed.after_round_1, nodes=(10, 11))
    redone = replace(make_charge(4.0), history_sha256="f" * 64)  # the history grew again
    resealed = {
        name: seal_for(name, {"w": np.full(2, 1.0, np.float32)}, 5, server_round=2,
                       model=crashed.after_round_1, charge=redone, run=NEW_RUN)
        for name in NODES
    }  # fmt: skip
    arrays, _ = strategy.aggregate_train(1, _replies(resealed))
    assert arrays is not None
    strategy.finish_round(1, arrays)
    with crashed.ledger.session() as s:
        run = s.get(Run, crashed.run_id)
        assert run is not None
        privacy = {p["institution"]: p for p in privacy_rows(s, run)}
    for name in NODES:
        assert privacy[name]["epsilon"] == 4.0  # round 2 redone: its last charge
        assert (privacy[name]["rounds_charged"], privacy[name]["rounds_charged_unused"]) == (
            3, [2],
        )  # fmt: skip
    crashed.ledger.close()


def test_envelopes_sealed_before_the_crash_are_refused_after_it_with_reasons(
    crashed: Crashed,
) -> None:
    _forget_kept(crashed)
    opened = _resume(crashed)
    strategy, _ = _resumed_strategy(crashed, opened)
    begin_round(strategy, 1, crashed.after_round_1, nodes=(10, 11))  # the ledger's round 2
    replayed = reply_carrying(10, crashed.sealed[1]["inst0"])  # accepted in round 1
    in_flight = reply_carrying(11, crashed.sealed[2]["inst1"])  # sealed for round 2, crashed
    with pytest.raises(RoundFailed, match="0 of the required 2 nodes"):
        strategy.aggregate_train(1, [replayed, in_flight])
    with crashed.ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    after_crash = [e for e in run["exclusions"] if e["round"] == 2]
    reasons = {e["institution"]: e["reason"] for e in after_crash}
    assert reasons["inst0"].startswith("update rejected (replay): this update from 'inst0'")
    assert reasons["inst1"].startswith(
        f"update rejected (wrong-run): the update is for Flower run {RUN}"
    )
    crashed.ledger.close()


def test_receipts_after_a_resume_extend_the_heads_given_before(crashed: Crashed) -> None:
    _forget_kept(crashed)
    opened = _resume(crashed)
    strategy, recorder = _resumed_strategy(crashed, opened)
    owed = recorder.resume(1)  # round 1's, built again exactly as before the crash
    assert [r.to_json() for r in owed] == [r.to_json() for r in crashed.receipts_round_1]
    begin_round(strategy, 1, crashed.after_round_1, nodes=(10, 11))
    resealed = _sealed(2, crashed.after_round_1, run=NEW_RUN)  # round 2 again, after the resume
    arrays, _ = strategy.aggregate_train(1, _replies(resealed))
    assert arrays is not None
    strategy.finish_round(1, arrays)
    after = [r for name in ("inst0", "inst1") for r in strategy.outbox.pending(name)]
    assert [r.round for r in after] == [2, 2]
    for receipt, before in zip(after, crashed.receipts_round_1, strict=True):
        receipt.verify(OPERATOR.public_key())  # the consistency proof spans the crash
        assert (receipt.previous_size, receipt.previous_root) == (
            before.tree_head.tree_size,
            before.tree_head.root,
        )
    crashed.ledger.close()


def _entries(ledger: Ledger) -> int:
    with ledger.session() as s:
        return int(s.scalar(select(func.count()).select_from(LedgerEntry)) or 0)


@pytest.mark.parametrize("fault", ["missing", "changed", "finished", "other-policy"])
def test_a_resume_that_cannot_be_made_is_refused_with_nothing_written(
    crashed: Crashed, tmp_path: Path, fault: str
) -> None:
    snapshot = snapshot_path(crashed.operator.snapshot_dir, 1)
    command = [
        "operator",
        "resume",
        "--run",
        str(crashed.run_id),
        "--dir",
        str(crashed.operator.root),
    ]
    expected = {
        "missing": "cannot resume: the snapshot of round 1 is missing",
        "changed": "holds model",
        "finished": "is finished: a run that finished does not resume",
        "other-policy": "recorded policy",
    }[fault]
    if fault == "missing":
        snapshot.unlink()
    elif fault == "changed":
        save_snapshot(snapshot.parent, 1, {"w": np.full(2, 9.0, np.float32)}, "x")
    elif fault == "finished":
        with crashed.ledger.session() as s:
            finish_run(s, crashed.run_id, "finished", test_accuracy=0.5)
    else:
        other = tmp_path / "other.toml"
        other.write_text(POLICY.with_overrides({"federation.rounds": 4}).to_toml())
        command += ["--policy", str(other)]
    before = _entries(crashed.ledger)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output
    assert expected in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert _entries(crashed.ledger) == before  # nothing written
    crashed.ledger.close()


def test_a_run_whose_superlink_stops_answering_is_recorded_interrupted(
    crashed: Crashed, tmp_path: Path
) -> None:
    """The operator's follower notices what the killed ServerApp could not record."""
    home = tmp_path / "flwr-home"
    write_connection(home, "fedcommons", f"127.0.0.1:{free_port()}", None)  # nothing listens
    with pytest.raises(SuperLinkLost) as raised:
        follow_run(FlwrCli(home), crashed.ledger, RUN, lost_after=0.0, poll=0.01)
    message = " ".join(str(raised.value).split())
    assert message.startswith("lost the SuperLink: no answer for 0 s (")
    assert f"Run {crashed.run_id} stopped after round 1 and is recorded as interrupted" in message
    assert f"'fedcommons operator resume --run {crashed.run_id}' continues it" in message
    with crashed.ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert run["status"] == "interrupted"
    assert run["status_reason"].startswith("lost the SuperLink")
    crashed.ledger.close()


def _momentum() -> FedAvgM:
    return FedAvgM(min_available_nodes=1, server_learning_rate=0.5, server_momentum=0.9)


def test_a_resumed_run_aggregates_as_if_it_had_never_stopped(url: str, tmp_path: Path) -> None:
    """The round counter and FedAvgM's momentum come back with the snapshot."""
    # the same two rounds without a crash (no ledger needed)
    licence_check = LicenceCheck(None)
    steady = ConsortiumStrategy(
        _momentum(),
        intake=UpdateIntake(
            _gate(RUN), privacy=PrivacyConfig(epsilon=8.0), licence_check=licence_check
        ),
        licence_check=licence_check,
        evaluator=lambda w: (0.5, 0.5),
        min_nodes=2,
    )
    begin_round(steady, 1, ZEROS, nodes=(10, 11))
    first, _ = steady.aggregate_train(1, _replies(_sealed(1, ZEROS)))
    assert first is not None
    steady.finish_round(1, first)
    after = arrays_of(first)
    begin_round(steady, 2, after, nodes=(10, 11))
    second, _ = steady.aggregate_train(2, _replies(_sealed(2, after)))
    assert second is not None

    crashed = _crash(url, tmp_path, _momentum())
    assert arrays_sha256(crashed.after_round_1) == arrays_sha256(after)
    _forget_kept(crashed)
    opened = _resume(crashed)
    assert opened.point.weights is not None and set(opened.point.server_state) == {"w"}

    def redo_round_2(restore_state: bool) -> Arrays:
        strategy, _ = _resumed_strategy(crashed, opened, _momentum())
        assert opened.point.weights is not None
        strategy.restore(opened.point.weights, opened.point.server_state if restore_state else {})
        begin_round(strategy, 1, opened.point.weights, nodes=(10, 11))  # Flower's round 1
        redone, _ = strategy.aggregate_train(1, _replies(_sealed(2, after, run=NEW_RUN)))
        assert redone is not None
        return arrays_of(redone)

    np.testing.assert_allclose(redo_round_2(True)["w"], arrays_of(second)["w"], rtol=1e-6)
    # without the saved momentum the same round gives another model: the state matters
    assert not np.allclose(redo_round_2(False)["w"], arrays_of(second)["w"])
    crashed.ledger.close()


# -- a round whose replies were kept is recovered, not trained again ----------------------


def test_a_round_whose_replies_were_kept_is_recovered_not_trained_again(crashed: Crashed) -> None:
    opened = _resume(crashed)
    assert opened.recovery is not None
    assert (sorted(opened.recovery.replies), opened.recovery.carrier) == (
        ["inst0", "inst1"],
        str(RUN),
    )
    strategy, _ = _resumed_strategy(crashed, opened)
    assert opened.point.weights is not None
    strategy.recover_round(opened.point.weights, opened.recovery.replies, opened.recovery.carrier)
    assert strategy.rounds_done == 2  # Flower's round 1 is now the ledger's round 3
    with crashed.ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    assert [(c["round"], c["institution"]) for c in run["privacy_charges"]] == [
        (1, "inst0"), (1, "inst1"), (2, "inst0"), (2, "inst1"),
    ]  # fmt: skip  # round 2's charges once: nobody paid for it twice
    assert [(f["flower_run_id"], f["first_round"]) for f in run["flower_runs"]] == [
        (str(RUN), 1), (str(NEW_RUN), 3),
    ]  # fmt: skip  # round 2 stays carried by the run its updates are bound to
    owed = [r for name in ("inst0", "inst1") for r in strategy.outbox.pending(name)]
    assert [(r.round, r.run_id) for r in owed] == [(2, str(RUN)), (2, str(RUN))]
    for receipt in owed:
        receipt.verify(OPERATOR.public_key())
    verify_ledger(crashed.ledger, OPERATOR.public_key())
    crashed.ledger.close()


def test_a_recovered_round_gives_the_model_the_run_would_have_given(
    url: str, tmp_path: Path
) -> None:
    """FedAvgM with momentum: the recovered round 2 is the round 2 of a run that never stopped."""
    licence_check = LicenceCheck(None)
    steady = ConsortiumStrategy(
        _momentum(),
        intake=UpdateIntake(
            _gate(RUN), privacy=PrivacyConfig(epsilon=8.0), licence_check=licence_check
        ),
        licence_check=licence_check, evaluator=lambda w: (0.5, 0.5), min_nodes=2,
    )  # fmt: skip
    crashed = _crash(url, tmp_path, _momentum())
    begin_round(steady, 1, ZEROS, nodes=(10, 11))
    first, _ = steady.aggregate_train(1, _replies(crashed.sealed[1]))
    assert first is not None
    begin_round(steady, 2, arrays_of(first), nodes=(10, 11))
    second, _ = steady.aggregate_train(2, _replies(crashed.sealed[2]))
    assert second is not None
    opened = _resume(crashed)
    assert opened.recovery is not None and opened.point.weights is not None
    strategy, _ = _resumed_strategy(crashed, opened, _momentum())
    strategy.restore(opened.point.weights, opened.point.server_state)
    recovered = strategy.recover_round(
        opened.point.weights, opened.recovery.replies, opened.recovery.carrier
    )
    np.testing.assert_allclose(recovered["w"], arrays_of(second)["w"], rtol=1e-6)
    crashed.ledger.close()


def test_charges_the_crash_left_unwritten_are_recorded_from_the_signed_headers(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 2's replies were kept, then the ledger write of their charges failed for good:
    the recovery records each charge from the header its member signed, so the ledger
    never holds less privacy spent than the members spent."""
    record_replies = LedgerRecorder.record_replies

    def lost_in_round_2(
        self: LedgerRecorder, n: int, charges: list[ChargeFact], exclusions: list[ExclusionFact]
    ) -> None:
        if n == 2:
            raise LedgerUnreachable("lost the connection to the ledger (test)")
        record_replies(self, n, charges, exclusions)

    monkeypatch.setattr(LedgerRecorder, "record_replies", lost_in_round_2)
    with pytest.raises(LedgerUnreachable):
        _crash(url, tmp_path)
    monkeypatch.undo()
    crashed = _crashed_as_left(url, tmp_path)
    with crashed.ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert [c["round"] for c in run["privacy_charges"]] == [1, 1]  # round 2's never written
    opened = _resume(crashed)
    assert opened.recovery is not None and opened.point.weights is not None
    strategy, _ = _resumed_strategy(crashed, opened)
    strategy.recover_round(opened.point.weights, opened.recovery.replies, opened.recovery.carrier)
    with crashed.ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    charged = {(c["round"], c["institution"]): c["epsilon"] for c in run["privacy_charges"]}
    assert charged == {
        (1, "inst0"): 2.0, (1, "inst1"): 2.0, (2, "inst0"): 3.0, (2, "inst1"): 3.0,
    }  # fmt: skip  # make_charge(1.0 + round): what each member signed
    verify_ledger(crashed.ledger, OPERATOR.public_key())
    crashed.ledger.close()


def _crashed_as_left(url: str, tmp_path: Path) -> Crashed:
    """The crashed run's ledger and operator folder, opened again after the crash."""
    operator = OperatorFiles(tmp_path / "op")
    ledger = Ledger(url)
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    return Crashed(ledger, run["id"], operator, {}, [], {})


def test_a_kept_reply_changed_on_the_operators_disk_is_refused(crashed: Crashed) -> None:
    """The operator cannot slip an update of its own into a recovered round."""
    folder = crashed.operator.snapshot_dir / "round-0002-updates"
    forged = seal_for(
        "inst1", {"w": np.full(2, 50.0, np.float32)}, 5, server_round=2,
        model=crashed.after_round_1, charge=make_charge(3.0), run=RUN,
    )  # fmt: skip
    doc = json.loads(forged.to_json())
    doc["signature"] = json.loads(crashed.sealed[2]["inst1"].to_json())["signature"]
    (folder / "inst1.json").write_text(json.dumps(doc))  # the member's signature, another update
    opened = _resume(crashed)
    assert opened.recovery is not None and opened.point.weights is not None
    strategy, _ = _resumed_strategy(crashed, opened)
    with pytest.raises(RoundFailed, match="1 of the required 2 nodes"):
        strategy.recover_round(
            opened.point.weights, opened.recovery.replies, opened.recovery.carrier
        )
    with crashed.ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    (refused,) = [e for e in run["exclusions"] if e["round"] == 2]
    assert refused["institution"] == "inst1" and "signature" in refused["reason"]
    crashed.ledger.close()


class _InterruptedCli(FlwrCli):
    """The flwr CLI as Ctrl-C finds it: waiting on the run's status; it notes 'flwr stop'."""

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.stopped: list[tuple[str, ...]] = []

    def run_status(self, run_id: int) -> dict[str, Any]:
        raise KeyboardInterrupt

    def json(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        self.stopped.append(args)
        return {"success": True}


def test_ctrl_c_on_the_operator_side_stops_the_flower_run_and_records_it(
    crashed: Crashed, tmp_path: Path
) -> None:
    cli = _InterruptedCli(tmp_path / "flwr-home")
    with pytest.raises(KeyboardInterrupt):
        follow_with_progress(cli, crashed.ledger, RUN)
    assert cli.stopped == [("stop", str(RUN), cli.connection)]
    with crashed.ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert (run["status"], run["status_reason"]) == (
        "interrupted", "stopped by the operator (Ctrl-C or SIGTERM)",
    )  # fmt: skip
    crashed.ledger.close()
