"""Receipts: built from a real ledger, verified and stored by participants, checked by auditors.

The ledger is a real SQLite file or PostgreSQL database; updates are real
sealed envelopes and checkpoints real Ed25519 signatures. Tampering is raw
SQL with the append-only triggers dropped, as a rogue operator could do it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text
from typer.testing import CliRunner

from client.receipts import ReceiptBook, cosign_heads
from common.keys import encode_public
from common.merkle import EMPTY_ROOT
from common.note import SignatureLine, signature_lines, verify_cosignature
from common.receipts import ForkError, Receipt, ReceiptError, TreeHead, read_receipts
from common.sent import read_sent
from fedcommons.cli import app
from ledger import Ledger
from ledger.cosignatures import cosigned_note, latest_cosigned, record_cosignatures
from ledger.entries import chain_hash, entry_leaf_hash
from ledger.schema import LedgerTreeHead
from ledger.verify import LedgerTampered, verify_ledger
from tests.support.receipt_world import (
    NAMES,
    OPERATOR,
    SIGNERS,
    World,
    accept_all,
    cosign_all,
    make_world,
    record_world_round,
    sealed_update,
)


def _tamper(ledger: Ledger, *statements: str) -> None:
    """Drop the append-only triggers and run raw SQL."""
    with ledger.engine.begin() as c:
        for table in ("ledger_entries", "tree_heads"):
            if ledger.engine.dialect.name == "postgresql":
                c.execute(text(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}"))
            else:
                c.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_update"))
                c.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_delete"))
        for statement in statements:
            c.exec_driver_sql(statement)


def _rehash_from(ledger: Ledger) -> list[str]:
    """Statements recomputing every leaf, chain hash and the head from the payloads."""
    with ledger.engine.connect() as c:
        rows = c.execute(text("SELECT seq, payload FROM ledger_entries ORDER BY seq")).all()
    statements, previous = [], "0" * 64
    for seq, payload in rows:
        leaf = entry_leaf_hash(payload)
        chained = chain_hash(previous, leaf)
        statements.append(
            f"UPDATE ledger_entries SET leaf_hash = '{leaf}', prev_hash = '{previous}', "
            f"chain_hash = '{chained}' WHERE seq = {seq}"
        )
        previous = chained
    return [*statements, f"UPDATE ledger_head SET size = {len(rows)}, chain_hash = '{previous}'"]


@pytest.fixture
def world(url: str, tmp_path: Path) -> Iterator[World]:
    world = make_world(url, tmp_path)
    yield world
    world.ledger.close()


def test_participants_verify_and_keep_their_receipts(world: World) -> None:
    held = accept_all(world)
    assert len(held) == 4
    stored = sorted(p.name for p in world.books["uni-a"].folder.glob("*.json"))
    assert stored == ["run-7-round-0001.json", "run-7-round-0002.json"]
    first, second = world.receipts[("uni-a", 1)], world.receipts[("uni-a", 2)]
    assert first.previous_size is None
    # the second receipt extends the head the participant already holds
    assert (second.previous_size, second.previous_root) == (
        first.tree_head.tree_size,
        first.tree_head.root,
    )
    assert first.update()["ciphertext_sha256"] == world.envelopes[("uni-a", 1)].ciphertext_sha256()
    # delivered twice (a lost reply): stored once, unchanged
    path = world.books["uni-a"].accept(second, OPERATOR.public_key(), "uni-a")
    assert Receipt.from_json(path.read_text()) == second
    report = verify_ledger(world.ledger, OPERATOR.public_key(), held)
    assert report.receipts == 4 and report.tree_root == second.tree_head.root
    assert "4 receipts consistent" in report.summary()


def test_a_deleted_tail_is_caught_through_receipts(world: World) -> None:
    held = accept_all(world)
    with world.ledger.engine.connect() as c:
        tail = c.execute(text("SELECT entry_seq FROM rounds WHERE number = 2")).scalar_one()
    # delete round 2 everywhere: its entries, rows and checkpoints, and fix the head
    _tamper(
        world.ledger,
        f"DELETE FROM ledger_entries WHERE seq >= {tail}",
        "DELETE FROM round_updates WHERE round_id = (SELECT id FROM rounds WHERE number = 2)",
        "DELETE FROM rounds WHERE number = 2",
        "DELETE FROM tree_heads",
    )
    _tamper(world.ledger, *_rehash_from(world.ledger))
    assert verify_ledger(world.ledger).entries == tail  # nothing else can tell
    with pytest.raises(LedgerTampered) as err:
        verify_ledger(world.ledger, OPERATOR.public_key(), held)
    assert err.value.seq == tail
    assert f"but only {tail} remain: entries were deleted" in str(err.value)
    assert "receipt" in str(err.value)


def test_rewritten_history_is_caught_through_receipts(world: World) -> None:
    held = accept_all(world)
    with world.ledger.engine.connect() as c:
        seq, payload = c.execute(
            text("SELECT seq, payload FROM ledger_entries WHERE kind = 'round' ORDER BY seq")
        ).first()  # type: ignore[misc]
    forged = payload.replace('"loss":"0.7"', '"loss":"0.1"')
    assert forged != payload
    _tamper(
        world.ledger,
        f"UPDATE ledger_entries SET payload = '{forged}' WHERE seq = {seq}",
        "UPDATE rounds SET loss = 0.1 WHERE number = 1",
        "DELETE FROM tree_heads",
    )
    _tamper(world.ledger, *_rehash_from(world.ledger))
    assert verify_ledger(world.ledger).tree_heads == 0  # consistent without the receipts
    with pytest.raises(LedgerTampered, match="history was rewritten after the participant"):
        verify_ledger(world.ledger, OPERATOR.public_key(), held)


def test_a_rewritten_update_entry_is_named_by_its_receipt(world: World) -> None:
    held = accept_all(world)
    receipt = world.receipts[("co-c", 2)]
    forged = receipt.payload.replace('"num_examples":10,', '"num_examples":1000,')
    _tamper(
        world.ledger,
        f"UPDATE ledger_entries SET payload = '{forged}' WHERE seq = {receipt.seq}",
        f"UPDATE round_updates SET num_examples = 1000 WHERE entry_seq = {receipt.seq}",
        "DELETE FROM tree_heads",
    )
    _tamper(world.ledger, *_rehash_from(world.ledger))
    with pytest.raises(LedgerTampered) as err:
        verify_ledger(world.ledger, OPERATOR.public_key(), held)
    assert err.value.seq == receipt.seq and "co-c's receipt" in str(err.value)


def test_audit_verify_with_receipts(world: World, url: str, tmp_path: Path) -> None:
    accept_all(world)
    auditor = tmp_path / "collected"
    for name in NAMES:
        for path in world.books[name].folder.glob("*.json"):
            (auditor / name).mkdir(parents=True, exist_ok=True)
            (auditor / name / path.name).write_bytes(path.read_bytes())
    key = encode_public(OPERATOR.public_key())
    command = ["audit", "verify", "--ledger", url, "--operator-key", key]
    runner = CliRunner()
    result = runner.invoke(app, [*command, "--receipts", str(auditor)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("intact: ") and "4 receipts consistent" in result.output
    with world.ledger.engine.connect() as c:
        last = c.execute(text("SELECT max(seq) FROM ledger_entries")).scalar_one()
    _tamper(
        world.ledger,
        f"DELETE FROM ledger_entries WHERE seq = {last}",
        "DELETE FROM tree_heads",
        f"DELETE FROM round_updates WHERE entry_seq = {last}",
    )
    _tamper(world.ledger, *_rehash_from(world.ledger))
    assert runner.invoke(app, command).exit_code == 0  # without receipts: looks intact
    result = runner.invoke(app, [*command, "--receipts", str(auditor), "--format", "json"])
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["intact"] is False and doc["seq"] == last
    assert "entries were deleted" in doc["detail"]


# What a participant refuses (one backend is enough: these never touch the ledger again).


@pytest.fixture
def sqlite_world(tmp_path: Path) -> Iterator[World]:
    world = make_world(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)
    yield world
    world.ledger.close()


def _flip(hex_digest: str) -> str:
    return f"{int(hex_digest[0], 16) ^ 1:x}{hex_digest[1:]}"


def _forge_signature(note: str) -> str:
    """The note with its operator signature's last byte changed (key ID kept)."""
    text, lines = signature_lines(note)
    first = lines[0]
    forged = SignatureLine(
        first.name, first.key_id, first.signature[:-1] + bytes([first.signature[-1] ^ 1])
    )
    return f"{text}\n{forged.line()}"


