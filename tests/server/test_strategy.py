"""The composed strategy on real Flower messages carrying real sealed updates.

FedAvg maths, the ledger, snapshots, the licence check and the envelope checks
working together, with real X25519/AES-GCM/Ed25519 envelopes built as the
ClientApp builds them (each part alone: ``test_strategy_parts.py``).
"""

import base64
import dataclasses
import hashlib
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.server.superlink.linkstate.utils import (
    create_message_error_unavailable_res_message,
)
from flwr.serverapp.strategy import FedAvgM

from client.receipts import ReceiptBook
from common.arrays import arrays_of, arrays_sha256, arrays_to_bytes, record_of
from common.envelope import Envelope
from common.keys import key_id
from common.licences import SPDX, with_expiry
from common.protocol import ENVELOPE, RECEIPTS, ExclusionCode, PrivacyCharge
from common.receipts import Receipt, read_receipts
from ledger.report import ledger_report
from ledger.verify import verify_ledger
from server.app.snapshots import latest_snapshot, load_snapshot
from server.app.strategy import RoundFailed
from tests.support.sealed_updates import (
    RUN,
    SIGNERS,
    NoGrid,
    QueryGrid,
    begin_round,
    ledger_with_run,
    make_charge,
    make_strategy,
    refusal_reply,
    reply_carrying,
    seal_for,
    sealed_reply,
    server_task_identity,
)

pytestmark = pytest.mark.usefixtures("server_task_identity")
assert server_task_identity  # imported so that pytest finds the fixture


