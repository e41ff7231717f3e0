"""``operator suspend`` and ``reinstate``: who the next run takes, on SQLite and PostgreSQL.

The run is opened as the ServerApp opens it (:func:`server.app.run_start.open_run`),
and a suspended member's sealed update goes through the real update gate.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from common.arrays import Arrays
from common.envelope import EnvelopeError
from common.keys import encode_public
from common.policy import Policy
from common.protocol import ExclusionCode
from fedcommons.cli import app
from ledger import Ledger, enrol_participant
from ledger.entries import record_row
from ledger.members import run_members
from ledger.report import ledger_report
from ledger.runs import request_resume
from ledger.schema import utcnow
from ledger.suspensions import reinstate, suspend
from server.app.run_start import OpenedRun, open_run
from server.app.strategy import UpdateGate, expected_tensors
from server.deploy import OperatorFiles
from server.operator.consortium import init_consortium
from tests.support.sealed_updates import (
    AGGREGATOR,
    BASE,
    SIGNERS,
    begin_round,
    ledger_with_run,
    make_strategy,
    reply_carrying,
    seal_for,
    sealed_reply,
    server_task_identity,
)

NAMES = ("inst0", "inst1", "inst2")
NODES = (10, 11, 12, 13)
assert server_task_identity  # imported so that pytest finds the fixture
POLICY = Policy()
ZEROS: Arrays = {"w": np.zeros(2, np.float32)}
runner = CliRunner()


@dataclass
class Consortium:
    ledger: Ledger
    url: str
    operator: OperatorFiles

    def open(self, flower_run_id: int) -> OpenedRun:
        """Open a run as the next ServerApp does (a new one, or the one to resume)."""
        return open_run(
            self.ledger, POLICY, self.operator.deploy(), flower_run_id=flower_run_id,
            initial=ZEROS, base_sha256=BASE,
        )  # fmt: skip

    def members(self, run_id: int) -> list[str]:
        with self.ledger.session() as s:
            found = run_members(s, run_id)
        assert found is not None
        return sorted(found.members)


@pytest.fixture
def consortium(url: str, tmp_path: Path) -> Consortium:
    """A consortium folder whose ledger admitted inst0, inst1 and inst2 with their keys."""
    operator = init_consortium(
        tmp_path / "op", name="t", superlink="127.0.0.1:9", hosts=["127.0.0.1"], ledger_url=url
    )
    ledger = Ledger(url)
    with ledger.session() as s:
        for name in NAMES:
            participant = enrol_participant(s, name, "academia")
            participant.public_key = encode_public(SIGNERS[name].public_key())
            participant.admitted_at = utcnow()
            record_row(s, participant, "participant")
    return Consortium(ledger, url, operator)


def test_the_next_run_leaves_a_suspended_member_out_and_says_why(
    consortium: Consortium, caplog: pytest.LogCaptureFixture
) -> None:
    with consortium.ledger.session() as s:
        seq = suspend(s, "inst2", "near-identical updates to inst1's").entry_seq
    with caplog.at_level(logging.WARNING, logger="server.app.run_start"):
        opened = consortium.open(101)
    assert sorted(opened.participants) == ["inst0", "inst1"]
    assert sorted(opened.admitted) == list(NAMES)  # its owed charges are still its spend
    assert opened.left_out == {"inst2": "near-identical updates to inst1's"}
    assert consortium.members(opened.run_id) == ["inst0", "inst1"]  # no witness either
    (line,) = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert line.startswith(f"run {opened.run_id}: inst2 is left out (not a participant, not a ")
    assert line.endswith(f"(ledger entry {seq}): near-identical updates to inst1's")
    gate = UpdateGate(
        flower_run_id="101", aggregator_key=AGGREGATOR, participants=opened.participants,
        expected=expected_tensors(ZEROS), base_model_sha256=BASE, accepted_before=set(),
    )  # fmt: skip
    gate.begin_round(1, "0" * 64)
    update = seal_for("inst2", ZEROS, 5, server_round=1, model=ZEROS, run=101)
    with pytest.raises(EnvelopeError) as refused:
        gate.open(update)
    assert refused.value.reason == "unknown-participant"  # a gate told nothing of suspensions
    consortium.ledger.close()


@pytest.mark.usefixtures("server_task_identity")
def test_a_suspended_members_node_is_not_asked_to_train_again(tmp_path: Path) -> None:
    """Its first update of the run (signed with its admitted key) is refused as suspended
    and names its node; from the next round that node is not asked, so it spends no more
    privacy budget. Another member claiming the suspended name is not believed."""
    names = ("inst0", "inst1", "inst2", "i0")
    model = {"w": np.zeros(4, np.float32)}
    ledger, run_id = ledger_with_run(tmp_path, names)
    strategy = make_strategy(tmp_path, ledger, run_id, min_nodes=2, model=model, nodes=NODES)
    gate = strategy.intake.gate
    gate.participants.pop("inst2")  # suspended when the run started
    gate.left_out = {"inst2": (SIGNERS["inst2"].public_key(), "near-identical updates")}
    forged = Ed25519PrivateKey.generate()  # i0 signs as inst2 with a key of its own
    replies = [
        sealed_reply(10, "inst0", {"w": np.ones(4, np.float32)}, 100, model=model),
        sealed_reply(11, "inst1", {"w": np.ones(4, np.float32)}, 100, model=model),
        sealed_reply(12, "inst2", {"w": np.ones(4, np.float32)}, 100, model=model),
        reply_carrying(
            13,
            seal_for(
                "inst2",
                {"w": np.ones(4, np.float32)},
                100,
                server_round=1,
                model=model,
                signer=forged,
            ),
        ),
    ]
    strategy.aggregate_train(1, replies)
    begin_round(strategy, 2, model, NODES)
    asked = sorted(m.metadata.dst_node_id for m in strategy._sent)  # Flower samples in any order
    assert asked == [10, 11, 13]  # node 12 is inst2's; node 13's claim proved nothing
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    ledger.close()
    refused = {(e["round"], e["node_id"]): e for e in run["exclusions"]}
    assert "update rejected (suspended)" in refused[(1, "12")]["reason"]
    assert "update rejected (bad-signature)" in refused[(1, "13")]["reason"]
    assert refused[(2, "12")]["code"] == int(ExclusionCode.SUSPENDED) == 423
    assert refused[(2, "12")]["institution"] == "inst2"


def test_a_reinstated_member_takes_part_in_the_next_run(consortium: Consortium) -> None:
    with consortium.ledger.session() as s:
        suspend(s, "inst0", "relabelled zeros")
    left = consortium.open(201)
    with consortium.ledger.session() as s:
        reinstate(s, "inst0", "retrained on clean labels")
    back = consortium.open(202)
    assert back.run_id != left.run_id
    assert sorted(back.participants) == list(NAMES) and back.left_out == {}
    assert consortium.members(back.run_id) == list(NAMES)
    assert consortium.members(left.run_id) == ["inst1", "inst2"]  # the earlier run unchanged
    consortium.ledger.close()


def test_a_resumed_run_keeps_the_members_it_started_with(consortium: Consortium) -> None:
    with consortium.ledger.session() as s:
        suspend(s, "inst2", "colluding")
    first = consortium.open(301)
    with consortium.ledger.session() as s:
        reinstate(s, "inst2", "cleared")  # after the run started: not for this run
        suspend(s, "inst1", "colluding too")  # likewise
        request_resume(s, first.run_id)
    resumed = consortium.open(302)
    assert resumed.run_id == first.run_id
    assert sorted(resumed.participants) == ["inst0", "inst1"]
    assert resumed.left_out == {"inst2": "colluding"}
    assert consortium.members(first.run_id) == ["inst0", "inst1"]
    consortium.ledger.close()


def _operator(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["operator", *args])
    return result.exit_code, result.output


def test_suspend_and_reinstate_commands(consortium: Consortium) -> None:
    url = consortium.url
    code, out = _operator("suspend", "--institution", "inst2", "--reason", "colluding", "--ledger",
                          url)  # fmt: skip
    assert code == 0, out
    assert (
        "suspended inst2 (ledger entry 6): colluding. Runs started from now on leave it out."
        in (" ".join(out.split()))
    )
    run_id = consortium.open(401).run_id
    assert consortium.members(run_id) == ["inst0", "inst1"]
    code, out = _operator("reinstate", "--institution", "inst2", "--reason", "cleared",
                          "--dir", str(consortium.operator.root), "--format", "json")  # fmt: skip
    assert code == 0, out
    done = json.loads(out)
    assert (done["institution"], done["action"], done["reason"]) == ("inst2", "reinstated",
                                                                     "cleared")  # fmt: skip
    assert done["runs_keeping_members"] == [{"run_id": run_id, "status": "running"}]
    assert consortium.members(consortium.open(402).run_id) == list(NAMES)
    consortium.ledger.close()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["suspend", "--institution", "nobody", "--reason", "x"], 1,
         "error: the ledger holds no institution named 'nobody' (it holds inst0, inst1, inst2)"),
        (["reinstate", "--institution", "inst0", "--reason", "x"], 1,
         "error: inst0 is not suspended: there is nothing to reinstate"),
        (["suspend", "--institution", "inst1", "--reason", "again"], 1,
         "error: inst1 is suspended already, since "),
        (["suspend", "--institution", "inst0", "--reason", ""], 2, "--reason"),
        (["reinstate", "--institution", "inst1", "--reason", "   "], 2, "--reason"),
        (["suspend", "--institution", "inst0"], 2, "Missing option '--reason'"),
        (["suspend", "--reason", "x"], 2, "Missing option '--institution'"),
    ],
)  # fmt: skip
def test_bad_decisions_exit_nonzero_with_their_reason(
    consortium: Consortium, args: list[str], code: int, message: str
) -> None:
    with consortium.ledger.session() as s:
        suspend(s, "inst1", "already")
    got, out = _operator(*args, "--ledger", consortium.url)
    assert got == code, out
    assert message in " ".join(out.replace("│", " ").split()), out
    with consortium.ledger.session() as s:
        kinds = [d["action"] for d in ledger_report(s)["suspensions"]]
    assert kinds == ["suspended"]  # nothing else written
    consortium.ledger.close()


def test_a_ledger_that_is_not_there_is_refused(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    code, out = _operator("suspend", "--institution", "a", "--reason", "x", "--ledger", missing)
    assert code == 1 and "error:" in out
    assert not (tmp_path / "none.db").exists()