TAMPERED: dict[str, tuple[Callable[[Receipt], Receipt], str]] = {
    "a flipped inclusion hash": (
        lambda r: dataclasses.replace(r, inclusion=[_flip(r.inclusion[0]), *r.inclusion[1:]]),
        "is not in the signed tree",
    ),
    "a missing inclusion hash": (
        lambda r: dataclasses.replace(r, inclusion=r.inclusion[:-1]),
        "is not in the signed tree",
    ),
    "another entry index": (
        lambda r: dataclasses.replace(r, seq=r.seq - 1),
        "is not in the signed tree",
    ),
    "a changed entry": (
        lambda r: dataclasses.replace(
            r, payload=r.payload.replace('"train_loss":"0.5"', '"train_loss":"0.1"')
        ),
        "is not in the signed tree",
    ),
    "another root": (
        lambda r: dataclasses.replace(
            r, tree_head=dataclasses.replace(r.tree_head, root=_flip(r.tree_head.root))
        ),
        "the checkpoint states size",
    ),
    "another tree size": (
        lambda r: dataclasses.replace(
            r, tree_head=dataclasses.replace(r.tree_head, tree_size=r.tree_head.tree_size + 1)
        ),
        "the checkpoint states size",
    ),
    "a checkpoint signed by someone else": (
        lambda r: dataclasses.replace(
            r,
            tree_head=TreeHead.sign(
                Ed25519PrivateKey.generate(),
                tree_size=r.tree_head.tree_size,
                root=r.tree_head.root,
                at=r.tree_head.at,
                note=r.tree_head.note,
                origin=r.tree_head.origin,
            ),
        ),
        "names signing key",
    ),
    "a checkpoint of another size, signed as this one's": (
        lambda r: dataclasses.replace(
            r,
            tree_head=dataclasses.replace(
                r.tree_head,
                checkpoint=(r.tree_head.checkpoint or "").replace(
                    f"\n{r.tree_head.tree_size}\n", f"\n{r.tree_head.tree_size + 1}\n", 1
                ),
            ),
        ),
        "states size",
    ),
    "a forged checkpoint signature": (
        lambda r: dataclasses.replace(
            r,
            tree_head=dataclasses.replace(
                r.tree_head,
                checkpoint=_forge_signature(r.tree_head.checkpoint or ""),
            ),
        ),
        "does not verify",
    ),
    "a signature field that is not the checkpoint's": (
        lambda r: dataclasses.replace(
            r,
            tree_head=dataclasses.replace(
                r.tree_head,
                signature=base64.b64encode(OPERATOR.sign(b"something else")).decode(),
            ),
        ),
        "signature field is not",
    ),
    "a consistency proof from the empty tree": (
        lambda r: dataclasses.replace(
            r, previous_size=0, previous_root=EMPTY_ROOT.hex(), consistency=[]
        ),
        "from a tree of size 0 proves nothing",
    ),
    "a flipped consistency hash": (
        lambda r: dataclasses.replace(
            r, consistency=[_flip((r.consistency or [""])[0]), *(r.consistency or [])[1:]]
        ),
        "does not extend the one of size",
    ),
    "another previous root": (
        lambda r: dataclasses.replace(r, previous_root=_flip(r.previous_root or "")),
        "does not extend the one of size",
    ),
    "a non-canonical entry": (
        lambda r: dataclasses.replace(r, payload=r.payload.replace(",", ", ", 1)),
        "not canonical JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_receipt_is_refused_and_not_stored(sqlite_world: World, case: str) -> None:
    mutate, message = TAMPERED[case]
    book = sqlite_world.books["uni-a"]
    book.accept(sqlite_world.receipts[("uni-a", 1)], OPERATOR.public_key(), "uni-a")
    bad = mutate(sqlite_world.receipts[("uni-a", 2)])
    with pytest.raises(ReceiptError, match=message):
        book.accept(bad, OPERATOR.public_key(), "uni-a")
    assert not (book.folder / "run-7-round-0002.json").exists()
    (refusal,) = book.refusals()  # recorded, with the head this node holds
    assert message in refusal["reason"] or refusal["kind"] in ("fork", "invalid")
    assert (
        refusal["held_head"]["tree_size"] == sqlite_world.receipts[("uni-a", 1)].tree_head.tree_size
    )


def test_a_receipt_must_be_for_this_node_and_its_own_update(
    sqlite_world: World, tmp_path: Path
) -> None:
    receipt = sqlite_world.receipts[("uni-a", 1)]
    with pytest.raises(ReceiptError, match="a receipt for 'uni-a' was sent to 'co-c'"):
        sqlite_world.books["co-c"].accept(receipt, OPERATOR.public_key(), "co-c")
    fresh = ReceiptBook(tmp_path / "wiped" / "receipts")
    with pytest.raises(ReceiptError, match="no record of sending an update then"):
        fresh.accept(receipt, OPERATOR.public_key(), "uni-a")
    fresh.record_sent(sealed_update("uni-a", 1, salt=b" resealed"))  # not what the ledger holds
    resealed = f"this node sent {read_sent(fresh.folder)[0].ciphertext_sha256}"
    with pytest.raises(
        ReceiptError,
        match=rf"^misstated: the ledger's entry {receipt.seq} records ciphertext_sha256 "
        rf"{receipt.update()['ciphertext_sha256']} for this node's round 1 update; {resealed}$",
    ):
        fresh.accept(receipt, OPERATOR.public_key(), "uni-a")


def test_a_forked_ledger_is_refused(sqlite_world: World, tmp_path: Path) -> None:
    """The operator shows this node one ledger in round 1 and another in round 2."""
    book = sqlite_world.books["uni-a"]
    book.accept(sqlite_world.receipts[("uni-a", 1)], OPERATOR.public_key(), "uni-a")
    fork = make_world(f"sqlite:///{tmp_path / 'fork.db'}", tmp_path / "fork", loss=0.2)
    try:
        forked = fork.receipts[("uni-a", 2)]  # valid on its own, in a ledger of the same size
        book.record_sent(fork.envelopes[("uni-a", 2)])
        with pytest.raises(ReceiptError, match="another root than the one this node holds"):
            book.accept(forked, OPERATOR.public_key(), "uni-a")
        first = fork.receipts[("uni-a", 1)]
        book.record_sent(fork.envelopes[("uni-a", 1)])
        with pytest.raises(ReceiptError, match="already holds another receipt"):
            book.accept(first, OPERATOR.public_key(), "uni-a")
    finally:
        fork.ledger.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"format": "something/v1"}', "is not a FedCommons receipt"),
        ("[1, 2]", "is not a FedCommons receipt"),
    ],
)
def test_a_file_that_is_no_receipt_is_named(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "bad.json").write_text(content)
    with pytest.raises(ReceiptError, match=message) as err:
        list(read_receipts(tmp_path / "r"))
    assert "bad.json" in str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seq": 10_000}, "outside the signed head's"),
        ({"seq": "3"}, "seq is missing or has the wrong type"),
        ({"round": True}, "round is missing or has the wrong type"),
        ({"participant": None}, "participant is missing"),
        ({"inclusion": ["zz"]}, "inclusion proof must be a list of hex SHA-256 digests"),
        ({"consistency": "abc"}, "consistency is missing or has the wrong type"),
        ({"previous_root": "short"}, "previous_root is not a hex SHA-256 digest"),
        ({"tree_head": {"tree_size": 3}}, "tree head lacks at, key_id, note, root, signature"),
        ({"tree_head": "x"}, "tree head is not a JSON object"),
    ],
)
def test_malformed_receipt_fields_are_named(
    sqlite_world: World, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    doc = {**sqlite_world.receipts[("uni-a", 2)].to_dict(), **change}
    folder = tmp_path / "given"
    folder.mkdir()
    (folder / "r.json").write_text(json.dumps(doc))
    with pytest.raises(ReceiptError, match=message):
        list(read_receipts(folder))


def test_a_missing_or_empty_receipts_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReceiptError, match="no receipts folder at"):
        list(read_receipts(tmp_path / "nowhere"))
    with pytest.raises(ReceiptError, match="holds no receipts"):
        list(read_receipts(tmp_path))
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "verify",
            "--ledger",
            f"sqlite:///{tmp_path / 'l.db'}",
            "--receipts",
            str(tmp_path),
            "--skip-signatures",
        ],
    )
    assert result.exit_code == 1 and "holds no receipts" in result.output


