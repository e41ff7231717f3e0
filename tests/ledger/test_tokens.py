"""Dashboard tokens (ledger v11) and the read-only ledger connection the dashboard uses."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from fedcommons.cli import app
from ledger import Ledger, LedgerError
from ledger.schema import ApiToken
from ledger.tokens import (
    check_token,
    issue_token,
    list_tokens,
    parse_lifetime,
    revoke_token,
)

runner = CliRunner()


def test_a_token_is_good_until_it_expires_or_is_revoked(ledger: Ledger) -> None:
    with ledger.session() as s:
        token = issue_token(s, "ethics-board", timedelta(days=30))
        short = issue_token(s, "funder", timedelta(minutes=1))
    with ledger.session() as s:
        assert check_token(s, token) == "ethics-board"
        stored = {t.name: t for t in s.query(ApiToken)}
        assert token not in {t.token_sha256 for t in stored.values()}  # only its hash is kept
        for wrong in (None, "", "fct_" + "x" * 43, token[:-1], token + "x", "Bearer " + token):
            assert check_token(s, wrong) is None
        stored["funder"].expires_at = stored["funder"].created_at  # as if a minute had passed
    with ledger.session() as s:
        assert check_token(s, short) is None  # expired
        revoke_token(s, "ethics-board")
        revoke_token(s, "ethics-board")  # twice: no change, no error
    with ledger.session() as s:
        assert check_token(s, token) is None  # revoked
        assert [(t.name, t.status()) for t in list_tokens(s)] == [
            ("ethics-board", "revoked"),
            ("funder", "expired"),
        ]


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "1-64 letters"), ("a b", "1-64 letters"), ("-x", "1-64 letters"), ("x" * 65, "1-64")],
)
def test_bad_token_names_are_refused(ledger: Ledger, name: str, message: str) -> None:
    with ledger.session() as s, pytest.raises(LedgerError, match=message):
        issue_token(s, name, timedelta(days=1))


def test_a_name_is_issued_once_and_only_known_names_are_revoked(ledger: Ledger) -> None:
    with ledger.session() as s:
        issue_token(s, "auditor", timedelta(days=1))
    with ledger.session() as s, pytest.raises(LedgerError, match="exists"):
        issue_token(s, "auditor", timedelta(days=1))
    with ledger.session() as s, pytest.raises(LedgerError, match="no token named 'nobody'"):
        revoke_token(s, "nobody")


@pytest.mark.parametrize(
    ("text_", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90))],
)
def test_lifetimes(text_: str, expected: timedelta) -> None:
    assert parse_lifetime(text_) == expected


@pytest.mark.parametrize("bad", ["", "30", "d", "-1d", "0m", "367d", "1y", "1.5d", "30 days"])
def test_bad_lifetimes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        parse_lifetime(bad)


def test_operator_token_commands(url: str, ledger: Ledger) -> None:
    issued = runner.invoke(
        app, ["operator", "token", "issue", "--name", "lawyer", "--expires", "7d", "--ledger", url]
    )
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip().splitlines()[0]
    assert token.startswith("fct_")
    with ledger.session() as s:
        assert check_token(s, token) == "lawyer"
    listed = runner.invoke(app, ["operator", "token", "list", "--ledger", url, "--format", "json"])
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["status"]) == ("lawyer", "active") and token not in listed.stdout
    bad = runner.invoke(app, ["operator", "token", "issue", "--name", "x", "--expires", "1y",
                              "--ledger", url])  # fmt: skip
    assert bad.exit_code == 2 and "lifetime" in bad.output
    revoke = ["operator", "token", "revoke", "--name", "lawyer", "--ledger", url]
    revoked = runner.invoke(app, revoke)
    assert revoked.exit_code == 0
    with ledger.session() as s:
        assert check_token(s, token) is None
    unknown = runner.invoke(app, ["operator", "token", "revoke", "--name", "who", "--ledger", url])
    assert unknown.exit_code == 1 and "no token named 'who'" in unknown.output


def test_a_read_only_ledger_refuses_every_write(url: str, ledger: Ledger) -> None:
    with ledger.session() as s:
        issue_token(s, "reader", timedelta(days=1))
    reader = Ledger(url, read_only=True)
    try:
        with reader.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM api_tokens")).scalar() == 1
        with (
            pytest.raises(DBAPIError, match=r"(?i)read.?only") as refused,
            reader.engine.begin() as connection,
        ):
            connection.execute(text("DELETE FROM api_tokens"))
        assert refused.value is not None
    finally:
        reader.close()
    with ledger.session() as s:
        assert len(list_tokens(s)) == 1
