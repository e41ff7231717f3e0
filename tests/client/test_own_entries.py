"""A node checks its own entries: a hostile operator's misstatements are refused as ``misstated``.

The operator holds its own signing key and records round 3 of the receipt
world (tests/support/receipt_world.py: a real SQLite ledger, real sealed
updates) with one of the node's facts changed: its example count, the
dataset hash or a figure of its privacy charge, or its contribution value
beside the valuation's utilities. It signs the checkpoint with the operator
key and builds the receipts with the server's own code
(:func:`ledger.tree_heads.round_receipts`); the node's receipt book refuses
each, names the field and both values, and keeps the receipt as evidence.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from common.protocol import PrivacyCharge
from common.receipts import Receipt, ReceiptError
from common.sent import read_sent, unreceipted
from fedcommons.cli import app
from ledger import ChargeFact, record_privacy, record_round
from ledger.contributions import record_valuation
from ledger.shapley import RoundValues, value_round
from ledger.tree_heads import round_receipts, sign_tree_head
from tests.support.receipt_world import (
    CHARGE,
    NAMES,
    OPERATOR,
    World,
    accept_all,
    make_world,
    sealed_update,
    update_fact,
)

runner = CliRunner()
UTILITIES = {0: 500_000, 1: 700_000, 2: 560_000, 3: 800_000}  # bit 0: co-c, bit 1: uni-a


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = make_world(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)
    accept_all(world)  # rounds 1 and 2, honest
    yield world
    world.ledger.close()


def _honest_values() -> RoundValues:
    return value_round(
        sorted(NAMES),
        UTILITIES.__getitem__,
        method="shapley",
        exact_max=6,
        truncation=0,
        convergence=0.2,
        seed=0,
    )


def record_round_3(
    world: World,
    *,
    num_examples: int = 10,
    charge: PrivacyCharge = CHARGE,
    values: RoundValues | None = None,
    retried: PrivacyCharge | None = None,
) -> dict[str, Receipt]:
    """The operator records round 3 as it likes (uni-a's facts as given), signs, builds receipts.

    Each node has sealed and sent its honest update (10 examples, ``CHARGE``).
    ``retried``: uni-a's charge for an earlier attempt at the round (reported owed).
    """
    envelopes = {name: sealed_update(name, 3) for name in NAMES}
    for name, envelope in envelopes.items():
        world.books[name].record_sent(envelope)
    with world.ledger.session() as s:
        record_privacy(
            s,
            1,
            3,
            charges=[ChargeFact(n, charge if n == "uni-a" else CHARGE) for n in NAMES],
            exclusions=[],
        )
        if retried is not None:
            record_privacy(s, 1, 3, charges=[ChargeFact("uni-a", retried)], exclusions=[])
        row = record_round(
            s,
            1,
            number=3,
            model_sha256_before="b" * 64,
            model_sha256_after="c" * 64,
            loss=0.6,
            accuracy=0.83,
            seconds=12.0,
            updates=[
                update_fact(name, e, num_examples if name == "uni-a" else 10)
                for name, e in envelopes.items()
            ],
        )
        seqs = record_valuation(s, 1, 3, values or _honest_values())
        head = sign_tree_head(s, OPERATOR, "round 3", tree=world.tree)
        receipts = round_receipts(
            s,
            world.tree,
            head,
            round_id=row.id,
            server_round=3,
            flower_run_id="7",
            previous=world.heads,
            contributions=seqs,
        )
    return {r.participant: r for r in receipts}


def _refused(world: World, receipt: Receipt, message: str) -> dict[str, object]:
    """The node refuses ``receipt`` with exactly ``message``, stores nothing, keeps evidence."""
    book = world.books["uni-a"]
    with pytest.raises(ReceiptError) as caught:
        book.keep(receipt, OPERATOR.public_key(), "uni-a")
    assert str(caught.value) == message
    assert not (book.folder / receipt.file_name).exists()
    (refusal,) = book.refusals()
    assert refusal["kind"] == "misstated" and refusal["reason"] == message
    assert Receipt.from_json(json.dumps(refusal["receipt"])) == receipt  # the signed evidence
    return refusal


def test_an_honest_round_carries_the_charge_and_the_valuation_and_is_kept(world: World) -> None:
    receipts = record_round_3(world)
    for name in NAMES:
        receipt = receipts[name]
        assert receipt.charge() is not None and receipt.valuation() is not None
        assert receipt.contribution() == _honest_values().values[name]
        assert Receipt.from_json(receipt.to_json()) == receipt
        kept = world.books[name].keep(receipt, OPERATOR.public_key(), name)
        assert kept.path.is_file()
        assert world.books[name].refusals() == []


def test_a_misstated_example_count_is_refused(world: World) -> None:
    receipts = record_round_3(world, num_examples=999)
    receipt = receipts["uni-a"]
    refusal = _refused(
        world,
        receipt,
        f"misstated: the ledger's entry {receipt.seq} records num_examples 999 for this node's "
        "round 3 update; this node sent 10",
    )
    assert refusal["misstated"] == {
        "entry": receipt.seq,
        "field": "num_examples",
        "ledger": 999,
        "own": 10,
    }
    world.books["co-c"].keep(receipts["co-c"], OPERATOR.public_key(), "co-c")  # true: kept


def test_a_misstated_dataset_hash_is_refused(world: World) -> None:
    receipts = record_round_3(world, charge=dataclasses.replace(CHARGE, dataset_sha256="f" * 64))
    receipt = receipts["uni-a"]
    _refused(
        world,
        receipt,
        f"misstated: the ledger's entry {receipt.charge_seq} records dataset_sha256 {'f' * 64} "
        f"for this node's round 3 privacy charge; this node's accountant charged {'d' * 64}",
    )
    world.books["co-c"].keep(receipts["co-c"], OPERATOR.public_key(), "co-c")  # true: kept


@pytest.mark.parametrize(
    ("field", "misstated", "ledger", "own"),
    [
        ("epsilon", 0.5, "0.5", "2.5"),
        ("noise_multiplier", 4.0, "4.0", "1.1"),
        ("sample_rate", 0.01, "0.01", "0.0625"),
        ("steps", 4, "4", "32"),
    ],
)
def test_a_misstated_privacy_charge_is_refused(
    world: World, field: str, misstated: float, ledger: str, own: str
) -> None:
    changes: dict[str, Any] = {field: misstated}
    charge = dataclasses.replace(CHARGE, **changes)
    receipt = record_round_3(world, charge=charge)["uni-a"]
    _refused(
        world,
        receipt,
        f"misstated: the ledger's entry {receipt.charge_seq} records {field} {ledger} for this "
        f"node's round 3 privacy charge; this node's accountant charged {own}",
    )


def test_a_misstated_contribution_value_is_refused(world: World) -> None:
    honest = _honest_values()
    inflated = dict(honest.values)
    inflated["uni-a"] -= 40_000  # the operator shrinks uni-a's value beside the utilities
    receipt = record_round_3(world, values=dataclasses.replace(honest, values=inflated))["uni-a"]
    _refused(
        world,
        receipt,
        f"misstated: the ledger's entry {receipt.value_seq} records value {inflated['uni-a']} "
        f"for this node's round 3 contribution; recomputed from the valuation entry "
        f"{receipt.valuation_seq}, it gives {honest.values['uni-a']}",
    )


def test_a_round_valued_without_this_node_leaves_it_no_value_to_check(world: World) -> None:
    values = RoundValues("shapley", ("co-c",), {0: 500_000, 1: 700_000}, {"co-c": 200_000})
    receipts = record_round_3(world, values=values)
    assert receipts["uni-a"].value_seq is None  # no value for uni-a: nothing to check
    world.books["uni-a"].keep(receipts["uni-a"], OPERATOR.public_key(), "uni-a")


def test_a_round_charged_twice_carries_no_charge_to_check(world: World) -> None:
    """A round retried after a crash: the charge of the attempt never receipted is
    recorded too (owed), so which charge is the update's is not the receipt's to guess."""
    retried = dataclasses.replace(CHARGE, epsilon=2.0, history_sha256="0" * 64)
    receipts = record_round_3(world, retried=retried)
    assert receipts["uni-a"].charge_seq is None and receipts["co-c"].charge_seq is not None
    for name in NAMES:
        world.books[name].keep(receipts[name], OPERATOR.public_key(), name)


def test_receipts_and_sent_records_without_the_new_fields_are_still_kept(world: World) -> None:
    receipt = record_round_3(world)["uni-a"]
    old = dataclasses.replace(
        receipt,
        charge_seq=None,
        charge_payload=None,
        charge_inclusion=None,
        valuation_seq=None,
        valuation_payload=None,
        valuation_inclusion=None,
    )
    doc = old.to_dict()
    for key in [k for k in doc if k.startswith(("charge_", "valuation_"))]:
        del doc[key]  # as an older server wrote it
    sent = world.books["uni-a"].sent_folder / receipt.file_name
    record = json.loads(sent.read_text())
    sent.write_text(
        json.dumps({k: record[k] for k in ("participant", "ciphertext_sha256", "signature")})
    )
    parsed = Receipt.from_json(json.dumps(doc))
    assert parsed == old
    world.books["uni-a"].keep(parsed, OPERATOR.public_key(), "uni-a")


def test_the_sent_record_keeps_the_signed_count_and_charge(world: World) -> None:
    (first, *_) = read_sent(world.books["uni-a"].folder)
    assert (first.run_id, first.round, first.num_examples) == ("7", 1, 10)
    assert first.privacy is not None and first.privacy["epsilon"] == CHARGE.epsilon
    assert first.privacy["dataset_sha256"] == CHARGE.dataset_sha256


def test_client_check_reports_an_update_sent_without_a_receipt(
    world: World, tmp_path: Path
) -> None:
    state = tmp_path / "uni-a"  # the node's state folder: its receipts are state/receipts
    result = runner.invoke(app, ["client", "check", "--state", str(state)])
    assert "2 updates sent, 2 with a receipt kept" in result.output
    # no quorum was ever brought for them here: both are pending, and that is reported
    assert result.exit_code == 1 and "pending: run 7 round 2" in result.output
    world.books["uni-a"].record_sent(sealed_update("uni-a", 3))  # sent; the operator withholds
    result = runner.invoke(app, ["client", "check", "--state", str(state)])
    assert result.exit_code == 1
    assert "no receipt: run 7 round 3: no receipt (withheld, never recorded" in result.output
    result = runner.invoke(app, ["client", "check", "--state", str(state), "--format", "json"])
    doc = json.loads(result.output)
    assert doc["sent"] == 3
    assert [(u["run_id"], u["round"], u["refused"]) for u in doc["unreceipted"]] == [("7", 3, [])]


def test_client_check_reports_a_refused_receipt(world: World, tmp_path: Path) -> None:
    receipt = record_round_3(world, num_examples=999)["uni-a"]
    with pytest.raises(ReceiptError):
        world.books["uni-a"].keep(receipt, OPERATOR.public_key(), "uni-a")
    (missing,) = unreceipted(world.books["uni-a"].folder)
    assert (missing.sent.round, missing.refused) == (3, ("misstated",))
    result = runner.invoke(app, ["client", "check", "--state", str(tmp_path / "uni-a")])
    assert result.exit_code == 1
    assert "run 7 round 3: its receipt was refused (misstated)" in result.output
    assert unreceipted(world.books["co-c"].folder)[0].refused == ()  # co-c never got it


def test_client_check_names_a_folder_that_is_no_state(tmp_path: Path) -> None:
    result = runner.invoke(app, ["client", "check", "--state", str(tmp_path / "nope")])
    assert result.exit_code != 0
    assert "is not a FedCommons state folder" in result.output
