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
    "ledger_url", "model_bytes", "update_bytes", "wall_seconds",
}  # fmt: skip


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_demo_two_rounds_on_real_processes(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--rounds", "2", "--workdir", str(workdir), "--seed", "3"]
    )
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
    assert summary["final_accuracy"] > 0.5  # 2 rounds from scratch; chance is 0.1
    assert summary["update_bytes"] == summary["model_bytes"]  # v1 sends the full CNN

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
    federation = LocalFederation(tmp_path, [NodeSpec("lab-x", bad_dir)])
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


def test_federation_stops_its_processes_when_the_body_fails(tmp_path: Path) -> None:
    federation = LocalFederation(tmp_path, [NodeSpec("lab-y", tmp_path)])
    with pytest.raises(RuntimeError, match="boom"), federation:
        pids = [p.pid for p in federation.processes.values()]
        assert len(pids) == 2
        raise RuntimeError("boom")
    assert all(_gone(pid) for pid in pids)
    assert federation.processes == {}
