"""Interop: Go's x/mod ``note`` and ``tlog`` open FedCommons checkpoints and check its proofs.

A small Go program (``tests/support/interop/checkpoints.go``) is built against Debian's
``golang-golang-x-mod-dev`` in GOPATH mode; nothing is downloaded. The demo's
own ledger is checked the same way in ``test_end_to_end.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from common.consortium import default_log_origin
from common.evidence import compare
from common.keys import encode_public
from common.note import verifier_key
from common.receipts import read_receipts
from tests.support.go_interop import go_checks, interop_input, needs_go
from tests.support.receipt_world import (
    NAMES,
    OPERATOR,
    SIGNERS,
    World,
    accept_all,
    cosign_all,
    make_world,
    node_accepts,
)

pytestmark = [pytest.mark.interop, needs_go]


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, dict[str, object], Path]:
    folder = tmp_path_factory.mktemp("interop")
    world = make_world(f"sqlite:///{folder / 'ledger.db'}", folder)
    accept_all(world)
    cosign_all(world)
    receipts = [r for name in NAMES for _, r in read_receipts(world.books[name].folder)]
    vkey = verifier_key(default_log_origin(OPERATOR.public_key()), OPERATOR.public_key())
    doc = interop_input(world.ledger, vkey, receipts)
    world.ledger.close()
    return world, doc, folder


def test_go_opens_every_checkpoint_and_checks_every_receipt(
    checked: tuple[World, dict[str, object], Path],
) -> None:
    _, doc, folder = checked
    result = go_checks(doc, folder / "go")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {
        "notes_opened": 2,
        "cosignatures": dict.fromkeys(NAMES, 2),
        "records_checked": 4,
        "trees_checked": 2,
    }


@pytest.mark.parametrize(
    ("case", "failure"),
    [
        ("a cosignature changed", "note.Open"),
        ("a checkpoint's size changed", "note.Open"),
        ("an inclusion hash flipped", "tlog.CheckRecord"),
        ("a consistency hash flipped", "tlog.CheckTree"),
        ("another entry", "tlog.CheckRecord"),
    ],
)
def test_go_refuses_what_fedcommons_refuses(
    checked: tuple[World, dict[str, object], Path], case: str, failure: str
) -> None:
    _, doc, folder = checked
    bad = copy.deepcopy(doc)
    notes, receipts = bad["notes"], bad["receipts"]
    assert isinstance(notes, list) and isinstance(receipts, list)
    if case == "a cosignature changed":
        line = notes[0]["note"].rstrip("\n").rsplit("\n", 1)[1]
        notes[0]["note"] = notes[0]["note"].replace(line, line[:-6] + "AAAA" + line[-2:])
    elif case == "a checkpoint's size changed":
        text = notes[1]["note"]
        size = text.split("\n")[1]
        notes[1]["note"] = text.replace(f"\n{size}\n", f"\n{int(size) + 1}\n", 1)
    elif case == "an inclusion hash flipped":
        first = receipts[0]["inclusion"][0]
        receipts[0]["inclusion"][0] = ("0" if first[0] != "0" else "1") + first[1:]
    elif case == "a consistency hash flipped":
        extended = next(r for r in receipts if r["previous_size"])
        first = extended["consistency"][0]
        extended["consistency"][0] = ("0" if first[0] != "0" else "1") + first[1:]
    else:
        receipts[0]["payload"] = receipts[0]["payload"].replace(
            '"num_examples":10', '"num_examples":11'
        )
    result = go_checks(bad, folder / "go")
    assert result.returncode == 1 and failure in result.stderr, result.stderr


def test_go_opens_both_checkpoints_of_an_equivocation(tmp_path: Path) -> None:
    """The pair ``audit compare`` prints is evidence any C2SP tool accepts: Go's note.Open."""
    one = make_world(f"sqlite:///{tmp_path / 'one.db'}", tmp_path / "one", loss=0.7)
    two = make_world(f"sqlite:///{tmp_path / 'two.db'}", tmp_path / "two", loss=0.2)
    try:
        uni_a = node_accepts(one, tmp_path / "one", "uni-a", 1)
        co_c = node_accepts(two, tmp_path / "two", "co-c", 1)
    finally:
        one.ledger.close()
        two.ledger.close()
    origin = default_log_origin(OPERATOR.public_key())
    (pair,) = compare([uni_a, co_c], OPERATOR.public_key(), origin).equivocations
    doc = {
        "operator_vkey": verifier_key(origin, OPERATOR.public_key()),
        "witnesses": {name: encode_public(SIGNERS[name].public_key()) for name in NAMES},
        "notes": [
            {"note": seen.signed_note(), "witnesses": list(seen.cosigners)}
            for seen in (pair.first, pair.second)
        ],
        "receipts": [],
    }
    result = go_checks(doc, tmp_path / "go")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["notes_opened"] == 2 and report["cosignatures"] == {"uni-a": 1, "co-c": 1}
    assert pair.first.head.tree_size == pair.second.head.tree_size
    assert pair.first.head.root != pair.second.head.root
