"""A real ledger with two recorded rounds, its receipts and each node's receipts folder.

Shared by the receipt, witness and Go interoperability tests and by
bench/checkpoints.py. The operator's, aggregator's and nodes' keys are
generated once, when this module is imported.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord

from client.enrolment import ParticipantState
from client.receipts import ReceiptBook, accept_receipts, cosign_heads
from common.consortium import Consortium
from common.envelope import Envelope, UpdateHeader, seal
from common.keys import encode_public, write_private_key
from common.protocol import PrivacyCharge
from common.receipts import Receipt, TreeHead, read_receipts
from ledger import Ledger, UpdateFact, enrol_participant, record_round, start_run
from ledger.cosignatures import record_cosignatures
from ledger.entries import record_row
from ledger.tree_heads import LedgerTree, round_receipts, sign_tree_head

H = "a" * 64  # the model, policy and base digests
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
NAMES = ("uni-a", "co-c")
THREE = ("uni-a", "uni-b", "co-c")
"""Three members: a fork shown to two of them, or one, is out-voted or out-votes."""
OPERATOR = Ed25519PrivateKey.generate()
AGGREGATOR = X25519PrivateKey.generate()
SIGNERS = {name: Ed25519PrivateKey.generate() for name in (*THREE, "op-member")}
"""Each member's signing key; ``op-member`` is a member key the operator itself holds."""
CHARGE = PrivacyCharge(True, 2.5, 1e-5, 1.1, 0.0625, 32, "rdp", 1.0, "d" * 64, "e" * 64)


def sealed_update(
    name: str, server_round: int, salt: bytes = b"", flower_run_id: str = "7"
) -> Envelope:
    """``name``'s sealed update for ``server_round``; ``salt`` changes its bytes."""
    header = UpdateHeader(
        run_id=flower_run_id,
        round=server_round,
        participant=name,
        model_sha256=H,
        base_model_sha256=H,
        num_examples=10,
        privacy=CHARGE,
    )
    return seal(
        b"safetensors bytes of the update" + salt,
        header,
        aggregator=AGGREGATOR.public_key(),
        signer=SIGNERS[name],
    )


def update_fact(name: str, envelope: Envelope, num_examples: int = 10) -> UpdateFact:
    """The fact the server records of ``name``'s sealed ``envelope`` (its count as given)."""
    return UpdateFact(
        name,
        num_examples,
        0.5,
        "c" * 64,
        1000,
        1.5,
        ciphertext_sha256=envelope.ciphertext_sha256(),
        signature=base64.b64encode(envelope.signature).decode(),
    )


@dataclass
class World:
    """A ledger with two recorded rounds, their receipts and each node's receipts folder."""

    ledger: Ledger
    envelopes: dict[tuple[str, int], Envelope]
    receipts: dict[tuple[str, int], Receipt]
    books: dict[str, ReceiptBook]
    tree: LedgerTree
    heads: dict[str, TreeHead]
    names: tuple[str, ...] = NAMES
    run_id: int = 1
    flower_run_id: str = "7"


def record_world_round(world: World, number: int, loss: float = 0.7) -> None:
    """Record round ``number``, sign a checkpoint and keep its receipts and sent updates."""
    envelopes = {
        name: sealed_update(name, number, flower_run_id=world.flower_run_id) for name in world.names
    }
    with world.ledger.session() as s:
        run_id = world.run_id
        row = record_round(
            s,
            run_id,
            number=number,
            model_sha256_before=H,
            model_sha256_after="b" * 64,
            loss=loss,
            accuracy=0.81,
            seconds=12.5,
            updates=[update_fact(name, e) for name, e in envelopes.items()],
        )
        checkpoint = sign_tree_head(s, OPERATOR, f"round {number}", tree=world.tree)
        receipts = round_receipts(
            s,
            world.tree,
            checkpoint,
            round_id=row.id,
            server_round=number,
            flower_run_id=world.flower_run_id,
            previous=world.heads,
        )
    for receipt in receipts:
        world.heads[receipt.participant] = checkpoint
        world.receipts[(receipt.participant, number)] = receipt
    for name, envelope in envelopes.items():
        world.envelopes[(name, number)] = envelope
        world.books[name].record_sent(envelope)


def make_world(
    url: str,
    folder: Path,
    loss: float = 0.7,
    names: tuple[str, ...] = NAMES,
    quorum: str | int = "majority",
) -> World:
    """A ledger at ``url`` with ``names``' nodes admitted and rounds 1 and 2 recorded."""
    ledger = Ledger(url)
    with ledger.session() as s:
        for name in names:
            participant = enrol_participant(s, name, "academia")
            participant.public_key = encode_public(SIGNERS[name].public_key())  # as admitted
            record_row(s, participant, "participant")
        run = start_run(
            s,
            policy_sha256=H,
            policy_toml="[federation]\n",
            model="cnn",
            dataset="digits",
            initial_model_sha256=H,
            planned_rounds=2,
            flower_run_id=7,
            quorum=quorum,
        )
        run_id = run.id
    world = World(
        ledger,
        {},
        {},
        {n: ReceiptBook(folder / n / "receipts") for n in names},
        LedgerTree(),
        {},
        names,
        run_id,
    )
    record_world_round(world, 1, loss)
    record_world_round(world, 2, loss)
    return world


def accept_all(world: World) -> list[tuple[str, Receipt]]:
    """Each node accepts its receipts, in order; returns the (path, receipt) pairs kept."""
    for (name, _), receipt in sorted(world.receipts.items()):
        world.books[name].accept(receipt, OPERATOR.public_key(), name)
    return [(str(p), r) for name in world.names for p, r in read_receipts(world.books[name].folder)]


def cosign_all(world: World, now: int = 1_700_000_000) -> dict[str, list[str]]:
    """Each node cosigns the heads it holds and the ledger records them; returns refusals."""
    refused = {}
    for name in world.names:
        heads = [r.tree_head for r in world.books[name].receipts()]
        cosigned = cosign_heads(heads, name, SIGNERS[name], now=now)
        with world.ledger.session() as s:
            _, refused[name] = record_cosignatures(s, name, cosigned)
    return refused


def node_state(folder: Path, name: str, origin: str = "") -> ParticipantState:
    """``name``'s state folder in ``folder`` (its consortium file and signing key): the
    world's receipt book ``folder/name/receipts`` is its receipts folder."""
    state = ParticipantState(folder / name)
    Consortium(
        name="t",
        superlink="127.0.0.1:9092",
        aggregator_public_key=encode_public(AGGREGATOR.public_key()),
        operator_public_key=encode_public(OPERATOR.public_key()),
        ca_certificate=CA,
        log_origin=origin,
    ).write(state.consortium)
    write_private_key(state.signing_key, SIGNERS[name])
    return state


def node_accepts(world: World, folder: Path, name: str, *rounds: int) -> Path:
    """``name`` accepts its receipts of ``rounds`` from ``world`` as its node does.

    Its state folder is made in ``folder`` (:func:`node_state`); each receipt goes
    through :func:`client.receipts.accept_receipts`, which also cosigns and logs
    the checkpoints. Returns the state folder.
    """
    state = node_state(folder, name)
    for number in rounds:
        record = ConfigRecord({"receipts": [world.receipts[(name, number)].to_json()]})
        accept_receipts(state, name, record)
    return state.root