def test_aggregate_is_weighted_by_examples(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    updates = [
        {
            "w": rng.normal(size=(3, 4)).astype(np.float32),
            "b": rng.normal(size=4).astype(np.float32),
        }
        for _ in range(3)
    ]
    examples = [331, 604, 322]
    replies = [
        sealed_reply(i + 10, f"inst{i}", u, n)
        for i, (u, n) in enumerate(zip(updates, examples, strict=True))
    ]
    zeros = {k: np.zeros_like(v) for k, v in updates[0].items()}
    arrays, metrics = make_strategy(tmp_path, model=zeros).aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    result = arrays_of(arrays)
    for name in ("w", "b"):
        expected = np.average([u[name] for u in updates], axis=0, weights=examples)
        np.testing.assert_allclose(result[name], expected, rtol=1e-6)
    assert metrics["train-loss"] == pytest.approx(0.5)


def test_round_fails_below_minimum_with_the_nodes_reasons(tmp_path: Path) -> None:
    request = Message(RecordDict(), dst_node_id=11, message_type=MessageType.TRAIN)
    failed = Message(Error(code=400, reason="bad.npz: the data set is empty"), reply_to=request)
    good = sealed_reply(10, "inst0", {"w": np.ones(2, np.float32)}, 5, server_round=3)
    strategy = make_strategy(tmp_path, model={"w": np.zeros(2, np.float32)}, server_round=3)
    with pytest.raises(
        RoundFailed, match=r"round 3: 1 of the required 2 nodes .*bad.npz: the data set is empty"
    ):
        strategy.aggregate_train(3, [good, failed])


def test_a_rejected_envelope_leaves_out_that_update_only_and_the_ledger_says_why(
    tmp_path: Path,
) -> None:
    ledger, run_id = ledger_with_run(tmp_path, ("inst0", "inst1", "inst2"))
    model = {"w": np.zeros(2, np.float32)}
    strategy = make_strategy(tmp_path, ledger, run_id, min_nodes=1, model=model)
    good = sealed_reply(10, "inst0", {"w": np.ones(2, np.float32)}, 5)
    sealed = seal_for("inst1", {"w": np.full(2, 9.0, np.float32)}, 5, server_round=1, model=model)
    flipped = sealed.ciphertext[:-1] + bytes([sealed.ciphertext[-1] ^ 1])
    tampered = reply_carrying(11, dataclasses.replace(sealed, ciphertext=flipped))
    bare = reply_carrying(12, sealed)
    del bare.content.config_records[ENVELOPE]
    arrays, _ = strategy.aggregate_train(1, [good, tampered, bare])
    assert arrays is not None  # only the good update is averaged
    np.testing.assert_array_equal(arrays_of(arrays)["w"], np.ones(2, np.float32))
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert [(e["institution"], e["node_id"], e["code"]) for e in run["exclusions"]] == [
        ("inst1", "11", 422),
        (None, "12", 422),
    ]
    assert run["exclusions"][0]["reason"].startswith("update rejected (bad-signature): ")
    assert run["exclusions"][1]["reason"] == (
        "update rejected (malformed): the reply has no 'envelope' record"
    )
    assert [c["institution"] for c in run["privacy_charges"]] == ["inst0"]
    ledger.close()


@pytest.mark.parametrize(
    ("charge", "drop_privacy", "message"),
    [
        (make_charge(dp=False, epsilon=float("inf")), False, "trained without DP, but the policy"),
        (make_charge(epsilon=8.5), False, "reports epsilon 8.5000, past the budget 8.0"),
    ],
)
def test_update_outside_the_privacy_policy_is_rejected(
    tmp_path: Path, charge: PrivacyCharge, drop_privacy: bool, message: str
) -> None:
    model = {"w": np.zeros(2, np.float32)}

    def replies() -> list[Message]:
        good = sealed_reply(10, "inst0", {"w": np.ones(2, np.float32)}, 5)
        return [good, sealed_reply(11, "inst1", {"w": np.full(2, 9.0, np.float32)}, 5, charge)]

    arrays, _ = make_strategy(tmp_path, min_nodes=1, model=model).aggregate_train(1, replies())
    assert arrays is not None  # only the good update is averaged
    np.testing.assert_array_equal(arrays_of(arrays)["w"], np.ones(2, np.float32))
    with pytest.raises(
        RoundFailed, match=f"inst1 \\[excluded\\]: update rejected \\(privacy\\): {message}"
    ):
        make_strategy(tmp_path, min_nodes=2, model=model).aggregate_train(1, replies())


def test_exhausted_node_is_excluded_and_recorded_while_the_rest_carry_on(tmp_path: Path) -> None:
    ledger, run_id = ledger_with_run(tmp_path, ("inst0", "inst1", "inst2"))
    strategy = make_strategy(
        tmp_path, ledger, run_id, min_nodes=2, model={"w": np.zeros(2, np.float32)}, server_round=2
    )
    replies = [
        sealed_reply(
            10, "inst0", {"w": np.full(2, 1.0, np.float32)}, 1, make_charge(3.0), server_round=2
        ),
        sealed_reply(
            11, "inst1", {"w": np.full(2, 4.0, np.float32)}, 3, make_charge(7.9), server_round=2
        ),
        refusal_reply(12, "inst2", "privacy budget exhausted for inst2: epsilon spent 7.99 of 8"),
    ]
    arrays, _ = strategy.aggregate_train(2, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays_of(arrays)["w"], np.full(2, 3.25))  # (1*1 + 3*4) / 4
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    (exclusion,) = run["exclusions"]
    assert exclusion == {
        "round": 2,
        "institution": "inst2",
        "node_id": "12",
        "code": ExclusionCode.BUDGET_EXHAUSTED,
        "reason": "privacy budget exhausted for inst2: epsilon spent 7.99 of 8",
    }
    assert [(c["institution"], c["epsilon"], c["round"]) for c in run["privacy_charges"]] == [
        ("inst0", 3.0, 2),
        ("inst1", 7.9, 2),
    ]
    ledger.close()


def test_too_few_nodes_within_budget_stops_the_run_and_keeps_the_record(tmp_path: Path) -> None:
    ledger, run_id = ledger_with_run(tmp_path, ("inst0", "inst1"))
    strategy = make_strategy(
        tmp_path, ledger, run_id, min_nodes=2, model={"w": np.zeros(2, np.float32)},
        server_round=4, nodes=(10, 11),
    )  # fmt: skip
    replies = [
        sealed_reply(
            10, "inst0", {"w": np.ones(2, np.float32)}, 1, make_charge(7.5), server_round=4
        ),
        refusal_reply(11, "inst1", "privacy budget exhausted for inst1"),
    ]
    with pytest.raises(
        RoundFailed,
        match=r"round 4: 1 of the required 2 nodes .*inst1 \[privacy budget\]: privacy budget",
    ):
        strategy.aggregate_train(4, replies)
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert [e["institution"] for e in run["exclusions"]] == ["inst1"]
    # inst0 trained and spent budget even though the round failed: the charge is kept
    assert [(c["institution"], c["epsilon"]) for c in run["privacy_charges"]] == [("inst0", 7.5)]
    ledger.close()


def test_finish_round_records_hashes_and_snapshots(tmp_path: Path) -> None:
    ledger, run_id = ledger_with_run(tmp_path, ("inst0", "inst1"), flower_run_id=2**63 + 5)
    before = {"w": np.zeros((2, 2), np.float32)}
    strategy = make_strategy(tmp_path, ledger, run_id, model=before)
    updates = [{"w": np.full((2, 2), 1.0, np.float32)}, {"w": np.full((2, 2), 4.0, np.float32)}]
    envelopes = [
        seal_for(name, update, n, server_round=1, model=before)
        for name, update, n in (("inst0", updates[0], 1), ("inst1", updates[1], 3))
    ]
    replies = [reply_carrying(10, envelopes[0]), reply_carrying(11, envelopes[1])]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    metrics = strategy.finish_round(1, arrays)
    assert metrics["loss"] == pytest.approx(4 * 3.25)  # the evaluator sums w = 3.25 everywhere
    with ledger.session() as s:
        report = ledger_report(s)
    run = report["runs"][0]
    assert run["flower_run_id"] == str(2**63 + 5)
    (round_row,) = run["rounds"]
    assert round_row["model_sha256_before"] == arrays_sha256(before)
    assert round_row["model_sha256_after"] == arrays_sha256(
        {"w": np.full((2, 2), 3.25, np.float32)}
    )
    assert round_row["accuracy"] == 0.75 and round_row["participants"] == 2
    assert round_row["train_loss"] == pytest.approx(0.5)
    assert [u["update_sha256"] for u in round_row["updates"]] == [arrays_sha256(u) for u in updates]
    assert [u["update_bytes"] for u in round_row["updates"]] == [
        len(arrays_to_bytes(u)) for u in updates
    ]
    assert [u["num_examples"] for u in round_row["updates"]] == [1, 3]
    # the sealed-update evidence: what travelled, what it decrypted to, who signed it
    assert [u["ciphertext_sha256"] for u in round_row["updates"]] == [
        e.ciphertext_sha256() for e in envelopes
    ]
    assert [u["plaintext_sha256"] for u in round_row["updates"]] == [
        hashlib.sha256(arrays_to_bytes(u)).hexdigest() for u in updates
    ]
    assert [u["signer_key_id"] for u in round_row["updates"]] == [
        key_id(SIGNERS[n].public_key()) for n in ("inst0", "inst1")
    ]
    assert [base64.b64decode(u["signature"]) for u in round_row["updates"]] == [
        e.signature for e in envelopes
    ]
    # ... and the envelopes themselves, kept beside the snapshot
    kept = tmp_path / "snap" / "round-0001-updates"
    assert Envelope.from_json((kept / "inst1.json").read_text()) == envelopes[1]
    snapshot = latest_snapshot(tmp_path / "snap")
    assert snapshot is not None and snapshot.name == "round-0001.safetensors"
    number, saved = load_snapshot(snapshot)
    assert number == 1
    np.testing.assert_array_equal(saved["w"], np.full((2, 2), 3.25, np.float32))
    ledger.close()


def test_server_momentum_follows_fedavgm_over_two_rounds(tmp_path: Path) -> None:
    strategy = make_strategy(
        tmp_path,
        model={"w": np.zeros(3, np.float32)},
        server_round=0,
        aggregator=FedAvgM(server_learning_rate=0.5, server_momentum=0.9),
    )
    w0 = np.zeros(3, np.float32)
    begin_round(strategy, 1, {"w": w0})
    a = [np.array([1.0, 2.0, 3.0], np.float32), np.array([3.0, 2.0, 1.0], np.float32)]
    arrays, _ = strategy.aggregate_train(
        1, [sealed_reply(10, "i0", {"w": a[0]}, 1), sealed_reply(11, "i1", {"w": a[1]}, 3)]
    )
    assert arrays is not None
    step1 = w0 - np.average(a, axis=0, weights=[1, 3])
    w1 = w0 - 0.5 * step1
    np.testing.assert_allclose(arrays_of(arrays)["w"], w1, rtol=1e-6)
    b = [np.ones(3, np.float32), np.full(3, 5.0, np.float32)]
    sent = arrays_of(arrays)
    begin_round(strategy, 2, sent)
    arrays, _ = strategy.aggregate_train(
        2,
        [
            sealed_reply(10, "i0", {"w": b[0]}, 1, server_round=2, model=sent),
            sealed_reply(11, "i1", {"w": b[1]}, 1, server_round=2, model=sent),
        ],
    )
    assert arrays is not None
    velocity = 0.9 * step1 + (w1 - np.average(b, axis=0))
    np.testing.assert_allclose(arrays_of(arrays)["w"], w1 - 0.5 * velocity, rtol=1e-6)


def test_a_licence_that_expires_mid_run_excludes_that_institution_from_then_on(
    tmp_path: Path,
) -> None:
    ledger, run_id = ledger_with_run(tmp_path, ("inst0", "inst1", "inst2"))
    day = [date(2026, 11, 30)]
    model = {"w": np.zeros(2, np.float32)}
    strategy = make_strategy(
        tmp_path,
        ledger,
        run_id,
        min_nodes=1,
        model=model,
        server_round=0,
        licences={
            ("inst0", "d" * 64): with_expiry(SPDX["CC-BY-4.0"], date(2026, 12, 1)),
            ("inst1", "d" * 64): SPDX["CC-BY-NC-4.0"],
        },
        today=lambda: day[0],
    )
    begin_round(strategy, 1, model)
    replies = [
        sealed_reply(10, "inst0", {"w": np.ones(2, np.float32)}, 5),
        sealed_reply(11, "inst1", {"w": np.ones(2, np.float32)}, 5),
        # inst2 trained on a dataset it never declared
        reply_carrying(
            12,
            seal_for(
                "inst2",
                {"w": np.ones(2, np.float32)},
                5,
                server_round=1,
                model=model,
                charge=dataclasses.replace(make_charge(), dataset_sha256="9" * 64),
            ),
        ),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    day[0] = date(2026, 12, 2)  # inst0's licence has expired
    sent = arrays_of(arrays)
    messages = list(
        strategy.configure_train(2, record_of(sent), ConfigRecord(), NoGrid())  # type: ignore[arg-type]
    )
    # neither inst0 (licence expired) nor inst2 (nothing admitted) is asked to train
    assert sorted(m.metadata.dst_node_id for m in messages) == [11]
    late = sealed_reply(10, "inst0", {"w": np.ones(2, np.float32)}, 5, server_round=2, model=sent)
    arrays, _ = strategy.aggregate_train(
        2,
        [
            late,
            sealed_reply(11, "inst1", {"w": np.ones(2, np.float32)}, 5, server_round=2, model=sent),
        ],
    )
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    ledger.close()
    # Flower samples nodes in random order: compare the exclusions sorted
    found = sorted(
        (e["round"], e["code"], e["institution"], e["reason"]) for e in run["exclusions"]
    )
    assert found == sorted(
        [
            (1, 422, "inst2", "update rejected (unknown-dataset): inst2 trained on dataset "
             "9999999999999999..., which it did not declare at admission"),
            (2, 451, "inst0", "licence CC-BY-4.0 expired on 2026-12-01"),
            (2, 451, "inst2", "inst2 has no admitted dataset"),
            (2, 422, "inst0", "update rejected (licence): licence CC-BY-4.0 expired on "
             "2026-12-01 (research run)"),
        ]
    )  # fmt: skip


def test_every_contributor_gets_a_receipt_for_every_round(tmp_path: Path) -> None:
    ledger, run_id = ledger_with_run(tmp_path, ("inst0", "inst1"), flower_run_id=RUN)
    operator = Ed25519PrivateKey.generate()
    model = {"w": np.zeros(2, np.float32)}
    strategy = make_strategy(
        tmp_path, ledger, run_id, model=model, server_round=0, signer=operator,
        evaluator=lambda w: (0.0, 0.5),
    )  # fmt: skip
    nodes = {10: "inst0", 11: "inst1"}
    books = {node: (name, ReceiptBook(tmp_path / name)) for node, name in nodes.items()}
    for server_round in (1, 2):
        messages = list(
            strategy.configure_train(server_round, record_of(model), ConfigRecord(), NoGrid())  # type: ignore[arg-type]
        )
        carried = {m.metadata.dst_node_id: m.content.config_records.get(RECEIPTS) for m in messages}
        if server_round == 1:
            assert set(carried.values()) == {None}  # nothing recorded yet
        else:  # round 1's receipt rides on round 2's train message, one per node
            for node, record in carried.items():
                if node not in nodes:
                    continue
                assert record is not None
                texts = record["receipts"]
                assert isinstance(texts, list) and len(texts) == 1
                text = texts[0]
                receipt = Receipt.from_json(str(text))
                assert (receipt.participant, receipt.round) == (nodes[node], 1)
                name, book = books[node]
                book.accept(receipt, operator.public_key(), name)
            assert "arrays" in messages[0].content.array_records  # the model still travels
        envelopes = {
            node: seal_for(
                name, {"w": np.ones(2, np.float32)}, 5, server_round=server_round, model=model
            )
            for node, name in nodes.items()
        }
        for node, envelope in envelopes.items():
            books[node][1].record_sent(envelope)
        arrays, _ = strategy.aggregate_train(
            server_round, [reply_carrying(node, e) for node, e in envelopes.items()]
        )
        assert arrays is not None
        model = arrays_of(arrays)
        strategy.finish_round(server_round, arrays)
    # the last round's receipts go out in one query per node after the run
    grid = QueryGrid(books, operator)
    assert strategy.deliver_receipts(grid, timeout=5.0) == {"inst0": "stored", "inst1": "stored"}  # type: ignore[arg-type]
    assert {m.metadata.message_type for m in grid.sent} == {MessageType.QUERY}
    assert strategy.deliver_receipts(grid, timeout=5.0) == {}  # type: ignore[arg-type]
    held = []
    for _, book in books.values():
        stored = sorted(p.name for p in book.folder.glob("*.json"))
        assert stored == [f"run-{RUN}-round-0001.json", f"run-{RUN}-round-0002.json"]
        held += [(str(p), r) for p, r in read_receipts(book.folder)]
    report = verify_ledger(ledger, operator.public_key(), held)
    assert (report.receipts, report.tree_heads) == (4, 2)
    ledger.close()


def test_a_node_gone_mid_round_is_excluded_by_name_and_still_owed_its_receipts(
    tmp_path: Path,
) -> None:
    """Flower answers for a vanished node itself, from the SuperLink's own node id."""
    names = ("inst0", "inst1", "inst2")
    ledger, run_id = ledger_with_run(tmp_path, names, flower_run_id=RUN)
    model = {"w": np.zeros(2, np.float32)}
    strategy = make_strategy(
        tmp_path, ledger, run_id, model=model, server_round=0,
        signer=Ed25519PrivateKey.generate(), evaluator=lambda w: (0.0, 0.5),
    )  # fmt: skip
    nodes = dict(zip((10, 11, 12), names, strict=True))
    for server_round in (1, 2):
        grid = NoGrid(tuple(nodes))
        messages = list(
            strategy.configure_train(server_round, record_of(model), ConfigRecord(), grid)  # type: ignore[arg-type]
        )
        for message in messages:  # what Flower's push does to each message sent
            message.metadata.__dict__["_message_id"] = message.object_id
        ones = {"w": np.ones(2, np.float32)}
        replies = [
            sealed_reply(node, name, ones, 5, None, server_round, model=model)
            for node, name in nodes.items()
            if server_round == 1 or name != "inst2"
        ]
        if server_round == 2:  # inst2's SuperNode missed its heartbeats: the SuperLink answers
            (request,) = [m for m in messages if m.metadata.dst_node_id == 12]
            replies.append(
                create_message_error_unavailable_res_message(request.metadata, "node_unavail")
            )
            assert replies[-1].metadata.src_node_id != 12
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert arrays is not None
        model = arrays_of(arrays)
        strategy.finish_round(server_round, arrays)
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    ledger.close()
    (gone,) = run["exclusions"]
    assert (gone["round"], gone["institution"], gone["node_id"]) == (2, "inst2", "12")
    assert gone["code"] == ExclusionCode.UNAVAILABLE
    assert gone["reason"].startswith("Flower error 5: ")
    # inst2 never saw round 2's message, so round 1's receipt is still owed to it
    assert [r.round for r in strategy.outbox.pending("inst2")] == [1]
    assert [r.round for r in strategy.outbox.pending("inst0")] == [2]


@pytest.mark.parametrize("metrics", [{}, {"train-loss": float("nan"), "train-seconds": 1.0}])
def test_a_reply_without_finite_metrics_is_rejected_not_recorded(
    tmp_path: Path, metrics: dict[str, int | float | list[int] | list[float]]
) -> None:
    """SQLite cannot store NaN, so a missing or NaN train-loss never reaches the ledger."""
    ledger, run_id = ledger_with_run(tmp_path, ("inst0", "inst1"))
    model = {"w": np.zeros(2, np.float32)}
    strategy = make_strategy(tmp_path, ledger, run_id, min_nodes=1, model=model, nodes=(10, 11))
    odd = reply_carrying(
        11, seal_for("inst1", {"w": np.ones(2, np.float32)}, 5, server_round=1, model=model)
    )
    odd.content = RecordDict({**odd.content, "metrics": MetricRecord(metrics)})
    arrays, _ = strategy.aggregate_train(
        1, [sealed_reply(10, "inst0", {"w": np.ones(2, np.float32)}, 5), odd]
    )
    assert arrays is not None
    strategy.finish_round(1, arrays)
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    assert [e["reason"] for e in run["exclusions"]] == [
        "update rejected (malformed): the reply's metric 'train-loss' is missing or not a "
        "finite number"
    ]
    assert verify_ledger(ledger).rows_checked > 0
    ledger.close()
