"""``audit card``: a released model card checked against the consortium, as a hostile operator.

The operator holds its own keys and the ledger; each forgery below uses the
project's own release and signing code. A real SQLite ledger, real Ed25519
keys for the operator and the three institutions, real cosignatures.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select, text
from typer.testing import CliRunner

from audit.cards import CardVerdict, check_card
from client.receipts import cosign_heads
from common.canonical import canonical_json
from common.consortium import Consortium, default_log_origin
from common.keys import encode_public
from common.licences import SPDX
from common.note import COSIGNATURE_TYPE, cosign, signature_lines, verifier_key
from fedcommons.cli import app
from ledger import Ledger
from ledger.cosignatures import record_cosignatures
from ledger.entries import record_row
from ledger.schema import Cosignature, LedgerTreeHead, Release
from ledger.tree_heads import set_log_origin, tree_head_from_row
from tests.support.release_federation import COMPANY, Federation

INSTITUTIONS = ("university-a", "university-b", "company-c")
LICENCES = {
    "university-a": SPDX["CC-BY-4.0"],
    "university-b": SPDX["CC-BY-NC-4.0"],
    "company-c": COMPANY,
}
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
runner = CliRunner()


@dataclass
class Released:
    """A consortium's ledger with a released run, its card and ``consortium.json``."""

    federation: Federation
    signers: dict[str, Ed25519PrivateKey]
    consortium: Path
    out: Path
    run_id: int

    @property
    def card(self) -> dict[str, Any]:
        card: dict[str, Any] = json.loads((self.out / "model-card.json").read_bytes())
        return card

    def check(self, card: dict[str, Any], *, ledger: bool = True) -> CardVerdict:
        consortium = Consortium.load(self.consortium)
        if not ledger:
            return check_card(card, operator=consortium.operator_key, origin=consortium.origin)
        with self.federation.ledger.session() as s:
            return check_card(
                card, operator=consortium.operator_key, origin=consortium.origin, session=s
            )


def _federation(ledger: Ledger, operator: Ed25519PrivateKey, folder: Path) -> Federation:
    return Federation(ledger, operator, folder / "snapshots", {})


def _cosign(federation: Federation, signers: dict[str, Ed25519PrivateKey]) -> None:
    """Each signer cosigns every checkpoint so far, through the ledger's recording path."""
    with federation.ledger.session() as s:
        heads = [tree_head_from_row(r) for r in s.scalars(select(LedgerTreeHead))]
        for name, key in signers.items():
            _, refused = record_cosignatures(s, name, cosign_heads(heads, name, key, now=1))
            assert refused == []


def _release(
    federation: Federation, signers: dict[str, Ed25519PrivateKey], out: Path, cosigners: int
) -> int:
    """Admit the institutions with ``signers``' keys, run 3 rounds, cosign, release."""
    for name in INSTITUTIONS:
        federation.keys[name] = encode_public(signers[name].public_key())
        federation.admit(name, LICENCES[name])
    run_id = federation.run(list(INSTITUTIONS), rounds=3)
    _cosign(federation, {n: signers[n] for n in INSTITUTIONS[:cosigners]})
    federation.release(run_id, out)
    return run_id


