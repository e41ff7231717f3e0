"""Ledger behaviour, run against a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError

from common.consortium import default_log_origin
from common.merkle import leaf_hash
from common.protocol import ExclusionCode, PrivacyCharge
from common.receipts import TreeHead
from ledger import (
    ChargeFact,
    ExclusionFact,
    Ledger,
    LedgerError,
    UpdateFact,
    enrol_participant,
    finish_run,
    normalise_url,
    record_privacy,
    record_round,
    start_run,
)
from ledger.entries import chain_hash, entry_leaf_hash
from ledger.report import ledger_report, privacy_spent
from ledger.schema import Base, LedgerTreeHead, Participant
from ledger.store import MIGRATIONS
from ledger.tree_heads import sign_tree_head, tree_head_from_row
from ledger.verify import verify_ledger

H = "a" * 64


def _start(ledger: Ledger) -> int:
    with ledger.session() as s:
        for name, kind in (("uni-a", "academia"), ("co-c", "industry")):
            enrol_participant(s, name, kind)
        return start_run(
            s,
            policy_sha256=H,
            policy_toml="[federation]\n",
            model="cnn",
            dataset="digits",
            initial_model_sha256=H,
            base_model_sha256="e" * 64,
            planned_rounds=2,
            flower_run_id=18_000_000_000_000_000_000,
        ).id


def _facts() -> list[UpdateFact]:
    return [
        UpdateFact("uni-a", 100, 0.5, "b" * 64, 1000, 1.5),
        UpdateFact("co-c", 300, 0.25, "c" * 64, 1000, 2.0),
    ]


def test_migration_builds_exactly_the_orm_schema(ledger: Ledger) -> None:
    with ledger.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
        assert set(inspect(connection).get_table_names()) >= {
            "participants",
            "runs",
            "rounds",
            "round_updates",
        }


def test_reopening_does_not_migrate_twice_or_lose_rows(url: str, ledger: Ledger) -> None:
    _start(ledger)
    again = Ledger(url)
    with again.session() as s:
        assert ledger_report(s)["runs"][0]["planned_rounds"] == 2
    again.close()


def test_enrolment_is_idempotent_and_kinds_are_checked(ledger: Ledger) -> None:
    with ledger.session() as s:
        first = enrol_participant(s, "uni-a", "academia")
        assert enrol_participant(s, "uni-a", "academia").id == first.id
    with (
        pytest.raises(LedgerError, match="'uni-a' is enrolled as academia, not industry"),
        ledger.session() as s,
    ):
        enrol_participant(s, "uni-a", "industry")
    with (
        pytest.raises(LedgerError, match="kind must be one of academia, industry"),
        ledger.session() as s,
    ):
        enrol_participant(s, "x", "government")


def test_rounds_are_recorded_with_weighted_loss_and_updates(ledger: Ledger) -> None:
    run_id = _start(ledger)
    with ledger.session() as s:
        record_round(
            s,
            run_id,
            number=1,
            model_sha256_before=H,
            model_sha256_after="d" * 64,
            loss=0.9,
            accuracy=0.8,
            seconds=12.5,
            updates=_facts(),
        )
        finish_run(s, run_id, "finished", test_accuracy=0.91, test_loss=0.3)
    with ledger.session() as s:
        report = ledger_report(s)
    run = report["runs"][0]
    assert run["flower_run_id"] == "18000000000000000000"
    assert run["base_model_sha256"] == "e" * 64
    assert (run["status"], run["test_accuracy"], run["test_loss"]) == ("finished", 0.91, 0.3)
    assert run["ended_at"] is not None
    (round_row,) = run["rounds"]
    assert round_row["train_loss"] == pytest.approx((100 * 0.5 + 300 * 0.25) / 400)
    assert round_row["participants"] == 2
    assert [
        (u["institution"], u["num_examples"], u["train_seconds"]) for u in round_row["updates"]
    ] == [("co-c", 300, 2.0), ("uni-a", 100, 1.5)]
    assert [p["name"] for p in report["participants"]] == ["uni-a", "co-c"]


def test_rounds_must_be_consecutive(ledger: Ledger) -> None:
    run_id = _start(ledger)
    with pytest.raises(LedgerError, match="round 2 follows round 0"), ledger.session() as s:
        record_round(
            s,
            run_id,
            number=2,
            model_sha256_before=H,
            model_sha256_after=H,
            loss=1,
            accuracy=0,
            seconds=1,
            updates=[],
        )


def test_update_from_unenrolled_institution_rolls_back_the_round(ledger: Ledger) -> None:
    run_id = _start(ledger)
    stranger = [UpdateFact("stranger", 1, 0.1, H, 10, 0.1)]
    with (
        pytest.raises(LedgerError, match="'stranger', who is not enrolled"),
        ledger.session() as s,
    ):
        record_round(
            s,
            run_id,
            number=1,
            model_sha256_before=H,
            model_sha256_after=H,
            loss=1,
            accuracy=0,
            seconds=1,
            updates=stranger,
        )
    with ledger.session() as s:
        assert ledger_report(s)["runs"][0]["rounds"] == []


def test_nested_sessions_share_one_transaction(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.session() as outer:
        enrol_participant(outer, "uni-z", "academia")
        with ledger.session() as inner:
            assert inner is outer
        raise RuntimeError("abort")
    with ledger.session() as s:
        assert s.scalar(select(Participant).where(Participant.name == "uni-z")) is None


def test_finish_run_checks_status_and_run(ledger: Ledger) -> None:
    run_id = _start(ledger)
    with (
        pytest.raises(LedgerError, match="ends as finished, failed, interrupted, not 'done'"),
        ledger.session() as s,
    ):
        finish_run(s, run_id, "done")
    with (
        pytest.raises(LedgerError, match="run 999 is not in the ledger"),
        ledger.session() as s,
    ):
        finish_run(s, 999, "failed")


def test_privacy_charges_accumulate_per_institution_and_dataset(ledger: Ledger) -> None:
    run_id = _start(ledger)

    def charge(eps: float, dataset: str = "d" * 64, dp: bool = True) -> PrivacyCharge:
        return PrivacyCharge(dp, eps, 1e-5, 1.2, 1 / 14, 28, "rdp", 1.0, dataset, "h" * 64)

    with ledger.session() as s:
        record_privacy(
            s,
            run_id,
            1,
            charges=[ChargeFact("uni-a", charge(2.5)), ChargeFact("co-c", charge(3.0))],
            exclusions=[],
        )
        record_privacy(
            s,
            run_id,
            2,
            charges=[ChargeFact("uni-a", charge(4.25))],
            exclusions=[
                ExclusionFact("co-c", 17, ExclusionCode.BUDGET_EXHAUSTED, "budget exhausted"),
                ExclusionFact(None, 18, 400, "node config lacks data-dir"),
                ExclusionFact("mallory", 19, 400, "bad data"),
            ],
        )
        record_privacy(
            s,
            run_id,
            3,
            charges=[ChargeFact("co-c", charge(float("inf"), "e" * 64, dp=False))],
            exclusions=[],
        )
        finish_run(s, run_id, "failed", reason="round 2: 1 of the required 2 nodes")
    with ledger.session() as s:
        spent = privacy_spent(s)
        report = ledger_report(s)
    assert [(r["institution"], r["dataset_sha256"][0], r["epsilon"], r["rounds_charged"])
            for r in spent] == [
        ("co-c", "d", 3.0, 1), ("co-c", "e", "inf", 1), ("uni-a", "d", 4.25, 2),
    ]  # fmt: skip
    assert report["privacy"] == spent
    run = report["runs"][0]
    assert run["status_reason"] == "round 2: 1 of the required 2 nodes"
    assert [(e["round"], e["institution"], e["node_id"], e["code"]) for e in run["exclusions"]] == [
        (2, "co-c", "17", ExclusionCode.BUDGET_EXHAUSTED),
        (2, None, "18", 400),
        (2, None, "19", 400),
    ]  # fmt: skip
    assert run["exclusions"][2]["reason"] == "(claims to be 'mallory', not enrolled) bad data"
    first = run["privacy_charges"][0]
    assert (first["noise_multiplier"], first["steps"], first["history_sha256"]) == (
        1.2,
        28,
        "h" * 64,
    )


def test_charge_from_unenrolled_institution_is_refused(ledger: Ledger) -> None:
    run_id = _start(ledger)
    fact = ChargeFact("stranger", PrivacyCharge(True, 1, 1e-5, 1, 0.1, 1, "rdp", 1, H, H))
    with (
        pytest.raises(LedgerError, match="'stranger', who is not enrolled"),
        ledger.session() as s,
    ):
        record_privacy(s, run_id, 1, charges=[fact], exclusions=[])


def test_a_v1_ledger_migrates_forward_without_losing_rows(url: str) -> None:
    database = make_url(url).database
    if url.startswith("sqlite") and database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(normalise_url(url))  # a ledger as the foundation issue left it
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        for statement in V1_ROWS:
            connection.execute(text(statement))
    engine.dispose()

    ledger = Ledger(url)  # migrates to head
    with ledger.session() as s:
        report = ledger_report(s)
        version = s.scalar(text("SELECT version_num FROM alembic_version"))
        counts = {
            table: s.scalar(text(f"SELECT COUNT(*) FROM {table}"))
            for table in (
                "datasets", "privacy_charges", "exclusions", "ledger_entries",
                "tree_heads", "releases",
            )
        }  # fmt: skip
        head = s.execute(text("SELECT id, size, chain_hash FROM ledger_head")).all()
    assert version == "0013"
    assert counts == dict.fromkeys(counts, 0)
    assert [tuple(row) for row in head] == [(1, 0, "0" * 64)]
    assert [(p["name"], p["kind"], p["public_key"]) for p in report["participants"]] == [
        ("uni-a", "academia", None), ("co-c", "industry", "b2xkIGtleQ=="),
    ]  # fmt: skip
    (run,) = report["runs"]
    assert (run["planned_rounds"], run["status"], run["status_reason"]) == (3, "finished", None)
    assert (run["flower_run_id"], run["test_accuracy"]) == ("77", 0.875)
    assert run["base_model_sha256"] is None  # v3 column, empty for older runs
    assert report["privacy"] == [] and run["exclusions"] == []
    assert [(r["round"], r["accuracy"], r["participants"]) for r in run["rounds"]] == [
        (1, 0.5, 2), (2, 0.75, 2),
    ]  # fmt: skip
    assert [(u["institution"], u["num_examples"], u["update_sha256"], u["signature"])
            for u in run["rounds"][1]["updates"]] == [
        ("co-c", 300, "c" * 64, None), ("uni-a", 100, "b" * 64, None),
    ]  # fmt: skip
    # the old rows verify as predating the entries: 2 + 1 + 2 + 4
    report_before = verify_ledger(ledger)
    assert (report_before.entries, report_before.rows_checked) == (0, 0)
    assert report_before.rows_before_entries == 9

    # new facts append normally, also about the old run and participants
    with ledger.session() as s:
        enrol_participant(s, "late-lab", "academia")
        record_round(
            s,
            1,
            number=3,
            model_sha256_before=H,
            model_sha256_after="d" * 64,
            loss=0.3,
            accuracy=0.9,
            seconds=4.0,
            updates=[UpdateFact("uni-a", 100, 0.2, "e" * 64, 1000, 1.0)],
        )
    after = verify_ledger(ledger)
    assert (after.entries, after.rows_checked, after.rows_before_entries) == (3, 3, 9)
    assert [k for _, k in _kinds(ledger)] == ["participant", "round", "update"]
    # and the append-only triggers hold on the upgraded database
    for statement in (
        "UPDATE ledger_entries SET kind = 'x' WHERE seq = 0",
        "DELETE FROM ledger_entries WHERE seq = 2",
    ):
        with pytest.raises(DatabaseError, match="append-only"), ledger.engine.begin() as c:
            c.execute(text(statement))
    assert verify_ledger(ledger).entries == 3
    ledger.close()


def _kinds(ledger: Ledger) -> list[tuple[int, str]]:
    with ledger.engine.connect() as c:
        rows = c.execute(text("SELECT seq, kind FROM ledger_entries ORDER BY seq"))
        return [(int(seq), str(kind)) for seq, kind in rows]


V1_ROWS = (
    "INSERT INTO participants (name, kind, enrolled_at) "
    "VALUES ('uni-a', 'academia', CURRENT_TIMESTAMP)",
    "INSERT INTO participants (name, kind, public_key, enrolled_at) "
    "VALUES ('co-c', 'industry', 'b2xkIGtleQ==', CURRENT_TIMESTAMP)",
    "INSERT INTO runs (flower_run_id, policy_sha256, policy_toml, model, dataset, "
    "initial_model_sha256, planned_rounds, status, test_accuracy, test_loss, started_at, "
    f"ended_at) VALUES ('77', '{H}', '', 'cnn', 'digits', '{H}', 3, 'finished', 0.875, 0.4, "
    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    *(
        "INSERT INTO rounds (run_id, number, model_sha256_before, model_sha256_after, loss, "
        f"accuracy, train_loss, num_participants, seconds, finished_at) VALUES (1, {n}, '{H}', "
        f"'{H}', 0.5, {0.25 + 0.25 * n}, 0.6, 2, 9.5, CURRENT_TIMESTAMP)"
        for n in (1, 2)
    ),
    *(
        "INSERT INTO round_updates (round_id, participant_id, num_examples, train_loss, "
        f"update_sha256, update_bytes, train_seconds) VALUES ({r}, {p}, {e}, 0.5, '{h * 64}', "
        "1000, 1.5)"
        for r in (1, 2)
        for p, e, h in ((1, 100, "b"), (2, 300, "c"))
    ),
)
"""A v1 ledger's rows, in the foundation issue's schema (migration 0001)."""


def test_plain_postgresql_urls_use_psycopg3() -> None:
    assert normalise_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"


def test_bad_urls_and_missing_ledgers_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(
        LedgerError,
        match=re.escape("invalid ledger URL '(an unparseable URL)': give sqlite:///FILE"),
    ):
        Ledger("not a url")
    with pytest.raises(LedgerError, match=r"no ledger at .*absent.db: the file does not exist"):
        Ledger(f"sqlite:///{tmp_path / 'absent.db'}", migrate=False)
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger("postgresql://postgres@127.0.0.1:5432/no_such_database_here")


def test_a_v11_ledger_keeps_its_json_heads_and_signs_checkpoints_after_migrating(
    url: str,
) -> None:
    """Heads signed before v12 stay verifiable as signed; the next one is a C2SP checkpoint."""
    database = make_url(url).database
    if url.startswith("sqlite") and database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(normalise_url(url))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    operator = Ed25519PrivateKey.generate()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0011")
    engine.dispose()
    v11 = Ledger(url, migrate=False)  # what v11 wrote: an entry and a JSON head
    with v11.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO ledger_entries (seq, kind, payload, leaf_hash, prev_hash, "
                "chain_hash, created_at) VALUES (0, 'note', :p, :l, :z, :c, :t)"
            ),
            {
                "p": '{"kind":"note"}',
                "l": entry_leaf_hash('{"kind":"note"}'),
                "z": "0" * 64,
                "c": chain_hash("0" * 64, entry_leaf_hash('{"kind":"note"}')),
                "t": "2026-11-01 00:00:00",
            },
        )
        connection.execute(
            text("UPDATE ledger_head SET size = 1, chain_hash = :c"),
            {"c": chain_hash("0" * 64, entry_leaf_hash('{"kind":"note"}'))},
        )
        old = TreeHead.sign(
            operator,
            tree_size=1,
            root=leaf_hash(b'{"kind":"note"}').hex(),
            at="2026-11-01T00:00:00+00:00",
            note="signed by v11",
            origin=None,
        )
        connection.execute(
            text(
                "INSERT INTO tree_heads (tree_size, root_hash, body, key_id, signature) "
                "VALUES (1, :r, :b, :k, :s)"
            ),
            {"r": old.root, "b": old.body().decode(), "k": old.key_id, "s": old.signature},
        )
    v11.close()

    ledger = Ledger(url)  # migrates to v12
    try:
        with ledger.session() as s:
            enrol_participant(s, "uni-a", "academia")
            new = sign_tree_head(s, operator, note="signed by v12")
            rows = s.scalars(select(LedgerTreeHead).order_by(LedgerTreeHead.id)).all()
            heads = [tree_head_from_row(row) for row in rows]
        assert [h.checkpoint is None for h in heads] == [True, False]
        assert heads[0] == old and heads[1] == new
        assert new.origin == default_log_origin(operator.public_key())
        report = verify_ledger(ledger, operator.public_key())
        assert report.tree_heads == 2 and report.witnesses == [(1, []), (new.tree_size, [])]
    finally:
        ledger.close()
