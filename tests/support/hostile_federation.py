"""A federation in this process, one participant hostile, for attack tests and ``bench/attacks.py``.

Every institution trains for real with the ClientApp's own code
(``client.task.train_round``: DP-SGD and the persistent accountant), signs
and seals its update with its own key, and the round is taken by the
consortium strategy composed as the ServerApp composes it (update gate,
claim check, norm bound, Flower's aggregation rule). Only Flower's
transport is left out. The attacker is authentic: it trains like the others
(on label-flipped data for the data attack) and then sends what its attack
makes of its honest update. Never part of the shipped ClientApp.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client.task import ClientSetup, train_round
from common.arrays import Arrays, arrays_of, arrays_sha256, arrays_to_bytes, record_of
from common.envelope import UpdateHeader, envelope_record, seal
from common.images import ImageData, write_npz
from common.local_data import load_local_data, server_split_path, to_examples
from common.model import build_model, frozen_sha256, get_arrays, set_arrays
from common.policy import Policy
from common.protocol import ENVELOPE, METRICS, TRAIN_LOSS, TRAIN_SECONDS, TrainConfig
from common.receipts import Receipt
from common.training import evaluate
from common.witness import Cosigned, Witnessed
from fedcommons.demo_setup import prepare_data
from ledger import ChargeFact, DefenceFact, ExclusionFact
from ledger.shapley import RoundValues
from server.app.snapshots import KeptReply
from server.app.strategy import (
    ClaimCheck,
    ConsortiumStrategy,
    Defences,
    LicenceCheck,
    UpdateGate,
    UpdateIntake,
    build_aggregator,
    expected_tensors,
)
from server.app.strategy.owed import OwedCharge
from server.app.strategy.recorder import FinishedRound, RoundRecorder
from server.app.valuation import Valuer
from server.app.valuation.batched import batch_evaluator
from tests.support.attacks import ATTACKS, flip_labels

__all__ = ["ABSENT", "LABEL_FLIP", "HostileFederation", "StaticGrid", "Tally", "task_identity"]

LABEL_FLIP = "label-flip"
"""The data attack's name beside the update attacks of :data:`tests.support.attacks.ATTACKS`."""

ABSENT = "absent"
"""Not an attack: the participant never answers (the baseline an excluded attacker leaves)."""

FLOWER_RUN = 7


