"""The witness quorum, attacked as a hostile operator would, through the node's own code path.

The operator holds its own keys: it keeps two ledgers (forks) under its one
key and shows each node one of them, sends each node whatever cosignature
lines it likes, and writes the ledger's members entry itself. Each node
accepts, cosigns and counts through :func:`client.receipts.accept_receipts`
and :func:`client.witnessing.take_witnesses`; the server's side is the
ledger's own :func:`~ledger.cosignatures.record_cosignatures` and
:func:`~ledger.cosignatures.cosigned_by`. Real keys, real SQLite ledgers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import ConfigRecord
from typer.testing import CliRunner

from client.enrolment import ParticipantState
from client.quorum import ESTABLISHED_FILE, established, pinned_members
from client.receipts import Accepted, accept_receipts, receipt_book
from client.witnessing import Witnessing, take_witnesses
from common.evidence import EXIT_EQUIVOCATION
from common.keys import encode_public, key_id
from common.note import cosign
from common.quorum import QuorumError, RunMembers, majority, required_quorum
from common.receipts import ReceiptError
from common.witness import Witnessed, witnessed_record
from fedcommons.cli import app
from ledger import start_run
from ledger.cosignatures import cosigned_by, record_cosignatures
from ledger.members import run_members
from ledger.schema import Participant
from ledger.store import LedgerError
from tests.support.receipt_world import (
    OPERATOR,
    SIGNERS,
    THREE,
    World,
    make_world,
    node_state,
    record_world_round,
)

FLOWER_RUN = "7"
runner = CliRunner()


def _world(tmp_path: Path, name: str, loss: float, **kwargs: object) -> World:
    return make_world(
        f"sqlite:///{tmp_path / f'{name}.db'}",
        tmp_path / name,
        loss,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def forks(tmp_path: Path) -> Iterator[tuple[World, World]]:
    """Two ledgers of three members under the operator's one key, differing from round 1 on."""
    one, two = _world(tmp_path, "one", 0.7, names=THREE), _world(tmp_path, "two", 0.2, names=THREE)
    yield one, two
    one.ledger.close()
    two.ledger.close()


def _state(world: World, folder: Path, name: str) -> ParticipantState:
    """``name``'s state folder in ``folder``: made once, then as the node left it."""
    state = ParticipantState(folder / name)
    return state if state.signing_key.exists() else node_state(folder, name)


def _takes(world: World, folder: Path, name: str, number: int) -> Accepted:
    """``name``'s node takes its receipt of round ``number``; the server keeps its cosignatures."""
    record = ConfigRecord({"receipts": [world.receipts[(name, number)].to_json()]})
    accepted = accept_receipts(_state(world, folder, name), name, record)
    with world.ledger.session() as s:
        _, refused = record_cosignatures(s, name, accepted.cosignatures)
    assert refused == []
    return accepted


def _witnesses(
    world: World, name: str, final: bool = False, extra: tuple[str, ...] = ()
) -> ConfigRecord:
    """What the server sends ``name``'s node: every line kept on the head it last cosigned."""
    with world.ledger.session() as s:
        found = cosigned_by(s, name)
    assert found is not None
    head, lines = found
    return witnessed_record(Witnessed(head.tree_size, head.root, (*lines, *extra), final))


def _counts(world: World, folder: Path, name: str, final: bool = False) -> Witnessing:
    record = _witnesses(world, name, final)
    return take_witnesses(_state(world, folder, name), name, record, FLOWER_RUN)


def _run(world: World, folder: Path, names: tuple[str, ...]) -> None:
    """``names`` take rounds 1 and 2, each round's receipt with the next message."""
    for name in names:
        _takes(world, folder, name, 1)
    for name in names:
        _takes(world, folder, name, 2)


def test_each_receipt_is_pending_until_a_majority_of_the_run_cosigned_its_checkpoint(
    tmp_path: Path,
) -> None:
    world = _world(tmp_path, "one", 0.7, names=THREE)
    folder = tmp_path / "one"
    for name in THREE:
        _takes(world, folder, name, 1)
    with world.ledger.session() as s:
        members = run_members(s, world.run_id)
    assert members is not None and sorted(members.members) == sorted(THREE)
    assert members.required == 2
    # round 2's message: its receipt, and the lines on round 1's checkpoint
    for name in THREE:
        lines = _witnesses(world, name)  # built before the node replies, as the server does
        _takes(world, folder, name, 2)
        outcome = take_witnesses(_state(world, folder, name), name, lines, FLOWER_RUN)
        assert outcome.quorum is not None and outcome.quorum.reached
        assert outcome.established is not None
        assert outcome.established.tree_size == world.receipts[(name, 1)].tree_head.tree_size
        assert [r.round for r in outcome.pending] == [2]  # one message behind
    # the run's final query: the lines on round 2's checkpoint
    for name in THREE:
        outcome = _counts(world, folder, name, final=True)
        assert outcome.pending == [] and outcome.refused == []
        assert outcome.quorum is not None and outcome.quorum.counted == tuple(sorted(THREE))
        (first, last) = established(receipt_book(_state(world, folder, name)).folder)
        assert last.tree_size == world.receipts[(name, 2)].tree_head.tree_size
        assert first.cosigners == last.cosigners == tuple(sorted(THREE))
        for member in THREE:  # the note is a C2SP cosigned checkpoint with each line
            assert f"\u2014 {member} " in last.note
    world.ledger.close()


