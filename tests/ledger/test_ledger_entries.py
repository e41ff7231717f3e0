"""Append-only entries, the hash chain and ``audit verify``, on SQLite and PostgreSQL.

Tampering is done with raw SQL, after dropping the triggers that otherwise
refuse it, exactly as an operator with database access could.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from common.keys import encode_public
from common.merkle import leaf_hash
from common.note import SignatureLine, signature_lines
from common.protocol import ExclusionCode, PrivacyCharge
from common.receipts import TreeHead
from fedcommons.cli import app
from ledger import (
    ChargeFact,
    ExclusionFact,
    Ledger,
    UpdateFact,
    enrol_participant,
    finish_run,
    record_privacy,
    record_round,
    start_run,
)
from ledger.entries import canonical_payload, chain_hash, entry_leaf_hash, record_row
from ledger.schema import ChainTip, LedgerEntry, LedgerTreeHead, Participant
from ledger.tree_heads import sign_tree_head
from ledger.verify import LedgerTampered, verify_ledger
from tests.support.merkle_reference import root

H = "a" * 64
CHARGE = PrivacyCharge(True, 2.5, 1e-5, 1.1, 0.0625, 32, "rdp", 1.0, "d" * 64, "e" * 64)


def _populate(ledger: Ledger) -> None:
    """Two participants, one run with a round, charges, an exclusion and the finish."""
    with ledger.session() as s:
        for name, kind in (("uni-a", "academia"), ("co-c", "industry")):
            enrol_participant(s, name, kind)
        participant = s.query(Participant).filter_by(name="uni-a").one()
        participant.public_key = "cHVibGljIGtleSBvZiB1bmktYQ=="
        record_row(s, participant, "participant")
        run_id = start_run(
            s,
            policy_sha256=H,
            policy_toml="[federation]\n",
            model="cnn",
            dataset="digits",
            initial_model_sha256=H,
            planned_rounds=1,
            flower_run_id=7,
        ).id
    with ledger.session() as s:
        record_privacy(
            s,
            run_id,
            1,
            charges=[ChargeFact("uni-a", CHARGE)],
            exclusions=[
                ExclusionFact("co-c", 12, ExclusionCode.BUDGET_EXHAUSTED, "budget exhausted")
            ],
        )
    with ledger.session() as s:
        record_round(
            s,
            run_id,
            number=1,
            model_sha256_before=H,
            model_sha256_after="b" * 64,
            loss=0.7,
            accuracy=0.81,
            seconds=12.5,
            updates=[UpdateFact("uni-a", 100, 0.5, "c" * 64, 1000, 1.5, "d" * 64)],
        )
    with ledger.session() as s:
        finish_run(s, run_id, "finished", test_accuracy=0.8, test_loss=0.71)


def _entries(ledger: Ledger) -> list[tuple[int, str, str]]:
    with ledger.engine.connect() as c:
        rows = c.execute(text("SELECT seq, kind, payload FROM ledger_entries ORDER BY seq"))
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def _seq_of(ledger: Ledger, kind: str) -> int:
    return next(seq for seq, k, _ in _entries(ledger) if k == kind)


def _tamper(ledger: Ledger, *statements: str) -> None:
    """Drop the append-only triggers and run raw SQL, as a rogue operator could."""
    with ledger.engine.begin() as c:
        if ledger.engine.dialect.name == "postgresql":
            for table in ("ledger_entries", "tree_heads"):
                c.execute(text(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}"))
        else:
            for table in ("ledger_entries", "tree_heads"):
                c.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_update"))
                c.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_delete"))
        for statement in statements:
            c.exec_driver_sql(statement)  # raw: JSON colons are not bind parameters


def _caught(ledger: Ledger) -> LedgerTampered:
    with pytest.raises(LedgerTampered) as err:
        verify_ledger(ledger)
    return err.value


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    ledger = Ledger(url)
    _populate(ledger)
    yield ledger
    ledger.close()


def test_every_fact_is_an_entry_and_the_ledger_verifies(ledger: Ledger) -> None:
    entries = _entries(ledger)
    kinds = [k for _, k, _ in entries]
    assert kinds == [
        "participant",
        "participant",
        "participant",  # uni-a again, with its key
        "run",
        "run-members",  # the members admitted when it started: uni-a
        "privacy-charge",
        "exclusion",
        "round",
        "update",
        "run",  # finished
    ]
    assert [seq for seq, _, _ in entries] == list(range(len(entries)))
    report = verify_ledger(ledger)
    assert report.entries == len(entries) and report.rows_checked == 7
    assert report.tree_root == root([leaf_hash(p.encode()) for _, _, p in entries]).hex()
    finished = json.loads(entries[-1][2])
    assert finished["row"]["status"] == "finished"
    assert finished["row"]["test_accuracy"] == "0.8"  # no floats in payloads
    for _, _, payload in entries:
        assert canonical_payload(json.loads(payload)) == payload


def test_the_database_refuses_updates_and_deletes(ledger: Ledger) -> None:
    for statement in (
        "UPDATE ledger_entries SET kind = 'x' WHERE seq = 1",
        "DELETE FROM ledger_entries WHERE seq = 9",
    ):
        with pytest.raises(DatabaseError, match="append-only"), ledger.engine.begin() as c:
            c.execute(text(statement))
    assert verify_ledger(ledger).entries == 10


def test_one_changed_payload_byte_is_named(ledger: Ledger) -> None:
    seq = _seq_of(ledger, "round")
    _tamper(
        ledger,
        f"UPDATE ledger_entries SET payload = REPLACE(payload, '\"0.81\"', '\"0.91\"') "
        f"WHERE seq = {seq}",
    )
    err = _caught(ledger)
    assert (err.seq, err.kind) == (seq, "round")
    assert "leaf hash does not match the payload" in str(err)


def test_a_changed_hash_is_named(ledger: Ledger) -> None:
    _tamper(ledger, f"UPDATE ledger_entries SET leaf_hash = '{'f' * 64}' WHERE seq = 4")
    assert _caught(ledger).seq == 4


def test_a_rewritten_entry_with_fixed_hashes_breaks_the_chain(ledger: Ledger) -> None:
    seq = _seq_of(ledger, "privacy-charge")
    payload = _entries(ledger)[seq][2]
    forged = payload.replace('"epsilon":"2.5"', '"epsilon":"0.5"')
    assert forged != payload
    _tamper(
        ledger,
        f"UPDATE ledger_entries SET payload = '{forged}', "
        f"leaf_hash = '{entry_leaf_hash(forged)}' WHERE seq = {seq}",
    )
    err = _caught(ledger)
    assert err.seq == seq and "chain hash does not match" in str(err)


def test_a_deleted_middle_entry_is_named(ledger: Ledger) -> None:
    _tamper(ledger, "DELETE FROM ledger_entries WHERE seq = 5")
    err = _caught(ledger)
    assert err.seq == 5 and "missing" in str(err)


def test_a_deleted_tail_is_caught_by_the_head_or_the_rows(ledger: Ledger) -> None:
    _tamper(ledger, "DELETE FROM ledger_entries WHERE seq = 9")
    assert "the chain tip says 10 entries, the table holds 9" in str(_caught(ledger))
    # the head rewritten too: the finished run now names a missing entry
    with ledger.engine.connect() as c:
        chain = c.execute(text("SELECT chain_hash FROM ledger_entries WHERE seq = 8")).scalar()
    _tamper(ledger, f"UPDATE ledger_head SET size = 9, chain_hash = '{chain}'")
    err = _caught(ledger)
    assert err.seq == 9 and "runs row 1 names a missing entry" in str(err)


def test_two_swapped_entries_are_named(ledger: Ledger) -> None:
    _tamper(
        ledger,
        "UPDATE ledger_entries SET seq = 100 WHERE seq = 4",
        "UPDATE ledger_entries SET seq = 4 WHERE seq = 5",
        "UPDATE ledger_entries SET seq = 5 WHERE seq = 100",
    )
    err = _caught(ledger)
    assert err.seq == 4 and "prev_hash" in str(err)


def test_a_replaced_public_key_in_the_typed_table_is_named(ledger: Ledger) -> None:
    _tamper(ledger, "UPDATE participants SET public_key = 'bWFsbG9yeQ==' WHERE name = 'uni-a'")
    err = _caught(ledger)
    assert err.seq == 2 and err.kind == "participant"
    assert "participants row 1 differs from its entry in public_key" in str(err)


def test_a_deleted_fact_row_is_named(ledger: Ledger) -> None:
    _tamper(ledger, "DELETE FROM exclusions")
    err = _caught(ledger)
    assert err.kind == "exclusion" and "exclusions row 1 was deleted" in str(err)


def test_a_row_pointed_back_at_an_older_entry_is_named(ledger: Ledger) -> None:
    _tamper(ledger, "UPDATE runs SET entry_seq = 3, status = 'running', test_accuracy = NULL")
    assert "runs row 1 names entry 3, not this later one" in str(_caught(ledger))


def test_two_concurrent_writers_make_one_valid_chain(ledger: Ledger, url: str) -> None:
    before = verify_ledger(ledger).entries
    errors: list[BaseException] = []

    def writer(prefix: str) -> None:
        other = Ledger(url, migrate=False)
        try:
            for i in range(40):
                with other.session() as s:
                    enrol_participant(s, f"{prefix}-{i}", "academia")
        except BaseException as err:
            errors.append(err)
        finally:
            other.close()

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = verify_ledger(ledger)
    assert report.entries == before + 80


def test_audit_verify_command(ledger: Ledger, url: str) -> None:
    runner = CliRunner()
    operator = Ed25519PrivateKey.generate()
    with ledger.session() as s:
        sign_tree_head(s, operator, note="t")
    key = ["--operator-key", encode_public(operator.public_key())]
    result = runner.invoke(app, ["audit", "verify", "--ledger", url, *key])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("intact: 10 entries, 7 fact rows match their entries")
    assert "1 signed tree heads (operator signatures verified)" in result.output
    # without the key it says "intact" only if told to skip the signatures, and then not
    refused = runner.invoke(app, ["audit", "verify", "--ledger", url])
    assert refused.exit_code == 2 and "--skip-signatures" in refused.output
    skipped = runner.invoke(app, ["audit", "verify", "--ledger", url, "--skip-signatures"])
    assert skipped.exit_code == 0, skipped.output
    assert skipped.output.startswith("consistent, signatures NOT checked: 10 entries")
    assert "intact" not in skipped.output
    doc = json.loads(
        runner.invoke(
            app, ["audit", "verify", "--ledger", url, "--skip-signatures", "--format", "json"]
        ).output
    )
    assert (doc["intact"], doc["unchecked"]) == (False, ["tree-head signatures"])
    _tamper(ledger, "UPDATE ledger_entries SET kind = 'round' WHERE seq = 0")
    result = runner.invoke(app, ["audit", "verify", "--ledger", url, *key, "--format", "json"])
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["intact"] is False and doc["seq"] == 0
    assert "kind column says 'round', payload 'participant'" in doc["detail"]


def test_signed_checkpoints_catch_a_deleted_tail_and_rewritten_history(ledger: Ledger) -> None:
    operator = Ed25519PrivateKey.generate()
    with ledger.session() as s:
        enrol_participant(s, "late-lab", "industry")  # entry 9
        checkpoint = sign_tree_head(s, operator, note="after round 1")
    assert (checkpoint.tree_size, checkpoint.note) == (11, "after round 1")
    checkpoint.verify(operator.public_key())
    report = verify_ledger(ledger, operator.public_key())
    assert (report.tree_heads, report.signatures_checked) == (1, True)
    assert checkpoint.root == report.tree_root
    with pytest.raises(LedgerTampered, match="names signing key"):
        verify_ledger(ledger, Ed25519PrivateKey.generate().public_key())

    # rewrite history consistently (payload, row, every later hash, the head)
    entries = _entries(ledger)
    seq = next(q for q, k, _ in entries if k == "privacy-charge")
    forged = entries[seq][2].replace('"epsilon":"2.5"', '"epsilon":"0.5"')
    statements = [
        f"UPDATE ledger_entries SET payload = '{forged}' WHERE seq = {seq}",
        "UPDATE privacy_charges SET epsilon = 0.5",
    ]
    previous = "0" * 64
    for q, _, payload in entries:
        leaf = entry_leaf_hash(forged if q == seq else payload)
        previous_new = chain_hash(previous, leaf)
        statements.append(
            f"UPDATE ledger_entries SET leaf_hash = '{leaf}', prev_hash = '{previous}', "
            f"chain_hash = '{previous_new}' WHERE seq = {q}"
        )
        previous = previous_new
    statements.append(f"UPDATE ledger_head SET chain_hash = '{previous}'")
    _tamper(ledger, *statements)
    err = _caught(ledger)
    assert "no longer have the root the tree head" in str(err) and err.seq == 10


def test_a_tail_deleted_below_a_checkpoint_is_caught(ledger: Ledger) -> None:
    with ledger.session() as s:
        enrol_participant(s, "late-lab", "industry")  # entry 10, participants row 3
        sign_tree_head(s, Ed25519PrivateKey.generate(), note="n")
    with ledger.engine.connect() as c:
        chain = c.execute(text("SELECT chain_hash FROM ledger_entries WHERE seq = 9")).scalar()
    _tamper(
        ledger,
        "DELETE FROM ledger_entries WHERE seq = 10",
        "DELETE FROM participants WHERE name = 'late-lab'",
        f"UPDATE ledger_head SET size = 10, chain_hash = '{chain}'",
    )
    assert "covers 11 entries, but only 10 remain" in str(_caught(ledger))


def _forge_checkpoint(ledger: Ledger, operator: Ed25519PrivateKey) -> None:
    """Re-sign every stored checkpoint's note over other bytes, columns kept consistent."""
    with ledger.engine.connect() as c:
        rows = c.execute(text("SELECT id, checkpoint FROM tree_heads")).all()
    statements = []
    for row_id, note in rows:
        text_, lines = signature_lines(note)
        forged = SignatureLine(lines[0].name, lines[0].key_id, operator.sign(b"something else"))
        encoded = base64.b64encode(forged.key_id + forged.signature).decode()
        statements.append(
            f"UPDATE tree_heads SET checkpoint = '{text_}\n{forged.line()}', "
            f"signature = '{encoded}' WHERE id = {row_id}"
        )
    _tamper(ledger, *statements)


