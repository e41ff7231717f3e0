"""Faults on real Flower processes: a SuperNode killed, the SuperLink killed, a SIGTERM.

Each test builds the demo's consortium (three institutions, TLS, SuperNode
authentication, sealed updates, DP) in its own folder, injects its fault
with ``kill -9`` or SIGTERM, and checks the ledger, the nodes' own privacy
accountants, the receipts and that no process outlives its run.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from client.accountant import list_histories
from common.policy import Policy
from common.processes import ProcessTree
from fedcommons.cli import app
from fedcommons.demo import RESUME, run_demo, unfinished_run
from fedcommons.demo_setup import collect_receipts, demo_consortium, started_federation
from fedcommons.local_federation import LocalFederation
from ledger import Ledger
from ledger.report import ledger_report
from ledger.store import LedgerError
from server.operator.follow import follow_run, read_rounds, submit_run
from tests.conftest import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.e2e

INSTITUTIONS = ["company-c", "university-a", "university-b"]


def _report(url: str) -> dict[str, Any]:
    ledger = Ledger(url, migrate=False)
    with ledger.session() as session:
        report = ledger_report(session)
    ledger.close()
    return report


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _clientapp_of(federation: LocalFederation, name: str) -> bool:
    """Whether a ClientApp process of ``name``'s node is running now.

    Flower's ``flwr-clientapp`` process, or (warm ClientApps, the default) a
    child the node's warm runner forked for a task.
    """
    tree = federation.tree
    mine = tree.descendants(federation.processes[f"supernode-{name}"].pid)
    if tree.running(b"flwr-clientapp", mine):
        return True
    runners = [pid for pid in mine if b"client.warm" in tree.argv(pid)[:3]]  # python -m client.warm
    return any(tree.descendants(runner) - {runner} for runner in runners)


@contextmanager
def _demo_process(
    workdir: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], ProcessTree, Callable[[], bool]]]:
    """``fedcommons demo ARGS`` as a subprocess, with every process it starts watched.

    Also yields a check that round 1 is recorded. Whatever the test does, no
    process the demo started is left running.
    """
    command = [sys.executable, "-m", "fedcommons.cli", "demo", *args, "--workdir", str(workdir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tree = ProcessTree()
    tree.add_root(demo.pid)

    def round_one() -> bool:
        tree.look()
        if not (workdir / "ledger.db").exists():
            return False
        try:
            runs = _report(f"sqlite:///{workdir / 'ledger.db'}")["runs"]
        except (LedgerError, DBAPIError):  # the demo is still creating it (migrations)
            return False
        return bool(runs) and len(runs[0]["rounds"]) >= 1

    try:
        yield demo, tree, round_one
    finally:
        if demo.poll() is None:
            tree.stop()


def test_a_supernode_killed_mid_round_is_left_out_and_rejoins_later(tmp_path: Path) -> None:
    # The machine comes back once round 2 has closed without it. Restarted any
    # earlier, the node races its own expiry: the SuperLink refuses it until the old
    # session expires (two missed heartbeats, ~60 s), and when it is back before the
    # round's replies are checked Flower never reports the old node gone, so the round
    # waits out its timeout (504; seen once in CI). With warm ClientApps a round takes
    # ~10 s, so ten rounds leave room for it to rejoin.
    policy = Policy().with_overrides(
        {"federation.rounds": 10, "federation.min-nodes": 2, "federation.round-timeout": 150.0}
    )
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    consortium = demo_consortium(tmp_path, policy, url)
    node = next(n for n in consortium.nodes if n.institution == "company-c")
    ledger = Ledger(url)
    events: list[str] = []
    with started_federation(consortium, policy) as federation:
        flower_run_id = submit_run(federation.cli, policy, tmp_path / "run")

        def fault() -> None:
            federation.check_alive()
            _, rounds = read_rounds(ledger, flower_run_id)
            if not events and len(rounds) == 1 and _clientapp_of(federation, "company-c"):
                federation.crash_node("company-c")  # the machine goes down
                events.append(f"killed in round {len(rounds) + 1}")
            elif len(events) == 1 and len(rounds) >= 2:  # the machine reboots
                federation.restart_node(node)
                events.append("restarted")

        outcome = follow_run(federation.cli, ledger, flower_run_id, check=fault, poll=0.3)
    ledger.close()
    assert events == ["killed in round 2", "restarted"]
    assert [r.round for r in outcome.rounds] == list(range(1, 11))
    (run,) = _report(url)["runs"]
    assert run["status"] == "finished"
    contributors = {r["round"]: {u["institution"] for u in r["updates"]} for r in run["rounds"]}
    assert contributors[1] == set(INSTITUTIONS)
    assert contributors[2] == {"university-a", "university-b"}  # the quorum carried round 2
    later = set().union(*(contributors[r] for r in range(3, 11)))
    assert "company-c" in later  # back from a later round
    # the round ended when Flower reported the node gone (two missed heartbeats), well
    # before its timeout: 503, not 504
    (left_out,) = [e for e in run["exclusions"] if e["round"] == 2]
    assert (left_out["institution"], left_out["code"]) == ("company-c", 503)
    held = collect_receipts(tmp_path / "receipts", consortium.nodes)
    assert len(list(held.glob("*/*.json"))) == sum(map(len, contributors.values()))
    audit = CliRunner().invoke(
        app,
        ["audit", "verify", "--ledger", url, "--operator-key",
         str(consortium.operator.consortium_file), "--receipts", str(held)],
    )  # fmt: skip
    assert audit.exit_code == 0 and audit.output.startswith("intact: "), audit.output


def test_the_superlink_killed_in_round_3_then_resumed_records_every_round_once(
    tmp_path: Path,
) -> None:
    policy = Policy().with_overrides({"federation.rounds": 6, "federation.min-nodes": 2})
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    consortium = demo_consortium(tmp_path, policy, url)
    ledger = Ledger(url)
    with started_federation(consortium, policy) as federation:
        flower_run_id = submit_run(federation.cli, policy, tmp_path / "run")
        _wait(lambda: len(read_rounds(ledger, flower_run_id)[1]) == 2, 300, "round 2")
        # the first node has trained round 3 and sealed its update (and paid for it); the
        # ServerApp waits for the others, so nothing of round 3 reaches the ledger
        sent = [
            tmp_path / "institutions" / name / "state" / "receipts" / "sent"
            / f"run-{flower_run_id}-round-0003.json"
            for name in INSTITUTIONS
        ]  # fmt: skip
        deadline = time.monotonic() + 120
        while not any(path.exists() for path in sent):
            assert time.monotonic() < deadline, "timed out waiting for round 3's first update"
            time.sleep(0.005)
        killed = federation.crash_superlink()  # kill -9 of the SuperLink and its ServerApp
        assert len(killed) >= 3  # the SuperLink, its SuperExec and the ServerApp
        _wait(lambda: not killed & federation.tree.look(), 10, "the ServerApp to die")
    ledger.close()
    (run,) = _report(url)["runs"]
    assert run["status"] == "running" and len(run["rounds"]) == 2  # nobody could say

    summary = run_demo(tmp_path, policy, ledger_url=url, resume=True)
    (run,) = _report(url)["runs"]
    assert run["status"] == "finished"
    assert [r["round"] for r in run["rounds"]] == [1, 2, 3, 4, 5, 6]  # each exactly once
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3, 4, 5, 6]
    assert len(summary["flower_run_ids"]) == 2
    assert [(f["first_round"]) for f in run["flower_runs"]] == [1, 3]
    chain = [(r["model_sha256_before"], r["model_sha256_after"]) for r in run["rounds"]]
    assert chain[0][0] == run["initial_model_sha256"]
    assert all(after == before for (_, after), (before, _) in itertools.pairwise(chain))
    # every institution's epsilon is within budget and is its own accountant's figure, and
    # round 3's first training, cut off by the crash, is charged too (the nodes reported it)
    _charged_as_spent(tmp_path, run)
    for name in INSTITUTIONS:
        (history,) = list_histories(tmp_path / "institutions" / name / "state")
        assert history.epsilon() <= 8.0
    card = json.loads((tmp_path / "releases" / f"run-{run['id']}" / "model-card.json").read_text())
    assert [f["first_round"] for f in card["run"]["flower_runs"]] == [1, 3]  # every Flower run
    shown = CliRunner().invoke(app, ["audit", "show", "--ledger", url], terminal_width=200)
    text = " ".join(shown.output.split())  # however the console wrapped it
    assert ", finished, " in text
    first, second = (str(f["flower_run_id"]) for f in run["flower_runs"])
    assert f"resumed; Flower runs: {first} from round 1, {second} from round 3" in text
    # receipts span the crash: the auditor holding them finds the ledger consistent
    assert summary["ledger_verified"] is True and summary["receipts"] >= 12
    for name in INSTITUTIONS:
        held = sorted((Path(summary["receipts_dir"]) / name).glob("*.json"))
        assert len({json.loads(p.read_text())["round"] for p in held}) == len(held)


def _charged_as_spent(workdir: Path, run: dict[str, Any]) -> None:
    """Every institution's last charge is its own accountant's epsilon: never less in the ledger."""
    for name in INSTITUTIONS:
        (history,) = list_histories(workdir / "institutions" / name / "state")
        charged = [c for c in run["privacy_charges"] if c["institution"] == name]
        # epsilon is cumulative: the largest charge is all the node spent
        assert max(c["epsilon"] for c in charged) == pytest.approx(history.epsilon(), rel=1e-9)
        # the steps the ledger charged add up to the steps the node trained: none missing
        assert sum(c["steps"] for c in charged) == history.steps, name


def test_a_round_whose_replies_were_kept_is_recovered_after_the_crash_not_trained_again(
    tmp_path: Path,
) -> None:
    """The SuperLink and its ServerApp die once round 2's replies are kept, before the round
    is recorded: the resumed run records round 2 from them; nobody trains or pays for it twice."""
    policy = Policy().with_overrides({"federation.rounds": 3})
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    consortium = demo_consortium(tmp_path, policy, url)
    kept = consortium.operator.snapshot_dir / "round-0002-replies.json"
    ledger = Ledger(url)
    with started_federation(consortium, policy) as federation:
        flower_run_id = submit_run(federation.cli, policy, tmp_path / "run")
        deadline = time.monotonic() + 300
        while not kept.exists():  # kept before anything is aggregated or recorded
            assert time.monotonic() < deadline, "timed out waiting for round 2's replies"
            time.sleep(0.005)
        killed = federation.crash_superlink()
        _wait(lambda: not killed & federation.tree.look(), 10, "the ServerApp to die")
        rounds_at_crash = len(read_rounds(ledger, flower_run_id)[1])
    ledger.close()
    assert rounds_at_crash == 1, "the crash came after round 2 was recorded: nothing to recover"
    (run,) = _report(url)["runs"]
    # the kill may land between keeping the replies and writing their charges: the
    # recovery then writes them from the headers the members signed
    assert sorted(c["round"] for c in run["privacy_charges"]) in ([1, 1, 1], [1, 1, 1, 2, 2, 2])

    summary = run_demo(tmp_path, policy, ledger_url=url, resume=True)
    (run,) = _report(url)["runs"]
    assert run["status"] == "finished"
    assert [r["round"] for r in run["rounds"]] == [1, 2, 3]
    # round 2 was paid for once: three charges per round, none twice
    assert sorted(c["round"] for c in run["privacy_charges"]) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [f["first_round"] for f in run["flower_runs"]] == [1, 3]  # round 2: the first run's
    _charged_as_spent(tmp_path, run)
    assert summary["ledger_verified"] is True


def test_ledger_connections_cut_mid_run_on_postgresql_lose_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    """Every connection of the ledger's database is cut, again and again, through round 2
    (a restart, a failover, an idle reaper): the demo finishes; every charge is recorded."""
    policy = Policy().with_overrides({"federation.rounds": 3})
    done: dict[str, Any] = {}

    def demo() -> None:
        try:
            done["summary"] = run_demo(tmp_path, policy, ledger_url=postgres_url)
        except BaseException as err:  # reported below, in the test's thread
            done["error"] = err

    thread = threading.Thread(target=demo)
    thread.start()
    database = postgres_url.rsplit("/", 1)[1]
    cut = 0
    try:
        _wait(lambda: _rounds_recorded(postgres_url) >= 1, 300, "round 1")
        until = time.monotonic() + 8  # round 2's training, replies and recording
        while time.monotonic() < until and thread.is_alive():
            cut += _terminate_backends(database)
            time.sleep(0.4)
    finally:
        thread.join(timeout=600)
    assert "error" not in done, done.get("error")
    assert cut > 0
    (run,) = _report(postgres_url)["runs"]
    assert run["status"] == "finished"
    assert [r["round"] for r in run["rounds"]] == [1, 2, 3]
    assert sorted(c["round"] for c in run["privacy_charges"]) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    _charged_as_spent(tmp_path, run)


def _rounds_recorded(url: str) -> int:
    """Rounds the demo's ledger recorded (0 while the demo still creates it: never migrate
    from here, or the two migrations wait on each other's locks)."""
    try:
        runs = _report(url)["runs"]
    except (LedgerError, DBAPIError):
        return 0
    return len(runs[0]["rounds"]) if runs else 0


