"""Authentic but dishonest claims: an inflated example count, replayed envelopes.

Each sealed with the participant's own key, through the composed strategy,
with the reasons read back from the ledger and the ledger verified after.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.arrays import arrays_of
from common.envelope import EnvelopeError, UpdateHeader
from ledger.report import ledger_report
from ledger.verify import verify_ledger
from server.app.strategy import ClaimCheck
from tests.support.sealed_updates import (
    RUN,
    begin_round,
    ledger_with_run,
    make_charge,
    make_strategy,
    reply_carrying,
    seal_for,
    sealed_reply,
    server_task_identity,
)

pytestmark = pytest.mark.usefixtures("server_task_identity")
assert server_task_identity  # imported so that pytest finds the fixture

DATASET = make_charge().dataset_sha256
RECORDS = {("inst0", DATASET): 331, ("inst1", DATASET): 604, ("inst2", DATASET): 322}
MODEL = {"w": np.zeros(2, np.float32)}


def _header(participant: str, examples: int, dataset: str = DATASET) -> UpdateHeader:
    charge = make_charge()
    return UpdateHeader(
        run_id=str(RUN),
        round=1,
        participant=participant,
        model_sha256="a" * 64,
        base_model_sha256="f" * 64,
        num_examples=examples,
        privacy=type(charge)(**{**charge.__dict__, "dataset_sha256": dataset}),
    )


def test_a_claim_up_to_the_declared_records_passes() -> None:
    check = ClaimCheck(RECORDS)
    check.check(_header("inst0", 331))
    check.check(_header("inst0", 1))
    ClaimCheck(None).check(_header("anyone", 10**9))  # nothing declared: nothing checked


def test_a_claim_above_the_declared_records_is_refused_with_both_numbers() -> None:
    with pytest.raises(EnvelopeError) as refused:
        ClaimCheck(RECORDS).check(_header("inst0", 332))
    assert refused.value.reason == "inflated-claim"
    assert "inst0 claims 332 examples, but the dataset it declared at admission" in str(
        refused.value
    )
    assert "has 331 records" in str(refused.value)


def test_a_claim_on_an_undeclared_dataset_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="which it did not declare at admission") as refused:
        ClaimCheck(RECORDS).check(_header("inst0", 10, dataset="9" * 64))
    assert refused.value.reason == "unknown-dataset"


def test_an_inflated_count_buys_nothing_and_the_ledger_says_why(tmp_path: Path) -> None:
    """The attack from the issue: a genuine update, sealed by its owner, claiming 10^9 examples."""
    ledger, run_id = ledger_with_run(tmp_path, ("inst0", "inst1", "inst2"))
    strategy = make_strategy(tmp_path, ledger, run_id, min_nodes=2, model=MODEL, records=RECORDS)
    inflated = sealed_reply(10, "inst0", {"w": np.full(2, 100.0, np.float32)}, 10**9)
    honest = [
        sealed_reply(11, "inst1", {"w": np.full(2, 1.0, np.float32)}, 604),
        sealed_reply(12, "inst2", {"w": np.full(2, 4.0, np.float32)}, 322),
    ]
    arrays, _ = strategy.aggregate_train(1, [inflated, *honest])
    assert arrays is not None
    expected = np.average([np.full(2, 1.0), np.full(2, 4.0)], axis=0, weights=[604, 322])
    np.testing.assert_allclose(arrays_of(arrays)["w"], expected, rtol=1e-6)
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    ((institution, node, code, reason),) = [
        (e["institution"], e["node_id"], e["code"], e["reason"]) for e in run["exclusions"]
    ]
    assert (institution, node, code) == ("inst0", "10", 422)
    assert reason.startswith("update rejected (inflated-claim): inst0 claims 1000000000 examples")
    assert [c["institution"] for c in run["privacy_charges"]] == ["inst1", "inst2"]
    assert verify_ledger(ledger).rows_checked > 0
    ledger.close()


def test_replayed_envelopes_are_each_rejected_with_their_own_reason(tmp_path: Path) -> None:
    """A copy from an earlier round, from another run, and a second copy in the same round."""
    ledger, run_id = ledger_with_run(tmp_path, ("inst0", "inst1", "inst2"))
    strategy = make_strategy(tmp_path, ledger, run_id, min_nodes=1, model=MODEL, records=RECORDS)
    round_one = seal_for("inst0", {"w": np.ones(2, np.float32)}, 300, server_round=1, model=MODEL)
    other_run = seal_for(
        "inst1", {"w": np.ones(2, np.float32)}, 600, server_round=1, model=MODEL, run=RUN + 1
    )
    arrays, _ = strategy.aggregate_train(
        1, [reply_carrying(10, round_one), reply_carrying(11, other_run)]
    )
    assert arrays is not None
    strategy.finish_round(1, arrays)
    model_two = arrays_of(arrays)
    begin_round(strategy, 2, model_two)
    fresh = seal_for("inst2", {"w": np.ones(2, np.float32)}, 300, server_round=2, model=model_two)
    strategy.aggregate_train(
        2, [reply_carrying(10, round_one), reply_carrying(12, fresh), reply_carrying(11, fresh)]
    )
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    reasons = {  # (node 12 did not answer in round 1: not a rejection)
        (e["round"], e["node_id"]): e["reason"] for e in run["exclusions"] if e["code"] == 422
    }
    assert reasons[(1, "11")].startswith(
        "update rejected (wrong-run): the update is for Flower run 8"
    )
    assert reasons[(2, "10")].startswith("update rejected (replay): ")
    assert reasons[(2, "11")].startswith("update rejected (duplicate): a second update from")
    assert len(reasons) == 3
    assert [(c["round"], c["institution"]) for c in run["privacy_charges"]] == [
        (1, "inst0"),
        (2, "inst2"),
    ]
    assert verify_ledger(ledger).rows_checked > 0
    ledger.close()