# The mandatory consistency proof, and the refusals a node records.


def test_a_receipt_without_a_consistency_proof_is_refused_and_recorded(sqlite_world: World) -> None:
    book = sqlite_world.books["uni-a"]
    book.accept(sqlite_world.receipts[("uni-a", 1)], OPERATOR.public_key(), "uni-a")
    stripped = dataclasses.replace(
        sqlite_world.receipts[("uni-a", 2)],
        previous_size=None,
        previous_root=None,
        consistency=None,
    )
    stripped.verify(OPERATOR.public_key())  # valid on its own: only the proof is gone
    with pytest.raises(ReceiptError, match="carries no consistency proof from the head of size"):
        book.accept(stripped, OPERATOR.public_key(), "uni-a")
    assert not (book.folder / "run-7-round-0002.json").exists()
    (refusal,) = book.refusals()
    assert refusal["kind"] == "missing-consistency"
    assert refusal["receipt"]["round"] == 2 and refusal["held_head"]["checkpoint"]
    # the same receipt with its proof is accepted afterwards
    book.accept(sqlite_world.receipts[("uni-a", 2)], OPERATOR.public_key(), "uni-a")


def test_a_proof_from_an_older_held_head_is_refused(sqlite_world: World) -> None:
    """Consistency with a smaller head says nothing of the largest one this node holds."""
    book = sqlite_world.books["uni-a"]
    first = sqlite_world.receipts[("uni-a", 1)]
    for number in (1, 2):
        book.accept(sqlite_world.receipts[("uni-a", number)], OPERATOR.public_key(), "uni-a")
    sqlite_world.heads["uni-a"] = first.tree_head  # the server believes the node holds round 1's
    record_world_round(sqlite_world, 3)
    third = sqlite_world.receipts[("uni-a", 3)]
    assert third.previous_size == first.tree_head.tree_size
    with pytest.raises(ReceiptError, match=r"proves consistency from size \d+, not from the head"):
        book.accept(third, OPERATOR.public_key(), "uni-a")
    assert [r["kind"] for r in book.refusals()] == ["missing-consistency"]