def test_a_fork_shown_to_two_of_three_nodes_is_established_and_the_third_refuses(
    forks: tuple[World, World], tmp_path: Path
) -> None:
    one, two = forks
    _run(one, tmp_path / "one", ("uni-a", "uni-b"))
    _run(two, tmp_path / "two", ("co-c",))
    for name in ("uni-a", "uni-b"):
        outcome = _counts(one, tmp_path / "one", name, final=True)
        assert outcome.refused == [] and outcome.pending == []
        assert outcome.quorum is not None and outcome.quorum.counted == ("uni-a", "uni-b")
    # the operator helps its fork: uni-a's genuine line from fork one, and a line it
    # made itself in uni-b's name, with a key of its own
    genuine = _witnesses(one, "uni-a")["lines"]
    assert isinstance(genuine, list)
    replayed = [line for line in genuine if isinstance(line, str) and "uni-a" in line]
    head = two.receipts[("co-c", 2)].tree_head
    forged = cosign(head.body().decode(), "uni-b", OPERATOR, 1_700_000_000).line()
    state = _state(two, tmp_path / "two", "co-c")
    outcome = take_witnesses(
        state, "co-c", _witnesses(two, "co-c", final=True, extra=(*replayed, forged)), FLOWER_RUN
    )
    assert outcome.quorum is not None and outcome.quorum.counted == ("co-c",)
    assert len(outcome.quorum.ignored) == 2
    assert all("forged, or replayed" in why for why in outcome.quorum.ignored)
    assert outcome.pending == [] and len(outcome.refused) == 2  # rounds 1 and 2
    assert "no-quorum" in outcome.refused[0]
    assert "cosigned by 1 of the 3 members of run 1 (co-c); the quorum is 2" in outcome.refused[0]
    book = receipt_book(state)
    assert book.receipts() == []  # nothing relied on: both moved to refused/
    kinds = sorted(r["kind"] for r in book.refusals())
    assert kinds == ["no-quorum", "no-quorum"]
    assert {r["receipt"]["round"] for r in book.refusals()} == {1, 2}
    assert not (book.folder / ESTABLISHED_FILE).exists()


def test_a_fork_shown_to_one_of_three_nodes_is_refused_by_it_alone(
    forks: tuple[World, World], tmp_path: Path
) -> None:
    one, two = forks
    _run(one, tmp_path / "one", ("uni-a",))
    _run(two, tmp_path / "two", ("uni-b", "co-c"))
    alone = _counts(one, tmp_path / "one", "uni-a", final=True)
    assert [r.split(":")[0] for r in alone.refused] == ["no-quorum", "no-quorum"]
    for name in ("uni-b", "co-c"):
        outcome = _counts(two, tmp_path / "two", name, final=True)
        assert outcome.refused == [] and outcome.established is not None


def test_a_message_before_the_last_leaves_receipts_pending_and_refuses_nothing(
    forks: tuple[World, World], tmp_path: Path
) -> None:
    one, _ = forks
    _run(one, tmp_path / "one", ("uni-a",))
    outcome = _counts(one, tmp_path / "one", "uni-a")
    assert outcome.refused == [] and [r.round for r in outcome.pending] == [1, 2]
    assert "cosigned by 1 of the 3 members" in outcome.quorum.describe()  # type: ignore[union-attr]


def test_an_operator_that_is_itself_a_member_can_fork_a_majority_but_not_a_quorum_of_all(
    tmp_path: Path,
) -> None:
    """The bound the docs state: two majorities of three overlap in one member, so a
    member that cosigns both forks (the operator's own) lets both reach a majority."""
    members = ("uni-a", "uni-b", "op-member")
    for quorum, reached in (("majority", True), (3, False)):
        base = tmp_path / str(quorum)
        one = _world(base, "one", 0.7, names=members, quorum=quorum)
        two = _world(base, "two", 0.2, names=members, quorum=quorum)
        _run(one, base / "one", ("uni-a", "op-member"))
        _run(two, base / "two", ("uni-b", "op-member"))
        outcomes = [
            _counts(one, base / "one", "uni-a", final=True),
            _counts(two, base / "two", "uni-b", final=True),
        ]
        assert [o.refused == [] for o in outcomes] == [reached, reached], quorum
        one.ledger.close()
        two.ledger.close()


