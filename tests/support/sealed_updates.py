"""Real sealed updates and Flower messages, built as ClientApps build them, for strategy tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedAvgM

from client.receipts import ReceiptBook
from common.arrays import Arrays, arrays_sha256, arrays_to_bytes, record_of
from common.envelope import Envelope, UpdateHeader, envelope_record, seal
from common.keys import encode_public
from common.licences import Licence
from common.policy import PrivacyConfig
from common.protocol import ENVELOPE, RECEIPTS, ExclusionCode, PrivacyCharge, Refusal
from common.receipts import Receipt
from ledger import Ledger, enrol_participant, start_run
from ledger.entries import record_row
from server.app.strategy import (
    ClaimCheck,
    ConsortiumStrategy,
    LedgerRecorder,
    LicenceCheck,
    NullRecorder,
    UpdateGate,
    UpdateIntake,
)
from tests.support.hostile_federation import StaticGrid, task_identity

RUN = 7
AGGREGATOR = X25519PrivateKey.generate()
SIGNERS = {name: Ed25519PrivateKey.generate() for name in ("inst0", "inst1", "inst2", "i0", "i1")}
BASE = "f" * 64


@pytest.fixture
def server_task_identity() -> Iterator[None]:
    """Messages take their run and node ids from the process's task identity."""
    with task_identity(RUN):
        yield


def make_charge(epsilon: float = 2.5, dp: bool = True) -> PrivacyCharge:
    return PrivacyCharge(dp, epsilon, 1e-5, 1.1, 0.0625, 32, "rdp", 1.0, "d" * 64, "e" * 64)


class NoGrid(StaticGrid):
    """configure_train only needs node ids from the grid: these nodes are connected."""

    def __init__(self, nodes: tuple[int, ...] = (10, 11, 12)) -> None:
        super().__init__(nodes)


def begin_round(
    strategy: ConsortiumStrategy,
    server_round: int,
    model: Arrays,
    nodes: tuple[int, ...] = (10, 11, 12),
) -> None:
    """Start a round as Flower does: configure_train tells the gate what was sent."""
    grid = NoGrid(nodes)
    list(strategy.configure_train(server_round, record_of(model), ConfigRecord(), grid))  # type: ignore[arg-type]


def seal_for(
    institution: str,
    weights: Arrays,
    examples: int,
    *,
    server_round: int,
    model: Arrays,
    charge: PrivacyCharge | None = None,
    run: int = RUN,
    signer: Ed25519PrivateKey | None = None,
) -> Envelope:
    """An update sealed for the aggregator, signed with ``institution``'s key (or ``signer``)."""
    header = UpdateHeader(
        run_id=str(run),
        round=server_round,
        participant=institution,
        model_sha256=arrays_sha256(model),
        base_model_sha256=BASE,
        num_examples=examples,
        privacy=charge or make_charge(),
    )
    return seal(
        arrays_to_bytes(weights),
        header,
        aggregator=AGGREGATOR.public_key(),
        signer=signer if signer is not None else SIGNERS[institution],
    )


def reply_carrying(node: int, envelope: Envelope) -> Message:
    request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict(
        {
            ENVELOPE: envelope_record(envelope),
            "metrics": MetricRecord({"train-loss": 0.5, "train-seconds": 1.25}),
        }
    )
    return Message(content, reply_to=request)


def sealed_reply(
    node: int,
    institution: str,
    weights: Arrays,
    examples: int,
    charge: PrivacyCharge | None = None,
    server_round: int = 1,
    *,
    model: Arrays | None = None,
) -> Message:
    model = model if model is not None else {k: np.zeros_like(v) for k, v in weights.items()}
    envelope = seal_for(
        institution, weights, examples, server_round=server_round, model=model, charge=charge
    )
    return reply_carrying(node, envelope)


