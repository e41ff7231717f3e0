"""Charges a member paid that the ledger lacks: the node reports them, the server records them once.

A round whose replies never reached the ServerApp (it died first) was paid
for by every node that trained. The node keeps each sealed update until a
receipt covers it, hands the server those still owed with its next training
reply, and forgets each once the server says the ledger holds its charge.
Real sealed envelopes, a real ledger on both backends; the member that lies
(a forged signature, another member's update) gets nothing recorded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from client.owed import OWED_MAX, acknowledged_of, forget, keep_sealed, owed, owed_record
from common.arrays import Arrays
from common.envelope import Envelope
from common.protocol import CHARGES_RECORDED, OWED_CHARGES, PrivacyCharge
from ledger import Ledger
from ledger.report import ledger_report
from ledger.verify import verify_ledger
from server.app.strategy import ConsortiumStrategy, OwedCharges
from tests.support.sealed_updates import (
    RUN,
    SIGNERS,
    begin_round,
    make_charge,
    make_strategy,
    reply_carrying,
    run_in,
    seal_for,
    server_task_identity,
)

pytestmark = pytest.mark.usefixtures("server_task_identity")
assert server_task_identity  # imported so that pytest finds the fixture

MODEL: Arrays = {"w": np.zeros(2, np.float32)}
NAMES = ("inst0", "inst1")


def _charge(epsilon: float, history: str) -> PrivacyCharge:
    return dataclasses.replace(make_charge(epsilon), history_sha256=history * 64)


def _sealed(name: str, number: int, epsilon: float, run: int = RUN) -> Envelope:
    return seal_for(
        name, {"w": np.ones(2, np.float32)}, 5, server_round=number, model=MODEL,
        charge=_charge(epsilon, "abcdef"[number % 6]), run=run,
    )  # fmt: skip


# -- the node's side ------------------------------------------------------------------


def test_a_node_reports_what_no_receipt_covers_oldest_first_never_the_update_just_sealed(
    tmp_path: Path,
) -> None:
    sealed = [_sealed("inst0", n, 1.0 + n) for n in range(1, 7)]
    for i, envelope in enumerate(sealed):
        path = keep_sealed(tmp_path, envelope)
        os.utime(path, ns=(i * 10**9, i * 10**9))  # sealed in this order
    (tmp_path / f"run-{RUN}-round-0002.json").write_text("{}")  # round 2 was receipted
    reported = owed(tmp_path, besides=sealed[-1])
    assert [e.ciphertext_sha256() for e in reported] == [
        e.ciphertext_sha256() for e in (sealed[0], sealed[2], sealed[3], sealed[4])
    ]
    assert len(reported) == OWED_MAX
    assert not (tmp_path / "sent" / f"run-{RUN}-round-0002.envelope.json").exists()
    assert forget(tmp_path, [sealed[0].ciphertext_sha256(), "0" * 64]) == 1
    assert sealed[0].ciphertext_sha256() not in {e.ciphertext_sha256() for e in owed(tmp_path)}


def test_a_kept_update_that_cannot_be_read_is_left_as_evidence_and_not_reported(
    tmp_path: Path,
) -> None:
    keep_sealed(tmp_path, _sealed("inst0", 1, 2.0))
    broken = tmp_path / "sent" / f"run-{RUN}-round-0002.envelope.json"
    broken.write_text("not json")
    assert len(owed(tmp_path)) == 1 and broken.exists()
    assert acknowledged_of(ConfigRecord({"ciphertexts": "not a list"})) == []
    assert acknowledged_of(None) == []


# -- the server's side ------------------------------------------------------------------


@pytest.fixture
def strategy(url: str, tmp_path: Path) -> ConsortiumStrategy:
    ledger = Ledger(url)
    run_id = run_in(ledger, NAMES, flower_run_id=RUN)
    made = make_strategy(tmp_path, ledger, run_id, min_nodes=1, model=MODEL, server_round=0)
    made.owed = OwedCharges({name: SIGNERS[name].public_key() for name in NAMES})
    return made


def _reporting(node: int, envelope: Envelope, owed_envelopes: list[Envelope]) -> Message:
    reply = reply_carrying(node, envelope)
    reply.content[OWED_CHARGES] = owed_record(owed_envelopes)
    return reply


def _charges(strategy: ConsortiumStrategy) -> list[tuple[int, str, float]]:
    ledger: Ledger = strategy.recorder.ledger  # type: ignore[attr-defined]
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    return sorted((c["round"], c["institution"], c["epsilon"]) for c in run["privacy_charges"])


def test_a_charge_whose_reply_never_arrived_is_recorded_once_from_the_members_signature(
    strategy: ConsortiumStrategy,
) -> None:
    lost = _sealed("inst1", 1, 2.0)  # inst1 trained round 1; its reply never arrived
    begin_round(strategy, 1, MODEL, nodes=(10, 11))
    strategy.aggregate_train(1, [reply_carrying(10, _sealed("inst0", 1, 2.0))])
    assert _charges(strategy) == [(1, "inst0", 2.0)]
    begin_round(strategy, 2, MODEL, nodes=(10, 11))
    replies = [
        reply_carrying(10, _sealed("inst0", 2, 3.0)),
        _reporting(11, _sealed("inst1", 2, 3.0), [lost]),
    ]
    strategy.aggregate_train(2, replies)
    assert _charges(strategy) == [
        (1, "inst0", 2.0), (1, "inst1", 2.0), (2, "inst0", 3.0), (2, "inst1", 3.0),
    ]  # fmt: skip
    # the node is told, with its next message, that it may forget it
    message = Message(RecordDict(), dst_node_id=11, message_type=MessageType.TRAIN)
    strategy.outbox.attach(message, "inst1")
    assert acknowledged_of(message.content.config_records.get(CHARGES_RECORDED)) == [
        lost.ciphertext_sha256()
    ]
    # reported again (the acknowledgement was lost): not recorded twice
    begin_round(strategy, 3, MODEL, nodes=(10, 11))
    strategy.aggregate_train(3, [_reporting(11, _sealed("inst1", 3, 4.0), [lost])])
    assert [c for c in _charges(strategy) if c[:2] == (1, "inst1")] == [(1, "inst1", 2.0)]
    verify_ledger(strategy.recorder.ledger)  # type: ignore[attr-defined]


def test_a_forged_or_unfinished_owed_update_is_not_charged(strategy: ConsortiumStrategy) -> None:
    forged_doc = json.loads(_sealed("inst0", 1, 7.5).to_json())
    forged_doc["signature"] = json.loads(_sealed("inst0", 1, 1.0).to_json())["signature"]
    forged = Envelope.from_json(json.dumps(forged_doc))  # inst0's signature, another charge
    future = _sealed("inst1", 5, 7.0)  # a round not reached yet: not a charge paid
    other_ledger = _sealed("inst1", 1, 6.0, run=RUN + 99)  # a Flower run of no run here
    begin_round(strategy, 2, MODEL, nodes=(10, 11))
    strategy.aggregate_train(
        2, [_reporting(11, _sealed("inst1", 2, 3.0), [forged, future, other_ledger])]
    )
    assert _charges(strategy) == [(2, "inst1", 3.0)]
    message = Message(RecordDict(), dst_node_id=11, message_type=MessageType.TRAIN)
    strategy.outbox.attach(message, "inst1")
    # the verified reports are answered (the node stops sending them); the forgery is not
    acknowledged = acknowledged_of(message.content.config_records.get(CHARGES_RECORDED))
    assert sorted(acknowledged) == sorted(e.ciphertext_sha256() for e in (future, other_ledger))