@pytest.fixture
def released(tmp_path: Path) -> Iterator[Released]:
    """Run 1 of a 3-member consortium, released, its checkpoint cosigned by 2 of the 3."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    operator = Ed25519PrivateKey.generate()
    federation = _federation(ledger, operator, tmp_path)
    signers = {name: Ed25519PrivateKey.generate() for name in INSTITUTIONS}
    run_id = _release(federation, signers, tmp_path / "release", cosigners=2)
    consortium = Consortium(
        name="t",
        superlink="127.0.0.1:9092",
        aggregator_public_key=encode_public(X25519PrivateKey.generate().public_key()),
        operator_public_key=encode_public(operator.public_key()),
        ca_certificate=PEM,
        log_origin=default_log_origin(operator.public_key()),
    ).write(tmp_path / "consortium.json")
    yield Released(federation, signers, consortium, tmp_path / "release", run_id)
    ledger.close()


def _rerelease(released: Released, card: dict[str, Any]) -> None:
    """The operator records a release entry for its edited card, as it can: it holds the ledger."""
    proof = card["ledger"]["tree_head"]
    with released.federation.ledger.session() as s:
        record_row(
            s,
            Release(
                run_id=released.run_id,
                model_sha256=card["model"]["sha256"],
                card_sha256=hashlib.sha256(canonical_json(card)).hexdigest(),
                checkpoint_tree_size=proof["tree_size"],
                checkpoint_root=proof["root"],
                out="/forged",
            ),
            "release",
        )


def _mismatch(verdict: CardVerdict, name: str) -> str:
    assert verdict.status == "refused"
    check = verdict.check(name)
    assert check.held is False, check
    return check.detail


def test_the_honest_card_is_verified_against_the_ledger(released: Released) -> None:
    verdict = released.check(released.card)
    assert verdict.status == "verified", verdict.to_dict()
    assert verdict.check("quorum").detail == (
        "cosigned by 2 of the 3 members admitted to run 1 (university-a, university-b); "
        "the quorum is 2 (a majority)"
    )
    assert verdict.check("rounds proven").detail == "all 3 listed rounds are proven"


def test_without_the_ledger_the_card_is_incomplete_never_verified(released: Released) -> None:
    verdict = released.check(released.card, ledger=False)
    assert verdict.status == "incomplete"
    assert [c.name for c in verdict.unchecked] == [
        "checkpoint", "witnesses", "quorum", "release", "contributors", "obligations", "privacy",
    ]  # fmt: skip
    assert all(c.detail == "not checked: needs --ledger" for c in verdict.unchecked)


def test_a_card_with_too_few_cosigners_misses_the_quorum(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    operator = Ed25519PrivateKey.generate()
    federation = _federation(ledger, operator, tmp_path)
    signers = {name: Ed25519PrivateKey.generate() for name in INSTITUTIONS}
    _release(federation, signers, tmp_path / "release", cosigners=1)
    card = json.loads((tmp_path / "release" / "model-card.json").read_bytes())
    with ledger.session() as s:
        verdict = check_card(
            card, operator=operator.public_key(), origin=default_log_origin(operator.public_key()),
            session=s,
        )  # fmt: skip
    ledger.close()
    assert _mismatch(verdict, "quorum") == (
        "cosigned by 1 of the 3 members admitted to run 1 (university-a); "
        "the quorum is 2 (a majority)"
    )
    assert [c.name for c in verdict.mismatches] == ["quorum"]


def test_a_card_for_a_model_nobody_trained_with_forged_witness_keys_is_refused(
    released: Released, tmp_path: Path
) -> None:
    """The operator runs a ledger of its own, admitting the institutions under keys it made."""
    fork = Ledger(f"sqlite:///{tmp_path / 'fork.db'}")
    forger = _federation(fork, released.federation.operator, tmp_path / "fork")
    fakes = {name: Ed25519PrivateKey.generate() for name in INSTITUTIONS}
    _release(forger, fakes, tmp_path / "forged", cosigners=3)
    fork.close()
    card = json.loads((tmp_path / "forged" / "model-card.json").read_bytes())
    offline = released.check(card, ledger=False)
    assert offline.status == "incomplete"  # the operator's own signature and proofs hold
    verdict = released.check(card)
    witnesses = _mismatch(verdict, "witnesses")
    for name in INSTITUTIONS:
        assert (
            f"the card states a witness key for {name} that is not the key the consortium "
            "admitted it with"
        ) in witnesses
        assert f"{name}'s cosignature does not verify on this checkpoint with its admitted key" in (
            witnesses
        )
    assert _mismatch(verdict, "quorum").startswith("cosigned by 0 of the 3 members")
    assert "the card's head is not this log's" in _mismatch(verdict, "checkpoint")
    assert "it is not the card the operator released" in _mismatch(verdict, "release")


def test_a_card_without_its_non_commercial_obligation_is_refused(released: Released) -> None:
    card = released.card
    card["obligations"]["non_commercial"] = False
    card["obligations"]["non_commercial_from"] = []
    _rerelease(released, card)  # even with a release entry that names the edited card
    verdict = released.check(card)
    assert [c.name for c in verdict.mismatches] == ["obligations"]
    detail = verdict.check("obligations").detail
    assert "non_commercial: the card says False, the licences the ledger records say True" in detail
    assert (
        "non_commercial_from: the card says [], the licences the ledger records say "
        "['university-b (CC-BY-NC-4.0)', 'company-c (custom:company-c-research)']"
    ) in detail


def test_a_card_with_an_edited_epsilon_is_refused(released: Released) -> None:
    card = released.card
    row = next(p for p in card["privacy"] if p["institution"] == "university-b")
    recorded = row["epsilon"]
    row["epsilon"] = 0.5
    _rerelease(released, card)
    verdict = released.check(card)
    assert [c.name for c in verdict.mismatches] == ["privacy"]
    assert verdict.check("privacy").detail == (
        f"university-b/{row['dataset_sha256'][:12]} epsilon: the card says 0.5, the privacy "
        f"charges the ledger records say {recorded!r}"
    )


def test_a_checkpoint_under_another_log_origin_is_refused_offline(
    released: Released, tmp_path: Path
) -> None:
    """The operator releases from a log of another origin, signed with its own key."""
    other = Ledger(f"sqlite:///{tmp_path / 'other.db'}")
    with other.session() as s:
        set_log_origin(s, "example.org/another-log")
    forger = _federation(other, released.federation.operator, tmp_path / "other")
    _release(forger, released.signers, tmp_path / "other-release", cosigners=0)
    other.close()
    card = json.loads((tmp_path / "other-release" / "model-card.json").read_bytes())
    verdict = released.check(card, ledger=False)
    assert verdict.check("operator signature").held is True
    assert _mismatch(verdict, "log origin") == (
        "the checkpoint is of log 'example.org/another-log', not of the consortium's log "
        f"{Consortium.load(released.consortium).origin!r}"
    )


def test_a_card_listing_more_rounds_than_it_proves_is_refused_offline(
    released: Released,
) -> None:
    card = released.card
    last = card["ledger"]["rounds"][-1]
    card["ledger"]["rounds"] = [last]  # proves only the final round
    card["rounds"] += [dict(card["rounds"][-1], round=n) for n in range(4, 9)]  # lists 8
    verdict = released.check(card, ledger=False)
    assert _mismatch(verdict, "rounds proven") == "; ".join(
        f"round {n} is listed but no entry proves it" for n in (1, 2, 4, 5, 6, 7, 8)
    )


def test_a_cosignature_replayed_from_another_checkpoint_is_refused(released: Released) -> None:
    card = released.card
    signed = card["ledger"]["tree_head"]
    with released.federation.ledger.session() as s:
        first = s.scalars(select(LedgerTreeHead).order_by(LedgerTreeHead.id)).first()
        assert first is not None and first.tree_size < signed["tree_size"]
        replayed = s.scalar(
            select(Cosignature.line).where(
                Cosignature.tree_head_id == first.id, Cosignature.witness == "university-b"
            )
        )
    assert replayed is not None
    text, lines = signature_lines(signed["checkpoint"])
    kept = [line.line() for line in lines if line.name != "university-b"]
    signed["checkpoint"] = text + "\n" + "".join(kept) + replayed
    verdict = released.check(card)
    assert (
        "university-b's cosignature does not verify on this checkpoint with its admitted key"
        in (_mismatch(verdict, "witnesses"))
    )
    assert _mismatch(verdict, "quorum").startswith("cosigned by 1 of the 3 members")


def test_audit_card_exit_codes(released: Released) -> None:
    base = ["audit", "card", str(released.out), "--operator-key", str(released.consortium)]
    ledger = ["--ledger", released.federation.ledger.url]
    verified = runner.invoke(app, [*base, *ledger])
    assert verified.exit_code == 0, verified.output
    assert verified.output.startswith(f"VERIFIED {released.out / 'model-card.json'}\n")
    assert "  held quorum: cosigned by 2 of the 3 members" in verified.output
    incomplete = runner.invoke(app, base)
    assert incomplete.exit_code == 4
    assert "  not checked witnesses: not checked: needs --ledger" in incomplete.output
    assert "VERIFIED" not in incomplete.output and "INCOMPLETE" in incomplete.output
    card = released.card
    card["obligations"]["non_commercial"] = False
    (released.out / "model-card.json").write_bytes(canonical_json(card))
    refused = runner.invoke(app, [*base, *ledger, "--format", "json"])
    assert refused.exit_code == 1
    doc = json.loads(refused.output)
    assert doc["status"] == "refused"
    assert [c["check"] for c in doc["checks"] if c["status"] == "mismatch"] == [
        "release",
        "obligations",
    ]


def test_audit_verify_releases_checks_every_card(released: Released, tmp_path: Path) -> None:
    folder = tmp_path / "releases"
    shutil.copytree(released.out, folder / "honest")
    shutil.copytree(released.out, folder / "edited")
    card = released.card
    card["privacy"][0]["epsilon"] = 0.01
    (folder / "edited" / "model-card.json").write_bytes(canonical_json(card))
    args = ["audit", "verify", "--ledger", released.federation.ledger.url,
            "--operator-key", str(released.consortium), "--releases", str(folder)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "intact" in result.output.splitlines()[0]
    assert f"REFUSED {folder / 'edited' / 'model-card.json'}" in result.output
    assert f"VERIFIED {folder / 'honest' / 'model-card.json'}" in result.output
    assert "MISMATCH privacy: " in result.output
    (folder / "broken").mkdir()
    (folder / "broken" / "model-card.json").write_text('{"run": 1, "ledger": {}}')
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"REFUSED {folder / 'broken' / 'model-card.json'}" in result.output
    assert "  MISMATCH card: the model card's ledger proof is malformed: KeyError(" in result.output
    assert f"VERIFIED {folder / 'honest' / 'model-card.json'}" in result.output  # still checked
    (folder / "broken" / "model-card.json").write_text(json.dumps({**card, "rounds": 3}))
    shown = runner.invoke(app, ["audit", "card", str(folder / "broken"), "--operator-key",
                                str(released.consortium)])  # fmt: skip
    assert shown.exit_code == 1
    assert "the model card is malformed: TypeError(" in shown.output
    shutil.rmtree(folder / "edited")
    shutil.rmtree(folder / "broken")
    assert runner.invoke(app, args).exit_code == 0


def test_a_cosignature_by_someone_never_admitted_is_refused(released: Released) -> None:
    card = released.card
    signed = card["ledger"]["tree_head"]
    text, _ = signature_lines(signed["checkpoint"])
    stranger = Ed25519PrivateKey.generate()
    signed["checkpoint"] += cosign(text, "university-z", stranger, 1).line()
    signed["witnesses"]["university-z"] = verifier_key(
        "university-z", stranger.public_key(), COSIGNATURE_TYPE
    )
    verdict = released.check(card)
    assert _mismatch(verdict, "witnesses") == (
        "university-z cosigned, but the consortium admitted no university-z"
    )
    assert verdict.check("quorum").held is True  # the members' own cosignatures still count


def _released_run(
    tmp_path: Path, *, quorum: str | int = "majority", hide: str | None = None
) -> CardVerdict:
    """Admit three members, run 2 rounds under ``quorum``, cosign by two, release, check.

    ``hide``: the operator starts the run with that member's key hidden, so the
    run's members entry leaves it out, and restores the key right after."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    operator = Ed25519PrivateKey.generate()
    federation = _federation(ledger, operator, tmp_path)
    signers = {name: Ed25519PrivateKey.generate() for name in INSTITUTIONS}
    for name in INSTITUTIONS:
        federation.keys[name] = encode_public(signers[name].public_key())
        federation.admit(name, LICENCES[name])
    update = "UPDATE participants SET public_key = {} WHERE name = '{}'"
    if hide is not None:
        with ledger.engine.begin() as c:
            c.execute(text(update.format("NULL", hide)))
    run_id = federation.run([n for n in INSTITUTIONS if n != hide], rounds=2, quorum=quorum)
    if hide is not None:
        with ledger.engine.begin() as c:
            c.execute(text(update.format(f"'{federation.keys[hide]}'", hide)))
    _cosign(federation, {n: signers[n] for n in INSTITUTIONS[:2]})
    federation.release(run_id, tmp_path / "release")
    card = json.loads((tmp_path / "release" / "model-card.json").read_bytes())
    origin = default_log_origin(operator.public_key())
    with ledger.session() as s:
        verdict = check_card(card, operator=operator.public_key(), origin=origin, session=s)
    ledger.close()
    return verdict


def test_the_policys_quorum_is_the_cards_quorum(tmp_path: Path) -> None:
    """A run whose policy asks all three members: two cosigners no longer suffice."""
    assert _mismatch(_released_run(tmp_path, quorum=3), "quorum") == (
        "cosigned by 2 of the 3 members admitted to run 1 (university-a, university-b); "
        "the quorum is 3 (the policy's)"
    )


def test_a_members_entry_that_leaves_out_an_admitted_member_is_refused(
    tmp_path: Path,
) -> None:
    """The run's members entry names two members (a quorum of 2 out of 2); the ledger
    admitted three by the run's start."""
    detail = _mismatch(_released_run(tmp_path, hide="company-c"), "quorum")
    assert "the run's members entry names university-a, university-b" in detail
    assert "where the ledger admitted company-c, university-a, university-b" in detail