def test_a_head_older_than_the_one_held_is_refused(sqlite_world: World) -> None:
    book = sqlite_world.books["uni-a"]
    book.accept(sqlite_world.receipts[("uni-a", 2)], OPERATOR.public_key(), "uni-a")
    with pytest.raises(ReceiptError, match="is older than the head of size"):
        book.accept(sqlite_world.receipts[("uni-a", 1)], OPERATOR.public_key(), "uni-a")
    assert [r["kind"] for r in book.refusals()] == ["stale"]


def test_a_fork_is_recorded_with_both_signed_heads(sqlite_world: World, tmp_path: Path) -> None:
    book = sqlite_world.books["uni-a"]
    held = sqlite_world.receipts[("uni-a", 1)]
    book.accept(held, OPERATOR.public_key(), "uni-a")
    fork = make_world(f"sqlite:///{tmp_path / 'fork2.db'}", tmp_path / "fork2", loss=0.2)
    try:
        forked = fork.receipts[("uni-a", 2)]
        book.record_sent(fork.envelopes[("uni-a", 2)])
        with pytest.raises(ForkError):
            book.accept(forked, OPERATOR.public_key(), "uni-a")
    finally:
        fork.ledger.close()
    (refusal,) = book.refusals()
    assert refusal["kind"] == "fork"
    evidence = [refusal["held_head"], refusal["receipt"]["tree_head"]]
    for head in evidence:  # two operator-signed checkpoints that cannot both be true
        TreeHead.from_dict(head).verify(OPERATOR.public_key())
    assert refusal["receipt"]["previous_root"] != held.tree_head.root