def _next_run(world: World, keys: dict[str, str | None], *, keep: bool = False) -> None:
    """The operator starts another run with the participants' keys set to ``keys`` first
    (``None``: hidden, so the run's members entry leaves it out); ``keep``: restored after,
    so only the members entry differs from the admissions. Round 1 of it is recorded."""
    flower_run_id = str(int(world.flower_run_id) + 1)
    with world.ledger.session() as s:
        before = {p.name: p.public_key for p in s.query(Participant)}
        for name, key in keys.items():
            s.query(Participant).filter(Participant.name == name).update({"public_key": key})
        world.run_id = start_run(
            s,
            policy_sha256="a" * 64,
            policy_toml="",
            model="cnn",
            dataset="digits",
            initial_model_sha256="a" * 64,
            planned_rounds=1,
            flower_run_id=int(flower_run_id),
        ).id
        for name in keys if keep else ():
            s.query(Participant).filter(Participant.name == name).update(
                {"public_key": before[name]}
            )
    world.flower_run_id = flower_run_id
    record_world_round(world, 1)


def test_a_node_left_out_of_the_members_refuses_the_receipt(tmp_path: Path) -> None:
    world = _world(tmp_path, "one", 0.7, names=THREE)
    _next_run(world, {"co-c": None}, keep=True)  # run 2 names only two members
    with pytest.raises(
        ReceiptError, match="not-a-member: run 2's members entry does not list co-c"
    ):
        _takes(world, tmp_path / "one", "co-c", 1)
    assert receipt_book(_state(world, tmp_path / "one", "co-c")).refusals()[-1]["kind"] == (
        "not-a-member"
    )
    world.ledger.close()


def test_a_members_entry_that_substitutes_a_members_key_is_refused(tmp_path: Path) -> None:
    world = _world(tmp_path, "one", 0.7, names=THREE)
    folder = tmp_path / "one"
    _takes(world, folder, "uni-a", 1)  # run 1 pins every member's key
    _takes(world, folder, "uni-a", 2)
    state = _state(world, folder, "uni-a")
    assert pinned_members(receipt_book(state).folder)["uni-b"] == encode_public(
        SIGNERS["uni-b"].public_key()
    )
    _next_run(world, {"uni-b": encode_public(OPERATOR.public_key())})  # a key it holds
    with pytest.raises(ReceiptError, match="member-key: run 2's members entry gives uni-b"):
        _takes(world, folder, "uni-a", 1)
    world.ledger.close()


def test_a_members_entry_that_gives_the_node_another_key_is_refused(tmp_path: Path) -> None:
    world = _world(tmp_path, "one", 0.7, names=THREE)
    folder = tmp_path / "one"
    _takes(world, folder, "co-c", 1)
    _takes(world, folder, "co-c", 2)
    _next_run(world, {"co-c": encode_public(OPERATOR.public_key())})  # it could cosign as co-c
    with pytest.raises(ReceiptError, match="lists co-c with another key than this node's"):
        _takes(world, folder, "co-c", 1)
    world.ledger.close()


def test_a_receipt_stripped_of_its_members_entry_never_reaches_a_quorum(
    tmp_path: Path,
) -> None:
    world = _world(tmp_path, "one", 0.7, names=THREE)
    folder = tmp_path / "one"
    for key, receipt in list(world.receipts.items()):
        world.receipts[key] = dataclasses.replace(
            receipt, members_seq=None, members_payload=None, members_inclusion=None
        )
    _run(world, folder, THREE)
    outcome = _counts(world, folder, "uni-a", final=True)
    assert outcome.quorum is None and len(outcome.refused) == 2
    assert "no member cosignatures this node could count" in outcome.refused[0]
    world.ledger.close()


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (ConfigRecord({"tree_size": -1, "root": "", "lines": [], "final": True}), "64-bit"),
        (ConfigRecord({"tree_size": 3, "root": "zz", "lines": [], "final": False}), "hex"),
        (ConfigRecord({"tree_size": 3, "root": "a" * 64, "lines": ["x"]}), "final"),
        (ConfigRecord({"tree_size": 3, "root": "a" * 64, "lines": ["x" * 2000], "final": False}),
         "1 KiB"),
    ],
)  # fmt: skip
def test_a_malformed_witnesses_record_is_refused(
    record: ConfigRecord, error: str, tmp_path: Path
) -> None:
    with pytest.raises(ReceiptError, match=error):
        take_witnesses(node_state(tmp_path, "uni-a"), "uni-a", record, FLOWER_RUN)


