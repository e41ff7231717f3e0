"""End to end on real Flower processes: SuperLink, SuperNodes, ``flwr run``.

Each test starts its own processes on free loopback ports and, pass or fail,
stops exactly those (``LocalFederation`` signals only the process groups it
started).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from common.cli.app import app
from common.demo import prepare_data
from common.local_federation import LocalFederation, NodeSpec, build_app_dir, write_run_config
from common.policy import Policy
from server.ledger import Ledger, enrol_participant, ledger_report

SUMMARY_KEYS = {
    "engine", "model", "dataset", "partition", "institutions", "rounds", "final_accuracy",
    "ledger_url", "model_bytes", "update_bytes", "wall_seconds", "epsilon_budget", "delta",
}  # fmt: skip
INSTITUTIONS = ["company-c", "university-a", "university-b"]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_dp_demo_on_real_processes_then_its_spent_budget_refuses_a_second_run(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "demo"
    command = ["demo", "--rounds", "2", "--workdir", str(workdir), "--seed", "3"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["engine"] == "flower-deployment"
    assert (summary["model"], summary["dataset"], summary["partition"]) == (
        "cnn",
        "digits",
        "non-iid",
    )
    assert [i["name"] for i in summary["institutions"]] == [
        "university-a",
        "university-b",
        "company-c",
    ]
    assert [i["kind"] for i in summary["institutions"]] == ["academia", "academia", "industry"]
    assert sum(i["examples"] for i in summary["institutions"]) == 1257
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert all(r["participants"] == 3 for r in summary["rounds"])
    assert summary["final_accuracy"] > 0.4  # 2 DP rounds from scratch; chance is 0.1
    assert summary["update_bytes"] == summary["model_bytes"]  # v1 sends the full CNN
    # DP by default: epsilon per institution grows every round and ends within the budget
    assert (summary["dp"], summary["epsilon_budget"], summary["delta"]) == (True, 8.0, 1e-5)
    first_eps, second_eps = (r["epsilon"] for r in summary["rounds"])
    assert sorted(first_eps) == sorted(second_eps) == INSTITUTIONS
    for name in INSTITUTIONS:
        assert 0 < first_eps[name] < second_eps[name] <= 8.0
        assert second_eps[name] > 7.9  # the derived noise spends the budget over the run
    assert {i["name"]: i["epsilon"] for i in summary["institutions"]} == second_eps

    ledger = Ledger(summary["ledger_url"], migrate=False)
    with ledger.session() as session:
        report = ledger_report(session)
    ledger.close()
    (run,) = report["runs"]
    assert run["status"] == "finished"
    assert run["flower_run_id"] == str(summary["flower_run_id"])
    assert run["test_accuracy"] == summary["final_accuracy"]
    first, second = run["rounds"]
    assert first["model_sha256_before"] == run["initial_model_sha256"]
    assert second["model_sha256_before"] == first["model_sha256_after"]
    for r in run["rounds"]:
        assert sorted(u["institution"] for u in r["updates"]) == [
            "company-c",
            "university-a",
            "university-b",
        ]
        assert sum(u["num_examples"] for u in r["updates"]) == 1257
        assert len({u["update_sha256"] for u in r["updates"]}) == 3
    assert sorted(p.name for p in (workdir / "operator" / "checkpoints").iterdir()) == [
        "round-0001.safetensors",
        "round-0002.safetensors",
    ]
    charges = run["privacy_charges"]
    assert [(c["round"], c["institution"]) for c in charges] == [  # by round, then name
        (r, name) for r in (1, 2) for name in INSTITUTIONS
    ]
    assert all(c["dp"] and c["accountant"] == "rdp" and c["steps"] > 0 for c in charges)
    assert {c["institution"]: c["epsilon"] for c in charges if c["round"] == 2} == second_eps

    # The same work folder, the same datasets: their budgets are spent, so no one trains.
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 1
    assert "fewer than 3 institutions have privacy budget left" in again.output
    for name in INSTITUTIONS:
        assert f"privacy budget exhausted for {name}" in again.output
    ledger = Ledger(summary["ledger_url"], migrate=False)
    with ledger.session() as session:
        report = ledger_report(session)
    ledger.close()
    second = report["runs"][1]
    assert second["status"] == "failed" and second["rounds"] == []
    assert "round 1: 0 of the required 3 nodes returned an update" in second["status_reason"]
    assert second["privacy_charges"] == []  # refused before training: nothing charged
    assert sorted((e["institution"], e["code"]) for e in second["exclusions"]) == [
        (name, 403) for name in INSTITUTIONS
    ]
    assert {p["institution"]: p["epsilon"] for p in report["privacy"]} == second_eps
    budget = CliRunner().invoke(
        app,
        ["client", "budget", "--state", str(workdir / "institutions/company-c/state"),
         "--format", "json"],
    )  # fmt: skip
    (dataset,) = json.loads(budget.output)["datasets"]
    assert dataset["epsilon_spent"] == pytest.approx(second_eps["company-c"])


def test_bad_participant_data_fails_the_run_with_the_file_named(tmp_path: Path) -> None:
    policy = Policy.from_sections({"federation": {"rounds": 1, "min-nodes": 1}})
    layout = prepare_data(tmp_path, policy)
    bad_dir = tmp_path / "bad-node"
    bad_dir.mkdir()
    np.savez(bad_dir / "mine.npz", images=np.zeros((4, 8, 8)), labels=np.array([0, 1, 2, 42]))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    with ledger.session() as s:
        enrol_participant(s, "lab-x", "academia")
    deployed = policy.with_deploy(ledger_url=url, server_data_dir=str(layout.server_data_dir))
    run_config = write_run_config(tmp_path / "run.toml", deployed.to_run_config())
    federation = LocalFederation(tmp_path, [NodeSpec("lab-x", bad_dir, tmp_path / "state")])
    with federation:
        pids = [p.pid for p in federation.processes.values()]
        run_id = federation.submit(build_app_dir(tmp_path / "app"), run_config)
        deadline = time.monotonic() + 240
        while not (status := federation.run_status(run_id))["status"].startswith("finished"):
            assert time.monotonic() < deadline, status
            time.sleep(1)
        server_log = federation.run_log(run_id)
    assert status["status"] == "finished:failed"
    assert all(_gone(pid) for pid in pids)
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    ledger.close()
    assert run["status"] == "failed" and run["rounds"] == []
    assert "mine.npz: label 42 at index 3 is out of range [0, 10)" in server_log
    (exclusion,) = run["exclusions"]
    assert (exclusion["institution"], exclusion["code"]) == ("lab-x", 400)
    assert "label 42 at index 3 is out of range" in exclusion["reason"]
    assert "label 42 at index 3" in run["status_reason"]


def test_federation_stops_its_processes_when_the_body_fails(tmp_path: Path) -> None:
    federation = LocalFederation(tmp_path, [NodeSpec("lab-y", tmp_path)])
    with pytest.raises(RuntimeError, match="boom"), federation:
        pids = [p.pid for p in federation.processes.values()]
        assert len(pids) == 2
        raise RuntimeError("boom")
    assert all(_gone(pid) for pid in pids)
    assert federation.processes == {}


def test_bert_demo_two_rounds_on_real_processes(tmp_path: Path, tiny_bert: Path) -> None:
    """``--model bert`` end to end with a tiny BERT: only the trainable part travels."""
    from common.text import STDLIB_TOPICS

    policy = tmp_path / "bert.toml"
    policy.write_text(
        f"""