def test_a_forged_checkpoint_signature_is_caught(ledger: Ledger) -> None:
    operator = Ed25519PrivateKey.generate()
    with ledger.session() as s:
        sign_tree_head(s, operator, note="n")
    forged = base64.b64encode(operator.sign(b"something else")).decode()
    _tamper(ledger, f"UPDATE tree_heads SET signature = '{forged}'")
    with pytest.raises(LedgerTampered, match="columns disagree with its checkpoint"):
        verify_ledger(ledger, operator.public_key())
    _forge_checkpoint(ledger, operator)
    with pytest.raises(LedgerTampered, match=r"by fedcommons/log/\w+ on the note does not verify"):
        verify_ledger(ledger, operator.public_key())


def test_a_json_tree_head_signed_before_checkpoints_still_verifies(ledger: Ledger) -> None:
    """A ledger migrated to v12 keeps its older heads, checked as they were signed."""
    operator = Ed25519PrivateKey.generate()
    with ledger.session() as s:
        size = s.execute(select(ChainTip.size)).scalar_one()
        old = TreeHead.sign(
            operator, tree_size=size, root=root(_leaves(s)).hex(), at="t", note="v11", origin=None
        )
        s.add(
            LedgerTreeHead(
                tree_size=old.tree_size,
                root_hash=old.root,
                body=old.body().decode(),
                key_id=old.key_id,
                signature=old.signature,
            )
        )
        s.flush()
        new = sign_tree_head(s, operator, note="v12")
    assert old.checkpoint is None and new.checkpoint is not None
    assert verify_ledger(ledger, operator.public_key()).tree_heads == 2
    forged = base64.b64encode(operator.sign(b"something else")).decode()
    _tamper(ledger, f"UPDATE tree_heads SET signature = '{forged}' WHERE checkpoint IS NULL")
    with pytest.raises(LedgerTampered, match="does not verify"):
        verify_ledger(ledger, operator.public_key())


