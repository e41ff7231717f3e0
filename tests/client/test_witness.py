"""A node as a witness: what it cosigns, what it refuses, and the cosignatures on the wire.

The node's side runs :func:`client.receipts.accept_receipts` (what the ClientApp's
train and query handlers call) on a real state folder, with receipts built
from a real SQLite ledger (``tests/ledger/test_receipts.py``'s world).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg

from client.receipts import accept_receipts, cosign_heads
from common.consortium import Consortium, default_log_origin
from common.note import NoteError, SignatureLine, verify_cosignature
from common.policy import Policy, PrivacyConfig
from common.receipts import ReceiptError, TreeHead
from common.witness import (
    COSIGNATURES,
    MAX_COSIGNATURES,
    Cosigned,
    cosignature_record,
    cosignatures_of,
)
from fedcommons.demo_setup import demo_consortium
from ledger import Ledger
from ledger.tree_heads import sign_tree_head
from server.app.strategy import ConsortiumStrategy, LicenceCheck, UpdateGate, UpdateIntake
from server.app.strategy.recorder import LedgerRecorder, NullRecorder, held_heads
from tests.support.hostile_federation import task_identity
from tests.support.receipt_world import AGGREGATOR, OPERATOR, SIGNERS, World, make_world, node_state

TRAIN = MessageType.TRAIN
H = "a" * 64


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = make_world(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)
    yield world
    world.ledger.close()


def _record(*receipts: str) -> ConfigRecord:
    return ConfigRecord({"receipts": list(receipts)})


def test_a_node_cosigns_what_it_accepted_and_the_head_it_holds(
    world: World, tmp_path: Path
) -> None:
    state = node_state(tmp_path, "uni-a")
    first, second = world.receipts[("uni-a", 1)], world.receipts[("uni-a", 2)]
    assert accept_receipts(state, "uni-a", None).cosignatures == []  # holds nothing yet
    accepted = accept_receipts(state, "uni-a", _record(first.to_json()))
    assert [p.name for p in accepted.stored] == ["run-7-round-0001.json"]
    (cosigned,) = accepted.cosignatures
    assert (cosigned.tree_size, cosigned.root) == (first.tree_head.tree_size, first.tree_head.root)
    line = SignatureLine.parse(cosigned.line)
    assert line.name == "uni-a"
    text = first.tree_head.body().decode()
    verify_cosignature(text, line, SIGNERS["uni-a"].public_key())
    # a reply with nothing to accept still cosigns the largest head held
    assert [c.tree_size for c in accept_receipts(state, "uni-a", None).cosignatures] == [
        first.tree_head.tree_size
    ]
    accepted = accept_receipts(state, "uni-a", _record(second.to_json()))
    assert [c.tree_size for c in accepted.cosignatures] == [second.tree_head.tree_size]


def test_a_refused_receipt_is_recorded_and_nothing_is_cosigned(
    world: World, tmp_path: Path
) -> None:
    state = node_state(tmp_path, "uni-a")
    accept_receipts(state, "uni-a", _record(world.receipts[("uni-a", 1)].to_json()))
    stripped = dataclasses.replace(
        world.receipts[("uni-a", 2)], previous_size=None, previous_root=None, consistency=None
    )
    with pytest.raises(ReceiptError, match="carries no consistency proof"):
        accept_receipts(state, "uni-a", _record(stripped.to_json()))  # raised: no reply content
    refused = list((state.root / "receipts" / "refused").glob("*.json"))
    assert len(refused) == 1 and "round-0002" in refused[0].name


def test_a_checkpoint_of_another_log_is_refused(world: World, tmp_path: Path) -> None:
    state = node_state(tmp_path, "uni-a", origin="consortium.example.org/ledger")
    with pytest.raises(ReceiptError, match="not of this consortium's log"):
        accept_receipts(state, "uni-a", _record(world.receipts[("uni-a", 1)].to_json()))
    same = node_state(tmp_path / "same", "uni-a", origin=default_log_origin(OPERATOR.public_key()))
    assert Consortium.load(same.consortium).origin == world.receipts[("uni-a", 1)].tree_head.origin


def test_the_cosignatures_record_round_trips() -> None:
    items = [Cosigned(9, "a" * 64, "\u2014 uni-a AAAA\n"), Cosigned(24, "b" * 64, "line\n")]
    assert cosignatures_of(cosignature_record(items)) == items


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (ConfigRecord({"roots": ["a"], "lines": ["l"]}), "needs lists"),
        (
            ConfigRecord({"tree_sizes": [1, 2], "roots": ["a"], "lines": ["l"]}),
            "differ in length",
        ),
        (ConfigRecord({"tree_sizes": [0], "roots": [H], "lines": ["l"]}), "positive 64-bit"),
        (ConfigRecord({"tree_sizes": [True], "roots": [H], "lines": ["l"]}), "positive"),
        (ConfigRecord({"tree_sizes": [2**63], "roots": [H], "lines": ["l"]}), "64-bit integer"),
        (ConfigRecord({"tree_sizes": [1], "roots": [1], "lines": ["l"]}), "not text"),
        (ConfigRecord({"tree_sizes": [1], "roots": ["a"], "lines": ["l"]}), "not a hex SHA-256"),
        (ConfigRecord({"tree_sizes": [1], "roots": ["Z" * 64], "lines": ["l"]}), "hex SHA-256"),
        (ConfigRecord({"tree_sizes": [1], "roots": [H], "lines": ["x" * 2000]}), "1 KiB"),
        (
            ConfigRecord(
                {
                    "tree_sizes": [1] * (MAX_COSIGNATURES + 1),
                    "roots": [H] * (MAX_COSIGNATURES + 1),
                    "lines": ["l"] * (MAX_COSIGNATURES + 1),
                }
            ),
            "at most",
        ),
    ],
)
def test_a_malformed_cosignatures_record_is_refused(record: ConfigRecord, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        cosignatures_of(record)


def test_the_server_proves_consistency_from_the_head_each_node_cosigned(world: World) -> None:
    """Receipts start their consistency proof where the node says it is: its cosignature."""
    first, second = world.receipts[("uni-a", 1)], world.receipts[("uni-a", 2)]
    with world.ledger.session() as s:  # nothing cosigned: the head of each one's last receipt
        assert {n: h.tree_size for n, h in held_heads(s).items()} == {
            "uni-a": second.tree_head.tree_size,
            "co-c": second.tree_head.tree_size,
        }
    recorder = LedgerRecorder(
        world.ledger, 1, flower_run_id="7", snapshot_dir=None, signer=OPERATOR
    )
    cosigned = cosign_heads([first.tree_head], "uni-a", SIGNERS["uni-a"])
    assert recorder.record_cosignatures("uni-a", cosigned) == []
    forged = [dataclasses.replace(cosigned[0], line=cosigned[0].line.replace("uni-a", "co-c"))]
    assert "not by the key" in recorder.record_cosignatures("co-c", forged)[0]
    owed = {r.participant: r for r in recorder.resume(rounds_done=2)}  # round 2's, again
    assert owed["uni-a"].previous_size == first.tree_head.tree_size  # as uni-a cosigned
    assert owed["uni-a"].tree_head.root == second.tree_head.root
    assert owed["co-c"].previous_size is None  # it holds round 2's head already, if any


def test_malformed_cosignatures_in_a_reply_are_logged_and_not_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept: list[tuple[str, list[Cosigned]]] = []

    class Recorder(NullRecorder):
        def record_cosignatures(self, institution: str, cosigned: list[Cosigned]) -> list[str]:
            kept.append((institution, cosigned))
            return []

    licence_check = LicenceCheck(None, purpose="research")
    strategy = ConsortiumStrategy(
        FedAvg(),
        intake=UpdateIntake(
            UpdateGate(
                flower_run_id="7",
                aggregator_key=AGGREGATOR,
                participants={},
                expected={},
                base_model_sha256="0" * 64,
            ),
            privacy=PrivacyConfig(epsilon=8.0),
            licence_check=licence_check,
        ),
        licence_check=licence_check,
        evaluator=lambda weights: (0.0, 0.0),
        min_nodes=1,
        recorder=Recorder(),
    )
    good = [Cosigned(3, "a" * 64, "\u2014 uni-a AAAA\n")]
    bad = ConfigRecord({"tree_sizes": [3], "roots": ["a" * 64]})
    with task_identity():
        for record in (cosignature_record(good), bad):
            reply = Message(RecordDict({COSIGNATURES: record}), dst_node_id=1, message_type=TRAIN)
            strategy.take_cosignatures("uni-a", reply)
    assert kept == [("uni-a", good)]
    assert "uni-a sent malformed cosignatures: a cosignatures record needs lists" in caplog.text


def test_a_demo_pointed_at_a_new_ledger_keeps_the_old_receipts_aside(tmp_path: Path) -> None:
    """A node's receipts bind it to one log; the demo starts a new ledger's log afresh."""
    policy = Policy()
    used = f"sqlite:///{tmp_path / 'used.db'}"
    demo = demo_consortium(tmp_path, policy, used)
    held = [
        node.state_dir / "receipts" / "run-7-round-0001.json"
        for node in demo.nodes
        if node.state_dir
    ]
    for path in held:
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    ledger = Ledger(used)
    with ledger.session() as s:
        sign_tree_head(s, OPERATOR, note="round 1")
    ledger.close()
    demo_consortium(tmp_path, policy, used)  # the same log again: nothing moves
    assert all(path.exists() for path in held)
    demo_consortium(tmp_path, policy, f"sqlite:///{tmp_path / 'new.db'}")
    for path in held:
        assert not path.exists()
        (kept,) = path.parent.parent.glob("receipts-before-*")
        assert (kept / path.name).read_text() == "{}"


def test_a_receipt_delivered_again_is_cosigned_as_it_was_checked(
    world: World, tmp_path: Path
) -> None:
    """The same entry and head under another checkpoint text: the node cosigns its own copy."""
    state = node_state(tmp_path, "uni-a")
    first = world.receipts[("uni-a", 1)]
    accept_receipts(state, "uni-a", _record(first.to_json()))
    head = first.tree_head
    other_log = TreeHead.sign(
        OPERATOR,
        tree_size=head.tree_size,
        root=head.root,
        at=head.at,
        note=head.note,
        origin="another.example/log",
    )
    again = dataclasses.replace(first, tree_head=other_log)
    (cosigned,) = accept_receipts(state, "uni-a", _record(again.to_json())).cosignatures
    line = SignatureLine.parse(cosigned.line)
    verify_cosignature(head.body().decode(), line, SIGNERS["uni-a"].public_key())
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignature(other_log.body().decode(), line, SIGNERS["uni-a"].public_key())