@contextmanager
def task_identity(run_id: int = FLOWER_RUN, node_id: int = 1) -> Iterator[None]:
    """Messages take their run and node ids from the process's task identity, which
    Flower's ServerApp runtime sets; set it as that runtime does, and restore it."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, 3
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class StaticGrid:
    """configure_train only needs node ids from the grid: these nodes are connected."""

    def __init__(self, nodes: Sequence[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


@dataclass
class Tally:
    """A round recorder that keeps what the ledger would get, in memory."""

    exclusions: list[tuple[int, ExclusionFact]] = field(default_factory=list)
    defences: list[tuple[int, DefenceFact]] = field(default_factory=list)
    valuations: list[RoundValues] = field(default_factory=list)

    def keep_replies(self, server_round: int, replies: Mapping[str, KeptReply]) -> None:
        return None  # nothing to recover: the harness never crashes

    def record_owed(self, owed: list[OwedCharge]) -> None:
        return None  # its nodes owe nothing: every round is recorded

    def record_exclusions(self, server_round: int, exclusions: list[ExclusionFact]) -> None:
        self.exclusions += [(server_round, e) for e in exclusions]

    def record_replies(
        self, server_round: int, charges: list[ChargeFact], exclusions: list[ExclusionFact]
    ) -> None:
        self.record_exclusions(server_round, exclusions)

    def record_defences(self, server_round: int, defences: list[DefenceFact]) -> None:
        self.defences += [(server_round, d) for d in defences]

    def record_round(self, result: FinishedRound) -> list[Receipt]:
        if result.valuation is not None:
            self.valuations.append(result.valuation)
        return []

    def record_cosignatures(self, institution: str, cosigned: list[Cosigned]) -> list[str]:
        return []

    def witnesses(self, institution: str, final: bool = False) -> Witnessed | None:
        return None


class HostileFederation:
    """``institutions`` training on the demo's split of the policy's data; one may attack.

    Parameters
    ----------
    policy : Policy
        The run's policy (data, model, DP, defences). Image data only.
    workdir : Path
        Where each institution's data and state folder go.
    institutions : sequence of (name, kind)
        The consortium; the policy's partition splits the data among them.
    attacker, attack : str, optional
        Who attacks, and how: a key of :data:`~tests.support.attacks.ATTACKS` or
        :data:`LABEL_FLIP`. ``None``: everyone is honest.
    check_claims : bool (default: True)
        Whether example counts are checked against the admitted datasets
        (the product always checks; ``False`` shows the damage without it).
    recorder : RoundRecorder, optional
        Keeps the record (default: a :class:`Tally`, kept as ``tally``).
    valued : bool (default: False)
        Whether each round is valued as the policy's ``[valuation]`` says.
    """

    def __init__(
        self,
        policy: Policy,
        workdir: Path,
        institutions: Sequence[tuple[str, str]],
        *,
        attacker: str | None = None,
        attack: str | None = None,
        check_claims: bool = True,
        recorder: RoundRecorder | None = None,
        valued: bool = False,
    ) -> None:
        if attack is not None and attack not in (LABEL_FLIP, ABSENT) and attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}")
        if (attack is None) != (attacker is None):
            raise ValueError("name both the attacker and its attack, or neither")
        self.policy, self.attacker, self.attack = policy, attacker, attack
        layout = prepare_data(workdir, policy, institutions)
        if attack == LABEL_FLIP:
            (node,) = [n for n in layout.nodes if n.institution == attacker]
            data = load_local_data(policy, node.data_dir)
            assert isinstance(data, ImageData), "label flipping is written for image data"
            (path,) = sorted(node.data_dir.iterdir())
            write_npz(path, flip_labels(data, policy.model.num_classes))
        run_config = policy.to_run_config()
        self.setups = [
            ClientSetup.from_configs(
                run_config,
                {
                    "institution": n.institution,
                    "data-dir": str(n.data_dir),
                    "state-dir": str(n.state_dir),
                },
            )
            for n in layout.nodes
        ]
        self.nodes = {s.institution: 100 + i for i, s in enumerate(self.setups)}
        self.signers = {s.institution: Ed25519PrivateKey.generate() for s in self.setups}
        self.aggregator_key = X25519PrivateKey.generate()
        self.model = build_model(policy.model, policy.federation.seed)
        self.weights = get_arrays(self.model)
        self.base_sha256 = frozen_sha256(self.model)
        splits = layout.server_data_dir
        self.validation, self.test = (
            to_examples(policy, load_local_data(policy, server_split_path(policy, splits, name)))
            for name in ("validation", "test")
        )
        records = {(s.institution, s.data.sha256()): len(s.data) for s in self.setups}
        federation = policy.federation
        licence_check = LicenceCheck(None, purpose=federation.purpose)
        self.tally = Tally()
        self.strategy = ConsortiumStrategy(
            build_aggregator(federation),
            intake=UpdateIntake(
                UpdateGate(
                    flower_run_id=str(FLOWER_RUN),
                    aggregator_key=self.aggregator_key,
                    participants={k: v.public_key() for k, v in self.signers.items()},
                    expected=expected_tensors(self.weights),
                    base_model_sha256=self.base_sha256,
                ),
                privacy=policy.privacy,
                licence_check=licence_check,
                claims=ClaimCheck(records if check_claims else None),
            ),
            licence_check=licence_check,
            evaluator=lambda weights: self.score(weights, self.validation),
            min_nodes=federation.min_nodes,
            recorder=recorder if recorder is not None else self.tally,
            defences=Defences.of(federation),
            valuer=Valuer(
                policy.valuation, federation.seed, batch_evaluator(self.model, self.validation)
            )
            if valued
            else None,
        )
        self.rng = np.random.default_rng(federation.seed)

    def score(self, weights: Arrays, data: object) -> tuple[float, float]:
        set_arrays(self.model, weights)
        result = evaluate(self.model, data)  # type: ignore[arg-type]
        return result.loss, result.accuracy

    def _reply(self, request: Message, setup: ClientSetup, server_round: int) -> Message:
        """Train as the ClientApp does, attack if hostile, seal with the institution's key."""
        outcome = train_round(
            setup,
            self.weights,
            TrainConfig(server_round, base_sha256=self.base_sha256),
            flower_run_id=FLOWER_RUN,
        )
        sent, claimed = outcome.weights, len(setup.data)
        if setup.institution == self.attacker and self.attack in ATTACKS:
            sent, claimed = ATTACKS[self.attack](self.weights, sent, claimed, self.rng)
        header = UpdateHeader(
            run_id=str(FLOWER_RUN),
            round=server_round,
            participant=setup.institution,
            model_sha256=arrays_sha256(self.weights),
            base_model_sha256=self.base_sha256,
            num_examples=claimed,
            privacy=outcome.charge,
        )
        envelope = seal(
            arrays_to_bytes(sent),
            header,
            aggregator=self.aggregator_key.public_key(),
            signer=self.signers[setup.institution],
        )
        metrics = MetricRecord({TRAIN_LOSS: outcome.result.loss, TRAIN_SECONDS: 0.0})
        content = RecordDict({ENVELOPE: envelope_record(envelope), METRICS: metrics})
        return Message(content, reply_to=request)

    def round(self, server_round: int) -> float:
        """One round, as Flower's ``start`` drives the strategy; the validation accuracy."""
        with task_identity():
            requests = list(
                self.strategy.configure_train(
                    server_round,
                    record_of(self.weights),
                    ConfigRecord(),
                    StaticGrid(list(self.nodes.values())),  # type: ignore[arg-type]
                )
            )
            by_node = {self.nodes[s.institution]: s for s in self.setups}
            replies = [
                self._reply(r, by_node[r.metadata.dst_node_id], server_round)
                for r in requests
                if not (
                    self.attack == ABSENT
                    and by_node[r.metadata.dst_node_id].institution == self.attacker
                )
            ]
            arrays, _ = self.strategy.aggregate_train(server_round, replies)
            assert arrays is not None
            metrics = self.strategy.finish_round(server_round, arrays)
        self.weights = arrays_of(arrays)
        return float(metrics["accuracy"])  # type: ignore[arg-type]

    def test_accuracy(self) -> float:
        """The global model's accuracy on the operator's held-out test split."""
        return self.score(self.weights, self.test)[1]