def test_worker_processes_name_the_same_first_bad_entry(ledger: Ledger) -> None:
    """The parallel path, forced on a small ledger, says what one pass says."""
    operator = Ed25519PrivateKey.generate()
    with ledger.session() as s:
        sign_tree_head(s, operator, note="n")
        enrol_participant(s, "late-lab", "industry")  # entry 9
        sign_tree_head(s, operator, note="m")
    key = operator.public_key()

    def parallel() -> LedgerTampered:
        with pytest.raises(LedgerTampered) as err:
            verify_ledger(ledger, key, workers=2, parallel_from=1)
        return err.value

    def serial() -> LedgerTampered:
        with pytest.raises(LedgerTampered) as err:
            verify_ledger(ledger, key, workers=1)
        return err.value

    def same() -> LedgerTampered:
        one, many = serial(), parallel()
        assert (many.seq, many.kind, str(many)) == (one.seq, one.kind, str(one))
        return many

    assert verify_ledger(ledger, key, workers=2, parallel_from=1) == verify_ledger(
        ledger, key, workers=1
    )
    _tamper(ledger, "UPDATE participants SET public_key = 'bWFsbG9yeQ==' WHERE id = 3")
    assert "participants row 3 differs from its entry in public_key" in str(same())
    update = _seq_of(ledger, "update")  # in the second half
    assert update > len(_entries(ledger)) // 2
    _tamper(ledger, f"UPDATE ledger_entries SET leaf_hash = '{'f' * 64}' WHERE seq = {update}")
    err = same()
    assert (err.seq, err.kind) == (update, "update")
    assert "leaf hash does not match the payload" in str(err)
    _tamper(ledger, f"DELETE FROM ledger_entries WHERE seq = {update - 2}")
    err = same()
    assert err.seq == update - 2 and "missing" in str(err)


def test_worker_processes_check_checkpoint_signatures(ledger: Ledger) -> None:
    operator = Ed25519PrivateKey.generate()
    with ledger.session() as s:
        sign_tree_head(s, operator, note="n")
    _forge_checkpoint(ledger, operator)
    with pytest.raises(LedgerTampered, match="does not verify"):
        verify_ledger(ledger, operator.public_key(), workers=2, parallel_from=1)


def _leaves(session: Session) -> list[bytes]:
    return [
        bytes.fromhex(h)
        for h in session.scalars(select(LedgerEntry.leaf_hash).order_by(LedgerEntry.seq))
    ]