def refusal_reply(
    node: int, institution: str, detail: str, code: int = ExclusionCode.BUDGET_EXHAUSTED
) -> Message:
    request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    reason = Refusal(institution, detail).to_reason()
    return Message(Error(code=code, reason=reason), reply_to=request)


def make_gate(expected: Arrays) -> UpdateGate:
    return UpdateGate(
        flower_run_id=str(RUN),
        aggregator_key=AGGREGATOR,
        participants={name: key.public_key() for name, key in SIGNERS.items()},
        expected={k: (tuple(v.shape), v.dtype.name) for k, v in expected.items()},
        base_model_sha256=BASE,
    )


def make_strategy(
    tmp_path: Path,
    ledger: Ledger | None = None,
    run_id: int | None = None,
    min_nodes: int = 2,
    *,
    model: Arrays,
    server_round: int = 1,
    aggregator: FedAvg | None = None,
    licences: Mapping[tuple[str, str], Licence] | None = None,
    today: Callable[[], date] = date.today,
    signer: Ed25519PrivateKey | None = None,
    evaluator: Callable[[Arrays], tuple[float, float]] = lambda w: (float(w["w"].sum()), 0.75),
    nodes: tuple[int, ...] = (10, 11, 12),
    records: Mapping[tuple[str, str], int] | None = None,
) -> ConsortiumStrategy:
    """The parts composed as the ServerApp composes them; round ``server_round`` begun."""
    licence_check = LicenceCheck(licences, purpose="research", today=today)
    recorder = (
        LedgerRecorder(
            ledger, run_id, flower_run_id=str(RUN), snapshot_dir=tmp_path / "snap", signer=signer
        )
        if ledger is not None and run_id is not None
        else NullRecorder()
    )
    strategy = ConsortiumStrategy(
        aggregator or FedAvgM(min_available_nodes=1),
        intake=UpdateIntake(
            make_gate(model),
            privacy=PrivacyConfig(epsilon=8.0),
            licence_check=licence_check,
            claims=ClaimCheck(records),
        ),
        licence_check=licence_check,
        evaluator=evaluator,
        min_nodes=min_nodes,
        recorder=recorder,
    )
    if server_round:
        begin_round(strategy, server_round, model, nodes)
    return strategy


def ledger_with_run(
    tmp_path: Path, names: tuple[str, ...], flower_run_id: int = 9
) -> tuple[Ledger, int]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    return ledger, run_in(ledger, names, flower_run_id)


def run_in(ledger: Ledger, names: tuple[str, ...], flower_run_id: int = 9) -> int:
    """Enrol ``names`` (academia) in ``ledger`` and start a one-round run; its id.

    Each named in :data:`SIGNERS` is admitted with its key first, so the run's
    members entry names it (a node refuses receipts of a run that does not).
    """
    with ledger.session() as s:
        for name in names:
            participant = enrol_participant(s, name, "academia")
            if name in SIGNERS:
                participant.public_key = encode_public(SIGNERS[name].public_key())
                record_row(s, participant, "participant")
        run_id = start_run(
            s,
            policy_sha256="0" * 64,
            policy_toml="",
            model="cnn",
            dataset="d",
            initial_model_sha256="1" * 64,
            planned_rounds=1,
            flower_run_id=flower_run_id,
        ).id
    return run_id


class QueryGrid:
    """Answers query messages as each node's ClientApp would: verify and store the receipts."""

    def __init__(self, books: dict[int, tuple[str, ReceiptBook]], operator: Ed25519PrivateKey):
        self.books, self.operator = books, operator
        self.sent: list[Message] = []

    def send_and_receive(self, messages: list[Message], *, timeout: float | None) -> list[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            name, book = self.books[message.metadata.dst_node_id]
            record = message.content.config_records[RECEIPTS]
            for text in record["receipts"]:  # type: ignore[union-attr]
                book.accept(Receipt.from_json(str(text)), self.operator.public_key(), name)
            replies.append(Message(RecordDict(), reply_to=message))
        return replies
