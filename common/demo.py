"""The embedded demo: three institutions, real Flower processes, one ledger.

The data are scikit-learn's real hand-written digits. Each institution's
partition is written to its own folder, which only its SuperNode reads; the
server keeps a validation split (scored every round) and a test split (scored
once at the end).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from common.data import (
    load_digits_data,
    partition_dirichlet,
    partition_iid,
    split_holdout,
    write_npz,
)
from common.datasets import LocalData, data_suffix, load_local_data, server_split_path
from common.identity import ParticipantState, enrol
from common.keys import load_ed25519_key, passphrase_from_env
from common.local_federation import (
    FederationError,
    LocalFederation,
    NodeSpec,
    build_app_dir,
    free_port,
    write_run_config,
)
from common.model import arrays_to_bytes, build_model, full_arrays, get_arrays
from common.policy import Policy, Scalar
from common.privacy import check_delta, epsilon_for_json
from common.protocol import BUDGET_EXHAUSTED
from common.receipts import read_receipts
from common.text import STDLIB_TOPICS, TextData, stdlib_docstrings, write_jsonl
from server.consortium import OperatorFiles, admit, init_consortium
from server.ledger import Ledger
from server.ledger.schema import Charge, Exclusion, Round, RoundUpdate, Run
from server.ledger.verify import verify_ledger
from server.release import release_model

__all__ = [
    "BERT_DEMO",
    "DEMO_INSTITUTIONS",
    "DemoLayout",
    "PrivacyBudgetExhausted",
    "RoundProgress",
    "prepare_data",
    "run_demo",
    "with_model",
]

DEMO_INSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("university-a", "academia"),
    ("university-b", "academia"),
    ("company-c", "industry"),
)


BERT_DEMO: dict[str, dict[str, Scalar]] = {
    "model": {
        "name": "bert",
        "num-classes": len(STDLIB_TOPICS),
        "train-layers": 0,
        "max-length": 64,
    },
    "data": {"dataset": "stdlib-docs", "labels": ",".join(STDLIB_TOPICS)},
    "federation": {"rounds": 8},
    "training": {"local-epochs": 1, "batch-size": 32, "learning-rate": 0.5},
}
"""What ``--model bert`` changes in a CNN policy: the text demo's model, data and training."""


def with_model(policy: Policy, model: str) -> Policy:
    """``policy`` switched to ``model``; switching to BERT applies :data:`BERT_DEMO`."""
    if model == policy.model.name:
        return policy
    sections = policy.to_sections()
    if model == "bert":
        for section, values in BERT_DEMO.items():
            sections[section].update(values)
    else:
        sections["model"]["name"] = model
    return Policy.from_sections(sections)


class PrivacyBudgetExhausted(FederationError):
    """The run stopped because too few institutions had privacy budget left."""


@dataclass(frozen=True)
class DemoLayout:
    """Where the demo put each party's data."""

    nodes: list[NodeSpec]
    kinds: dict[str, str]
    examples: dict[str, int]
    server_data_dir: Path


@dataclass(frozen=True)
class RoundProgress:
    round: int
    accuracy: float
    loss: float
    participants: int
    seconds: float
    epsilon: dict[str, float]
    """Cumulative epsilon per institution after this round (infinite without DP)."""


