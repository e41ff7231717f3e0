"""Each part of the server's strategy on its own, with real sealed updates and a real ledger.

The licence check, the update intake, the round recorder and the receipt
outbox; and the composition with another of Flower's aggregators, to show
the aggregation rule can be swapped without touching the rest.
"""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Error, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedMedian

from common.arrays import Arrays, arrays_of, arrays_sha256
from common.envelope import EnvelopeError, UpdateHeader
from common.licences import SPDX, with_expiry
from common.policy import PrivacyConfig
from common.protocol import METRICS, RECEIPTS, ExclusionCode, Refusal
from common.receipts import Receipt, TreeHead
from ledger.report import ledger_report
from ledger.verify import verify_ledger
from server.app.snapshots import load_snapshot
from server.app.strategy import (
    FinishedRound,
    LedgerRecorder,
    LicenceCheck,
    NullRecorder,
    ReceiptOutbox,
    UpdateIntake,
)
from server.app.strategy.intake import RoundIntake
from tests.support.sealed_updates import (
    RUN,
    ledger_with_run,
    make_charge,
    make_gate,
    make_strategy,
    refusal_reply,
    reply_carrying,
    seal_for,
    sealed_reply,
    server_task_identity,
)

pytestmark = pytest.mark.usefixtures("server_task_identity")
assert server_task_identity  # imported so that pytest finds the fixture

ZEROS = {"w": np.zeros(2, np.float32)}


def _header(participant: str, dataset: str) -> UpdateHeader:
    return UpdateHeader(
        run_id="7",
        round=1,
        participant=participant,
        model_sha256="m" * 64,
        base_model_sha256="b" * 64,
        num_examples=5,
        privacy=dataclasses.replace(make_charge(), dataset_sha256=dataset),
    )


# -- the licence check -----------------------------------------------------------


def test_the_licence_check_asks_each_institution_if_any_dataset_may_still_be_used() -> None:
    day = [date(2026, 11, 30)]
    check = LicenceCheck(
        {
            ("uni-a", "a" * 64): with_expiry(SPDX["CC-BY-4.0"], date(2026, 12, 1)),
            ("uni-a", "b" * 64): with_expiry(SPDX["CC-BY-4.0"], date(2027, 1, 1)),
            ("co-c", "c" * 64): with_expiry(SPDX["CC-BY-4.0"], date(2026, 12, 1)),
        },
        purpose="research",
        today=lambda: day[0],
    )
    assert check.blocked("uni-a") is None and check.blocked("co-c") is None
    assert check.blocked("nobody") == "nobody has no admitted dataset"
    day[0] = date(2026, 12, 2)
    assert check.blocked("uni-a") is None  # its other dataset is still licensed
    assert check.blocked("co-c") == "licence CC-BY-4.0 expired on 2026-12-01"
    with pytest.raises(EnvelopeError, match=r"\(licence\)|expired") as err:
        check.check_update(_header("uni-a", "a" * 64))
    assert err.value.reason == "licence"
    check.check_update(_header("uni-a", "b" * 64))
    with pytest.raises(EnvelopeError) as err:
        check.check_update(_header("uni-a", "f" * 64))
    assert err.value.reason == "unknown-dataset"


def test_a_licence_check_without_licences_lets_everyone_through() -> None:
    check = LicenceCheck(None)
    assert check.blocked("anyone") is None
    check.check_update(_header("anyone", "f" * 64))


# -- the update intake -----------------------------------------------------------


