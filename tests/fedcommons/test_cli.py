"""The ``fedcommons`` command: clean errors, tables for people, JSON for machines."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from client.accountant import history_path, locked_history
from common.images import write_npz
from common.protocol import ExclusionCode, PrivacyCharge
from fedcommons.cli import app
from fedcommons.partition import load_digits_data
from ledger import (
    ChargeFact,
    ExclusionFact,
    Ledger,
    UpdateFact,
    enrol_participant,
    record_privacy,
    record_round,
    start_run,
)

runner = CliRunner()


def test_no_arguments_shows_the_groups() -> None:
    result = runner.invoke(app, [])
    for group in ("demo", "operator", "client", "audit"):
        assert group in result.output


def test_check_policy_ok_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[federation]\nrounds = 3\n")
    result = runner.invoke(app, ["operator", "check-policy", str(good), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["run_config"]["federation.rounds"] == 3
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nlearning-rate = -1\n")
    result = runner.invoke(app, ["operator", "check-policy", str(bad)])
    assert result.exit_code == 1
    assert "'training.learning-rate' must be a number in (0, 10]" in result.output
    assert "Traceback" not in result.output


def test_check_data_reports_counts_or_the_problem(tmp_path: Path) -> None:
    write_npz(tmp_path / "ok" / "d.npz", load_digits_data().subset(np.arange(30)))
    result = runner.invoke(app, ["client", "check-data", str(tmp_path / "ok"), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["examples"] == 30 and sum(report["label_counts"]) == 30
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 8, 8)))
    result = runner.invoke(app, ["client", "check-data", str(tmp_path / "bad.npz")])
    assert result.exit_code == 1
    assert "bad.npz: missing array(s) labels" in result.output


def test_check_data_reads_text_under_a_bert_policy(tmp_path: Path) -> None:
    policy = tmp_path / "bert.toml"
    policy.write_text(
        '[model]\nname = "bert"\nnum-classes = 2\n'
        '[data]\ndataset = "stdlib-docs"\nlabels = "networking, mathematics"\n'
        'text-column = "doc"\nlabel-column = "topic"\n'
    )
    good = tmp_path / "good.csv"
    good.write_text("doc,topic\nOpen a socket.,networking\nReturn a sine.,mathematics\n")
    args = ["client", "check-data", str(good), "--policy", str(policy), "--format", "json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["examples"], report["label_counts"]) == (2, [1, 1])
    assert len(report["sha256"]) == 64
    bad = tmp_path / "bad.csv"
    bad.write_text("doc,topic\nOpen a socket.,networking\nMake tea.,cooking\n")
    result = runner.invoke(app, ["client", "check-data", str(bad), "--policy", str(policy)])
    assert result.exit_code == 1
    assert "bad.csv, line 3: unknown label 'cooking'" in result.output
    assert "Traceback" not in result.output


def test_demo_rejects_bad_options_before_starting_anything(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--partition", "sorted", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert (
        "'data.partition' must be one of: iid, non-iid, got 'sorted' "
        "(from the command-line options)" in result.output
    )
    assert not (tmp_path / "w").exists()
    result = runner.invoke(app, ["demo", "--model", "gpt", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 1 and "'model.name' must be one of: cnn, bert" in result.output


def test_audit_show_table_and_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    with ledger.session() as s:
        enrol_participant(s, "university-a", "academia")
        run_id = start_run(
            s,
            policy_sha256="a" * 64,
            policy_toml="",
            model="cnn",
            dataset="digits",
            initial_model_sha256="b" * 64,
            planned_rounds=1,
            flower_run_id=42,
        ).id
        record_round(
            s,
            run_id,
            number=1,
            model_sha256_before="b" * 64,
            model_sha256_after="c" * 64,
            loss=0.5,
            accuracy=0.875,
            seconds=3.0,
            updates=[UpdateFact("university-a", 10, 0.4, "d" * 64, 100, 1.0)],
        )
        charge = PrivacyCharge(True, 3.5, 1e-5, 1.1, 0.1, 20, "rdp", 1.0, "e" * 64, "f" * 64)
        record_privacy(
            s,
            run_id,
            1,
            charges=[ChargeFact("university-a", charge)],
            exclusions=[
                ExclusionFact(None, 77, ExclusionCode.BUDGET_EXHAUSTED, "privacy budget exhausted")
            ],
        )
    ledger.close()
    result = runner.invoke(app, ["audit", "show", "--ledger", url], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "university-a" in result.output and "87.50%" in result.output
    assert "Privacy spent" in result.output and "3.500" in result.output
    assert "excluded in round 1: node 77 (code 403): privacy budget exhausted" in result.output
    result = runner.invoke(app, ["audit", "show", "--ledger", url, "--format", "json"])
    report = json.loads(result.output)
    assert report["runs"][0]["rounds"][0]["updates"][0]["update_sha256"] == "d" * 64
    assert report["privacy"][0]["institution"] == "university-a"
    assert report["privacy"][0]["epsilon"] == 3.5


def test_client_budget_shows_spent_and_remaining(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    result = runner.invoke(app, ["client", "budget", "--state", str(state)])
    assert result.exit_code == 1 and "is not a FedCommons state folder" in result.output
    with locked_history(
        state, institution="university-a", dataset_sha256="a" * 64, num_records=420
    ) as history:
        history.history = [(1.2, 1 / 14, 56)]
        history.epsilon_budget = 8.0
    result = runner.invoke(app, ["client", "budget", "--state", str(state), "--format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)["datasets"]
    assert row["institution"] == "university-a" and row["steps"] == 56
    assert 0 < row["epsilon_spent"] < 8.0
    assert row["epsilon_remaining"] == pytest.approx(8.0 - row["epsilon_spent"])
    table = runner.invoke(app, ["client", "budget", "--state", str(state)])
    assert f"{row['epsilon_remaining']:.3f}" in table.output


def test_client_budget_refuses_a_missing_folder_or_corrupt_history(tmp_path: Path) -> None:
    result = runner.invoke(app, ["client", "budget", "--state", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "state folder" in result.output
    path = history_path(tmp_path, "b" * 64)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    result = runner.invoke(app, ["client", "budget", "--state", str(tmp_path)])
    assert result.exit_code == 1 and "is not valid JSON" in result.output
    assert "Traceback" not in result.output


def test_audit_show_on_a_missing_ledger_fails_cleanly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", "show", "--ledger", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 1
    assert "no ledger at" in result.output and "the file does not exist" in result.output


def test_a_reader_that_goes_away_is_no_bug(tmp_path: Path) -> None:
    """`fedcommons ... | head`: the pipe closes before the help is written; a quiet stop."""
    import subprocess
    import sys

    env = {**os.environ, "FEDCOMMONS_LOG_DIR": str(tmp_path / "logs")}
    with subprocess.Popen(
        [sys.executable, "-m", "fedcommons.cli", "demo", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # gone before the command has written anything
        errors = process.stderr.read().decode()
        code = process.wait(timeout=60)
    assert code in (1, 141), errors  # click's own EPIPE exit, or ours (128 + SIGPIPE)
    assert "bug" not in errors and "Traceback" not in errors, errors
    assert not (tmp_path / "logs").exists()  # no crash log


@pytest.mark.parametrize(
    "command",
    [["client", "start", "--state", "nowhere", "--isolation", "threads"],
     ["demo", "--isolation", "threads", "--workdir", "nowhere"]],
)  # fmt: skip
def test_an_unknown_isolation_is_refused_before_anything_starts(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, command)
    assert result.exit_code == 2
    assert "--isolation is warm or subprocess, not 'threads'" in " ".join(result.output.split())
    assert not (tmp_path / "nowhere").exists()
