"""An attack through the real deployment, and the in-process harness checked against it.

Three institutions on real Flower processes (SuperLink, SuperNodes with warm
ClientApps, ``flwr run``), TLS and SuperNode authentication on, the default
defences, one round, DP off so that training is deterministic. The run
carries the test-only hostile ClientApp (:mod:`tests.support.hostile_client_app`):
every node runs the shipped handlers and ``company-c`` sends its honest
update scaled by 1000, sealed and signed with its own key. Honestly, its
update is the smallest of the three, so the adaptive norm bound (the
round's median norm) would not touch it; scaled, it sets the round's
largest norm and is clipped to the median. The ledger, read back, must show
that clip and no other norm-bound row, every member's update accepted and the run
finished.

:class:`~tests.support.hostile_federation.HostileFederation` (the shortcut
``bench/attacks.py`` takes) then runs the same attack with the same split
and policy, and must record the same defences (every row, whichever
defences the policy's defaults compose: institution, rule, action, norms)
and make the same first global model. The same up to float32
rounding, not bit for bit: FedAvg sums the replies in the order they come
(arrival order here, Flower's sampling order in the harness), and float
addition depends on the order, so the model's hash in the ledger differs
between runs of the deployment itself in its last bits.

Each federation's processes are stopped by PID, pass or fail
(``LocalFederation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.arrays import Arrays, arrays_sha256
from common.model import build_model, get_arrays
from common.policy import Policy
from fedcommons.demo_setup import DEMO_INSTITUTIONS, demo_consortium, started_federation
from ledger import Ledger
from ledger.report import ledger_report
from server.app.snapshots import load_snapshot
from server.operator.flower import write_run_config
from server.operator.follow import follow_run
from tests.support.hostile_client_app import build_hostile_app_dir, hostile_env
from tests.support.hostile_federation import HostileFederation
from tests.support.processes import alive

pytestmark = pytest.mark.e2e

ATTACKER, ATTACK = "company-c", "scaled-x1000"
POLICY = Policy().with_overrides({"privacy.dp": False, "federation.rounds": 1})
"""The defaults (adaptive norm bound, FedAvg, claim check), one round, DP off."""


@dataclass(frozen=True)
class Deployed:
    """The attacked run on real processes, as the ledger and the operator's folder keep it."""

    run: dict[str, Any]
    """The run in :func:`~ledger.report.ledger_report`."""
    status: str
    """Flower's final status of the run."""
    first_round: Arrays
    """The global model after round 1, from the ServerApp's snapshot."""
    examples: dict[str, int]
    """The records each institution holds."""


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    workdir = tmp_path_factory.mktemp("attack") / "deployed"
    url = f"sqlite:///{workdir / 'ledger.db'}"
    consortium = demo_consortium(workdir, POLICY, url)
    ledger = Ledger(url)
    try:
        with pytest.MonkeyPatch.context() as env:
            for name, value in hostile_env(ATTACKER, ATTACK).items():
                env.setenv(name, value)  # the SuperNodes, and so their ClientApps, inherit it
            with started_federation(consortium, POLICY) as federation:
                pids = [p.pid for p in federation.processes.values()]
                app_dir = build_hostile_app_dir(workdir / "run" / "app")
                run_config = write_run_config(
                    workdir / "run" / "run-config.toml", POLICY.to_run_config()
                )
                flower_run_id = federation.cli.submit(app_dir, run_config)
                outcome = follow_run(
                    federation.cli, ledger, flower_run_id, check=federation.check_alive
                )
        assert not any(alive(pid) for pid in pids)
        with ledger.session() as session:
            (run,) = ledger_report(session)["runs"]
    finally:
        ledger.close()
    (snapshot,) = sorted(consortium.operator.root.rglob("round-0001.safetensors"))
    return Deployed(
        run, outcome.status, dict(load_snapshot(snapshot)[1]), consortium.layout.examples
    )


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> HostileFederation:
    """The same attack, split and policy in this process (Flower's transport left out)."""
    federation = HostileFederation(
        POLICY,
        tmp_path_factory.mktemp("attack") / "harness",
        DEMO_INSTITUTIONS,
        attacker=ATTACKER,
        attack=ATTACK,
    )
    federation.round(1)
    return federation


