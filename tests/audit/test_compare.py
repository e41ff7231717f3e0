"""``audit compare``: a split view, shown to two nodes, named from their own folders.

A hostile operator holds its own keys: it keeps two ledgers and shows each
node one. Each node accepts and cosigns its fork through its own code path
(:func:`client.receipts.accept_receipts`) and each fork is consistent on its
own; the nodes' folders together prove the equivocation with the operator's
own signatures. Real keys, real SQLite ledgers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord
from typer.testing import CliRunner

from client.enrolment import ParticipantState
from client.receipts import accept_receipts, record_sent
from common.consortium import default_log_origin
from common.evidence import EVIDENCE_FILE, EXIT_EQUIVOCATION, compare, record_checkpoints
from common.keys import encode_public
from common.note import verify_cosignature
from common.receipts import ForkError, TreeHead
from common.witness import Cosigned
from fedcommons.cli import app
from tests.support.receipt_world import (
    NAMES,
    OPERATOR,
    SIGNERS,
    World,
    make_world,
    node_accepts,
    node_state,
)

runner = CliRunner()


@pytest.fixture
def forks(tmp_path: Path) -> Iterator[tuple[World, World]]:
    """Two ledgers under the operator's one key, differing from round 1 on (one loss)."""
    one = make_world(f"sqlite:///{tmp_path / 'one.db'}", tmp_path / "one", loss=0.7)
    two = make_world(f"sqlite:///{tmp_path / 'two.db'}", tmp_path / "two", loss=0.2)
    yield one, two
    one.ledger.close()
    two.ledger.close()


def _compare(*folders: Path, output: str = "text") -> tuple[int, str]:
    consortium = str(folders[0] / "consortium.json")
    args = ["audit", "compare", *map(str, folders), "--operator-key", consortium]
    result = runner.invoke(app, [*args, "--format", output])
    return result.exit_code, result.output


def test_a_split_view_is_named_with_both_signed_notes_and_their_cosigners(
    forks: tuple[World, World], tmp_path: Path
) -> None:
    one, two = forks
    uni_a = node_accepts(one, tmp_path / "one", "uni-a", 1, 2)
    co_c = node_accepts(two, tmp_path / "two", "co-c", 1, 2)
    same = node_accepts(one, tmp_path / "one", "co-c", 1, 2)
    code, out = _compare(uni_a, same)  # each fork alone is one ledger
    assert code == 0, out
    assert out.startswith("consistent: ") and "2 folders are one ledger" in out
    code, out = _compare(uni_a, co_c)
    assert code == EXIT_EQUIVOCATION, out
    size = one.receipts[("uni-a", 1)].tree_head.tree_size
    assert f"EQUIVOCATION the operator signed two checkpoints of size {size} with different" in out
    for world, name in ((one, "uni-a"), (two, "co-c")):
        head = world.receipts[(name, 1)].tree_head
        assert head.root != (two if world is one else one).receipts[(name, 1)].tree_head.root
        assert f"cosigned by {name}:" in out
        for line in str(head.checkpoint).splitlines():
            assert f"    {line}" in out  # the operator's signed note, verbatim
    code, out = _compare(uni_a, co_c, output="json")
    doc = json.loads(out)
    assert code == EXIT_EQUIVOCATION and doc["consistent"] is False
    pairs = {e["tree_size"]: e["checkpoints"] for e in doc["equivocations"] if e["seq"] is None}
    assert sorted(pairs) == sorted({one.receipts[("uni-a", r)].tree_head.tree_size for r in (1, 2)})
    heads = {
        w.receipts[k].tree_head.root: w.receipts[k].tree_head for w in forks for k in w.receipts
    }
    origin = default_log_origin(OPERATOR.public_key())
    for first, second in pairs.values():  # each side: the operator's note and its witness
        assert first["root"] != second["root"]
        for side in (first, second):
            head = dataclasses.replace(heads[side["root"]], checkpoint=side["note"])
            head.verify(OPERATOR.public_key(), origin)  # the operator signed it, for this log
            (cosigner,) = side["cosigners"]
            (witness,) = [w for w in head.witnesses() if w.name == cosigner]
            verify_cosignature(head.body().decode(), witness, SIGNERS[cosigner].public_key())


