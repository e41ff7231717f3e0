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
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client.task import ClientSetup, RoundOutcome, train_round
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
from server.app.reference import class_scorer, reference_trainer
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
from tests.support.attacks import ATTACKS, COLLUSIONS, TARGETED, flip_labels, relabel

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
    attacker : str or sequence of str, optional
        Who attacks (one institution, or the colluders). ``None``: everyone is honest.
    attack : str, optional
        How: a key of :data:`~tests.support.attacks.ATTACKS` (each attacker
        alone), of :data:`~tests.support.attacks.COLLUSIONS` (every attacker
        sends what the colluders computed from the honest updates of the
        round), :data:`LABEL_FLIP` or :data:`~tests.support.attacks.TARGETED`
        (data attacks: each attacker trains on its altered data).
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
        attacker: str | Sequence[str] | None = None,
        attack: str | None = None,
        check_claims: bool = True,
        recorder: RoundRecorder | None = None,
        valued: bool = False,
    ) -> None:
        known = (LABEL_FLIP, ABSENT, TARGETED, *ATTACKS, *COLLUSIONS)
        if attack is not None and attack not in known:
            raise ValueError(f"unknown attack {attack!r}")
        if (attack is None) != (attacker is None):
            raise ValueError("name both the attacker and its attack, or neither")
        self.policy, self.attack = policy, attack
        self.attackers = (attacker,) if isinstance(attacker, str) else tuple(attacker or ())
        self.attacker = self.attackers[0] if self.attackers else None
        layout = prepare_data(workdir, policy, institutions)
        for node in layout.nodes:
            if node.institution not in self.attackers or attack not in (LABEL_FLIP, TARGETED):
                continue
            data = load_local_data(policy, node.data_dir)
            assert isinstance(data, ImageData), "the data attacks are written for image data"
            (path,) = sorted(node.data_dir.iterdir())
            classes = policy.model.num_classes
            write_npz(path, flip_labels(data, classes) if attack == LABEL_FLIP else relabel(data))
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
            defences=Defences.of(
                federation,
                reference_trainer(policy, self.model, self.validation),
                class_scorer(self.model, self.validation, policy.model.num_classes),
            ),
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

    def _train(self, setup: ClientSetup, server_round: int) -> tuple[Arrays, int, RoundOutcome]:
        """Train as the ClientApp does; attack alone if hostile. (weights, claimed, outcome)."""
        outcome = train_round(
            setup,
            self.weights,
            TrainConfig(server_round, base_sha256=self.base_sha256),
            flower_run_id=FLOWER_RUN,
        )
        sent, claimed = outcome.weights, len(setup.data)
        if setup.institution in self.attackers and self.attack in ATTACKS:
            sent, claimed = ATTACKS[self.attack](self.weights, sent, claimed, self.rng)
        return sent, claimed, outcome

    def _reply(
        self,
        request: Message,
        setup: ClientSetup,
        server_round: int,
        trained: tuple[Arrays, int, RoundOutcome],
    ) -> Message:
        """Seal what the institution sends with its key, as the ClientApp does."""
        sent, claimed, outcome = trained
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
        """One round, as Flower's ``start`` drives the strategy; the validation accuracy.

        Every institution trains first; colluders then send what their attack
        computes from the round's honest updates.
        """
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
            asked = [
                (r, by_node[r.metadata.dst_node_id])
                for r in requests
                if not (
                    self.attack == ABSENT
                    and by_node[r.metadata.dst_node_id].institution in self.attackers
                )
            ]
            trained = {s.institution: self._train(s, server_round) for _, s in asked}
            if self.attack in COLLUSIONS:
                honest = [t[0] for name, t in trained.items() if name not in self.attackers]
                colluding = [name for name in trained if name in self.attackers]
                sent = COLLUSIONS[self.attack](self.weights, honest, len(colluding), self.rng)
                for name in colluding:
                    _, claimed, outcome = trained[name]
                    trained[name] = ({k: v.copy() for k, v in sent.items()}, claimed, outcome)
            replies = [self._reply(r, s, server_round, trained[s.institution]) for r, s in asked]
            arrays, _ = self.strategy.aggregate_train(server_round, replies)
            assert arrays is not None
            metrics = self.strategy.finish_round(server_round, arrays)
        self.weights = arrays_of(arrays)
        return float(metrics["accuracy"])  # type: ignore[arg-type]

    def test_accuracy(self) -> float:
        """The global model's accuracy on the operator's held-out test split."""
        return self.score(self.weights, self.test)[1]

    def test_class_accuracy(self) -> list[float]:
        """The global model's accuracy on each class of the test split."""
        score = class_scorer(self.model, self.test, self.policy.model.num_classes)
        return [float(a) for a in score(self.weights)]

    def test_confusion(self, source: int = 0, target: int = 8) -> float:
        """The share of the test split's ``source`` examples the global model calls ``target``."""
        set_arrays(self.model, self.weights)
        self.model.eval()
        images, labels = self.test.tensors()
        with torch.no_grad():
            predicted = self.model(images).argmax(dim=1)
        mask = labels == source
        return float((predicted[mask] == target).float().mean()) if bool(mask.any()) else 0.0