def test_the_intake_sorts_replies_into_decrypted_updates_and_reasons() -> None:
    intake = UpdateIntake(
        make_gate(ZEROS), privacy=PrivacyConfig(epsilon=8.0), licence_check=LicenceCheck(None)
    )
    intake.begin_round(1, arrays_sha256(ZEROS))
    good = sealed_reply(10, "inst0", {"w": np.full(2, 3.0, np.float32)}, 7)
    over = sealed_reply(11, "inst1", {"w": np.ones(2, np.float32)}, 5, make_charge(9.0))
    refused = refusal_reply(12, "inst2", "no budget left", ExclusionCode.BUDGET_EXHAUSTED)
    taken = intake.take([good, over, refused])
    (accepted,) = taken.accepted
    # what Flower's aggregation reads: the decrypted arrays, weighted by the signed count
    np.testing.assert_array_equal(
        arrays_of(accepted.message.content.array_records["arrays"])["w"], np.full(2, 3.0)
    )
    assert accepted.message.content.metric_records[METRICS]["num-examples"] == 7
    assert (accepted.update.institution, accepted.update.num_examples) == ("inst0", 7)
    assert accepted.charge.charge == make_charge()
    assert [(e.institution, e.node_id, e.code) for e in taken.exclusions] == [
        ("inst1", 11, ExclusionCode.REJECTED),
        ("inst2", 12, ExclusionCode.BUDGET_EXHAUSTED),
    ]
    assert taken.exclusions[0].reason.startswith("update rejected (privacy): reports epsilon 9")
    # nodes are known by their verified updates only
    assert (intake.institution_of(10), intake.institution_of(12)) == ("inst0", None)
    assert intake.nodes == {"inst0": 10, "inst1": 11}


def test_the_intake_refuses_a_second_update_from_the_same_participant() -> None:
    intake = UpdateIntake(
        make_gate(ZEROS), privacy=PrivacyConfig(epsilon=8.0), licence_check=LicenceCheck(None)
    )
    intake.begin_round(1, arrays_sha256(ZEROS))
    envelope = seal_for("inst0", {"w": np.ones(2, np.float32)}, 5, server_round=1, model=ZEROS)
    taken = intake.take([reply_carrying(10, envelope), reply_carrying(11, envelope)])
    assert len(taken.accepted) == 1
    (excluded,) = taken.exclusions
    assert excluded.reason.startswith("update rejected (duplicate):")


# -- the round recorder ----------------------------------------------------------


def _finished(number: int, weights: Arrays, taken: RoundIntake) -> FinishedRound:
    accepted = taken.accepted
    return FinishedRound(
        number=number,
        model_before=arrays_sha256(ZEROS),
        model_after=arrays_sha256(weights),
        weights=weights,
        loss=0.5,
        accuracy=0.9,
        started=0.0,
        updates=[a.update for a in accepted],
    )


def test_the_ledger_recorder_keeps_the_round_its_snapshot_and_owes_receipts(
    tmp_path: Path,
) -> None:
    ledger, run_id = ledger_with_run(tmp_path, ("inst0", "inst1"), flower_run_id=RUN)
    signer = Ed25519PrivateKey.generate()
    recorder = LedgerRecorder(
        ledger, run_id, flower_run_id=str(RUN), snapshot_dir=tmp_path / "snap", signer=signer
    )
    intake = UpdateIntake(
        make_gate(ZEROS), privacy=PrivacyConfig(epsilon=8.0), licence_check=LicenceCheck(None)
    )
    weights = {"w": np.full(2, 2.0, np.float32)}
    receipts: list[Receipt] = []
    for number in (1, 2):
        intake.begin_round(number, arrays_sha256(ZEROS))
        taken = intake.take(
            [
                sealed_reply(10, "inst0", weights, 5, None, number, model=ZEROS),
                sealed_reply(11, "inst1", weights, 5, None, number, model=ZEROS),
            ]
        )
        recorder.record_replies(number, [a.charge for a in taken.accepted], taken.exclusions)
        receipts += recorder.record_round(_finished(number, weights, taken))
    assert [(r.participant, r.round) for r in receipts] == [
        ("inst0", 1), ("inst1", 1), ("inst0", 2), ("inst1", 2),
    ]  # fmt: skip
    for receipt in receipts:
        receipt.verify(signer.public_key())
    # the second round's receipts extend the head each participant was given
    assert receipts[2].previous_size == receipts[0].tree_head.tree_size
    assert receipts[0].previous_size is None
    assert load_snapshot(tmp_path / "snap" / "round-0002.safetensors")[0] == 2
    report = verify_ledger(ledger, signer.public_key())
    assert report.tree_heads == 2
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    assert len(run["privacy_charges"]) == 4
    ledger.close()