def prepare_data(workdir: Path, policy: Policy) -> DemoLayout:
    """Split the embedded data set and write each party's share to its own folder.

    Digits become ``.npz`` files, the standard-library docstrings ``.jsonl``
    files (the formats a participant would supply). Every file is read back
    through the participant loader, so a problem surfaces here, before any
    process starts.
    """
    seed = policy.federation.seed
    fractions = (policy.data.validation_fraction, policy.data.test_fraction)
    splits: tuple[LocalData, LocalData, LocalData]
    if policy.data.dataset == "stdlib-docs":
        splits = split_holdout(stdlib_docstrings(), *fractions, seed)
    else:
        splits = split_holdout(load_digits_data(), *fractions, seed)
    train, validation, test = splits
    count = len(DEMO_INSTITUTIONS)
    if policy.data.partition == "iid":
        parts = partition_iid(len(train), count, seed)
    else:
        parts = partition_dirichlet(train.labels, count, policy.data.dirichlet_alpha, seed)
    server_dir = workdir / "operator" / "data"
    for split, split_data in (("validation", validation), ("test", test)):
        _write(server_split_path(policy, server_dir, split), split_data, policy)
    nodes, examples = [], {}
    for (name, _kind), index in zip(DEMO_INSTITUTIONS, parts, strict=True):
        data_dir = workdir / "institutions" / name / "data"
        _write(
            data_dir / f"{policy.data.dataset}{data_suffix(policy)}", train.subset(index), policy
        )
        loaded = load_local_data(policy, data_dir)
        if policy.privacy.dp:
            check_delta(policy.privacy.delta, len(loaded))
        nodes.append(NodeSpec(name, data_dir, workdir / "institutions" / name / "state"))
        examples[name] = len(loaded)
    for split in ("validation", "test"):
        load_local_data(policy, server_split_path(policy, server_dir, split))
    return DemoLayout(nodes, dict(DEMO_INSTITUTIONS), examples, server_dir)


DEMO_LICENCES = {"university-a": "CC-BY-4.0", "university-b": "CC-BY-NC-4.0"}
"""The licences the demo's universities declare; company-c declares custom terms."""

COMPANY_TERMS = """# Company C's terms for its data: research only, credit the company.
name = "company-c-research"
commercial = false
derivatives = true
share-alike = false
attribution = "Company C (industrial partner data)"
purposes = ["research"]
"""


def _consortium(folder: Path, ledger_url: str) -> OperatorFiles:
    """The demo operator's consortium in ``folder``: created once, then reused."""
    files = OperatorFiles(folder.resolve())
    if files.consortium_file.exists():
        return files
    return init_consortium(
        folder,
        name="FedCommons demo",
        superlink=f"127.0.0.1:{free_port()}",
        hosts=["127.0.0.1", "localhost"],
        ledger_url=ledger_url,
    )


def _licence_for(node: NodeSpec) -> str:
    """An SPDX id, or company-c's custom terms written beside its data."""
    if node.institution in DEMO_LICENCES:
        return DEMO_LICENCES[node.institution]
    terms = node.data_dir.parent / "licence.toml"
    terms.write_text(COMPANY_TERMS, encoding="utf-8")
    return str(terms)


def _enrol_institutions(
    layout: DemoLayout, operator: OperatorFiles, policy: Policy
) -> list[NodeSpec]:
    """Enrol each institution from its state folder (its keys are kept across demos).

    A new request is signed whenever the institution's data changed since
    its last one (another seed, partition or model), with the same keys.
    """
    nodes = []
    for node in layout.nodes:
        state = ParticipantState(node.state_dir or node.data_dir.parent / "state")
        enrol(
            state.root,
            institution=node.institution,
            kind=layout.kinds[node.institution],
            data_path=node.data_dir,
            licence=_licence_for(node),
            consortium_file=operator.consortium_file,
            policy=policy,
            reuse_keys=True,
        )
        nodes.append(dataclasses.replace(node, state_dir=state.root, auth_key=state.supernode_key))
    return nodes


def _write(path: Path, data: LocalData, policy: Policy) -> None:
    if isinstance(data, TextData):
        write_jsonl(path, data, policy.data.text_column, policy.data.label_column)
    else:
        write_npz(path, data)


def _rounds(ledger: Ledger, flower_run_id: int) -> tuple[Run | None, list[RoundProgress]]:
    with ledger.session() as session:
        run = session.scalar(select(Run).where(Run.flower_run_id == str(flower_run_id)))
        if run is None:
            return None, []
        rows = session.scalars(
            select(Round).where(Round.run_id == run.id).order_by(Round.number)
        ).all()
        epsilon: dict[int, dict[str, float]] = {}
        for charge in session.scalars(select(Charge).where(Charge.run_id == run.id)):
            epsilon.setdefault(charge.round_number, {})[charge.participant.name] = charge.epsilon
        return run, [
            RoundProgress(
                r.number,
                r.accuracy,
                r.loss,
                r.num_participants,
                r.seconds,
                epsilon.get(r.number, {}),
            )
            for r in rows
        ]


