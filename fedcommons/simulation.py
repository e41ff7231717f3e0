"""``fedcommons simulate``: the product's own apps on Flower's Simulation Engine.

The same consortium the demo builds -- each institution with its own data
folder, state folder, keys, enrolment and admission -- but N of them, played
by Flower's virtual SuperNodes (Ray backend) instead of SuperNode processes.
The SuperLink runs with ``--simulation`` and the run is submitted with
``flwr run`` exactly as a deployment run is, so the ServerApp, the ClientApp,
sealed updates, receipts, DP and the ledger are the very code the demo runs.

Flower gives a virtual SuperNode only its ``partition-id``: a roster
(:mod:`client.simulation`) maps it to its institution's node config.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from client.simulation import ROSTER_ENV, write_roster
from common.policy import Policy
from common.protocol import NodeConfig
from fedcommons.demo_setup import DemoConsortium, admit_all, created_folder, demo_consortium
from fedcommons.local_federation import LocalFederation
from fedcommons.summary import summarise
from ledger import Ledger
from server.operator.follow import RoundProgress, submit_run
from server.operator.operate import follow_with_progress
from server.operator.superlink import SuperLinkSettings, check_operator_folder, superlink_argv

__all__ = ["SimulatedFederation", "run_simulation", "virtual_institutions"]

log = logging.getLogger(__name__)

ENGINE = "flower-simulation"


def virtual_institutions(count: int, industry_share: float) -> list[tuple[str, str]]:
    """``count`` ``(name, kind)`` pairs: ``university-001``..., then ``company-001``...

    ``round(count * industry_share)`` of them are companies (industry), the
    rest universities (academia).
    """
    if count < 1:
        raise ValueError(f"a simulation needs at least 1 institution, got {count}")
    if not 0.0 <= industry_share <= 1.0 or math.isnan(industry_share):
        raise ValueError(f"the industry share is a fraction in [0, 1], got {industry_share}")
    companies = round(count * industry_share)
    width = max(3, len(str(count)))
    return [(f"university-{i:0{width}d}", "academia") for i in range(1, count - companies + 1)] + [
        (f"company-{i:0{width}d}", "industry") for i in range(1, companies + 1)
    ]


class SimulatedFederation(LocalFederation):
    """A SuperLink running Flower's Simulation Engine for ``demo``'s institutions.

    Virtual SuperNode ``i`` plays ``demo.nodes[i]`` (see
    :mod:`client.simulation`); each ClientApp gets ``client_cpus`` of Ray's
    CPUs (so ``cpus // client_cpus`` run at once) and one torch thread. The
    Control API uses the operator's TLS certificate unless ``insecure``.
    Every process is stopped on leaving, as for :class:`LocalFederation`.
    """

    def __init__(
        self,
        demo: DemoConsortium,
        *,
        client_cpus: int = 1,
        insecure: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if client_cpus < 1:
            raise ValueError(f"each virtual SuperNode needs at least 1 CPU, got {client_cpus}")
        roster = write_roster(
            demo.workdir / "simulation-roster.json",
            [NodeConfig(n.institution, n.data_dir, n.state_dir) for n in demo.nodes],
        )
        super().__init__(
            demo.workdir,
            demo.nodes,
            operator_dir=demo.operator.root,
            insecure=insecure,
            env={ROSTER_ENV: str(roster), **(env or {})},
        )
        self.cli = dataclasses.replace(
            self.cli,
            federation_config={
                "num-supernodes": len(demo.nodes),
                "client-resources-num-cpus": client_cpus,
            },
        )

    def _superlink_argv(self) -> list[str]:
        """``flower-superlink --simulation``, TLS on its Control API unless ``insecure``."""
        assert self.operator is not None
        check_operator_folder(self.operator)
        tls = None if self.insecure else self.operator.tls
        return superlink_argv(
            SuperLinkSettings(
                "127.0.0.1", self.superlink_port, self.superlink_db, tls, simulation=True
            )
        )

    def _start_supernodes(self) -> None:
        """None: Flower's Simulation Engine plays them."""


def run_simulation(
    workdir: Path,
    policy: Policy,
    *,
    institutions: int,
    industry_share: float = 0.3,
    client_cpus: int = 1,
    ledger_url: str | None = None,
    on_round: Callable[[RoundProgress], None] | None = None,
    insecure: bool = False,
    watch: Callable[[SimulatedFederation], None] | None = None,
) -> dict[str, Any]:
    """Run ``policy`` with ``institutions`` virtual institutions; return ``summary.json``.

    Data are split as the demo splits them (the policy's partition), each
    institution enrols from its own state folder and the operator admits it;
    the run is then carried by the Simulation Engine, released and verified
    with every receipt, as the demo's. The ServerApp's log is kept in
    ``workdir/logs/run-ID.log``; ``watch`` (benchmarks) is called with the
    federation whenever the run is polled.

    Raises
    ------
    FederationError
        If the SuperLink dies or the run does not finish successfully.
    """
    started = time.monotonic()
    workdir = workdir.resolve()
    ledger_url = ledger_url or f"sqlite:///{workdir / 'ledger.db'}"
    with created_folder(workdir):  # a refused size or a failed enrolment leaves no folder
        demo = demo_consortium(
            workdir, policy, ledger_url, virtual_institutions(institutions, industry_share)
        )
        admit_all(demo, policy, register=None)  # no SuperNode keys: no SuperNode connects
    prepared = time.monotonic() - started
    ledger = Ledger(ledger_url)
    try:
        federation = SimulatedFederation(demo, client_cpus=client_cpus, insecure=insecure)
        with federation:
            flower_run_id = submit_run(federation.cli, policy, workdir / "run")

            def check() -> None:
                federation.check_alive()
                if watch is not None:
                    watch(federation)

            outcome = follow_with_progress(
                federation.cli,
                ledger,
                flower_run_id,
                on_round=on_round,
                check=check,
                keep_log=federation.keep_run_log,  # the SuperLink stops here
                resume=None,
                interrupted="interrupted (Ctrl-C or SIGTERM)",
            )
            run_log = federation.keep_run_log(flower_run_id)
        return summarise(
            demo,
            policy,
            ledger,
            outcome,
            {
                "engine": ENGINE,
                "flower_run_id": flower_run_id,
                "virtual_institutions": institutions,
                "industry_share": industry_share,
                "client_cpus": client_cpus,
                "tls": not insecure,
                "prepare_seconds": prepared,
                "run_log": str(run_log),
            },
            started=started,
        )
    finally:
        ledger.close()