def test_the_null_recorder_keeps_nothing_and_owes_nothing() -> None:
    recorder = NullRecorder()
    recorder.record_exclusions(1, [])
    recorder.record_replies(1, [], [])
    assert recorder.record_round(_finished(1, ZEROS, RoundIntake())) == []


# -- the receipt outbox ----------------------------------------------------------


class _AnsweringGrid:
    """Answers each query as a node would: stored, or a refusal for ``refusing``."""

    def __init__(self, refusing: set[int]) -> None:
        self.refusing = refusing
        self.sent: list[Message] = []

    def send_and_receive(self, messages: list[Message], *, timeout: float | None) -> list[Message]:
        self.sent += messages
        replies = []
        for message in messages:
            if message.metadata.dst_node_id in self.refusing:
                reason = Refusal("inst1", "the receipt does not verify").to_reason()
                replies.append(Message(Error(code=409, reason=reason), reply_to=message))
            else:
                replies.append(Message(RecordDict(), reply_to=message))
        return replies


def _receipt(participant: str, number: int) -> Receipt:
    head = TreeHead.sign(
        Ed25519PrivateKey.generate(), tree_size=1, root="0" * 64, at="t", note="n", origin="log"
    )
    return Receipt(participant, "7", number, 0, "{}", [], head)


def test_the_outbox_sends_what_is_owed_with_the_next_message_once() -> None:
    outbox = ReceiptOutbox()
    outbox.queue([_receipt("inst0", 1), _receipt("inst1", 1)])
    message = Message(RecordDict(), dst_node_id=10, message_type=MessageType.TRAIN)
    outbox.attach(message, "inst0")
    carried = message.content.config_records[RECEIPTS]["receipts"]
    assert [Receipt.from_json(str(t)).round for t in carried] == [1]  # type: ignore[union-attr]
    assert len(outbox.pending("inst0")) == 1  # until the node answers
    outbox.answered(10, "inst0")
    assert outbox.pending("inst0") == [] and len(outbox.pending("inst1")) == 1
    unknown = Message(RecordDict(), dst_node_id=12, message_type=MessageType.TRAIN)
    outbox.attach(unknown, None)  # a node not yet known carries nothing
    assert RECEIPTS not in unknown.content.config_records


def test_the_outbox_delivers_the_rest_in_one_query_per_node_and_reports_refusals() -> None:
    outbox = ReceiptOutbox()
    outbox.queue([_receipt("inst0", 2), _receipt("inst1", 2), _receipt("inst2", 2)])
    grid = _AnsweringGrid(refusing={11})
    outcome = outbox.deliver_remaining(
        grid,  # type: ignore[arg-type]
        {"inst0": 10, "inst1": 11},
        timeout=1.0,
    )
    assert outcome == {
        "inst0": "stored",
        "inst1": "the receipt does not verify",
        "inst2": "not delivered (no reply)",  # no node known for it
    }
    assert {m.metadata.message_type for m in grid.sent} == {MessageType.QUERY}
    assert outbox.pending("inst1") == []  # refused: sending it again changes nothing
    assert len(outbox.pending("inst2")) == 1


# -- another aggregator ----------------------------------------------------------


def test_the_aggregation_rule_can_be_swapped_without_touching_the_rest(tmp_path: Path) -> None:
    values = [1.0, 2.0, 30.0]
    strategy = make_strategy(
        tmp_path, min_nodes=3, model={"w": np.zeros(2, np.float32)}, aggregator=FedMedian()
    )
    replies = [
        sealed_reply(10 + i, f"inst{i}", {"w": np.full(2, v, np.float32)}, 5 + 100 * i)
        for i, v in enumerate(values)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_array_equal(arrays_of(arrays)["w"], np.full(2, np.median(values)))