def _exhausted_budgets(ledger: Ledger, run_id: int) -> list[str]:
    """The budget refusals recorded for a run, one line each."""
    with ledger.session() as session:
        rows = session.scalars(
            select(Exclusion)
            .where(Exclusion.run_id == run_id, Exclusion.code == BUDGET_EXHAUSTED)
            .order_by(Exclusion.id)
        ).all()
        return [f"round {e.round_number}: {e.reason}" for e in rows]


def _collect_receipts(folder: Path, nodes: list[NodeSpec]) -> Path:
    """Copy each institution's receipts into ``folder/NAME``, as they would hand them over."""
    for node in nodes:
        if node.state_dir is None:
            continue
        target = folder / node.institution
        target.mkdir(parents=True, exist_ok=True)
        for receipt in sorted((node.state_dir / "receipts").glob("run-*.json")):
            shutil.copyfile(receipt, target / receipt.name)
    return folder


def _last_lines(text: str, count: int) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


def run_demo(
    workdir: Path,
    policy: Policy,
    *,
    ledger_url: str | None = None,
    on_round: Callable[[RoundProgress], None] | None = None,
    status_interval: float = 2.0,
    insecure: bool = False,
) -> dict[str, Any]:
    """Run the whole demo and return (and write) ``summary.json``.

    The operator's consortium (keys, CA, SuperLink certificate) is created in
    ``workdir/operator`` and each institution enrols from its own state
    folder; the operator admits every request, which registers its SuperNode
    with the SuperLink. Both are reused when the demo runs again in the same
    folder. ``insecure`` turns TLS and SuperNode authentication off (updates
    stay encrypted and signed).

    Raises
    ------
    FederationError
        If a Flower process dies or the run does not finish successfully.
    """
    started = time.monotonic()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ledger_url = ledger_url or f"sqlite:///{workdir / 'ledger.db'}"
    layout = prepare_data(workdir, policy)

    operator = _consortium(workdir / "operator", ledger_url)
    nodes = _enrol_institutions(layout, operator, policy)
    ledger = Ledger(ledger_url)
    consortium = operator.consortium()

    requests = {  # every demo institution enrols from its own state folder
        node.institution: ParticipantState(node.state_dir).request
        for node in nodes
        if node.state_dir is not None
    }

    def admit_institutions(federation: LocalFederation) -> None:
        """The operator admits each request; with TLS, that registers its SuperNode."""
        for name, request in requests.items():
            admit(
                ledger,
                consortium,
                request,
                register=None
                if insecure
                else functools.partial(federation.register_node, name=name),
                purpose=policy.federation.purpose,
            )

    try:
        run_policy = policy.with_deploy(
            ledger_url=ledger_url,
            server_data_dir=str(layout.server_data_dir),
            checkpoint_dir=str(workdir / "operator" / "checkpoints"),
            aggregator_key=str(operator.aggregator_key),
            operator_key=str(operator.signing_key),
        )
        run_config = write_run_config(workdir / "run-config.toml", run_policy.to_run_config())
        app_dir = build_app_dir(workdir / "app")

        with LocalFederation(
            workdir,
            nodes,
            tls=None if insecure else operator.tls,
            on_superlink=admit_institutions,
        ) as federation:
            flower_run_id = federation.submit(app_dir, run_config)
            seen = 0
            next_status = 0.0
            while True:
                _, rounds = _rounds(ledger, flower_run_id)
                for progress in rounds[seen:]:
                    if on_round is not None:
                        on_round(progress)
                seen = len(rounds)
                federation.check_alive()
                if time.monotonic() >= next_status:
                    status = federation.run_status(flower_run_id)
                    next_status = time.monotonic() + status_interval
                    if str(status["status"]).startswith("finished"):
                        break
                time.sleep(0.5)
            run, rounds = _rounds(ledger, flower_run_id)
            for progress in rounds[seen:]:
                if on_round is not None:
                    on_round(progress)
            if (
                run is None
                or run.status != "finished"
                or not status["status"].endswith("completed")
            ):
                exhausted = _exhausted_budgets(ledger, run.id) if run is not None else []
                if exhausted:
                    raise PrivacyBudgetExhausted(
                        f"the run stopped: fewer than {policy.federation.min_nodes} "
                        "institutions have privacy budget left for another round.\n  "
                        + "\n  ".join(exhausted)
                        + "\nA dataset's budget covers every run that uses it; "
                        "see 'fedcommons client budget --state DIR' and "
                        "'fedcommons audit show'."
                    )
                raise FederationError(
                    f"Flower run {flower_run_id} ended as {status['status']} "
                    f"({status.get('status-details', '')}); ledger status "
                    f"{run.status if run else 'missing'}. ServerApp log:\n"
                    + _last_lines(federation.run_log(flower_run_id), 25)
                )
        with ledger.session() as session:
            update_bytes, crypto_seconds = session.execute(
                select(
                    func.avg(RoundUpdate.update_bytes),
                    func.sum(RoundUpdate.seal_seconds + RoundUpdate.open_seconds),
                )
                .join(Round, Round.id == RoundUpdate.round_id)
                .where(Round.run_id == run.id)
            ).one()
        # The operator releases the final model with its card (a ledger entry, signed).
        release = release_model(
            ledger,
            run.id,
            workdir / "releases" / f"run-{run.id}",
            signer=load_ed25519_key(operator.signing_key, passphrase=passphrase_from_env()),
        )
        # As an auditor would: the receipts each participant got, against the ledger.
        receipts_dir = _collect_receipts(workdir / "receipts", nodes)
        held = [(str(path), receipt) for path, receipt in read_receipts(receipts_dir)]
        verified = verify_ledger(ledger, consortium.operator_key, held)
    finally:
        ledger.close()

    model = build_model(policy.model, policy.federation.seed)
    model_bytes = len(arrays_to_bytes(full_arrays(model)))  # the whole model
    trainable_bytes = len(arrays_to_bytes(get_arrays(model)))  # what travels
    summary: dict[str, Any] = {
        "engine": "flower-deployment",
        "flower_run_id": flower_run_id,
        "ledger_run_id": run.id,
        "model": policy.model.name,
        "dataset": policy.data.dataset,
        "num_classes": policy.model.num_classes,
        "partition": policy.data.partition,
        "policy_sha256": policy.sha256(),
        "institutions": [
            {
                "name": name,
                "kind": kind,
                "examples": layout.examples[name],
                "epsilon": epsilon_for_json(rounds[-1].epsilon[name])
                if rounds and name in rounds[-1].epsilon
                else None,
            }
            for name, kind in DEMO_INSTITUTIONS
        ],
        "dp": policy.privacy.dp,
        "epsilon_budget": policy.privacy.epsilon if policy.privacy.dp else "inf",
        "delta": policy.privacy.delta if policy.privacy.dp else 0.0,
        "accountant": policy.privacy.accountant if policy.privacy.dp else "none",
        "rounds": [
            {
                "round": r.round,
                "accuracy": r.accuracy,
                "loss": r.loss,
                "participants": r.participants,
                "seconds": r.seconds,
                "epsilon": {name: epsilon_for_json(eps) for name, eps in r.epsilon.items()},
            }
            for r in rounds
        ],
        "final_accuracy": run.test_accuracy,
        "final_validation_accuracy": rounds[-1].accuracy if rounds else None,
        "ledger_url": ledger_url,
        "tls": not insecure,
        "node_auth": not insecure,
        "superlink_db": str(federation.superlink_db),
        "encrypted_updates": True,
        # audit verify with the operator's key and every participant's receipts:
        # entries, chain, rows, signed checkpoints, receipts
        "ledger_verified": True,
        "ledger_entries": verified.entries,
        "ledger_checkpoints": verified.checkpoints,
        "ledger_root": verified.tree_root,
        "release_dir": str(release.out_dir),
        "receipts_dir": str(receipts_dir),
        "receipts": verified.receipts,
        # Every update's sealing (client) plus opening (server), summed as if
        # nothing ran in parallel, over the rounds' wall time: an upper bound.
        "crypto_seconds": float(crypto_seconds or 0.0),
        "crypto_share": float(crypto_seconds or 0.0) / max(sum(r.seconds for r in rounds), 1e-9),
        "model_bytes": model_bytes,
        "update_bytes": float(update_bytes or 0.0),
        "trainable_bytes": trainable_bytes,
        "wall_seconds": time.monotonic() - started,
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
