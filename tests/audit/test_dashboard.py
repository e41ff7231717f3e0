"""The read-only dashboard (``audit serve``): every endpoint, every kind of token, hostile input.

Hostile input includes markup stored in the ledger (institution names, licence
terms), checked in the HTML and, where Chromium is installed, in a real browser.

The app runs on a real ledger (a SQLite file, and PostgreSQL) holding a
released, valued run with signed tree heads, through FastAPI's test client.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from audit.web import COOKIE, create_app
from common.licences import SPDX, Licence
from ledger import Ledger
from ledger.schema import ApiToken
from ledger.tokens import issue_token, revoke_token
from tests.support.release_federation import COMPANY, Federation
from tests.support.serving import serving
from tests.support.tools import CHROMIUM, needs_chromium

PAGES = ["/", "/runs", "/runs/1", "/entries/0"]
API = ["/api/overview", "/api/runs", "/api/runs/1", "/api/entries/0", "/api/verify",
       "/api/openapi.json"]  # fmt: skip


@dataclass
class Dashboard:
    client: TestClient
    ledger: Ledger
    url: str
    tokens: dict[str, str]
    app: FastAPI

    def get(self, path: str, token: str | None = "good", **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"} if token else {}
        return self.client.get(path, headers=headers, **kwargs)


@contextmanager
def _served(
    url: str, tmp_path: Path, contributors: dict[str, Licence], excluded: dict[str, Licence]
) -> Iterator[Dashboard]:
    """The dashboard on a ledger holding one released, valued run of ``contributors``.

    Every institution is admitted under its licence; ``excluded`` ones are
    left out of every round.
    """
    ledger = Ledger(url)
    operator = Ed25519PrivateKey.generate()
    federation = Federation(ledger, operator, tmp_path / "snapshots", {})
    for name, licence in {**contributors, **excluded}.items():
        federation.admit(name, licence)
    worth = dict(zip(contributors, (30_000, 10_000, -5_000), strict=True))
    run_id = federation.run(list(contributors), excluded=tuple(excluded), worth=worth)
    federation.release(run_id, tmp_path / "release")
    with ledger.session() as s:
        tokens = {name: issue_token(s, name, timedelta(days=1))
                  for name in ("good", "expired", "revoked")}  # fmt: skip
        revoke_token(s, "revoked")
        for row in s.query(ApiToken).filter(ApiToken.name == "expired"):
            row.expires_at = row.created_at
    tokens["wrong"] = "fct_" + "A" * 43
    app = create_app(url, operator.public_key(), "Test consortium")
    with TestClient(app) as client:
        yield Dashboard(client, ledger, url, tokens, app)
    app.state.ledger.close()
    ledger.close()


@pytest.fixture
def dashboard(url: str, tmp_path: Path) -> Iterator[Dashboard]:
    licences = {"university-a": SPDX["CC-BY-4.0"], "university-b": SPDX["CC-BY-NC-4.0"],
                "company-c": COMPANY}  # fmt: skip
    with _served(url, tmp_path, licences, {}) as served:
        yield served


@pytest.mark.parametrize("path", PAGES + API)
def test_every_endpoint_needs_a_good_token(dashboard: Dashboard, path: str) -> None:
    assert dashboard.get(path).status_code == 200
    for token in (None, "wrong", "expired", "revoked"):
        response = dashboard.get(path, token)
        assert response.status_code == 401, (path, token)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "university-a" not in response.text  # nothing of the ledger leaks


@pytest.mark.parametrize("path", PAGES + API + ["/login", "/logout"])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_no_write_method_is_routed(dashboard: Dashboard, path: str, method: str) -> None:
    if (method, path) == ("POST", "/login"):
        return  # the one POST: it sets the cookie, and writes nothing
    headers = {"Authorization": f"Bearer {dashboard.tokens['good']}"}
    response = dashboard.client.request(method, path, headers=headers)
    assert response.status_code == 405, (method, path)


def test_a_login_sets_a_strict_http_only_cookie(dashboard: Dashboard) -> None:
    client = dashboard.client
    refused = client.post("/login", data={"token": dashboard.tokens["revoked"]})
    assert refused.status_code == 401 and "not valid" in refused.text
    assert client.get("/").status_code == 401  # the login form, with 401
    response = client.post("/login", data={"token": dashboard.tokens["good"]},
                           follow_redirects=False)  # fmt: skip
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/").status_code == 200  # the cookie now stands for the token
    client.get("/logout")
    assert client.get("/").status_code == 401


def test_the_pages_show_the_ledger(dashboard: Dashboard) -> None:
    overview = dashboard.get("/").text
    assert "Overview: Test consortium" in overview
    assert dashboard.get("/api/overview").json()["consortium"] == "Test consortium"
    for shown in ("university-a", "company-c", "CC-BY-NC-4.0", "Latest signed tree head",
                  "Verify now"):  # fmt: skip
        assert shown in overview
    run = dashboard.get("/runs/1").text
    for chart in ("accuracy-chart", "loss-chart", "epsilon-chart"):
        block = run.split(f'id="{chart}"')[1].split("</svg>")[0]
        points = len(re.findall(r'class="point"', block))
        assert points == (2 if chart != "epsilon-chart" else 6), chart  # one per round
    assert "budget ε = 8" in run and "75.0%" in run  # the budget line; a contribution share
    assert "Model card" in run  # the released card, read from its folder
    entry = dashboard.get("/api/entries/3").json()
    assert entry["seq"] == 3 and entry["inclusion_proof"]
    assert entry["tree_head"]["tree_size"] > 3


def test_the_api_has_a_schema_for_every_page(dashboard: Dashboard) -> None:
    paths = set(dashboard.get("/api/openapi.json").json()["paths"])
    assert paths == {"/api/overview", "/api/runs", "/api/runs/{run_id}", "/api/entries/{seq}",
                     "/api/verify", "/api/verify/{job_id}"}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/entries/-1", 400),
        ("/api/entries/abc", 400),
        ("/api/entries/99999999999999999999999999", 400),
        ("/api/entries/100000", 404),
        ("/api/runs/0", 400),
        ("/api/runs/999", 404),
        ("/runs/1%27%20OR%201=1", 400),
        ("/runs/999", 404),
        ("/../../etc/passwd", 404),
        ("/static/%2e%2e/%2e%2e/etc/passwd", 404),
        ("/api/verify/not-a-job", 400),
        ("/api/verify/" + "0" * 32, 404),
        ("/api/runs?run=1;DROP%20TABLE%20runs&x=<script>alert(1)</script>", 200),
    ],
)
def test_hostile_paths_and_queries_are_refused_cleanly(
    dashboard: Dashboard, path: str, status: int
) -> None:
    response = dashboard.get(path)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and "<script>" not in response.text
    assert dashboard.url not in response.text


def test_no_secret_or_url_appears_anywhere(dashboard: Dashboard) -> None:
    for path in PAGES + API:
        body = dashboard.get(path).text
        assert dashboard.url not in body and "sqlite://" not in body and "postgresql" not in body
        assert not any(token in body for token in dashboard.tokens.values())


def _verified(dashboard: Dashboard) -> dict[str, Any]:
    job = dashboard.get("/api/verify").json()
    deadline = time.monotonic() + 120
    while job["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
        job = dashboard.get(f"/api/verify/{job['id']}").json()
    return job  # type: ignore[no-any-return]


def test_verify_now_says_intact_then_names_the_first_bad_entry(dashboard: Dashboard) -> None:
    job = _verified(dashboard)
    assert (
        job["state"] == "intact"
        and "signed tree heads (operator signatures verified)" in (job["detail"])
    )
    with dashboard.ledger.engine.begin() as connection:  # the operator's own writable access
        connection.execute(text("UPDATE runs SET model = 'bert' WHERE id = 1"))
    job = _verified(dashboard)
    assert job["state"] == "not-intact"
    assert job["result"]["kind"] == "run" and "differs from its entry in model" in job["detail"]
    assert dashboard.url not in job["detail"]


def test_audit_serve_refuses_a_busy_port_and_a_missing_ledger(tmp_path: Path, url: str) -> None:
    import socket

    from typer.testing import CliRunner

    from fedcommons.cli import app

    Ledger(url).close()
    runner = CliRunner()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["audit", "serve", "--ledger", url, "--port", str(port)])
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1" in result.output
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    result = runner.invoke(app, ["audit", "serve", "--ledger", missing])
    assert result.exit_code == 1 and "no ledger at" in result.output
    assert not (tmp_path / "none.db").exists()  # read-only: nothing created


def test_the_run_page_shows_the_recorded_policy(dashboard: Dashboard) -> None:
    run = dashboard.get("/api/runs/1").json()
    assert "[privacy]" in run["policy_toml"] and "epsilon = 8.0" in run["policy_toml"]
    assert 'id="policy"' in dashboard.get("/runs/1").text


def test_the_light_report_is_the_full_one_projected(dashboard: Dashboard) -> None:
    from ledger.report import ledger_report

    with dashboard.ledger.session() as s:
        (full,) = ledger_report(s, run_id=1)["runs"]
        (light,) = ledger_report(s, run_id=1, light=True)["runs"]
    assert [(r["round"], r["accuracy"], r["loss"], r["model_sha256_after"],
             [u["institution"] for u in r["updates"]]) for r in full["rounds"]] == [
        (r["round"], r["accuracy"], r["loss"], r["model_sha256_after"],
         [u["institution"] for u in r["updates"]]) for r in light["rounds"]
    ]  # fmt: skip
    assert [(c["round"], c["institution"], c["epsilon"]) for c in full["privacy_charges"]] == [
        (c["round"], c["institution"], c["epsilon"]) for c in light["privacy_charges"]
    ]
    for key in ("exclusions", "defences", "releases", "flower_runs", "status", "policy_sha256"):
        assert full[key] == light[key]


def test_a_run_page_follows_the_ledger_as_entries_land(dashboard: Dashboard) -> None:
    from ledger.runs import finish_run

    before = dashboard.get("/api/runs/1").json()
    assert dashboard.get("/api/runs/1").json() == before  # built once, served again
    with dashboard.ledger.session() as s:
        finish_run(s, 1, "interrupted", reason="the operator stopped it")
    after = dashboard.get("/api/runs/1").json()
    assert (after["status"], after["status_reason"]) == ("interrupted", "the operator stopped it")
    assert "the operator stopped it" in dashboard.get("/runs/1").text


# -- markup stored in the ledger -------------------------------------------------------
# Licence ids and attributions are a participant's free text; institution names are
# checked at enrolment, but the dashboard must not count on what the writer checked (a
# ledger from another version, or edited by an insider, can hold anything). Each
# payload would set window.__pwned if it ran; every page must show it as text.

SCRIPT = "evil<script>window.__pwned = 'script'</script>"
IMAGE = "<img src=x onerror=\"window.__pwned = 'img'\">"
ATTRIBUTE = '" autofocus tabindex="0" onfocus="window.__pwned = \'attr\'" x="'
EXCLUDED = "</td></tr></table><script>window.__pwned = 'row'</script>"
LICENCE = Licence(
    id="custom:<svg onload=\"window.__pwned = 'svg'\">",
    commercial=False,
    derivatives=True,
    share_alike=False,
    attribution="</pre><script>window.__pwned = 'card'</script>",
    purposes=("research",),
)
MARKUP = [SCRIPT, IMAGE, ATTRIBUTE, EXCLUDED, LICENCE.id, LICENCE.attribution]
SHOWN = {  # where each page shows them
    "/": [SCRIPT, IMAGE, ATTRIBUTE, EXCLUDED, LICENCE.id],
    "/runs": [],
    "/runs/1": [SCRIPT, IMAGE, ATTRIBUTE, EXCLUDED, LICENCE.attribution],
}


@contextmanager
def _hostile(url: str, tmp_path: Path) -> Iterator[Dashboard]:
    contributors = {SCRIPT: SPDX["CC-BY-4.0"], IMAGE: LICENCE, ATTRIBUTE: SPDX["CC0-1.0"]}
    with _served(url, tmp_path, contributors, {EXCLUDED: SPDX["CC-BY-4.0"]}) as served:
        yield served


@pytest.fixture
def hostile(url: str, tmp_path: Path) -> Iterator[Dashboard]:
    with _hostile(url, tmp_path) as served:
        yield served


class _Page(HTMLParser):
    """A page's elements, attribute names, script bodies and text (character references decoded)."""

    def __init__(self, body: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.scripts: list[str] = []
        self.texts: list[str] = []
        self._in_script = False
        self.feed(body)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        (self.scripts if self._in_script else self.texts).append(data)

    @property
    def text(self) -> str:
        return "".join(self.texts)


def _assert_inert(body: str) -> _Page:
    """No payload is in ``body`` as markup: no element, event handler or script it brought."""
    page = _Page(body)
    assert not [p for p in MARKUP if p in body]  # each one escaped wherever it appears
    assert "img" not in page.tags
    assert not [name for name in page.attributes if name.startswith("on") or name == "autofocus"]
    assert not [script for script in page.scripts if "__pwned" in script]
    return page


@pytest.mark.parametrize("path", list(SHOWN))
def test_markup_in_names_and_licences_is_shown_as_text(hostile: Dashboard, path: str) -> None:
    response = hostile.get(path)
    assert response.status_code == 200
    page = _assert_inert(response.text)
    assert [p for p in SHOWN[path] if p not in page.text] == []


def test_markup_in_ledger_entries_is_shown_as_text(hostile: Dashboard) -> None:
    shown = set()
    for seq in range(hostile.get("/api/overview").json()["entries"]):
        response = hostile.get(f"/entries/{seq}")
        assert response.status_code == 200
        text = _assert_inert(response.text).text
        shown |= {p for p in MARKUP if json.dumps(p)[1:-1] in text}  # in the JSON payload
    assert shown == set(MARKUP)


@needs_chromium
def test_stored_markup_runs_no_script_in_a_real_browser(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with (
        _hostile(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path) as dashboard,
        serving(dashboard.app) as base,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        token = dashboard.tokens["good"]
        page = browser.new_context(
            extra_http_headers={"Authorization": f"Bearer {token}"}
        ).new_page()
        entries = dashboard.get("/api/overview").json()["entries"]
        for path in [*SHOWN, *(f"/entries/{seq}" for seq in range(entries))]:
            page.goto(base + path)
            page.keyboard.press("Tab")  # focus fires an injected onfocus
            assert page.evaluate("window.__pwned") is None, path
            injected = "img, [onerror], [onload], [onfocus], [autofocus], [tabindex]"
            assert page.locator(injected).count() == 0, path
        page.goto(base + "/")
        for name in (SCRIPT, IMAGE, ATTRIBUTE, EXCLUDED):
            expect(page.locator("#participants")).to_contain_text(name)
        expect(page.locator("#datasets")).to_contain_text(LICENCE.id)
        page.goto(base + "/runs/1")  # the release's card check, names from the ledger escaped
        expect(page.locator("#card-verdict-1")).to_contain_text("Card check: refused")
        expect(page.locator("#card-verdict-1")).to_contain_text("mismatch: quorum: cosigned by 0")
        browser.close()


def test_the_release_view_shows_the_card_checks_verdict(dashboard: Dashboard) -> None:
    """The card is checked against this ledger; nobody cosigned its checkpoint here."""
    (release,) = dashboard.get("/api/runs/1").json()["releases"]
    verdict = release["verdict"]
    assert verdict["status"] == "refused"
    statuses = {c["check"]: c["status"] for c in verdict["checks"]}
    assert (statuses.pop("quorum"), statuses.pop("log origin")) == ("mismatch", "not checked")
    assert set(statuses.values()) == {"held"}, statuses  # signature, proofs, ledger, ε, ...
    page = dashboard.get("/runs/1").text
    assert "Card check: <strong>refused</strong>" in page
    assert (
        "<li>mismatch: quorum: cosigned by 0 of the 3 members admitted to run 1 (none); "
        "the quorum is 2 (a majority)</li>"
    ) in page
    assert "<li>not checked: log origin: not checked: needs consortium.json</li>" in page