def test_the_hostile_client_app_is_not_the_shipped_one(tmp_path: Path) -> None:
    """The attack lives in a test-only app; the product's own carries none of it."""
    from server.operator.flower import build_app_dir

    shipped = (build_app_dir(tmp_path / "shipped") / "pyproject.toml").read_text()
    hostile = (build_hostile_app_dir(tmp_path / "hostile") / "pyproject.toml").read_text()
    assert 'clientapp = "client.client_app:app"' in shipped and "tests" not in shipped
    assert 'clientapp = "tests.support.hostile_client_app:app"' in hostile
    packed = tmp_path / "hostile"
    assert sorted(str(p.relative_to(packed)) for p in packed.glob("tests/**/*.py")) == [
        "tests/__init__.py",
        "tests/support/__init__.py",
        "tests/support/attacks.py",
        "tests/support/hostile_client_app.py",
    ]


def _norm_bound(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's ``norm-bound`` rows (other defences may record rows of their own)."""
    return [d for d in run["defences"] if d["rule"] == "norm-bound"]


def test_the_norm_bound_clips_the_attacker_in_the_real_ledger(deployed: Deployed) -> None:
    run = deployed.run
    assert (deployed.status, run["status"]) == ("finished:completed", "finished")
    (clip,) = _norm_bound(run)  # the attacker's only: no honest update was clipped
    assert (clip["round"], clip["institution"], clip["action"]) == (1, ATTACKER, "clipped")
    assert clip["norm_before"] > 100 * clip["norm_after"] > 0  # x1000, down to the median
    assert "adaptive: the 0.5 quantile of this round's 3 norms" in clip["detail"]
    # it was not refused (its update is authentic), and neither was anyone else
    assert run["exclusions"] == []
    (round_one,) = run["rounds"]
    assert round_one["participants"] == 3
    updates = {u["institution"]: u["num_examples"] for u in round_one["updates"]}
    assert updates == deployed.examples  # every member's update taken, each with its own count


def test_the_attack_does_not_take_the_round_over(deployed: Deployed) -> None:
    """Unbounded, FedAvg would move the model by about a quarter of the attacker's norm."""
    (clip,) = _norm_bound(deployed.run)
    initial = get_arrays(build_model(POLICY.model, POLICY.federation.seed))
    step = np.concatenate([(deployed.first_round[k] - initial[k]).ravel() for k in initial])
    assert 0 < float(np.linalg.norm(step)) < clip["norm_before"] / 100
    assert arrays_sha256(deployed.first_round) == deployed.run["rounds"][0]["model_sha256_after"]


def test_the_harness_records_the_same_defences_as_the_deployment(
    deployed: Deployed, harness: HostileFederation
) -> None:
    """Every defence row, the same in both: who, which rule, what it did, and the norms."""
    real = {
        (d["round"], d["institution"], d["rule"], d["action"]): (d["norm_before"], d["norm_after"])
        for d in deployed.run["defences"]
    }
    harnessed = {
        (n, d.institution, d.rule, d.action): (d.norm_before, d.norm_after)
        for n, d in harness.tally.defences
    }
    assert len(harnessed) == len(harness.tally.defences)  # one row per (who, rule, action)
    assert len(real) == len(deployed.run["defences"])
    assert harnessed.keys() == real.keys()
    for fact, norms in harnessed.items():
        for mine, theirs in zip(norms, real[fact], strict=True):
            assert (mine is None and theirs is None) or mine == pytest.approx(theirs, rel=1e-6)
    assert harness.tally.exclusions == [] and deployed.run["exclusions"] == []


def test_the_harness_makes_the_deployments_first_global_model(
    deployed: Deployed, harness: HostileFederation
) -> None:
    real = deployed.first_round
    assert harness.weights.keys() == real.keys()
    for name, value in real.items():  # equal but for the order of a float32 sum (see above)
        np.testing.assert_allclose(harness.weights[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
