"""Model releases: the final model, its card's provenance and obligations, and the ledger proof.

Ledger state is built through the store functions (admission, rounds,
privacy charges, exclusions, signed checkpoints) on a real SQLite file and
the real PostgreSQL server; the end-to-end demo test covers a real run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from audit.cards import CardVerdict, check_card
from client.receipts import cosign_heads
from common.arrays import arrays_sha256
from common.consortium import default_log_origin
from common.keys import encode_public, write_private_key
from common.licences import SPDX
from common.merkle import leaf_hash, verify_inclusion
from common.note import COSIGNATURE_TYPE, verifier_key
from common.receipts import TreeHead
from fedcommons.cli import app
from ledger import Ledger
from ledger.cosignatures import record_cosignatures
from ledger.report import ledger_report
from ledger.schema import LedgerEntry, LedgerTreeHead, Release, Round
from ledger.tree_heads import tree_head_from_row
from ledger.verify import LedgerTampered, verify_ledger
from server.app.snapshots import load_snapshot, save_snapshot
from server.operator.consortium import init_consortium
from server.release.release import ReleaseError, release_model
from tests.support.release_federation import COMPANY, Federation, dataset_sha256, round_weights

CREDIT = SPDX["CC-BY-4.0"].attribution  # what each SPDX licence with attribution asks


def _entries(ledger: Ledger) -> list[LedgerEntry]:
    with ledger.session() as s:
        return list(s.scalars(select(LedgerEntry).order_by(LedgerEntry.seq)))


def _offline(card: dict[str, Any], operator: Ed25519PublicKey) -> CardVerdict:
    """The card checks a reader makes without the ledger."""
    return check_card(card, operator=operator, origin=default_log_origin(operator))


def _with_ledger(card: dict[str, Any], operator: Ed25519PublicKey, s: Session) -> CardVerdict:
    return check_card(card, operator=operator, origin=default_log_origin(operator), session=s)


def _refused(verdict: CardVerdict, name: str) -> str:
    check = verdict.check(name)
    assert check.held is False, check
    return check.detail


def _read_card(out: Path) -> dict[str, Any]:
    card: dict[str, Any] = json.loads((out / "model-card.json").read_bytes())
    return card


@pytest.fixture
def federation(url: str, tmp_path: Path) -> Iterator[Federation]:
    ledger = Ledger(url)
    yield Federation(ledger, Ed25519PrivateKey.generate(), tmp_path / "snapshots", {})
    ledger.close()


@pytest.fixture
def demo(federation: Federation) -> Federation:
    """The demo's licences: CC-BY, CC-BY-NC and company-c's custom research terms."""
    federation.admit("university-a", SPDX["CC-BY-4.0"])
    federation.admit("university-b", SPDX["CC-BY-NC-4.0"])
    federation.admit("company-c", COMPANY)
    return federation


def test_non_commercial_data_makes_the_model_non_commercial(
    demo: Federation, tmp_path: Path
) -> None:
    run_id = demo.run(["university-a", "university-b", "company-c"])
    demo.release(run_id, tmp_path / "out")
    owed = _read_card(tmp_path / "out")["obligations"]
    assert owed == {
        "attribution": [
            f"university-a: {CREDIT}",
            f"university-b: {CREDIT}",
            "company-c: Company C (industrial partner data)",
        ],
        "non_commercial": True,
        "non_commercial_from": [
            "university-b (CC-BY-NC-4.0)",
            "company-c (custom:company-c-research)",
        ],
        "share_alike": [],
        "share_alike_from": [],
        "purposes": ["research"],  # company-c allows nothing else
        "expires": None,
    }
    markdown = (tmp_path / "out" / "model-card.md").read_text()
    assert "## Obligations" in markdown
    assert (
        "**Non-commercial use only**, required by university-b (CC-BY-NC-4.0), "
        "company-c (custom:company-c-research)." in markdown
    )
    assert "  - company-c: Company C (industrial partner data)" in markdown


def test_share_alike_and_expiry_propagate(federation: Federation, tmp_path: Path) -> None:
    federation.admit("university-a", SPDX["CC-BY-SA-4.0"])
    federation.admit("lab-d", replace(SPDX["CC0-1.0"], expires=date(2031, 5, 1)))
    run_id = federation.run(["university-a", "lab-d"])
    federation.release(run_id, tmp_path / "out")
    owed = _read_card(tmp_path / "out")["obligations"]
    assert owed["share_alike"] == ["CC-BY-SA-4.0"]
    assert owed["share_alike_from"] == ["university-a (CC-BY-SA-4.0)"]
    assert owed["attribution"] == [f"university-a: {CREDIT}"]  # CC0 asks no credit
    assert (owed["non_commercial"], owed["purposes"]) == (
        False,
        ["research", "education", "commercial"],
    )
    assert owed["expires"] == "2031-05-01"
    markdown = (tmp_path / "out" / "model-card.md").read_text()
    assert "- Commercial use: allowed by every contributing licence." in markdown
    assert "**Share-alike**: derived works carry the terms of CC-BY-SA-4.0" in markdown


def test_an_institution_excluded_from_every_round_adds_no_obligation(
    federation: Federation, tmp_path: Path
) -> None:
    federation.admit("university-a", SPDX["CC-BY-4.0"])
    federation.admit("university-b", SPDX["CC-BY-4.0"])
    federation.admit("co-x", SPDX["CC-BY-NC-SA-4.0"])
    run_id = federation.run(["university-a", "university-b"], excluded=("co-x",))
    federation.release(run_id, tmp_path / "out")
    card = _read_card(tmp_path / "out")
    assert [c["institution"] for c in card["contributors"]] == ["university-a", "university-b"]
    assert card["obligations"]["non_commercial"] is False
    assert card["obligations"]["share_alike"] == []
    assert all("co-x" not in credit for credit in card["obligations"]["attribution"])
    assert [p["institution"] for p in card["privacy"]] == ["university-a", "university-b"]
    assert {(e["round"], e["institution"], e["code"]) for e in card["exclusions"]} == {
        (1, "co-x", 451),
        (2, "co-x", 451),
    }
    assert (
        "| 1 | co-x | 451 | licence expired (research run) |"
        in (tmp_path / "out" / "model-card.md").read_text()
    )


def test_only_the_dataset_a_contributor_trained_on_counts(
    federation: Federation, tmp_path: Path
) -> None:
    federation.admit("university-a", SPDX["CC-BY-4.0"])
    federation.admit("university-b", SPDX["CC-BY-NC-4.0"])  # an older dataset
    federation.admit("university-b", SPDX["CC-BY-4.0"], tag="v2")
    run_id = federation.run(["university-a", "university-b"], trained_on={"university-b": "v2"})
    federation.release(run_id, tmp_path / "out")
    card = _read_card(tmp_path / "out")
    (b,) = (c for c in card["contributors"] if c["institution"] == "university-b")
    assert [(d["sha256"], d["licence"]) for d in b["datasets"]] == [
        (dataset_sha256("university-b", "v2"), "CC-BY-4.0")
    ]
    assert card["obligations"]["non_commercial"] is False


def test_the_card_states_what_the_ledger_holds(demo: Federation, tmp_path: Path) -> None:
    run_id = demo.run(["university-a", "university-b", "company-c"])
    out = tmp_path / "release"
    released = demo.release(run_id, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "model-card.json",
        "model-card.md",
        "model.safetensors",
    ]
    card = _read_card(out)
    assert card == released.card
    final = arrays_sha256(round_weights(2))
    number, arrays = load_snapshot(out / "model.safetensors")
    assert (number, arrays_sha256(arrays)) == (2, final)
    assert card["model"]["sha256"] == released.model_sha256 == final
    assert (
        card["model"]["file_sha256"]
        == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    )
    assert (
        released.card_sha256 == hashlib.sha256((out / "model-card.json").read_bytes()).hexdigest()
    )
    assert (card["run"]["id"], card["run"]["rounds"], card["run"]["purpose"]) == (
        run_id,
        2,
        "research",
    )
    assert [(r["round"], r["model_sha256_after"]) for r in card["rounds"]] == [
        (1, arrays_sha256(round_weights(1))),
        (2, final),
    ]
    assert [(c["institution"], c["kind"], c["rounds"]) for c in card["contributors"]] == [
        ("university-a", "academia", [1, 2]),
        ("university-b", "academia", [1, 2]),
        ("company-c", "industry", [1, 2]),
    ]
    # per institution: the last charge's cumulative epsilon (round 2) and delta
    assert [(p["institution"], p["epsilon"], p["delta"], p["rounds_charged"])
            for p in card["privacy"]] == [
        ("company-c", 5.0, 1e-5, 2), ("university-a", 3.0, 1e-5, 2),
        ("university-b", 4.0, 1e-5, 2),
    ]  # fmt: skip
    markdown = (out / "model-card.md").read_text()
    assert f"| model sha256 (ledger) | `{final}` |" in markdown
    assert "| university-b | `" in markdown and "| 4.000 | 1e-05 | rdp | 2 |" in markdown


def test_the_cards_proof_verifies_against_the_signed_checkpoint(
    demo: Federation, tmp_path: Path
) -> None:
    run_id = demo.run(["university-a", "university-b", "company-c"])
    card = demo.release(run_id, tmp_path / "out").card
    proof = card["ledger"]
    with demo.ledger.session() as s:
        last = s.scalars(select(Round).where(Round.number == 2)).one()
        assert proof["entry"]["seq"] == last.entry_seq
    signed = proof["tree_head"]
    checkpoint = TreeHead(
        **{k: signed[k] for k in ("tree_size", "root", "at", "note", "key_id", "signature")},
        checkpoint=signed["checkpoint"],
    )
    checkpoint.verify(demo.operator.public_key())
    assert signed["checkpoint"].startswith(f"{checkpoint.origin}\n{checkpoint.tree_size}\n")
    assert signed["witnesses"] == {}  # no node cosigned here (the e2e demo's nodes do)
    assert checkpoint.note == f"run {run_id} round 2"  # the one signed after the round
    assert checkpoint.body().decode() == signed["signed_body"]
    payload = proof["entry"]["payload"]
    verify_inclusion(
        leaf_hash(payload.encode()), proof["entry"]["seq"], checkpoint.tree_size,
        [bytes.fromhex(p) for p in proof["inclusion_proof"]], bytes.fromhex(checkpoint.root),
    )  # fmt: skip
    assert json.loads(payload)["row"]["model_sha256_after"] == card["model"]["sha256"]
    assert _offline(card, demo.operator.public_key()).mismatches == []

    stranger = _offline(card, Ed25519PrivateKey.generate().public_key())
    assert "names signing key" in _refused(stranger, "operator signature")
    bad_proof = json.loads(json.dumps(card))
    bad_proof["ledger"]["inclusion_proof"][0] = "0" * 64
    verdict = _offline(bad_proof, demo.operator.public_key())
    assert "does not lead to the expected root" in _refused(verdict, "final round")
    other_model = json.loads(json.dumps(card))
    other_model["model"]["sha256"] = "f" * 64
    verdict = _offline(other_model, demo.operator.public_key())
    assert _refused(verdict, "final round").endswith(f"the card releases {'f' * 64}")


def test_the_release_is_an_entry_and_the_ledger_still_verifies(
    demo: Federation, tmp_path: Path
) -> None:
    run_id = demo.run(["university-a", "university-b", "company-c"])
    before = verify_ledger(demo.ledger, demo.operator.public_key())
    released = demo.release(run_id, tmp_path / "out")
    entries = _entries(demo.ledger)
    assert (entries[-1].seq, entries[-1].kind) == (released.entry_seq, "release")
    stated = json.loads(entries[-1].payload)
    assert stated["table"] == "releases"
    assert stated["row"]["card_sha256"] == released.card_sha256
    assert stated["row"]["model_sha256"] == released.model_sha256
    assert stated["row"]["checkpoint_root"] == released.card["ledger"]["tree_head"]["root"]
    assert released.tree_head is not None
    assert released.tree_head.tree_size == len(entries)  # the new checkpoint covers it
    after = verify_ledger(demo.ledger, demo.operator.public_key())
    assert (after.entries, after.rows_checked, after.tree_heads) == (
        before.entries + 1,
        before.rows_checked + 1,
        before.tree_heads + 1,
    )
    assert released.tree_head.root == after.tree_root
    with demo.ledger.session() as s:
        (row,) = s.scalars(select(Release)).all()
        assert (row.run_id, row.out) == (run_id, str((tmp_path / "out").resolve()))
        (run,) = ledger_report(s)["runs"]
    # auditors see it in 'audit show'
    (shown,) = run["releases"]
    assert (shown["model_sha256"], shown["card_sha256"]) == (
        released.model_sha256,
        released.card_sha256,
    )
    assert shown["checkpoint_root"] == released.card["ledger"]["tree_head"]["root"]


def test_a_checkpoint_is_signed_for_a_run_that_had_none(demo: Federation, tmp_path: Path) -> None:
    run_id = demo.run(["university-a"], sign=False)
    with pytest.raises(ReleaseError, match=f"no signed tree head covers round 2 of run {run_id}"):
        demo.release(run_id, tmp_path / "unsigned", sign=False)
    assert not (tmp_path / "unsigned").exists()
    card = demo.release(run_id, tmp_path / "out").card
    assert card["ledger"]["tree_head"]["note"] == f"run {run_id} final round"
    assert _offline(card, demo.operator.public_key()).mismatches == []
    assert verify_ledger(demo.ledger, demo.operator.public_key()).tree_heads == 2


def test_unknown_unfinished_and_empty_runs_are_refused(demo: Federation, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ReleaseError, match=r"^run 9 is not in the ledger$"):
        demo.release(9, out)
    running = demo.run(["university-a"], status="running")
    with pytest.raises(ReleaseError, match=f"run {running} is running, not finished"):
        demo.release(running, out)
    failed = demo.run(["university-a"], status="failed")
    with pytest.raises(
        ReleaseError, match=rf"run {failed} is failed \(round 3: 1 of 3 nodes\), not finished"
    ):
        demo.release(failed, out)
    empty = demo.run([], rounds=0)
    with pytest.raises(ReleaseError, match="finished without a round: there is no model"):
        demo.release(empty, out)
    assert not out.exists()
    assert all(e.kind != "release" for e in _entries(demo.ledger))


def test_a_missing_or_different_checkpoint_is_refused(demo: Federation, tmp_path: Path) -> None:
    run_id = demo.run(["university-a"])
    final = demo.snapshots / "round-0002.safetensors"
    final.rename(tmp_path / "aside.safetensors")
    with pytest.raises(
        ReleaseError, match=rf"run {run_id}'s final model: the snapshot of round 2 is missing: no "
    ):
        demo.release(run_id, tmp_path / "out")
    save_snapshot(demo.snapshots, 2, round_weights(7), "x")  # another run's model
    with pytest.raises(
        ReleaseError,
        match=rf"run {run_id}'s final model: .*round-0002.safetensors holds model "
        rf"{arrays_sha256(round_weights(7))} \(round 2\); the ledger records .*overwritten it",
    ):
        demo.release(run_id, tmp_path / "out")
    # the real one, from another folder
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "aside.safetensors").rename(moved / "round-0002.safetensors")
    released = release_model(
        demo.ledger, run_id, tmp_path / "out", snapshot_dir=moved, signer=demo.operator
    )
    assert released.model_sha256 == arrays_sha256(round_weights(2))


def test_a_non_empty_folder_is_never_written_over(demo: Federation, tmp_path: Path) -> None:
    run_id = demo.run(["university-a"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ReleaseError, match="out is not empty: a release is written into"):
        demo.release(run_id, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    demo.release(run_id, tmp_path / "first")
    with pytest.raises(ReleaseError, match="first is not empty"):
        demo.release(run_id, tmp_path / "first")


def test_a_tampered_ledger_is_not_released(demo: Federation, tmp_path: Path) -> None:
    run_id = demo.run(["university-a"])
    with demo.ledger.engine.begin() as c:
        c.execute(text(f"UPDATE rounds SET model_sha256_after = '{'f' * 64}' WHERE number = 2"))
    with pytest.raises(LedgerTampered, match="rounds row 2 differs from its entry"):
        demo.release(run_id, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_operator_release_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    operator = Ed25519PrivateKey.generate()
    federation = Federation(ledger, operator, tmp_path / "snapshots", {})
    federation.admit("university-a", SPDX["CC-BY-4.0"])
    federation.admit("university-b", SPDX["CC-BY-NC-4.0"])
    run_id = federation.run(["university-a", "university-b"])
    ledger.close()
    key = write_private_key(tmp_path / "operator.pem", operator)
    runner = CliRunner()

    command = ["operator", "release", "--ledger", url, "--snapshots", str(tmp_path / "snapshots"),
               "--operator-key", str(key)]  # fmt: skip
    result = runner.invoke(
        app,
        [*command, "--run", str(run_id), "--out", str(tmp_path / "r1"), "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["obligations"]["non_commercial"] is True
    assert (
        doc["card_sha256"]
        == hashlib.sha256((tmp_path / "r1" / "model-card.json").read_bytes()).hexdigest()
    )
    assert doc["tree_head"]["note"] == f"release of run {run_id}"

    # the consortium folder's deploy settings name the ledger, snapshots and operator key
    folder = init_consortium(
        tmp_path / "op", name="t", superlink="127.0.0.1:9", hosts=["127.0.0.1"], ledger_url=url
    )
    deploy = folder.deploy().with_values(
        {"operator-key": str(key), "snapshot-dir": str(tmp_path / "snapshots")},
        folder.root,
        "test",
    )
    folder.deploy_file.write_text(deploy.to_toml(folder.root))
    result = runner.invoke(
        app, ["operator", "release", "--run", str(run_id), "--dir", str(folder.root),
              "--out", str(tmp_path / "r2")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"released run {run_id} into" in result.output
    assert "obligations: non-commercial use only; credit 2 contributor(s)" in result.output

    for args, message in (
        (["--run", "9", "--out", str(tmp_path / "r3")], "error: run 9 is not in the ledger"),
        (["--run", str(run_id), "--out", str(tmp_path / "r1")], "r1 is not empty"),
        (
            ["--run", str(run_id), "--out", str(tmp_path / "r3"), "--snapshots", str(tmp_path)],
            f"run {run_id}'s final model: the snapshot of round 2 is missing",
        ),
    ):
        result = runner.invoke(app, [*command, *args])
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    result = runner.invoke(
        app, ["operator", "release", "--run", "1", "--out", str(tmp_path / "r4"),
              "--ledger", f"sqlite:///{tmp_path / 'absent.db'}", "--snapshots", str(tmp_path),
              "--operator-key", str(key)],
    )  # fmt: skip
    assert result.exit_code == 1 and "the file does not exist" in result.output
    assert not (tmp_path / "absent.db").exists()
    ledger = Ledger(url, migrate=False)
    with ledger.session() as s:
        assert len(s.scalars(select(Release)).all()) == 2  # the refused ones left no row
    ledger.close()


def test_the_card_shares_the_contributions_by_institution_and_kind(
    demo: Federation, tmp_path: Path
) -> None:
    worth = {"university-a": 30_000, "university-b": 10_000, "company-c": -5_000}
    run_id = demo.run(["university-a", "university-b", "company-c"], worth=worth)
    card = demo.release(run_id, tmp_path / "release").card
    shares = card["contributions"]
    assert (shares["rounds_valued"], shares["methods"]) == (2, ["shapley"])
    assert [(i["name"], i["kind"], i["value_ppm"], i["share"]) for i in shares["institutions"]] == [
        ("university-a", "academia", 60_000, 0.75),
        ("university-b", "academia", 20_000, 0.25),
        ("company-c", "industry", -10_000, 0.0),  # harmful on balance: no share
    ]
    assert [(k["name"], k["value_ppm"], k["share"]) for k in shares["kinds"]] == [
        ("academia", 80_000, 1.0),
        ("industry", -10_000, 0.0),
    ]
    markdown = (tmp_path / "release" / "model-card.md").read_text()
    assert "## Contributions (shapley values over 2 rounds, share of the total)" in markdown
    assert "| university-a | academia | 60000 | 75.00% |" in markdown
    assert "| all academia | academia | 80000 | 100.00% |" in markdown


def test_a_card_of_a_run_never_valued_has_no_contributions_table(
    demo: Federation, tmp_path: Path
) -> None:
    run_id = demo.run(["university-a", "university-b"])
    card = demo.release(run_id, tmp_path / "release").card
    assert card["contributions"]["rounds_valued"] == 0
    assert "## Contributions" not in (tmp_path / "release" / "model-card.md").read_text()


def test_the_release_checkpoint_carries_the_contributors_cosignatures(
    federation: Federation, tmp_path: Path
) -> None:
    signers = {name: Ed25519PrivateKey.generate() for name in ("university-a", "company-c")}
    for name, key in signers.items():
        federation.keys[name] = encode_public(key.public_key())
    federation.admit("university-a", SPDX["CC-BY-4.0"])
    federation.admit("company-c", COMPANY)
    run_id = federation.run(list(signers))
    with federation.ledger.session() as s:
        rows = s.scalars(select(LedgerTreeHead).order_by(LedgerTreeHead.id))
        heads = [tree_head_from_row(row) for row in rows]
        for name, key in signers.items():
            _, refused = record_cosignatures(s, name, cosign_heads(heads, name, key, now=1))
            assert refused == []
    released = federation.release(run_id, tmp_path / "out")
    card, operator = released.card, federation.operator.public_key()
    with federation.ledger.session() as s:
        witnesses = _with_ledger(card, operator, s).check("witnesses")
    assert witnesses.detail == "cosigned by university-a, company-c, with their admitted keys"
    signed = card["ledger"]["tree_head"]
    assert sorted(signed["witnesses"]) == ["company-c", "university-a"]
    markdown = (tmp_path / "out" / "model-card.md").read_text()
    assert "cosigned by company-c, university-a" in markdown
    assert signed["checkpoint"].split("\n\n")[0] in markdown
    other = json.loads(json.dumps(card))
    stranger = Ed25519PrivateKey.generate().public_key()
    other["ledger"]["tree_head"]["witnesses"]["company-c"] = verifier_key(
        "company-c", stranger, COSIGNATURE_TYPE
    )
    with federation.ledger.session() as s:  # the card's keys are compared, never trusted
        verdict = _with_ledger(other, operator, s)
    assert _refused(verdict, "witnesses") == (
        "the card states a witness key for company-c that is not the key the consortium "
        "admitted it with"
    )
    del other["ledger"]["tree_head"]["witnesses"]["company-c"]
    with federation.ledger.session() as s:
        assert _with_ledger(other, operator, s).check("witnesses").held is True