# Participants as witnesses.


def _garble(line: str) -> str:
    """The signature line with one base64 digit of its Ed25519 signature changed."""
    return line[:-6] + ("A" if line[-6] != "A" else "B") + line[-5:]


def test_participants_cosign_what_they_accepted_and_audit_verify_names_them(
    world: World, url: str
) -> None:
    held = accept_all(world)
    assert cosign_all(world) == {name: [] for name in NAMES}
    assert cosign_all(world, now=1_750_000_000) == {name: [] for name in NAMES}  # kept once
    sizes = [world.receipts[("uni-a", n)].tree_head.tree_size for n in (1, 2)]
    report = verify_ledger(world.ledger, OPERATOR.public_key(), held)
    assert report.witnesses == [(size, ["uni-a", "co-c"]) for size in sizes]
    assert "4 participant cosignatures verified" in report.summary()
    with world.ledger.session() as s:
        assert {n: h.tree_size for n, h in latest_cosigned(s).items()} == dict.fromkeys(
            NAMES, sizes[1]
        )
        row = s.scalar(select(LedgerTreeHead).where(LedgerTreeHead.tree_size == sizes[1]))
        assert row is not None
        note = cosigned_note(s, row)
    assert note is not None
    text, lines = signature_lines(note)
    assert [line.name for line in lines] == [lines[0].name, "uni-a", "co-c"]
    for line, name in zip(lines[1:], NAMES, strict=True):
        assert verify_cosignature(text, line, SIGNERS[name].public_key()) == 1_700_000_000
    key = encode_public(OPERATOR.public_key())
    result = CliRunner().invoke(app, ["audit", "verify", "--ledger", url, "--operator-key", key])
    assert result.exit_code == 0, result.output
    assert f"tree head of size {sizes[0]}: cosigned by uni-a, co-c" in result.output


