"""The dashboard's overview shows who is suspended, and every suspension and reinstatement."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from audit.web import create_app
from ledger import Ledger, enrol_participant
from ledger.suspensions import reinstate, suspend
from ledger.tokens import issue_token


def test_the_overview_shows_suspensions_with_their_reasons_escaped(url: str) -> None:
    ledger = Ledger(url)
    with ledger.session() as s:
        for name in ("university-a", "company-c"):
            enrol_participant(s, name, "academia")
        suspend(s, "company-c", "<b>colluding</b> with university-b")
        reinstate(s, "company-c", "cleared")
        suspend(s, "company-c", "colluding again")
        token = issue_token(s, "auditor", timedelta(days=1))
    app = create_app(url)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        overview = client.get("/api/overview", headers=headers).json()
        page = client.get("/", headers=headers).text
    app.state.ledger.close()
    ledger.close()
    assert {p["name"]: p["suspended"] for p in overview["participants"]} == {
        "university-a": False, "company-c": True,
    }  # fmt: skip
    assert [(d["action"], d["reason"]) for d in overview["suspensions"]] == [
        ("suspended", "<b>colluding</b> with university-b"),
        ("reinstated", "cleared"),
        ("suspended", "colluding again"),
    ]
    assert 'id="suspensions"' in page and "<td>suspended</td>" in page
    assert "&lt;b&gt;colluding&lt;/b&gt; with university-b" in page
    assert "<b>colluding</b>" not in page
    seq = overview["suspensions"][0]["entry_seq"]
    assert f'<a href="/entries/{seq}">{seq}</a>' in page
