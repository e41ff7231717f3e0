"""``fedcommons simulate``: the product's ServerApp and ClientApp on Flower's Simulation Engine.

The end-to-end tests run Flower's real SuperLink in simulation mode with its
Ray backend: virtual SuperNodes play enrolled institutions through the
roster, and the ledger, receipts and sealed updates are the real ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict
from typer.testing import CliRunner

from client.client_app import train
from client.node_config import node_config_of
from client.simulation import ROSTER_ENV, write_roster
from common.model import build_model, get_arrays
from common.policy import Policy
from common.protocol import ExclusionCode, NodeConfig, NodeConfigError, Refusal
from fedcommons.cli import app
from fedcommons.demo_setup import demo_consortium, started_federation
from fedcommons.simulation import run_simulation, virtual_institutions
from ledger import Ledger
from server.app.snapshots import load_snapshot
from server.operator.follow import follow_run, submit_run
from server.operator.superlink import SuperLinkSettings, superlink_argv
from tests.support.hostile_federation import HostileFederation
from tests.support.sealed_updates import server_task_identity

assert server_task_identity  # imported so that pytest finds the fixture


def _virtual(partition: object, partitions: object = 3, **extra: object) -> Context:
    return Context(
        run_id=7,
        node_id=11,
        node_config={"partition-id": partition, "num-partitions": partitions, **extra},  # type: ignore[dict-item]
        state=RecordDict(),
        run_config=Policy().to_run_config(),
    )


def test_virtual_institutions_mix_universities_and_companies() -> None:
    names = virtual_institutions(10, 0.3)
    assert [kind for _, kind in names].count("industry") == 3
    assert names[0] == ("university-001", "academia") and names[-1] == ("company-003", "industry")
    assert len({name for name, _ in names}) == 10
    assert virtual_institutions(1000, 0.0)[-1] == ("university-1000", "academia")


@pytest.mark.parametrize(
    ("count", "share", "message"),
    [
        (0, 0.3, "at least 1 institution"),
        (-4, 0.3, "at least 1 institution"),
        (5, 1.5, "a fraction in [0, 1]"),
        (5, -0.1, "a fraction in [0, 1]"),
        (5, float("nan"), "a fraction in [0, 1]"),
    ],
)
def test_a_bad_consortium_size_or_mix_is_refused(count: int, share: float, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        virtual_institutions(count, share)


def test_a_virtual_node_plays_its_roster_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = [NodeConfig(f"uni-{i}", tmp_path / f"d{i}", tmp_path / f"s{i}") for i in range(3)]
    roster = write_roster(tmp_path / "roster.json", nodes)
    monkeypatch.setenv(ROSTER_ENV, str(roster))
    for i, node in enumerate(nodes):
        parsed = NodeConfig.from_mapping(node_config_of(_virtual(i)))
        assert parsed.institution == node.institution
        assert parsed.data_dir == node.data_dir.resolve()
        assert parsed.state_dir == (node.state_dir or tmp_path).resolve()
    # a real SuperNode's own config wins, even beside a roster
    real: dict[str, bool | float | int | str] = {"institution": "company-x", "data-dir": "/data"}
    context = Context(run_id=1, node_id=2, node_config=real, state=RecordDict(), run_config={})
    assert node_config_of(context) == real


@pytest.mark.parametrize(
    ("partition", "partitions", "message"),
    [
        (3, 3, "virtual SuperNode 3 of 3, but the roster .* has 3 nodes"),
        (-1, 3, "virtual SuperNode -1 of 3"),
        (0, 5, "virtual SuperNode 0 of 5, but the roster .* has 3 nodes"),
        ("0", 3, "virtual SuperNode '0' of 3"),
    ],
)
def test_a_virtual_node_outside_the_roster_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    partition: object,
    partitions: object,
    message: str,
) -> None:
    nodes = [NodeConfig(f"uni-{i}", tmp_path) for i in range(3)]
    monkeypatch.setenv(ROSTER_ENV, str(write_roster(tmp_path / "roster.json", nodes)))
    with pytest.raises(NodeConfigError, match=message):
        node_config_of(_virtual(partition, partitions))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "is unusable"),  # no such file
        ("{not json", "is unusable"),
        ('{"nodes": 3}', "is not a list of nodes"),
        ('{"other": []}', "is unusable"),
    ],
)
def test_a_missing_or_damaged_roster_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, message: str
) -> None:
    roster = tmp_path / f"roster-{abs(hash(content))}.json"
    if content is not None:
        roster.write_text(content)
    monkeypatch.setenv(ROSTER_ENV, str(roster))
    with pytest.raises(NodeConfigError, match=message):
        node_config_of(_virtual(0))


def test_a_virtual_node_without_a_roster_refuses_its_round_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, server_task_identity: None
) -> None:
    """A ClientApp on a virtual node of someone else's simulation: a refusal, not a crash."""
    monkeypatch.delenv(ROSTER_ENV, raising=False)
    request = Message(RecordDict(), dst_node_id=11, message_type=MessageType.TRAIN)
    reply = train(request, _virtual(0))
    assert reply.has_error() and reply.error.code == ExclusionCode.BAD_INPUT
    detail = Refusal.from_reason(reply.error.reason or "").detail
    assert f"no {ROSTER_ENV}" in detail and "fedcommons simulate" in detail