def test_hostile_cosignatures_are_refused_and_not_kept(sqlite_world: World) -> None:
    accept_all(sqlite_world)
    head = sqlite_world.receipts[("uni-a", 2)].tree_head
    (good,) = cosign_heads([head], "uni-a", SIGNERS["uni-a"], now=1_700_000_000)
    (other,) = cosign_heads([head], "co-c", SIGNERS["co-c"], now=1_700_000_000)
    (stranger,) = cosign_heads([head], "uni-a", Ed25519PrivateKey.generate(), now=1)
    (far,) = cosign_heads([head], "uni-a", SIGNERS["uni-a"], now=2**62)  # year ~10^11
    cases = {
        "another witness's line": (other, "signed as 'co-c', not 'uni-a'"),
        "another key": (stranger, "not by the key it is checked with"),
        "a time far in the future": (far, "states a time in the future"),
        "an unsigned size": (
            dataclasses.replace(good, tree_size=head.tree_size + 5),
            "no checkpoint of size",
        ),
        "another root": (dataclasses.replace(good, root=_flip(head.root)), "no checkpoint of size"),
        "a garbled line": (dataclasses.replace(good, line="\u2014 uni-a !!!\n"), "not base64"),
        "no dash": (dataclasses.replace(good, line="uni-a AAAA\n"), "em dash"),
        "a forged signature": (
            dataclasses.replace(good, line=_garble(good.line)),
            "does not verify",
        ),
    }
    for case, (item, reason) in cases.items():
        with sqlite_world.ledger.session() as s:
            largest, refused = record_cosignatures(s, "uni-a", [item])
        assert largest is None and len(refused) == 1 and reason in refused[0], (case, refused)
    with sqlite_world.ledger.session() as s:
        _, refused = record_cosignatures(s, "nobody", [good])
    assert refused == ["nobody has no admitted key to check cosignatures with"]
    assert verify_ledger(sqlite_world.ledger, OPERATOR.public_key()).cosignatures == 0


