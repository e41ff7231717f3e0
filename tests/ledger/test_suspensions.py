"""Suspended and reinstated members, on a real SQLite file and the real PostgreSQL server.

A suspension keeps a member out of the runs started after it (their
``run-members`` entry omits it), a reinstatement lets it in again, each is a
hash-chained entry that ``audit verify`` checks, and bad decisions are refused
with their reason and nothing written.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from audit.card_ledger import run_members as card_members
from fedcommons.cli import app
from ledger import Ledger, LedgerError, enrol_participant, start_run
from ledger.entries import record_row
from ledger.members import members_entry, run_members
from ledger.report import ledger_report
from ledger.schema import LedgerEntry, Participant, Run, Suspension, utcnow
from ledger.suspensions import in_force, reinstate, suspend
from ledger.verify import LedgerTampered, verify_ledger

MEMBERS = ("uni-a", "uni-b", "co-c")
Decision = Callable[[Session, str, str], Suspension]
H = "a" * 64


def _key() -> str:
    return base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()


def _start(ledger: Ledger, quorum: str | int = "majority") -> int:
    with ledger.session() as s:
        return start_run(
            s,
            policy_sha256=H,
            policy_toml="[federation]\n",
            model="cnn",
            dataset="digits",
            initial_model_sha256=H,
            planned_rounds=1,
            flower_run_id=None,
            quorum=quorum,
        ).id


def _members(ledger: Ledger, run_id: int) -> list[str]:
    with ledger.session() as s:
        members = run_members(s, run_id)
    assert members is not None
    return sorted(members.members)


def _count(ledger: Ledger) -> int:
    with ledger.session() as s:
        return s.scalar(select(func.count()).select_from(LedgerEntry)) or 0


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    """Three admitted members (each with a signing key), no run yet."""
    opened = Ledger(url)
    with opened.session() as s:
        for name in MEMBERS:
            participant = enrol_participant(s, name, "industry" if name[:2] == "co" else "academia")
            participant.public_key = _key()
            participant.admitted_at = utcnow()
            record_row(s, participant, "participant")
    yield opened
    opened.close()


def test_a_suspended_member_is_left_out_of_the_next_run_and_back_after_reinstatement(
    ledger: Ledger,
) -> None:
    with ledger.session() as s:
        suspend(s, "co-c", "near-identical updates to uni-b's in 8 of 8 rounds")
    first = _start(ledger)
    assert _members(ledger, first) == ["uni-a", "uni-b"]
    with ledger.session() as s:
        reinstate(s, "co-c", "explained: a shared preprocessing bug, fixed")
    second = _start(ledger)
    assert _members(ledger, second) == ["co-c", "uni-a", "uni-b"]
    with ledger.session() as s:
        kinds = [k for (k,) in s.execute(select(LedgerEntry.kind).order_by(LedgerEntry.seq))]
        report = ledger_report(s)
    assert kinds[len(MEMBERS) * 2 :] == [
        "suspension", "run", "run-members", "reinstatement", "run", "run-members",
    ]  # fmt: skip
    assert [(d["institution"], d["action"], d["reason"]) for d in report["suspensions"]] == [
        ("co-c", "suspended", "near-identical updates to uni-b's in 8 of 8 rounds"),
        ("co-c", "reinstated", "explained: a shared preprocessing bug, fixed"),
    ]
    assert [d["entry_seq"] for d in report["suspensions"]] == [6, 9]
    assert not any(p["suspended"] for p in report["participants"])
    report_ok = verify_ledger(ledger)
    assert report_ok.rows_checked == len(MEMBERS) + 2 + 2  # participants, runs, decisions


def test_the_suspension_entry_states_who_and_why(ledger: Ledger) -> None:
    with ledger.session() as s:
        row = suspend(s, "uni-b", "  colluding with co-c  ")
        seq = row.entry_seq
        payload = s.scalar(select(LedgerEntry.payload).where(LedgerEntry.seq == seq))
        participant_id = s.scalar(select(Participant.id).where(Participant.name == "uni-b"))
    doc = json.loads(str(payload))
    assert (doc["kind"], doc["table"]) == ("suspension", "suspensions")
    assert doc["row"] == {
        "participant_id": participant_id, "action": "suspended", "reason": "colluding with co-c",
    }  # fmt: skip


def test_a_run_under_way_keeps_its_members(ledger: Ledger) -> None:
    run_id = _start(ledger)
    with ledger.session() as s:
        suspend(s, "uni-a", "suspected relabelling")
        started = members_entry(s, run_id)
        assert started is not None
        assert in_force(s, started[0]) == {}  # not suspended when the run started
        assert list(in_force(s)) == ["uni-a"]
        run = s.get(Run, run_id)
        assert run is not None
        assert card_members(s, run) == sorted(MEMBERS)  # audit card counts its witnesses
    assert _members(ledger, run_id) == sorted(MEMBERS)
    later = _start(ledger)
    with ledger.session() as s:
        run = s.get(Run, later)
        assert run is not None
        assert card_members(s, run) == ["co-c", "uni-b"]
    assert _members(ledger, later) == ["co-c", "uni-b"]


@pytest.mark.parametrize(
    ("decide", "institution", "reason", "message"),
    [
        (suspend, "nobody", "why", "the ledger holds no institution named 'nobody' (it holds "),
        (suspend, "uni-a", "", "a suspension needs a reason"),
        (suspend, "uni-a", "  \n ", "a suspension needs a reason"),
        (suspend, "uni-a", "x" * 2001, "the reason is 2001 characters; at most 2000"),
        (reinstate, "uni-a", "why", "uni-a is not suspended: there is nothing to reinstate"),
        (reinstate, "nobody", "why", "the ledger holds no institution named 'nobody'"),
        (reinstate, "uni-a", "", "a reinstatement needs a reason"),
    ],
)
def test_a_bad_decision_is_refused_and_writes_nothing(
    ledger: Ledger, decide: Decision, institution: str, reason: str, message: str
) -> None:
    before = _count(ledger)
    with pytest.raises(LedgerError, match=re.escape(message)), ledger.session() as s:
        decide(s, institution, reason)
    assert _count(ledger) == before


def test_suspending_twice_or_reinstating_twice_is_refused(ledger: Ledger) -> None:
    with ledger.session() as s:
        first = suspend(s, "co-c", "first reason")
        seq = first.entry_seq
    with pytest.raises(LedgerError, match=rf"co-c is suspended already, since .* \(entry {seq}\): "
                       "first reason"), ledger.session() as s:  # fmt: skip
        suspend(s, "co-c", "again")
    with ledger.session() as s:
        reinstate(s, "co-c", "cleared")
    with pytest.raises(LedgerError, match="co-c is not suspended"), ledger.session() as s:
        reinstate(s, "co-c", "again")
    with ledger.session() as s:  # and suspended again later: the latest decision counts
        suspend(s, "co-c", "second time")
        assert [(n, r.reason) for n, r in in_force(s).items()] == [("co-c", "second time")]


def test_a_quorum_the_suspension_makes_impossible_names_the_suspended(ledger: Ledger) -> None:
    with ledger.session() as s:
        suspend(s, "uni-b", "colluding")
    with pytest.raises(LedgerError, match=r"witness quorum 3 but only 2 .*\(uni-b suspended\)"):
        _start(ledger, quorum=3)


def _tamper(ledger: Ledger, statement: str) -> None:
    """Raw SQL as an operator with database access could run it (triggers dropped)."""
    with ledger.engine.begin() as c:
        if ledger.engine.dialect.name == "postgresql":
            c.execute(text("DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_entries"))
        else:
            c.execute(text("DROP TRIGGER IF EXISTS ledger_entries_no_update"))
        c.exec_driver_sql(statement)


def test_an_edited_suspension_row_fails_verification(ledger: Ledger) -> None:
    with ledger.session() as s:
        seq = suspend(s, "co-c", "colluding").entry_seq
    _tamper(ledger, "UPDATE suspensions SET reason = 'a routine check'")
    with pytest.raises(LedgerTampered) as caught:
        verify_ledger(ledger)
    assert (caught.value.seq, caught.value.kind) == (seq, "suspension")
    assert "suspensions row 1 differs from its entry in reason" in str(caught.value)


def test_a_reinstatement_edited_into_a_suspension_fails_verification(ledger: Ledger) -> None:
    with ledger.session() as s:
        suspend(s, "co-c", "colluding")
        seq = reinstate(s, "co-c", "cleared").entry_seq
    _tamper(ledger, "UPDATE suspensions SET action = 'suspended' WHERE id = 2")
    with pytest.raises(LedgerTampered, match="differs from its entry in action") as caught:
        verify_ledger(ledger)
    assert (caught.value.seq, caught.value.kind) == (seq, "reinstatement")


def test_an_edited_suspension_entry_fails_verification(ledger: Ledger) -> None:
    with ledger.session() as s:
        seq = suspend(s, "co-c", "colluding").entry_seq
    _tamper(
        ledger,
        f"UPDATE ledger_entries SET payload = REPLACE(payload, 'colluding', 'routine') "
        f"WHERE seq = {seq}",
    )
    with pytest.raises(LedgerTampered) as caught:
        verify_ledger(ledger)
    assert caught.value.seq == seq and "leaf hash" in str(caught.value)


def test_a_deleted_suspension_row_fails_verification(ledger: Ledger) -> None:
    with ledger.session() as s:
        seq = suspend(s, "co-c", "colluding").entry_seq
    _tamper(ledger, "DELETE FROM suspensions")  # so that co-c would take part again
    with pytest.raises(LedgerTampered, match="suspensions row 1 was deleted") as caught:
        verify_ledger(ledger)
    assert caught.value.seq == seq


def test_audit_show_lists_suspensions_and_reinstatements(
    ledger: Ledger, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # Rich's width: each row on one line
    with ledger.session() as s:
        suspend(s, "co-c", "colluding [bold]with[/] uni-b")  # markup prints as itself
        reinstate(s, "co-c", "cleared")
        suspend(s, "uni-a", "relabelled zeros")
    runner = CliRunner()
    shown = runner.invoke(app, ["audit", "show", "--ledger", url])
    assert shown.exit_code == 0, shown.output
    assert "Suspensions and reinstatements" in shown.output
    assert "colluding [bold]with[/] uni-b" in shown.output
    for line in ("co-c", "uni-a"):
        assert line in shown.output
    people = shown.output.split("Suspensions")[0]
    assert [row.split()[1] for row in people.splitlines() if "suspended" in row] == ["uni-a"]
    as_json = runner.invoke(app, ["audit", "show", "--ledger", url, "--format", "json"])
    report = json.loads(as_json.output)
    assert [(d["institution"], d["action"]) for d in report["suspensions"]] == [
        ("co-c", "suspended"), ("co-c", "reinstated"), ("uni-a", "suspended"),
    ]  # fmt: skip
    assert {p["name"]: p["suspended"] for p in report["participants"]} == {
        "uni-a": True, "uni-b": False, "co-c": False,
    }  # fmt: skip
