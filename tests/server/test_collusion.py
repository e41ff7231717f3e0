"""Two colluding members with genuine keys, DP training and honest counts, in real rounds.

Five institutions train with the ClientApp's own code; two colluders send,
sealed with their own registered keys, what their attack computes from the
honest members' updates of the round (omniscient colluders). The consortium
strategy, composed as the ServerApp composes it with the default policy
(trust bootstrapping on the operator's validation split), records to a real
ledger (SQLite file and PostgreSQL), which is read back and verified.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from audit.web import create_app
from common.policy import Policy
from fedcommons.cli import app
from ledger import Ledger
from ledger.contributions import contributions_report
from ledger.report import ledger_report
from ledger.tokens import issue_token
from ledger.verify import verify_ledger
from server.app.strategy import LedgerRecorder
from tests.support.hostile_federation import FLOWER_RUN, HostileFederation
from tests.support.sealed_updates import run_in
from tests.support.serving import serving
from tests.support.tools import CHROMIUM, needs_chromium

NAMES = ("university-a", "university-b", "company-c", "university-d", "company-e")
COLLUDERS = ("company-c", "company-e")


def _collude(
    ledger: Ledger, tmp_path: Path, attack: str, rounds: int
) -> tuple[dict[str, object], dict[str, object]]:
    run_id = run_in(ledger, NAMES, FLOWER_RUN)
    recorder = LedgerRecorder(ledger, run_id, flower_run_id=str(FLOWER_RUN), snapshot_dir=None)
    policy = Policy().with_overrides({"federation.rounds": rounds})
    federation = HostileFederation(
        policy,
        tmp_path / "work",
        [(n, "academia") for n in NAMES],
        attacker=COLLUDERS,
        attack=attack,
        recorder=recorder,
        valued=True,
    )
    for server_round in range(1, rounds + 1):
        federation.round(server_round)
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
        (values,) = contributions_report(s, run_id=run_id)
    assert verify_ledger(ledger).rows_checked > 0
    return run, values


def test_colluders_under_the_norm_bound_weigh_zero_earn_nothing_and_are_named(
    ledger: Ledger, url: str, tmp_path: Path
) -> None:
    run, values = _collude(ledger, tmp_path, "under-bound", rounds=2)
    defences = run["defences"]
    assert isinstance(defences, list)
    zero = {(d["round"], d["institution"]) for d in defences if d["action"] == "weighted zero"}
    # every round; an honest DP update can point away from the reference too, now and then
    assert zero >= {(r, c) for r in (1, 2) for c in COLLUDERS}
    suspected = {(d["rule"], d["institution"]) for d in defences if d["action"] == "suspected"}
    for colluder in COLLUDERS:
        assert ("near-identical", colluder) in suspected
        assert ("zero-weight", colluder) in suspected  # two rounds of weight zero
    assert not {name for rule, name in suspected if rule == "near-identical"} - set(COLLUDERS)
    for valued in values["rounds"]:  # type: ignore[attr-defined]
        for colluder in COLLUDERS:
            assert valued["values_ppm"][colluder] == 0  # weight zero: a null player
    beside = {i["name"]: i["evidence"] for i in values["institutions"]}  # type: ignore[attr-defined]
    for colluder in COLLUDERS:
        assert beside[colluder]["near-identical"] == [1, 2]
        assert beside[colluder]["zero-weight"] == [2]
    _shown_to_auditors(url, COLLUDERS)
    ledger.close()


def _shown_to_auditors(url: str, colluders: tuple[str, ...]) -> None:
    """``audit show``, ``audit contributions`` and the dashboard's run page show the evidence."""
    runner = CliRunner()
    shown = runner.invoke(app, ["audit", "show", "--ledger", url])
    assert shown.exit_code == 0, shown.output
    for colluder in colluders:
        assert f"collusion evidence, round 2: {colluder} (zero-weight)" in shown.output
    valued = runner.invoke(app, ["audit", "contributions", "--ledger", url])
    assert valued.exit_code == 0, valued.output
    assert "evidence (rounds)" in valued.output and "near-identical" in valued.output
    as_json = runner.invoke(app, ["audit", "contributions", "--ledger", url, "--format", "json"])
    (run,) = json.loads(as_json.output)["runs"]
    beside = {i["name"]: i["evidence"] for i in run["institutions"]}
    assert all(beside[c]["near-identical"] == [1, 2] for c in colluders)
    with Ledger(url).session() as s:
        token = issue_token(s, "auditor", timedelta(days=1))
    dashboard = create_app(url)
    with TestClient(dashboard) as client:
        page = client.get("/runs/1", headers={"Authorization": f"Bearer {token}"}).text
    dashboard.state.ledger.close()
    evidence = page[page.index('id="evidence"') : page.index('id="contributions"')]
    for colluder in colluders:
        assert f"<td>{colluder}</td><td>near-identical</td>" in evidence
    contributions = page[page.index('id="contributions"') :]
    assert "near-identical (1, 2); zero-weight (2)" in contributions


def test_a_little_is_enough_counts_once_and_is_named(ledger: Ledger, tmp_path: Path) -> None:
    run, _ = _collude(ledger, tmp_path, "alie", rounds=1)
    defences = run["defences"]
    assert isinstance(defences, list)
    twins = {d["institution"] for d in defences if d["rule"] == "near-identical"}
    assert twins == set(COLLUDERS)
    shared = {d["institution"] for d in defences if d["action"] == "shared"}
    assert shared in (set(COLLUDERS), set())  # set() only if trust weighted both zero
    ledger.close()


@pytest.mark.parametrize("attack", ["under-bound"])
def test_the_harness_refuses_an_unknown_collusion(tmp_path: Path, attack: str) -> None:
    with pytest.raises(ValueError, match="unknown attack 'together'"):
        HostileFederation(
            Policy(), tmp_path, [(n, "academia") for n in NAMES], attacker=COLLUDERS,
            attack="together",
        )  # fmt: skip
    with pytest.raises(ValueError, match="name both the attacker and its attack"):
        HostileFederation(Policy(), tmp_path, [(n, "academia") for n in NAMES], attack=attack)


@needs_chromium
def test_a_real_browser_shows_the_evidence_beside_the_values(tmp_path: Path) -> None:
    """The dashboard's run page, in Chromium: the evidence table names both colluders and
    the contributions table carries each one's evidence beside its value."""
    from playwright.sync_api import expect, sync_playwright

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    _collude(ledger, tmp_path, "under-bound", rounds=1)
    with ledger.session() as s:
        token = issue_token(s, "auditor", timedelta(days=1))
    ledger.close()
    dashboard = create_app(url)
    with serving(dashboard) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_context(
            extra_http_headers={"Authorization": f"Bearer {token}"}
        ).new_page()
        page.goto(base + "/runs/1")
        expect(page.locator("#evidence")).to_be_visible()
        rows = [r.split("\t") for r in page.locator("#evidence tr").all_inner_texts()[1:]]
        assert sorted((r[1], r[2]) for r in rows) == [(c, "near-identical") for c in COLLUDERS]
        values = {
            r.split("\t")[0]: r.split("\t")[-1]
            for r in page.locator("#contributions tr").all_inner_texts()[1:]
        }
        assert {name: values[name] for name in COLLUDERS} == {
            c: "near-identical (1)" for c in COLLUDERS
        }
        assert values["university-a"] == "-"
        browser.close()
    dashboard.state.ledger.close()