def test_a_tampered_cosignature_is_named_by_audit_verify(sqlite_world: World) -> None:
    accept_all(sqlite_world)
    cosign_all(sqlite_world)
    with sqlite_world.ledger.engine.connect() as c:
        line = c.execute(text("SELECT line FROM cosignatures WHERE witness = 'co-c'")).first()
    assert line is not None
    forged = _garble(line[0])
    with sqlite_world.ledger.engine.begin() as c:
        c.execute(text("DROP TRIGGER cosignatures_no_update"))
        c.execute(text("UPDATE cosignatures SET line = :l WHERE witness = 'co-c'"), {"l": forged})
    with pytest.raises(LedgerTampered, match="co-c's cosignature on the tree head of size"):
        verify_ledger(sqlite_world.ledger, OPERATOR.public_key())


def _audit_verify(world: World) -> tuple[int, str]:
    """``audit verify`` of the world's ledger: its exit code and its output on one line."""
    url = world.ledger.url
    key = encode_public(OPERATOR.public_key())
    result = CliRunner().invoke(app, ["audit", "verify", "--ledger", url, "--operator-key", key])
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


def test_a_cosignature_dated_ten_years_ahead_is_not_intact(sqlite_world: World) -> None:
    """Recording refuses a line dated over an hour ahead of its clock; verify applies the same."""
    accept_all(sqlite_world)
    head = sqlite_world.receipts[("uni-a", 2)].tree_head
    ahead = int(time.time()) + 10 * 365 * 86400
    (future,) = cosign_heads([head], "uni-a", SIGNERS["uni-a"], now=ahead)
    with sqlite_world.ledger.session() as s:
        assert "states a time in the future" in record_cosignatures(s, "uni-a", [future])[1][0]
    with sqlite_world.ledger.engine.begin() as c:  # kept by hand, as a rogue operator could
        c.execute(
            text(
                "INSERT INTO cosignatures (tree_head_id, witness, line, cosigned_at) SELECT id, "
                "'uni-a', :line, :at FROM tree_heads WHERE tree_size = :size"
            ),
            {"line": future.line, "at": datetime.fromtimestamp(ahead, UTC), "size": head.tree_size},
        )
    code, output = _audit_verify(sqlite_world)
    assert code == 1 and output.startswith("NOT INTACT"), output
    assert f"uni-a's cosignature on the tree head of size {head.tree_size}" in output
    assert "states a time in the future" in output
    assert "more than 60 minutes after the clock that checks it" in output


@pytest.mark.parametrize(
    ("table", "column", "named"),
    [
        ("tree_heads", "checkpoint", "tree_heads row id 1"),
        ("cosignatures", "line", "cosignatures row id 1"),
    ],
)
def test_stored_text_that_is_not_utf8_is_named_not_a_crash(
    sqlite_world: World, table: str, column: str, named: str
) -> None:
    accept_all(sqlite_world)
    cosign_all(sqlite_world)
    with sqlite_world.ledger.engine.begin() as c:
        c.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_no_update")
        c.exec_driver_sql(
            f"UPDATE {table} SET {column} = {column} || CAST(x'ff' AS TEXT) "
            f"WHERE id = (SELECT MIN(id) FROM {table})"
        )
    code, output = _audit_verify(sqlite_world)
    assert code == 1 and output.startswith("NOT INTACT"), output
    assert f"{named}: its {column} is not UTF-8 text" in output