def test_a_refused_receipt_read_back_is_one_side_of_the_pair(
    forks: tuple[World, World], tmp_path: Path
) -> None:
    one, two = forks
    uni_a = node_accepts(one, tmp_path / "one", "uni-a", 1)
    state = ParticipantState(uni_a)
    record_sent(state, two.envelopes[("uni-a", 2)])  # its round-2 update, to the forked ledger
    with pytest.raises(ForkError):
        accept_receipts(
            state, "uni-a", ConfigRecord({"receipts": [two.receipts[("uni-a", 2)].to_json()]})
        )
    assert list((uni_a / "receipts" / "refused").glob("*.json"))
    co_c = node_accepts(one, tmp_path / "one", "co-c", 1, 2)
    code, out = _compare(uni_a, co_c)
    size = two.receipts[("uni-a", 2)].tree_head.tree_size
    assert code == EXIT_EQUIVOCATION, out
    assert f"checkpoints of size {size} with different roots" in out
    assert "(refused)" in out
    (unreceipted,) = [line for line in out.splitlines() if line.startswith("sent without")]
    assert str(uni_a) in unreceipted and "run 7 round 2" in unreceipted and "fork" in unreceipted
    # audit verify reads the same folder: the refusal is not taken for a receipt
    key = encode_public(OPERATOR.public_key())
    url = str(one.ledger.engine.url)
    result = runner.invoke(
        app,
        [
            *["audit", "verify", "--ledger", url, "--operator-key", key],
            *["--receipts", str(uni_a / "receipts"), "--receipts", str(co_c / "receipts")],
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 receipts consistent" in result.output


def test_what_the_operator_did_not_sign_is_no_evidence(
    forks: tuple[World, World], tmp_path: Path
) -> None:
    one, two = forks
    uni_a = node_accepts(one, tmp_path / "one", "uni-a", 1)
    co_c = node_accepts(one, tmp_path / "one", "co-c", 1)
    real = two.receipts[("co-c", 1)].tree_head
    origin = default_log_origin(OPERATOR.public_key())
    forged = TreeHead.sign(
        Ed25519PrivateKey.generate(),
        tree_size=real.tree_size,
        root=real.root,
        at="",
        note="",
        origin=origin,
    )
    assert record_checkpoints(co_c / "receipts", [forged], []) == 1
    result = compare([uni_a, co_c], OPERATOR.public_key(), origin)
    assert result.equivocations == [] and len(result.unsigned) == 1
    assert "not the operator key" in result.unsigned[0]
    code, out = _compare(uni_a, co_c)
    assert code == 0 and "not signed by the operator (no evidence either way)" in out


def test_the_log_only_grows_and_names_each_checkpoint_once(
    forks: tuple[World, World], tmp_path: Path
) -> None:
    one, _ = forks
    folder = node_accepts(one, tmp_path / "one", "uni-a", 1, 2) / "receipts"
    log = folder / EVIDENCE_FILE
    before = log.read_bytes()
    kinds = [json.loads(line)["kind"] for line in before.splitlines()]
    assert kinds.count("shown") == 2 and kinds.count("cosigned") == 2
    head = one.receipts[("uni-a", 2)].tree_head
    line = Cosigned(head.tree_size, head.root, "— uni-a AAAA\n")
    assert record_checkpoints(folder, [head], []) == 0  # shown before: not logged again
    assert record_checkpoints(folder, [], [(head, line)]) == 1
    assert log.read_bytes().startswith(before)  # appended, nothing rewritten


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "no node folder at"),
        ("log", f"{EVIDENCE_FILE}, line 1: not a JSON object"),
        ("refusal", "is no refusal this node recorded"),
        ("empty", "holds no receipts, refusals or checkpoint log"),
    ],
)
def test_bad_folders_are_named(
    forks: tuple[World, World], tmp_path: Path, damage: str, message: str
) -> None:
    one, _ = forks
    good = node_accepts(one, tmp_path / "one", "uni-a", 1)
    bad = node_state(tmp_path / "bad", NAMES[1]).root
    if damage == "missing":
        bad = tmp_path / "nowhere"
    elif damage == "log":
        (bad / "receipts").mkdir()
        (bad / "receipts" / EVIDENCE_FILE).write_text("not json\n")
    elif damage == "refusal":
        (bad / "receipts" / "refused").mkdir(parents=True)
        (bad / "receipts" / "refused" / "x.json").write_text('{"kind": "fork"}')
    else:
        (bad / "receipts").mkdir()
    result = runner.invoke(
        app,
        ["audit", "compare", str(good), str(bad), "--operator-key", str(good / "consortium.json")],
    )
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_one_folder_is_a_usage_error(forks: tuple[World, World], tmp_path: Path) -> None:
    good = node_accepts(forks[0], tmp_path / "one", "uni-a", 1)
    result = runner.invoke(
        app, ["audit", "compare", str(good), "--operator-key", str(good / "consortium.json")]
    )
    assert result.exit_code == 2 and "two or more" in result.output