[federation]
rounds = 2
[model]
name = "bert"
num-classes = {len(STDLIB_TOPICS)}
checkpoint = "{tiny_bert}"
max-length = 32
[data]
dataset = "stdlib-docs"
labels = "{",".join(STDLIB_TOPICS)}"
[training]
local-epochs = 1
batch-size = 32
learning-rate = 0.5
"""
    )
    workdir = tmp_path / "demo"
    command = ["demo", "--model", "bert", "--policy", str(policy), "--workdir", str(workdir)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "summary.json").read_text())
    assert (summary["model"], summary["dataset"], summary["num_classes"]) == (
        "bert",
        "stdlib-docs",
        len(STDLIB_TOPICS),
    )
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert all(r["participants"] == 3 for r in summary["rounds"])
    # Only the top layer, pooler and classifier travel: a fraction of the model.
    assert summary["update_bytes"] == summary["trainable_bytes"]
    assert summary["update_bytes"] < 0.5 * summary["model_bytes"]
    assert all(0 < i["epsilon"] <= 8.0 for i in summary["institutions"])
    for name in ("university-a", "university-b", "company-c"):
        assert (workdir / "institutions" / name / "data" / "stdlib-docs.jsonl").exists()
    ledger = Ledger(summary["ledger_url"], migrate=False)
    with ledger.session() as session:
        report = ledger_report(session)
    ledger.close()
    (run,) = report["runs"]
    assert run["status"] == "finished" and run["model"] == "bert"
    assert run["base_model_sha256"] is not None and len(run["base_model_sha256"]) == 64
    assert {u["update_bytes"] for r in run["rounds"] for u in r["updates"]} == {
        summary["trainable_bytes"]
    }