def _terminate_backends(database: str) -> int:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                ).scalar_one()
            )
    finally:
        admin.dispose()


def test_sigterm_records_the_run_interrupted_stops_everything_and_resume_finishes_it(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "demo"
    url = f"sqlite:///{workdir / 'ledger.db'}"
    with _demo_process(workdir, "--rounds", "3") as (demo, tree, round_one):
        _wait(round_one, 300, "round 1")
        seen = tree.look()
        assert len(seen) > 5  # the demo, SuperLink, SuperExec, ServerApp, nodes, ClientApps
        demo.send_signal(signal.SIGTERM)
        output, _ = demo.communicate(timeout=120)
    assert demo.returncode == 130, output.decode()
    assert b"recorded as interrupted" in b" ".join(output.split())  # however it wrapped
    assert tree.look() == set()  # no child or grandchild outlives the demo
    (run,) = _report(url)["runs"]
    assert run["status"] == "interrupted" and run["status_reason"]
    shown = CliRunner().invoke(app, ["audit", "show", "--ledger", url], terminal_width=200)
    text = " ".join(shown.output.split())
    assert ", interrupted, " in text and "stopped: interrupted" in text

    result = CliRunner().invoke(app, ["demo", "--resume", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    (run,) = _report(url)["runs"]
    assert run["status"] == "finished"
    assert [r["round"] for r in run["rounds"]] == [1, 2, 3]
    summary = json.loads((workdir / "summary.json").read_text())
    assert len(summary["flower_run_ids"]) == 2 and summary["ledger_verified"] is True


def test_the_demo_stops_only_when_the_quorum_is_lost_and_says_so(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    policy = tmp_path / "policy.toml"
    policy.write_text("[federation]\nrounds = 3\nmin-nodes = 2\nround-timeout = 150.0\n")
    url = f"sqlite:///{workdir / 'ledger.db'}"
    with _demo_process(workdir, "--policy", str(policy)) as (demo, tree, round_one):

        def supernode_of(name: str) -> int:
            """The PID of ``name``'s SuperNode among the processes the demo started."""
            (pid,) = [
                pid
                for pid in tree.running(b"flower-supernode")
                if f'institution="{name}"'.encode() in b" ".join(tree.argv(pid))
            ]
            return pid

        _wait(round_one, 300, "round 1")
        for name in ("company-c", "university-b"):  # two of three machines go down
            os.killpg(supernode_of(name), signal.SIGKILL)
        output, _ = demo.communicate(timeout=300)
    text = " ".join(output.decode().split())
    assert demo.returncode == 1, text
    assert "round 2: 1 of the required 2 nodes returned an update" in text
    assert tree.look() == set()
    (run,) = _report(url)["runs"]
    assert run["status"] == "failed"
    assert run["status_reason"].startswith("round 2: 1 of the required 2 nodes")
    gone = {(e["institution"], e["code"]) for e in run["exclusions"] if e["round"] == 2}
    assert gone == {("company-c", 503), ("university-b", 503)}
    # what it said: the quorum lost as it happened, then one error line in its own words
    assert "the quorum is lost (1 of 3 nodes alive, quorum 2)" in text
    assert "quorum holds (1 of 3" not in text
    error = text[text.index("error: run ") :]
    assert error.startswith(f"error: run {run['id']} stopped with 1 of 3 rounds recorded")
    assert "Traceback" not in text and 'File "' not in text
    assert error.endswith(f"; {RESUME}")
    kept = Path(error.split("The ServerApp's full log: ")[1].split(";")[0])
    assert kept.parent == workdir / "logs" and "RoundFailed" in kept.read_text()
    assert unfinished_run(workdir, url)[0] == run["id"]  # what --resume would go on with
