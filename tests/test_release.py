"""Model releases: the final model, its card's provenance and obligations, and the ledger proof.

Ledger state is built through the store functions (admission, rounds,
privacy charges, exclusions, signed checkpoints) on a real SQLite file and
the real PostgreSQL server; the end-to-end demo test covers a real run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text
from typer.testing import CliRunner

from common.cli.app import app
from common.identity import EnrolmentRequest
from common.keys import encode_public, write_private_key
from common.licences import SPDX, Licence
from common.merkle import ProofError, leaf_hash, verify_inclusion
from common.model import arrays_sha256
from common.policy import Policy
from common.protocol import PrivacyCharge
from server.checkpoint import load_checkpoint, save_checkpoint
from server.ledger import (
    ChargeFact,
    ExclusionFact,
    Ledger,
    UpdateFact,
    admit_participant,
    finish_run,
    ledger_report,
    record_privacy,
    record_round,
    start_run,
)
from server.ledger.checkpoints import Checkpoint, CheckpointError, sign_checkpoint
from server.ledger.schema import LedgerEntry, Release, Round
from server.ledger.verify import LedgerTampered, verify_ledger
from server.model_card import CardError, verify_card
from server.release import ReleaseError, release_model

H = "a" * 64
COMPANY = Licence(
    id="custom:company-c-research",
    commercial=False,
    derivatives=True,
    share_alike=False,
    attribution="Company C (industrial partner data)",
    purposes=("research",),
)
CREDIT = SPDX["CC-BY-4.0"].attribution  # what each SPDX licence with attribution asks


def _dataset(name: str, tag: str = "") -> str:
    return hashlib.sha256(f"{name}{tag}".encode()).hexdigest()


def _admit(ledger: Ledger, name: str, licence: Licence, dataset: str, key: str) -> None:
    request = EnrolmentRequest(
        institution=name,
        kind="industry" if name.startswith(("company", "co-")) else "academia",
        licence=licence.to_dict(),
        dataset={"sha256": dataset, "records": 100, "format": "npz", "schema": {"x": [8, 8]}},
        signing_public_key=key,
        supernode_public_key=f"ecdsa-sha2-nistp384 {name}",
        consortium_id=H,
        created_at="2026-01-01T00:00:00+00:00",
    )
    with ledger.session() as s:
        admit_participant(
            s, request, hashlib.sha256(f"request {name}{dataset}".encode()).hexdigest()
        )


def _weights(round_number: int) -> dict[str, np.ndarray]:
    return {
        "conv.weight": np.full((2, 3), round_number, dtype=np.float32),
        "fc.bias": np.arange(4, dtype=np.float32) * round_number,
    }


def _charge(epsilon: float, dataset: str) -> PrivacyCharge:
    return PrivacyCharge(True, epsilon, 1e-5, 1.1, 0.05, 20, "rdp", 1.0, dataset, "f" * 64)


@dataclass(frozen=True)
class Federation:
    """A ledger with institutions admitted under their licences."""

    ledger: Ledger
    operator: Ed25519PrivateKey
    checkpoints: Path
    keys: dict[str, str]

    def admit(self, name: str, licence: Licence, tag: str = "") -> None:
        if name not in self.keys:
            self.keys[name] = encode_public(Ed25519PrivateKey.generate().public_key())
        _admit(self.ledger, name, licence, _dataset(name, tag), self.keys[name])

    def run(
        self,
        contributors: list[str],
        *,
        excluded: tuple[str, ...] = (),
        rounds: int = 2,
        status: str = "finished",
        sign: bool = True,
        trained_on: dict[str, str] | None = None,
    ) -> int:
        """A run in which ``contributors`` train every round and ``excluded`` never do."""
        trained_on = trained_on or {}
        policy = Policy().with_deploy(checkpoint_dir=str(self.checkpoints))
        with self.ledger.session() as s:
            run_id = start_run(
                s,
                policy_sha256=policy.sha256(),
                policy_toml=policy.to_toml(),
                model="cnn",
                dataset="digits",
                initial_model_sha256=arrays_sha256(_weights(0)),
                base_model_sha256="e" * 64,
                planned_rounds=rounds,
                flower_run_id=4242,
            ).id
        for number in range(1, rounds + 1):
            charges = [
                ChargeFact(
                    name, _charge(1.5 * number + i, _dataset(name, trained_on.get(name, "")))
                )
                for i, name in enumerate(contributors)
            ]
            exclusions = [
                ExclusionFact(name, 100 + i, 451, "licence expired (research run)")
                for i, name in enumerate(excluded)
            ]
            after = arrays_sha256(_weights(number))
            save_checkpoint(self.checkpoints, number, _weights(number), after)
            with self.ledger.session() as s:
                record_privacy(s, run_id, number, charges=charges, exclusions=exclusions)
                record_round(
                    s,
                    run_id,
                    number=number,
                    model_sha256_before=arrays_sha256(_weights(number - 1)),
                    model_sha256_after=after,
                    loss=1.0 / number,
                    accuracy=0.5 + 0.1 * number,
                    seconds=3.0,
                    updates=[
                        UpdateFact(name, 100, 0.4, _dataset(name, f"u{number}"), 500, 1.0)
                        for name in contributors
                    ],
                )
                if sign:
                    sign_checkpoint(s, self.operator, note=f"run {run_id} round {number}")
        if status != "running":
            with self.ledger.session() as s:
                finish_run(
                    s,
                    run_id,
                    status,
                    test_accuracy=0.75 if status == "finished" else None,
                    reason=None if status == "finished" else "round 3: 1 of 3 nodes",
                )
        return run_id


def _entries(ledger: Ledger) -> list[LedgerEntry]:
    with ledger.session() as s:
        return list(s.scalars(select(LedgerEntry).order_by(LedgerEntry.seq)))


def _read_card(out: Path) -> dict:
    return json.loads((out / "model-card.json").read_bytes())


class ReleaseContract:
    """Subclasses provide ``url`` (a fresh database)."""

    @pytest.fixture
    def federation(self, url: str, tmp_path: Path) -> Iterator[Federation]:
        ledger = Ledger(url)
        yield Federation(ledger, Ed25519PrivateKey.generate(), tmp_path / "checkpoints", {})
        ledger.close()

    @pytest.fixture
    def demo(self, federation: Federation) -> Federation:
        """The demo's licences: CC-BY, CC-BY-NC and company-c's custom research terms."""
        federation.admit("university-a", SPDX["CC-BY-4.0"])
        federation.admit("university-b", SPDX["CC-BY-NC-4.0"])
        federation.admit("company-c", COMPANY)
        return federation

    def test_non_commercial_data_makes_the_model_non_commercial(
        self, demo: Federation, tmp_path: Path
    ) -> None:
        run_id = demo.run(["university-a", "university-b", "company-c"])
        release_model(demo.ledger, run_id, tmp_path / "out", signer=demo.operator)
        owed = _read_card(tmp_path / "out")["obligations"]
        assert owed == {
            "attribution": [
                f"university-a: {CREDIT}",
                f"university-b: {CREDIT}",
                "company-c: Company C (industrial partner data)",
            ],
            "non_commercial": True,
            "non_commercial_from": [
                "university-b (CC-BY-NC-4.0)",
                "company-c (custom:company-c-research)",
            ],
            "share_alike": [],
            "share_alike_from": [],
            "purposes": ["research"],  # company-c allows nothing else
            "expires": None,
        }
        markdown = (tmp_path / "out" / "model-card.md").read_text()
        assert "## Obligations" in markdown
        assert (
            "**Non-commercial use only**, required by university-b (CC-BY-NC-4.0), "
            "company-c (custom:company-c-research)." in markdown
        )
        assert "  - company-c: Company C (industrial partner data)" in markdown

    def test_share_alike_and_expiry_propagate(self, federation: Federation, tmp_path: Path) -> None:
        federation.admit("university-a", SPDX["CC-BY-SA-4.0"])
        federation.admit("lab-d", replace(SPDX["CC0-1.0"], expires=date(2031, 5, 1)))
        run_id = federation.run(["university-a", "lab-d"])
        release_model(federation.ledger, run_id, tmp_path / "out", signer=federation.operator)
        owed = _read_card(tmp_path / "out")["obligations"]
        assert owed["share_alike"] == ["CC-BY-SA-4.0"]
        assert owed["share_alike_from"] == ["university-a (CC-BY-SA-4.0)"]
        assert owed["attribution"] == [f"university-a: {CREDIT}"]  # CC0 asks no credit
        assert (owed["non_commercial"], owed["purposes"]) == (
            False,
            ["research", "education", "commercial"],
        )
        assert owed["expires"] == "2031-05-01"
        markdown = (tmp_path / "out" / "model-card.md").read_text()
        assert "- Commercial use: allowed by every contributing licence." in markdown
        assert "**Share-alike**: derived works carry the terms of CC-BY-SA-4.0" in markdown

    def test_an_institution_excluded_from_every_round_adds_no_obligation(
        self, federation: Federation, tmp_path: Path
    ) -> None:
        federation.admit("university-a", SPDX["CC-BY-4.0"])
        federation.admit("university-b", SPDX["CC-BY-4.0"])
        federation.admit("co-x", SPDX["CC-BY-NC-SA-4.0"])
        run_id = federation.run(["university-a", "university-b"], excluded=("co-x",))
        release_model(federation.ledger, run_id, tmp_path / "out", signer=federation.operator)
        card = _read_card(tmp_path / "out")
        assert [c["institution"] for c in card["contributors"]] == ["university-a", "university-b"]
        assert card["obligations"]["non_commercial"] is False
        assert card["obligations"]["share_alike"] == []
        assert all("co-x" not in credit for credit in card["obligations"]["attribution"])
        assert [p["institution"] for p in card["privacy"]] == ["university-a", "university-b"]
        assert {(e["round"], e["institution"], e["code"]) for e in card["exclusions"]} == {
            (1, "co-x", 451),
            (2, "co-x", 451),
        }
        assert (
            "| 1 | co-x | 451 | licence expired (research run) |"
            in (tmp_path / "out" / "model-card.md").read_text()
        )

    def test_only_the_dataset_a_contributor_trained_on_counts(
        self, federation: Federation, tmp_path: Path
    ) -> None:
        federation.admit("university-a", SPDX["CC-BY-4.0"])
        federation.admit("university-b", SPDX["CC-BY-NC-4.0"])  # an older dataset
        federation.admit("university-b", SPDX["CC-BY-4.0"], tag="v2")
        run_id = federation.run(["university-a", "university-b"], trained_on={"university-b": "v2"})
        release_model(federation.ledger, run_id, tmp_path / "out", signer=federation.operator)
        card = _read_card(tmp_path / "out")
        (b,) = (c for c in card["contributors"] if c["institution"] == "university-b")
        assert [(d["sha256"], d["licence"]) for d in b["datasets"]] == [
            (_dataset("university-b", "v2"), "CC-BY-4.0")
        ]
        assert card["obligations"]["non_commercial"] is False

    def test_the_card_states_what_the_ledger_holds(self, demo: Federation, tmp_path: Path) -> None:
        run_id = demo.run(["university-a", "university-b", "company-c"])
        out = tmp_path / "release"
        released = release_model(demo.ledger, run_id, out, signer=demo.operator)
        assert sorted(p.name for p in out.iterdir()) == [
            "model-card.json",
            "model-card.md",
            "model.safetensors",
        ]
        card = _read_card(out)
        assert card == released.card
        final = arrays_sha256(_weights(2))
        number, arrays = load_checkpoint(out / "model.safetensors")
        assert (number, arrays_sha256(arrays)) == (2, final)
        assert card["model"]["sha256"] == released.model_sha256 == final
        assert (
            card["model"]["file_sha256"]
            == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
        )
        assert (
            released.card_sha256
            == hashlib.sha256((out / "model-card.json").read_bytes()).hexdigest()
        )
        assert (card["run"]["id"], card["run"]["rounds"], card["run"]["purpose"]) == (
            run_id,
            2,
            "research",
        )
        assert [(r["round"], r["model_sha256_after"]) for r in card["rounds"]] == [
            (1, arrays_sha256(_weights(1))),
            (2, final),
        ]
        assert [(c["institution"], c["kind"], c["rounds"]) for c in card["contributors"]] == [
            ("university-a", "academia", [1, 2]),
            ("university-b", "academia", [1, 2]),
            ("company-c", "industry", [1, 2]),
        ]
        # per institution: the last charge's cumulative epsilon (round 2) and delta
        assert [(p["institution"], p["epsilon"], p["delta"], p["rounds_charged"])
                for p in card["privacy"]] == [
            ("company-c", 5.0, 1e-5, 2), ("university-a", 3.0, 1e-5, 2),
            ("university-b", 4.0, 1e-5, 2),
        ]  # fmt: skip
        markdown = (out / "model-card.md").read_text()
        assert f"| model sha256 (ledger) | `{final}` |" in markdown
        assert "| university-b | `" in markdown and "| 4.000 | 1e-05 | rdp | 2 |" in markdown

    def test_the_cards_proof_verifies_against_the_signed_checkpoint(
        self, demo: Federation, tmp_path: Path
    ) -> None:
        run_id = demo.run(["university-a", "university-b", "company-c"])
        card = release_model(demo.ledger, run_id, tmp_path / "out", signer=demo.operator).card
        proof = card["ledger"]
        with demo.ledger.session() as s:
            last = s.scalars(select(Round).where(Round.number == 2)).one()
            assert proof["entry"]["seq"] == last.entry_seq
        signed = proof["checkpoint"]
        checkpoint = Checkpoint(
            *(signed[k] for k in ("tree_size", "root", "at", "note", "key_id", "signature"))
        )
        checkpoint.verify(demo.operator.public_key())
        assert checkpoint.note == f"run {run_id} round 2"  # the one signed after the round
        assert checkpoint.body().decode() == signed["signed_body"]
        payload = proof["entry"]["payload"]
        verify_inclusion(
            leaf_hash(payload.encode()), proof["entry"]["seq"], checkpoint.tree_size,
            [bytes.fromhex(p) for p in proof["inclusion_proof"]], bytes.fromhex(checkpoint.root),
        )  # fmt: skip
        assert json.loads(payload)["row"]["model_sha256_after"] == card["model"]["sha256"]
        verify_card(card, demo.operator.public_key())

        with pytest.raises(CheckpointError, match="names signing key"):
            verify_card(card, Ed25519PrivateKey.generate().public_key())
        bad_proof = json.loads(json.dumps(card))
        bad_proof["ledger"]["inclusion_proof"][0] = "0" * 64
        with pytest.raises(ProofError, match="does not lead to the expected root"):
            verify_card(bad_proof, demo.operator.public_key())
        other_model = json.loads(json.dumps(card))
        other_model["model"]["sha256"] = "f" * 64
        with pytest.raises(CardError, match=r"the card releases f{64}"):
            verify_card(other_model, demo.operator.public_key())

    def test_the_release_is_an_entry_and_the_ledger_still_verifies(
        self, demo: Federation, tmp_path: Path
    ) -> None:
        run_id = demo.run(["university-a", "university-b", "company-c"])
        before = verify_ledger(demo.ledger, demo.operator.public_key())
        released = release_model(demo.ledger, run_id, tmp_path / "out", signer=demo.operator)
        entries = _entries(demo.ledger)
        assert (entries[-1].seq, entries[-1].kind) == (released.entry_seq, "release")
        stated = json.loads(entries[-1].payload)
        assert stated["table"] == "releases"
        assert stated["row"]["card_sha256"] == released.card_sha256
        assert stated["row"]["model_sha256"] == released.model_sha256
        assert stated["row"]["checkpoint_root"] == released.card["ledger"]["checkpoint"]["root"]
        assert released.checkpoint is not None
        assert released.checkpoint.tree_size == len(entries)  # the new checkpoint covers it
        after = verify_ledger(demo.ledger, demo.operator.public_key())
        assert (after.entries, after.rows_checked, after.checkpoints) == (
            before.entries + 1,
            before.rows_checked + 1,
            before.checkpoints + 1,
        )
        assert released.checkpoint.root == after.tree_root
        with demo.ledger.session() as s:
            (row,) = s.scalars(select(Release)).all()
            assert (row.run_id, row.out) == (run_id, str((tmp_path / "out").resolve()))
            (run,) = ledger_report(s)["runs"]
        # auditors see it in 'audit show'
        (shown,) = run["releases"]
        assert (shown["model_sha256"], shown["card_sha256"]) == (
            released.model_sha256,
            released.card_sha256,
        )
        assert shown["checkpoint_root"] == released.card["ledger"]["checkpoint"]["root"]

    def test_a_checkpoint_is_signed_for_a_run_that_had_none(
        self, demo: Federation, tmp_path: Path
    ) -> None:
        run_id = demo.run(["university-a"], sign=False)
        with pytest.raises(
            ReleaseError, match=f"no signed checkpoint covers round 2 of run {run_id}"
        ):
            release_model(demo.ledger, run_id, tmp_path / "unsigned")
        assert not (tmp_path / "unsigned").exists()
        card = release_model(demo.ledger, run_id, tmp_path / "out", signer=demo.operator).card
        assert card["ledger"]["checkpoint"]["note"] == f"run {run_id} final round"
        verify_card(card, demo.operator.public_key())
        assert verify_ledger(demo.ledger, demo.operator.public_key()).checkpoints == 2

    def test_unknown_unfinished_and_empty_runs_are_refused(
        self, demo: Federation, tmp_path: Path
    ) -> None:
        out = tmp_path / "out"
        with pytest.raises(ReleaseError, match=r"^run 9 is not in the ledger$"):
            release_model(demo.ledger, 9, out, signer=demo.operator)
        running = demo.run(["university-a"], status="running")
        with pytest.raises(ReleaseError, match=f"run {running} is running, not finished"):
            release_model(demo.ledger, running, out, signer=demo.operator)
        failed = demo.run(["university-a"], status="failed")
        with pytest.raises(
            ReleaseError, match=rf"run {failed} is failed \(round 3: 1 of 3 nodes\), not finished"
        ):
            release_model(demo.ledger, failed, out, signer=demo.operator)
        empty = demo.run([], rounds=0)
        with pytest.raises(ReleaseError, match="finished without a round: there is no model"):
            release_model(demo.ledger, empty, out, signer=demo.operator)
        assert not out.exists()
        assert all(e.kind != "release" for e in _entries(demo.ledger))

    def test_a_missing_or_different_checkpoint_is_refused(
        self, demo: Federation, tmp_path: Path
    ) -> None:
        run_id = demo.run(["university-a"])
        final = demo.checkpoints / "round-0002.safetensors"
        final.rename(tmp_path / "aside.safetensors")
        with pytest.raises(ReleaseError, match=r"final round 2 is missing: no .*round-0002"):
            release_model(demo.ledger, run_id, tmp_path / "out", signer=demo.operator)
        save_checkpoint(demo.checkpoints, 2, _weights(7), "x")  # another run's model
        with pytest.raises(
            ReleaseError,
            match=rf"is not run {run_id}'s final model: its sha256 is {arrays_sha256(_weights(7))}",
        ):
            release_model(demo.ledger, run_id, tmp_path / "out", signer=demo.operator)
        # the real one, from another folder
        moved = tmp_path / "elsewhere"
        moved.mkdir()
        (tmp_path / "aside.safetensors").rename(moved / "round-0002.safetensors")
        released = release_model(
            demo.ledger, run_id, tmp_path / "out", checkpoint_dir=moved, signer=demo.operator
        )
        assert released.model_sha256 == arrays_sha256(_weights(2))

    def test_a_non_empty_folder_is_never_written_over(
        self, demo: Federation, tmp_path: Path
    ) -> None:
        run_id = demo.run(["university-a"])
        out = tmp_path / "out"
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
        with pytest.raises(ReleaseError, match="out is not empty: a release is written into"):
            release_model(demo.ledger, run_id, out, signer=demo.operator)
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
        release_model(demo.ledger, run_id, tmp_path / "first", signer=demo.operator)
        with pytest.raises(ReleaseError, match="first is not empty"):
            release_model(demo.ledger, run_id, tmp_path / "first", signer=demo.operator)

    def test_a_tampered_ledger_is_not_released(self, demo: Federation, tmp_path: Path) -> None:
        run_id = demo.run(["university-a"])
        with demo.ledger.engine.begin() as c:
            c.execute(text(f"UPDATE rounds SET model_sha256_after = '{'f' * 64}' WHERE number = 2"))
        with pytest.raises(LedgerTampered, match="rounds row 2 differs from its entry"):
            release_model(demo.ledger, run_id, tmp_path / "out", signer=demo.operator)
        assert not (tmp_path / "out").exists()


class TestSQLiteRelease(ReleaseContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'ledger.db'}"


class TestPostgresRelease(ReleaseContract):
    @pytest.fixture
    def url(self, postgres_url: str) -> str:
        return postgres_url


def test_operator_release_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    operator = Ed25519PrivateKey.generate()
    federation = Federation(ledger, operator, tmp_path / "checkpoints", {})
    federation.admit("university-a", SPDX["CC-BY-4.0"])
    federation.admit("university-b", SPDX["CC-BY-NC-4.0"])
    run_id = federation.run(["university-a", "university-b"])
    ledger.close()
    key = write_private_key(tmp_path / "operator.pem", operator)
    runner = CliRunner()

    command = ["operator", "release", "--run", str(run_id), "--ledger", url]
    result = runner.invoke(
        app,
        [*command, "--out", str(tmp_path / "r1"), "--operator-key", str(key), "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["obligations"]["non_commercial"] is True
    assert (
        doc["card_sha256"]
        == hashlib.sha256((tmp_path / "r1" / "model-card.json").read_bytes()).hexdigest()
    )
    assert doc["checkpoint"]["note"] == f"release of run {run_id}"

    # the policy names the ledger and the operator key, as 'operator init' writes it
    policy = tmp_path / "policy.toml"
    policy.write_text(Policy().with_deploy(ledger_url=url, operator_key=str(key)).to_toml())
    result = runner.invoke(
        app, ["operator", "release", "--run", str(run_id), "--policy", str(policy),
              "--out", str(tmp_path / "r2")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"released run {run_id} into" in result.output
    assert "obligations: non-commercial use only; credit 2 contributor(s)" in result.output

    for args, message in (
        (["--run", "9", "--out", str(tmp_path / "r3")], "error: run 9 is not in the ledger"),
        (["--run", str(run_id), "--out", str(tmp_path / "r1")], "r1 is not empty"),
        (
            ["--run", str(run_id), "--out", str(tmp_path / "r3"), "--checkpoints", str(tmp_path)],
            f"the checkpoint of run {run_id}'s final round 2 is missing",
        ),
    ):
        result = runner.invoke(app, [*command, *args])
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    result = runner.invoke(
        app, ["operator", "release", "--run", "1", "--out", str(tmp_path / "r4"),
              "--ledger", f"sqlite:///{tmp_path / 'absent.db'}"],
    )  # fmt: skip
    assert result.exit_code == 1 and "the file does not exist" in result.output
    assert not (tmp_path / "absent.db").exists()
    ledger = Ledger(url, migrate=False)
    with ledger.session() as s:
        assert len(s.scalars(select(Release)).all()) == 2  # the refused ones left no row
    ledger.close()
