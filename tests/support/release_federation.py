"""A ledger of institutions admitted under their licences, and runs recorded on it, for releases.

Shared by the release tests, the dashboard tests and the bad-input tests:
``Federation`` admits institutions through the admission store function and
records runs (privacy charges, exclusions, rounds, valuations, signed
checkpoints) with their model snapshots, as the ServerApp does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.arrays import arrays_sha256
from common.consortium import EnrolmentRequest
from common.keys import encode_public
from common.licences import Licence
from common.policy import Policy
from common.protocol import PrivacyCharge
from ledger import (
    ChargeFact,
    ExclusionFact,
    Ledger,
    UpdateFact,
    admit_participant,
    finish_run,
    record_privacy,
    record_round,
    record_valuation,
    start_run,
)
from ledger.shapley import value_round
from ledger.tree_heads import sign_tree_head
from server.app.snapshots import save_snapshot
from server.release.release import ModelRelease, release_model

H = "a" * 64  # the consortium's id
COMPANY = Licence(  # company-c's custom research terms
    id="custom:company-c-research",
    commercial=False,
    derivatives=True,
    share_alike=False,
    attribution="Company C (industrial partner data)",
    purposes=("research",),
)


def dataset_sha256(name: str, tag: str = "") -> str:
    """The digest of ``name``'s dataset; another ``tag`` is another dataset."""
    return hashlib.sha256(f"{name}{tag}".encode()).hexdigest()


def admit_institution(ledger: Ledger, name: str, licence: Licence, dataset: str, key: str) -> None:
    """Admit ``name`` under ``licence`` with ``dataset``, through the admission store function."""
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


def round_weights(round_number: int) -> dict[str, np.ndarray]:
    """The global model after round ``round_number`` (0: the initial model)."""
    return {
        "conv.weight": np.full((2, 3), round_number, dtype=np.float32),
        "fc.bias": np.arange(4, dtype=np.float32) * round_number,
    }


def privacy_charge(epsilon: float, dataset: str) -> PrivacyCharge:
    """A node's privacy charge of ``epsilon`` on ``dataset``."""
    return PrivacyCharge(True, epsilon, 1e-5, 1.1, 0.05, 20, "rdp", 1.0, dataset, "f" * 64)


@dataclass(frozen=True)
class Federation:
    """A ledger with institutions admitted under their licences."""

    ledger: Ledger
    operator: Ed25519PrivateKey
    snapshots: Path
    keys: dict[str, str]

    def admit(self, name: str, licence: Licence, tag: str = "") -> None:
        if name not in self.keys:
            self.keys[name] = encode_public(Ed25519PrivateKey.generate().public_key())
        admit_institution(self.ledger, name, licence, dataset_sha256(name, tag), self.keys[name])

    def release(self, run_id: int, out: Path, *, sign: bool = True) -> ModelRelease:
        """Release ``run_id`` into ``out`` from this federation's snapshots."""
        signer = self.operator if sign else None
        return release_model(self.ledger, run_id, out, snapshot_dir=self.snapshots, signer=signer)

    def run(
        self,
        contributors: list[str],
        *,
        excluded: tuple[str, ...] = (),
        rounds: int = 2,
        status: str = "finished",
        sign: bool = True,
        trained_on: dict[str, str] | None = None,
        worth: dict[str, int] | None = None,
        quorum: str | int = "majority",
    ) -> int:
        """A run in which ``contributors`` train every round and ``excluded`` never do."""
        trained_on = trained_on or {}
        policy = Policy().with_overrides({"witness.quorum": quorum})
        with self.ledger.session() as s:
            run_id = start_run(
                s,
                policy_sha256=policy.sha256(),
                policy_toml=policy.to_toml(),
                model="cnn",
                dataset="digits",
                initial_model_sha256=arrays_sha256(round_weights(0)),
                base_model_sha256="e" * 64,
                planned_rounds=rounds,
                flower_run_id=4242,
                quorum=policy.witness.quorum,
            ).id
        for number in range(1, rounds + 1):
            charges = [
                ChargeFact(
                    name,
                    privacy_charge(
                        1.5 * number + i, dataset_sha256(name, trained_on.get(name, ""))
                    ),
                )
                for i, name in enumerate(contributors)
            ]
            exclusions = [
                ExclusionFact(name, 100 + i, 451, "licence expired (research run)")
                for i, name in enumerate(excluded)
            ]
            after = arrays_sha256(round_weights(number))
            save_snapshot(self.snapshots, number, round_weights(number), after)
            with self.ledger.session() as s:
                record_privacy(s, run_id, number, charges=charges, exclusions=exclusions)
                record_round(
                    s,
                    run_id,
                    number=number,
                    model_sha256_before=arrays_sha256(round_weights(number - 1)),
                    model_sha256_after=after,
                    loss=1.0 / number,
                    accuracy=0.5 + 0.1 * number,
                    seconds=3.0,
                    updates=[
                        UpdateFact(name, 100, 0.4, dataset_sha256(name, f"u{number}"), 500, 1.0)
                        for name in contributors
                    ],
                )
                if worth:  # an additive game: each one's Shapley value is its worth
                    players = sorted(contributors)

                    def game(m: int, players: list[str] = players) -> int:
                        return sum(worth[p] for i, p in enumerate(players) if m >> i & 1)

                    record_valuation(
                        s,
                        run_id,
                        number,
                        value_round(
                            players,
                            game,
                            method="shapley",
                            exact_max=10,
                            truncation=0,
                            convergence=0.2,
                            seed=0,
                        ),
                    )
                if sign:
                    sign_tree_head(s, self.operator, note=f"run {run_id} round {number}")
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