def test_garbage_lines_and_strangers_do_not_count(
    forks: tuple[World, World], tmp_path: Path
) -> None:
    one, _ = forks
    _run(one, tmp_path / "one", ("uni-a",))
    head = one.receipts[("uni-a", 2)].tree_head
    stranger = cosign(head.body().decode(), "co-z", SIGNERS["op-member"], 1_700_000_000).line()
    outcome = take_witnesses(
        _state(one, tmp_path / "one", "uni-a"),
        "uni-a",
        _witnesses(one, "uni-a", extra=("not a signature line", stranger)),
        FLOWER_RUN,
    )
    assert outcome.quorum is not None and outcome.quorum.counted == ("uni-a",)
    assert any("malformed" in why for why in outcome.quorum.ignored)
    assert any("co-z cosigned, but is no member of run 1" in why for why in outcome.quorum.ignored)


def test_the_quorum_rule_is_refused_below_a_majority_or_above_the_members(
    tmp_path: Path,
) -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert required_quorum("majority", 5) == 3 and required_quorum(4, 5) == 4
    with pytest.raises(QuorumError, match="below a majority of the 5 members admitted"):
        required_quorum(2, 5)
    with pytest.raises(QuorumError, match="only 3 member"):
        required_quorum(4, 3)
    with pytest.raises(LedgerError, match="run 1 cannot start: witness quorum 1 is below"):
        _world(tmp_path, "low", 0.7, names=THREE, quorum=1)
    # a node never requires less than a majority, whatever the entry says
    assert RunMembers(1, {n: "k" for n in THREE}, 1).required == 2
    with pytest.raises(QuorumError, match="not a run-members entry"):
        RunMembers.from_payload(json.dumps({"kind": "run"}))


def test_client_check_lists_pending_receipts_no_quorum_refusals_and_pinned_keys(
    forks: tuple[World, World], tmp_path: Path
) -> None:
    one, two = forks
    _run(one, tmp_path / "one", ("uni-a", "uni-b"))
    _run(two, tmp_path / "two", ("co-c",))
    uni_a = tmp_path / "one" / "uni-a"
    result = runner.invoke(app, ["client", "check", "--state", str(uni_a)])
    assert result.exit_code == 1, result.output  # the operator withholds the quorum
    assert "2 updates sent, 2 with a receipt kept" in result.output
    assert "pending: run 7 round 1, its checkpoint of size" in result.output
    assert f"member uni-b: signing key {key_id(SIGNERS['uni-b'].public_key())}" in result.output
    _counts(one, tmp_path / "one", "uni-a", final=True)
    result = runner.invoke(app, ["client", "check", "--state", str(uni_a)])
    assert result.exit_code == 0, result.output
    assert "pending" not in result.output
    result = runner.invoke(app, ["client", "check", "--state", str(uni_a), "--format", "json"])
    doc = json.loads(result.output)
    assert doc["pending"] == [] and doc["established_size"] > 0
    assert sorted(doc["members"]) == sorted(THREE)
    _counts(two, tmp_path / "two", "co-c", final=True)
    result = runner.invoke(app, ["client", "check", "--state", str(tmp_path / "two" / "co-c")])
    assert result.exit_code == 1
    assert "run 7 round 2: its receipt was refused (no-quorum)" in result.output


def test_audit_compare_reads_the_no_quorum_refusals_and_the_established_notes(
    forks: tuple[World, World], tmp_path: Path
) -> None:
    """The evidence travels: the minority's refused receipts and the majority's cosigned
    notes name the equivocation together."""
    one, two = forks
    _run(one, tmp_path / "one", ("uni-a", "uni-b"))
    _run(two, tmp_path / "two", ("co-c",))
    _counts(one, tmp_path / "one", "uni-a", final=True)
    _counts(two, tmp_path / "two", "co-c", final=True)
    uni_a, co_c = tmp_path / "one" / "uni-a", tmp_path / "two" / "co-c"
    consortium = str(uni_a / "consortium.json")
    result = runner.invoke(
        app, ["audit", "compare", str(uni_a), str(co_c), "--operator-key", consortium]
    )
    assert result.exit_code == EXIT_EQUIVOCATION, result.output
    assert "(refused)" in result.output  # co-c's no-quorum receipts, read back
    assert "cosigned by uni-a, uni-b:" in result.output  # the note that established fork one
    unreceipted = [line for line in result.output.splitlines() if "sent without" in line]
    assert len(unreceipted) == 2, result.output  # co-c's rounds 1 and 2
    assert all(str(co_c) in line and "no-quorum" in line for line in unreceipted)
