"""End to end on real Flower processes: SuperLink, SuperNodes, ``flwr run``.

Each test starts its own processes on free loopback ports and, pass or fail,
stops exactly those (``LocalFederation`` signals only the process groups it
started).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib
from safetensors.numpy import load as load_safetensors
from typer.testing import CliRunner

from audit.cards import check_card
from client.enrolment import ParticipantState, enrol
from common.envelope import Envelope, UpdateHeader, decrypt
from common.images import write_npz
from common.keys import load_x25519_key
from common.policy import Policy
from common.receipts import Receipt, read_receipts
from fedcommons.cli import app
from fedcommons.demo_setup import demo_consortium, prepare_data, started_federation
from fedcommons.errors import EXIT_USER_ERROR
from fedcommons.local_federation import LocalFederation, NodeSpec
from fedcommons.partition import load_digits_data
from fedcommons.startup import free_port
from ledger import Ledger
from ledger.contributions import contributions_report
from ledger.report import ledger_report
from server.deploy import OperatorFiles
from server.operator.consortium import admit, init_consortium
from server.operator.flower import CONNECTION
from server.operator.follow import RunFailed, follow_run, submit_run
from tests.support.go_interop import go_checks, interop_input, needs_go
from tests.support.tools import CHROMIUM, needs_chromium

pytestmark = pytest.mark.e2e

SUMMARY_KEYS = {
    "engine", "model", "dataset", "partition", "institutions", "rounds", "final_accuracy",
    "ledger_url", "model_bytes", "update_bytes", "wall_seconds", "epsilon_budget", "delta",
    "tls", "node_auth", "superlink_db",
}  # fmt: skip
INSTITUTIONS = ["company-c", "university-a", "university-b"]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@dataclasses.dataclass(frozen=True)
class DemoRun:
    """One 2-round DP demo on real Flower processes, shared by the checks below."""

    workdir: Path
    summary: dict[str, Any]
    report: dict[str, Any]
    command: list[str]

    @property
    def run(self) -> dict[str, Any]:
        run: dict[str, Any] = self.report["runs"][0]
        return run

    @property
    def epsilon(self) -> dict[str, float]:
        spent: dict[str, float] = self.summary["rounds"][-1]["epsilon"]
        return spent


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    workdir = tmp_path_factory.mktemp("e2e") / "demo"
    command = ["demo", "--rounds", "2", "--workdir", str(workdir), "--seed", "3"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "summary.json").read_text())
    ledger = Ledger(summary["ledger_url"], migrate=False)
    with ledger.session() as session:
        report = ledger_report(session)
    ledger.close()
    return DemoRun(workdir, summary, report, command)


def test_the_demo_trains_three_institutions_with_dp(demo: DemoRun) -> None:
    summary = demo.summary
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
    assert summary["update_bytes"] == summary["model_bytes"]  # the whole CNN travels
    # DP by default: epsilon per institution grows every round and ends within the budget
    assert (summary["dp"], summary["epsilon_budget"], summary["delta"]) == (True, 8.0, 1e-5)
    first_eps, second_eps = (r["epsilon"] for r in summary["rounds"])
    assert sorted(first_eps) == sorted(second_eps) == INSTITUTIONS
    for name in INSTITUTIONS:
        assert 0 < first_eps[name] < second_eps[name] <= 8.0
        assert second_eps[name] > 7.9  # the derived noise spends the budget over the run
    assert {i["name"]: i["epsilon"] for i in summary["institutions"]} == second_eps
    # TLS, SuperNode authentication and sealed updates, all on by default
    assert (summary["tls"], summary["node_auth"], summary["encrypted_updates"]) == (True,) * 3
    superlink_log = (demo.workdir / "logs" / "superlink.log").read_text()
    assert "SuperNode authentication is disabled" not in superlink_log
    # Warm ClientApps by default: each node's runner loaded torch once, then forked them.
    assert summary["isolation"] == "warm"
    for name in INSTITUTIONS:
        node_log = (demo.workdir / "logs" / f"supernode-{name}.log").read_text()
        assert "warm ClientApp runner: torch, opacus and the ClientApp loaded" in node_log


def test_the_ledger_records_every_round_update_and_charge(demo: DemoRun) -> None:
    run = demo.run
    assert run["status"] == "finished"
    assert run["flower_run_id"] == str(demo.summary["flower_run_id"])
    assert run["test_accuracy"] == demo.summary["final_accuracy"]
    first, second = run["rounds"]
    assert first["model_sha256_before"] == run["initial_model_sha256"]
    assert second["model_sha256_before"] == first["model_sha256_after"]
    for r in run["rounds"]:
        assert sorted(u["institution"] for u in r["updates"]) == INSTITUTIONS
        assert sum(u["num_examples"] for u in r["updates"]) == 1257
        assert len({u["update_sha256"] for u in r["updates"]}) == 3
    assert sorted(p.name for p in (demo.workdir / "operator" / "snapshots").iterdir()) == [
        "round-0001-replies.json",  # kept until the round is recorded, and after
        "round-0001-updates",
        "round-0001.safetensors",
        "round-0002-replies.json",
        "round-0002-updates",
        "round-0002.safetensors",
    ]
    charges = run["privacy_charges"]
    assert [(c["round"], c["institution"]) for c in charges] == [  # by round, then name
        (r, name) for r in (1, 2) for name in INSTITUTIONS
    ]
    assert all(c["dp"] and c["accountant"] == "prv" and c["steps"] > 0 for c in charges)
    assert {c["institution"]: c["epsilon"] for c in charges if c["round"] == 2} == demo.epsilon
    licences = {p["name"]: p["datasets"][-1]["licence"] for p in demo.report["participants"]}
    assert licences == {
        "university-a": "CC-BY-4.0",
        "university-b": "CC-BY-NC-4.0",
        "company-c": "custom:company-c-research",
    }


def test_the_release_and_every_receipt_verify(demo: DemoRun) -> None:
    summary, run = demo.summary, demo.run
    # the ledger verifies with the operator's key; one signed tree head per round and
    # one after the release of the final model
    assert summary["ledger_verified"] is True and summary["ledger_tree_heads"] == 3
    release_dir = Path(summary["release_dir"])
    assert release_dir == (demo.workdir / "releases" / f"run-{run['id']}").resolve()
    card = json.loads((release_dir / "model-card.json").read_bytes())
    operator = OperatorFiles((demo.workdir / "operator").resolve())
    # the card checks against the consortium and its ledger: the release checkpoint
    # carries every contributor's cosignature, verified with its admitted key
    consortium, ledger = operator.consortium(), Ledger(summary["ledger_url"], read_only=True)
    with ledger.session() as session:
        verdict = check_card(
            card, operator=consortium.operator_key, origin=consortium.origin, session=session
        )
    ledger.close()
    assert verdict.status == "verified", verdict.to_dict()
    assert verdict.check("quorum").detail.startswith("cosigned by 3 of the 3 members")
    assert card["model"]["sha256"] == run["rounds"][-1]["model_sha256_after"]
    assert sorted(c["institution"] for c in card["contributors"]) == INSTITUTIONS
    assert card["obligations"]["non_commercial"] is True
    assert "university-b (CC-BY-NC-4.0)" in card["obligations"]["non_commercial_from"]
    assert card["obligations"]["purposes"] == ["research"]  # company-c's terms
    assert {p["institution"]: p["epsilon"] for p in card["privacy"]} == demo.epsilon
    card_text = (release_dir / "model-card.md").read_text()
    assert "**Non-commercial use only**, required by university-b (CC-BY-NC-4.0)" in card_text
    # every participant verified and kept a receipt for each of its updates, and an
    # auditor holding them finds them consistent with the ledger
    receipts_dir = Path(summary["receipts_dir"])
    assert summary["receipts"] == 6
    for name in INSTITUTIONS:
        assert sorted(p.name for p in (receipts_dir / name).glob("*.json")) == [
            f"run-{summary['flower_run_id']}-round-{r:04d}.json" for r in (1, 2)
        ]
    audit_command = ["audit", "verify", "--ledger", summary["ledger_url"]]
    audit_command += ["--receipts", str(receipts_dir)]
    audit_command += ["--operator-key", str(operator.consortium_file)]
    audit = CliRunner().invoke(app, audit_command)
    assert audit.exit_code == 0 and "6 receipts consistent" in audit.output, audit.output
    assert "6 contribution values recomputed" in audit.output
    # both rounds' heads were cosigned by all three (round 1's on its receipt, with
    # round 2's training; round 2's on the query after the run); the release's by none
    assert "6 participant cosignatures verified" in audit.output
    witnesses = summary["witnesses"]
    assert [sorted(names) for names in witnesses.values()] == [INSTITUTIONS, INSTITUTIONS, []]
    # each node saw its run's members (a majority at least) cosign both rounds'
    # checkpoints: round 1's with round 2's train message, round 2's with the
    # run's final query; nothing is left pending or refused
    round_2 = int(list(witnesses)[1])
    assert summary["quorum"] == {
        name: {"established_size": round_2, "pending": 0, "refused": 0} for name in INSTITUTIONS
    }
    for size, names in witnesses.items():
        said = f"cosigned by {', '.join(names)}" if names else "no cosignatures"
        assert f"tree head of size {size}: {said}" in audit.output
    # each round valued by exact Shapley on the server's validation split; the
    # shares are in the summary, the card and every receipt
    assert summary["valuation"]["method"] == "shapley"
    assert summary["valuation"]["rounds_valued"] == 2
    assert summary["valuation"]["evaluations"] == 2 * 8
    assert set(summary["contributions"]) == set(INSTITUTIONS)
    assert card["contributions"]["rounds_valued"] == 2
    for name in INSTITUTIONS:
        for path in (receipts_dir / name).glob("*.json"):
            assert Receipt.from_json(path.read_text()).contribution() is not None


def test_the_superlink_held_only_ciphertext(demo: DemoRun) -> None:
    _check_sealed_updates(demo.workdir, demo.report, Path(demo.summary["superlink_db"]))


def test_no_operator_setting_travelled_to_the_nodes(demo: DemoRun) -> None:
    """The run config every ClientApp got (app defaults + overrides) names no deploy setting."""
    operator = OperatorFiles((demo.workdir / "operator").resolve())
    secrets = [demo.summary["ledger_url"], str(operator.root), str(operator.aggregator_key)]
    app_config = tomllib.loads((demo.workdir / "run" / "app" / "pyproject.toml").read_text())
    sent = (demo.workdir / "run" / "run-config.toml").read_text()
    for text in (json.dumps(app_config["tool"]["flwr"]["app"]["config"]), sent):
        assert "deploy" not in text
        assert not any(secret in text for secret in secrets)
    superlink = sqlite3.connect(demo.summary["superlink_db"])
    (override,) = superlink.execute("SELECT override_config FROM run").fetchone()
    superlink.close()
    assert (
        json.loads(override)
        == Policy().with_overrides({"federation.rounds": 2, "federation.seed": 3}).to_run_config()
    )


def test_a_second_run_whose_plan_cannot_fit_is_refused_before_training(demo: DemoRun) -> None:
    """Runs last here: it adds a failed run to the shared demo's ledger.

    The same data, now under a budget of 7.5: more than that is spent, so no
    plan fits, whatever the noise; each node refuses before training.
    """
    again = CliRunner().invoke(app, [*demo.command, "--epsilon", "7.5"])
    assert again.exit_code == 1
    assert "fewer than 3 institutions have privacy budget left" in again.output
    for name in INSTITUTIONS:
        assert f"privacy budget exhausted for {name}" in again.output
    said = " ".join(again.output.split())
    assert "over the budget of 7.500 (spent so far: " in said  # 8, a past run's budget
    assert "already over it); nothing was trained" in said
    ledger = Ledger(demo.summary["ledger_url"], migrate=False)
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
    assert {p["institution"]: p["epsilon"] for p in report["privacy"]} == demo.epsilon
    budget = CliRunner().invoke(
        app,
        ["client", "budget", "--state", str(demo.workdir / "institutions/company-c/state"),
         "--format", "json"],
    )  # fmt: skip
    (dataset,) = json.loads(budget.output)["datasets"]
    assert dataset["epsilon_spent"] == pytest.approx(demo.epsilon["company-c"])


def test_operator_run_against_the_demo_superlink(tmp_path: Path) -> None:
    """``fedcommons operator run POLICY`` submits, follows and summarises a run."""
    policy = Policy().with_overrides({"federation.rounds": 1, "privacy.epsilon": 4.0})
    consortium = demo_consortium(tmp_path, policy, f"sqlite:///{tmp_path / 'ledger.db'}")
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy.to_toml())
    # Flower's own isolation (a fresh ClientApp process per task) stays available.
    with started_federation(consortium, policy, isolation="subprocess") as federation:
        pids = [p.pid for p in federation.processes.values()]
        command = ["operator", "run", str(policy_file), "--dir", str(consortium.operator.root)]
        result = CliRunner().invoke(app, [*command, "--format", "json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        status = CliRunner().invoke(
            app, ["operator", "status", "--dir", str(consortium.operator.root), "--format", "json"]
        )
        assert status.exit_code == 0, status.output
    assert all(_gone(pid) for pid in pids)
    found = json.loads(status.stdout)
    assert sorted((n["institution"], n["status"]) for n in found["nodes"]) == [
        ("company-c", "online"), ("university-a", "online"), ("university-b", "online"),
    ]  # fmt: skip
    (listed,) = found["runs"]
    assert (listed["status"], listed["last_round"], listed["rounds"]) == ("finished", 1, 1)
    assert listed["flower_runs"] == {str(summary["flower_run_id"]): "finished:completed"}
    assert summary["status"] == "finished:completed"
    assert summary["policy_sha256"] == policy.sha256()
    assert [r["round"] for r in summary["rounds"]] == [1]
    assert summary["rounds"][0]["participants"] == 3
    assert 0 < max(summary["rounds"][0]["epsilon"].values()) <= 4.0
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    ledger = Ledger(consortium.operator.deploy().ledger_url, migrate=False)
    with ledger.session() as session:
        (run,) = ledger_report(session)["runs"]
    ledger.close()
    assert (run["id"], run["status"]) == (summary["ledger_run_id"], "finished")
    assert run["flower_run_id"] == str(summary["flower_run_id"])
    assert f"submitted Flower run {summary['flower_run_id']}" in result.stderr


def test_every_aggregation_rule_runs_with_valuation_on_real_processes(tmp_path: Path) -> None:
    """Each of Flower's rules the policy offers, one run each on one federation, valued.

    FedMedian and FedTrimmedAvg pop the arrays out of the replies they
    aggregate; valuation (on by default) used to read them afterwards and
    crashed every such run at round 1, after the members had trained.
    """
    rules = ["fedavg", "trimmed-mean", "median", "krum", "multi-krum", "bulyan"]
    base = Policy().with_overrides({"federation.rounds": 1, "privacy.dp": False})
    assert base.valuation.method != "none"  # valuation is on, as by default
    consortium = demo_consortium(tmp_path, base, f"sqlite:///{tmp_path / 'ledger.db'}")
    policies = [base.with_overrides({"federation.aggregator": rule}) for rule in rules]
    ledger = Ledger(consortium.operator.deploy().ledger_url)
    with started_federation(consortium, base) as federation:
        for rule, policy in zip(rules, policies, strict=True):
            outcome = follow_run(federation.cli, ledger, submit_run(federation.cli, policy))
            assert outcome.status == "finished:completed", rule
    with ledger.session() as session:
        runs = ledger_report(session)["runs"]
        valued = contributions_report(session)
    ledger.close()
    assert [(r["status"], len(r["rounds"]), len(r["privacy_charges"])) for r in runs] == [
        ("finished", 1, 3)
    ] * len(rules)
    assert [r["policy_sha256"] for r in runs] == [p.sha256() for p in policies]
    for run in valued:
        (round_one,) = run["rounds"]
        assert sorted(round_one["values_ppm"]) == INSTITUTIONS


def _chunks(data: bytes, size: int = 64) -> list[bytes]:
    """``data`` cut in ``size``-byte pieces, leaving out low-entropy ones (runs of zeros)."""
    pieces = [data[i : i + size] for i in range(0, len(data) - size + 1, size)]
    return [p for p in pieces if len(set(p)) >= 24]


def _found(pieces: list[bytes], haystack: bytes) -> float:
    return sum(p in haystack for p in pieces) / len(pieces)


def _check_sealed_updates(workdir: Path, report: dict[str, Any], superlink_db: Path) -> None:
    """The ledger's evidence matches the kept envelopes, and the SuperLink held only ciphertext.

    The SuperLink's SQLite files (database and write-ahead log, free pages
    included) are scanned for 64-byte pieces of what each update decrypts to.
    A long value spans SQLite pages, so not every piece of a stored value is
    contiguous; the positive control shows the scan finds what the SuperLink
    stored: the sealed updates' ciphertexts. SQLite reuses the pages freed by
    earlier messages, so an earlier round's ciphertext may be overwritten by
    later messages; each participant's latest one is there. (The global models
    Flower relayed are not, since the run's closing queries: the receipts, then
    the witness quorum.)
    """
    aggregator = load_x25519_key(workdir / "operator" / "keys" / "aggregator.pem")
    keys = {p["name"]: p["signing_key_id"] for p in report["participants"]}
    database = b"".join(p.read_bytes() for p in sorted(superlink_db.parent.glob("superlink.db*")))
    assert len(database) > 100_000
    run = report["runs"][0]
    ciphertext_found: dict[str, list[float]] = {}
    for number, round_row in enumerate(run["rounds"], start=1):
        for update in round_row["updates"]:
            kept = workdir / "operator" / "snapshots" / f"round-{number:04d}-updates"
            envelope = Envelope.from_json((kept / f"{update['institution']}.json").read_text())
            plaintext = decrypt(envelope, UpdateHeader.parse(envelope.header), aggregator)
            assert update["ciphertext_sha256"] == envelope.ciphertext_sha256()
            assert update["plaintext_sha256"] == hashlib.sha256(plaintext).hexdigest()
            assert update["signer_key_id"] == keys[update["institution"]]
            assert base64.b64decode(update["signature"]) == envelope.signature
            tensors = [
                c for a in load_safetensors(plaintext).values() for c in _chunks(a.tobytes())
            ]
            assert len(tensors) > 100
            assert _found(tensors, database) == 0.0, update["institution"]
            ciphertext_found.setdefault(update["institution"], []).append(
                _found(_chunks(envelope.ciphertext), database)
            )
    assert all(found[-1] > 0.9 for found in ciphertext_found.values()), ciphertext_found


def _enrolled_node(folder: Path, operator: OperatorFiles, name: str, data_dir: Path) -> NodeSpec:
    state = ParticipantState(folder / f"{name}-state")
    enrol(
        state.root,
        institution=name,
        kind="academia",
        data_path=data_dir,
        licence="CC-BY-4.0",
        consortium_file=operator.consortium_file,
    )
    return NodeSpec(name, data_dir, state.root)


def _admit_all(
    ledger: Ledger, operator: OperatorFiles, nodes: list[NodeSpec]
) -> Callable[[LocalFederation], None]:
    def on_superlink(federation: LocalFederation) -> None:
        for node in nodes:
            assert node.state_dir is not None
            admit(
                ledger,
                operator.consortium(),
                ParticipantState(node.state_dir).request,
                register=federation.register_node,
                purpose="research",
            )

    return on_superlink


def test_unregistered_node_and_node_pinning_another_ca_are_refused(tmp_path: Path) -> None:
    """Only admitted nodes get in; a node never talks to a SuperLink its CA did not certify."""
    operator = init_consortium(
        tmp_path / "operator", name="t", superlink="127.0.0.1:1", hosts=["127.0.0.1"]
    )
    elsewhere = init_consortium(
        tmp_path / "elsewhere", name="e", superlink="127.0.0.1:1", hosts=["127.0.0.1"]
    )
    data_dir = tmp_path / "data"
    write_npz(data_dir / "d.npz", load_digits_data().subset(np.arange(40)))
    node = _enrolled_node(tmp_path, operator, "lab-a", data_dir)
    rogue = _enrolled_node(tmp_path, operator, "lab-rogue", data_dir)  # enrolled, never admitted
    lost = _enrolled_node(tmp_path, elsewhere, "lab-lost", data_dir)  # pins another CA
    ledger = Ledger(operator.deploy().ledger_url)
    federation = LocalFederation(
        tmp_path / "fed",
        [node],
        operator_dir=operator.root,
        on_superlink=_admit_all(ledger, operator, [node]),
    )
    with federation:
        unregistered = federation.start_node(rogue, free_port())
        wrong_ca = federation.start_node(lost, free_port())
        pids = [p.pid for p in federation.processes.values()]
        assert unregistered.wait(timeout=60) != 0
        assert wrong_ca.wait(timeout=60) == EXIT_USER_ERROR
        nodes = federation.flwr("supernode", "list", CONNECTION)["nodes"]
    ledger.close()
    assert [n["status"] for n in nodes] == ["online"]  # lab-a only
    logs = tmp_path / "fed" / "logs"
    assert "Failed to activate SuperNode" in (logs / "supernode-lab-rogue.log").read_text()
    assert "No SuperNode found with the given public key" in (logs / "superlink.log").read_text()
    refused = " ".join((logs / "supernode-lab-lost.log").read_text().split())
    assert "presented a certificate that the pinned consortium CA" in refused
    assert "flower-supernode" not in refused  # refused before Flower was started
    assert all(_gone(pid) for pid in pids)


def test_bad_participant_data_fails_the_run_with_the_file_named(tmp_path: Path) -> None:
    policy = Policy.from_sections({"federation": {"rounds": 1, "min-nodes": 1}})
    prepare_data(tmp_path, policy)  # the server's splits, in the operator folder's data/
    operator = init_consortium(
        tmp_path / "operator", name="t", superlink="127.0.0.1:1", hosts=["127.0.0.1"]
    )
    bad_dir = tmp_path / "bad-node"
    write_npz(bad_dir / "mine.npz", load_digits_data().subset(np.arange(40)))
    node = _enrolled_node(tmp_path, operator, "lab-x", bad_dir)
    ledger = Ledger(operator.deploy().ledger_url)
    federation = LocalFederation(
        tmp_path,
        [node],
        on_superlink=_admit_all(ledger, operator, [node]),
        operator_dir=operator.root,
    )
    with federation:
        # the data went bad while the node ran: it finds out before training
        np.savez(bad_dir / "mine.npz", images=np.zeros((4, 8, 8)), labels=np.array([0, 1, 2, 42]))
        pids = [p.pid for p in federation.processes.values()]
        run_id = submit_run(federation.cli, policy)
        with pytest.raises(RunFailed) as failed:
            follow_run(federation.cli, ledger, run_id, check=federation.check_alive)
    assert "finished:failed" in str(failed.value)
    assert all(_gone(pid) for pid in pids)
    with ledger.session() as s:
        (run,) = ledger_report(s)["runs"]
    ledger.close()
    assert run["status"] == "failed" and run["rounds"] == []
    assert "mine.npz: label 42 at index 3 is out of range [0, 10)" in str(failed.value)
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
base-model = "{tiny_bert}"
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


# -- the dashboard in a real browser ---------------------------------------------------


@needs_chromium
def test_the_dashboard_in_a_real_browser(demo: DemoRun, tmp_path: Path) -> None:
    """`audit serve` on a copy of the demo's ledger, driven by Chromium through Playwright."""
    from playwright.sync_api import expect, sync_playwright

    copy = tmp_path / "ledger.db"
    shutil.copyfile(Path(demo.summary["ledger_url"].removeprefix("sqlite:///")), copy)
    url = f"sqlite:///{copy}"
    issued = CliRunner().invoke(
        app, ["operator", "token", "issue", "--name", "browser", "--ledger", url]
    )
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip().splitlines()[0]
    port = free_port()
    operator = (demo.workdir / "operator" / "consortium.json").resolve()
    server = subprocess.Popen(
        [sys.executable, "-m", "fedcommons.cli", "audit", "serve", "--ledger", url,
         "--port", str(port), "--operator-key", str(operator)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(base, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(base + "/")
            expect(page.locator("h1")).to_have_text("Log in")  # no token: the form, 401
            page.fill("#token", "fct_not-a-token")
            page.click("#login")
            expect(page.locator("#message")).to_contain_text("not valid")
            page.fill("#token", token)
            page.click("#login")
            expect(page.locator("h1")).to_have_text("Overview: FedCommons demo")
            rows = page.locator("#participants tr")
            expect(rows).to_have_count(1 + 3)
            for name in INSTITUTIONS:
                expect(page.locator("#participants")).to_contain_text(name)
            page.click("text=Runs")
            page.click("text=run 1")
            rounds = len(demo.summary["rounds"])
            expect(page.locator("#accuracy-chart circle.point")).to_have_count(rounds)
            expect(page.locator("#epsilon-chart circle.point")).to_have_count(3 * rounds)
            expect(page.locator("#contributions")).to_contain_text("university-b")
            Path("docs").mkdir(exist_ok=True)
            page.screenshot(path="docs/dashboard-run.png", full_page=True)
            page.goto(base + "/")
            page.click("#verify")
            expect(page.locator("#verify-result")).to_contain_text("intact:", timeout=60_000)
            expect(page.locator("#verify-result")).to_have_class("intact")
            with sqlite3.connect(copy) as db:  # tamper, as an insider with the file would
                db.execute("UPDATE participants SET kind = 'industry' WHERE name = 'university-a'")
            page.click("#verify")
            result = page.locator("#verify-result")
            expect(result).to_contain_text("NOT INTACT: entry", timeout=60_000)
            expect(result).to_contain_text("(participant)")
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_for(base: str, server: subprocess.Popen[bytes]) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            said = server.stderr.read().decode() if server.stderr else ""
            raise AssertionError(f"audit serve exited: {said}")
        try:
            urllib.request.urlopen(base + "/login", timeout=2).close()
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError("audit serve did not answer within 60 s")


@pytest.mark.interop
@needs_go
def test_go_opens_the_demos_checkpoints_and_checks_its_receipts(
    demo: DemoRun, tmp_path: Path
) -> None:
    """Go's note.Open verifies each checkpoint with the operator's verifier key and each
    participant's cosignature; Go's tlog accepts every receipt's proofs."""
    consortium = OperatorFiles((demo.workdir / "operator").resolve()).consortium()
    receipts = [r for _, r in read_receipts(Path(demo.summary["receipts_dir"]))]
    ledger = Ledger(demo.summary["ledger_url"], migrate=False)
    try:
        doc = interop_input(ledger, consortium.verifier_key, receipts)
    finally:
        ledger.close()
    assert consortium.operator_verifier_key == consortium.verifier_key  # published at init
    result = go_checks(doc, tmp_path / "go")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "notes_opened": 3,  # two rounds and the release
        "cosignatures": dict.fromkeys(INSTITUTIONS, 2),
        "records_checked": 6,
        "trees_checked": 3,  # round 2's receipts extend round 1's head
    }