def test_a_simulating_superlink_serves_no_supernodes(tmp_path: Path) -> None:
    settings = SuperLinkSettings("127.0.0.1", 9999, tmp_path / "db", None, simulation=True)
    argv = superlink_argv(settings)
    assert "--simulation" in argv and "--enable-supernode-auth" not in argv
    assert "--simulation" not in superlink_argv(SuperLinkSettings("h", 1, tmp_path, None))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--institutions", "0"], "at least 1 institution"),
        (["--institutions", "5", "--industry-share", "2"], "a fraction in [0, 1]"),
        (["--institutions", "5", "--client-cpus", "0"], "--client-cpus must be at least 1"),
        (["--institutions", "five"], "'five' is not a valid integer"),
        (["--institutions", "5", "--partition", "zipf"], "one of: iid, non-iid"),
        (["--institutions", "5", "--alpha", "-1"], "dirichlet-alpha"),
    ],
)
def test_simulate_refuses_bad_options_before_starting_anything(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["simulate", *args, "--workdir", str(tmp_path / "w")])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "w").exists()  # nothing written, nothing started


def _simulation_processes(roster: Path) -> list[int]:
    """Processes (ours or Ray's) whose environment names this simulation's roster."""
    marker = f"{ROSTER_ENV}={roster}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.e2e
def test_simulate_five_institutions_end_to_end(tmp_path: Path) -> None:
    workdir = tmp_path / "sim"
    result = CliRunner().invoke(
        app,
        ["simulate", "--institutions", "5", "--rounds", "2", "--partition", "iid",
         "--workdir", str(workdir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["engine"] == "flower-simulation" and summary["virtual_institutions"] == 5
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert all(r["participants"] == 5 for r in summary["rounds"])
    kinds = [i["kind"] for i in summary["institutions"]]
    assert kinds.count("industry") == 2 and kinds.count("academia") == 3
    # DP per institution, from each one's own accountant, within the budget
    assert all(0 < float(i["epsilon"]) <= 8.0 for i in summary["institutions"])
    assert summary["final_accuracy"] > 0.3
    # every institution holds a receipt per round, and they all agree with the ledger
    assert summary["ledger_verified"] and summary["receipts"] == 10
    for name, _ in virtual_institutions(5, 0.3):
        assert len(list((workdir / "institutions" / name / "state" / "receipts").glob("*.json")))
    verify = CliRunner().invoke(
        app,
        ["audit", "verify", "--ledger", f"sqlite:///{workdir / 'ledger.db'}",
         "--operator-key", str(workdir / "operator" / "consortium.json"),
         "--receipts", str(workdir / "receipts")],
    )  # fmt: skip
    assert verify.exit_code == 0, verify.output
    assert "intact" in verify.output
    assert "Institutions by kind" in result.output and "final test accuracy" in result.output
    # the ServerApp's log is kept, with where each round's time went
    run_log = Path(summary["run_log"]).read_text()
    assert "round 2 server phases: waiting for replies" in run_log and "ledger" in run_log
    # Ray's workers and the SuperLink are gone with the command
    assert _simulation_processes(workdir / "simulation-roster.json") == []


def _first_round(operator: Path) -> dict[str, np.ndarray]:
    (snapshot,) = sorted(operator.rglob("round-0001.safetensors"))
    _, arrays = load_snapshot(snapshot)
    return dict(arrays)


@pytest.mark.e2e
def test_the_simulation_runs_the_deployments_code_path(tmp_path: Path) -> None:
    """DP off, one thread, same seed and partition: round 1's global model is the same."""
    policy = Policy().with_overrides(
        {"privacy.dp": False, "federation.rounds": 1, "data.partition": "non-iid"}
    )
    institutions = virtual_institutions(3, 0.3)
    run_simulation(tmp_path / "sim", policy, institutions=3)

    deployed = tmp_path / "deployed"
    url = f"sqlite:///{deployed / 'ledger.db'}"
    consortium = demo_consortium(deployed, policy, url, institutions)
    ledger = Ledger(url)
    with started_federation(consortium, policy) as federation:
        flower_run_id = submit_run(federation.cli, policy, deployed / "run")
        follow_run(federation.cli, ledger, flower_run_id, check=federation.check_alive)
    ledger.close()

    # the in-process shortcut bench/attacks.py and bench/contributions.py take
    harness = HostileFederation(policy, tmp_path / "harness", institutions)
    harness.round(1)

    simulated, real = _first_round(tmp_path / "sim" / "operator"), _first_round(deployed)
    initial = get_arrays(build_model(policy.model, policy.federation.seed))
    assert simulated.keys() == real.keys() == harness.weights.keys() == initial.keys()
    for name, value in real.items():
        np.testing.assert_allclose(simulated[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(harness.weights[name], value, rtol=1e-5, atol=1e-6)
    # and the round learnt something: it is not the initial model
    assert max(float(np.abs(real[k] - initial[k]).max()) for k in initial) > 1e-3
