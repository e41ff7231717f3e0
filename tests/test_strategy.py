"""The server strategy on real Flower messages: FedAvg maths, ledger and checkpoints."""

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from common.model import arrays_sha256, arrays_to_bytes
from common.records import arrays_of, record_of
from server.checkpoint import latest_checkpoint, load_checkpoint
from server.ledger import Ledger, enrol_participant, ledger_report, start_run
from server.strategy import LedgerFedAvg, RoundFailed


@pytest.fixture(autouse=True)
def _server_task_identity():
    """Messages take their run and node ids from the process's task identity,
    which Flower's ServerApp runtime sets; set it as that runtime does."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 3
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _reply(node: int, institution: str, weights: dict[str, np.ndarray], examples: int) -> Message:
    request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict(
        {
            "arrays": record_of(weights),
            "metrics": MetricRecord(
                {"num-examples": examples, "train-loss": 0.5, "train-seconds": 1.25}
            ),
            "meta": ConfigRecord({"institution": institution}),
        }
    )
    return Message(content, reply_to=request)


def _strategy(
    tmp_path: Path, ledger: Ledger | None = None, run_id: int | None = None, min_nodes: int = 2
) -> LedgerFedAvg:
    return LedgerFedAvg(
        ledger=ledger,
        run_id=run_id,
        evaluator=lambda w: (float(w["w"].sum()), 0.75),
        checkpoint_dir=tmp_path / "ckpt",
        min_nodes=min_nodes,
    )


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
        _reply(i + 10, f"inst{i}", u, n)
        for i, (u, n) in enumerate(zip(updates, examples, strict=True))
    ]
    arrays, metrics = _strategy(tmp_path).aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    result = arrays_of(arrays)
    for name in ("w", "b"):
        expected = np.average([u[name] for u in updates], axis=0, weights=examples)
        np.testing.assert_allclose(result[name], expected, rtol=1e-6)
    assert metrics["train-loss"] == pytest.approx(0.5)


def test_round_fails_below_minimum_with_the_nodes_reasons(tmp_path: Path) -> None:
    request = Message(RecordDict(), dst_node_id=11, message_type=MessageType.TRAIN)
    failed = Message(Error(code=400, reason="bad.npz: the data set is empty"), reply_to=request)
    good = _reply(10, "inst0", {"w": np.ones(2, np.float32)}, 5)
    with pytest.raises(
        RoundFailed, match=r"round 3: 1 of the required 2 nodes .*bad.npz: the data set is empty"
    ):
        _strategy(tmp_path).aggregate_train(3, [good, failed])


def test_update_without_institution_is_refused(tmp_path: Path) -> None:
    reply = _reply(10, "inst0", {"w": np.ones(2, np.float32)}, 5)
    del reply.content.config_records["meta"]
    with pytest.raises(RoundFailed, match="without 'meta.institution'"):
        _strategy(tmp_path, min_nodes=1).aggregate_train(1, [reply])


def test_finish_round_records_hashes_and_checkpoints(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    with ledger.session() as s:
        for name in ("inst0", "inst1"):
            enrol_participant(s, name, "academia")
        run_id = start_run(
            s,
            policy_sha256="0" * 64,
            policy_toml="",
            model="cnn",
            dataset="d",
            initial_model_sha256="1" * 64,
            planned_rounds=1,
            flower_run_id=2**63 + 5,
        ).id
    strategy = _strategy(tmp_path, ledger, run_id)
    before = {"w": np.zeros((2, 2), np.float32)}
    updates = [{"w": np.full((2, 2), 1.0, np.float32)}, {"w": np.full((2, 2), 4.0, np.float32)}]

    class NoGrid:  # configure_train only needs node ids from the grid
        def get_node_ids(self) -> list[int]:
            return [10, 11]

    list(strategy.configure_train(1, record_of(before), ConfigRecord(), NoGrid()))  # type: ignore[arg-type]
    arrays, _ = strategy.aggregate_train(
        1, [_reply(10, "inst0", updates[0], 1), _reply(11, "inst1", updates[1], 3)]
    )
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
    checkpoint = latest_checkpoint(tmp_path / "ckpt")
    assert checkpoint is not None and checkpoint.name == "round-0001.safetensors"
    number, saved = load_checkpoint(checkpoint)
    assert number == 1
    np.testing.assert_array_equal(saved["w"], np.full((2, 2), 3.25, np.float32))
    ledger.close()
