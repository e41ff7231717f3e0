"""The demo's consortium, built as its members would: data, keys, enrolment, admission.

:func:`prepare_data` splits an embedded data set among the institutions (the
demo's three by default) and the operator; :func:`demo_consortium` creates
the operator's folder (once), enrols each institution from its own state
folder and returns everything :func:`started_federation` needs to start the
loopback SuperLink and SuperNodes, admitting each institution as the
SuperLink comes up.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import typer
from sqlalchemy import func, select

from client.enrolment import ParticipantState, enrol
from common.atomic import write_atomic
from common.dp import check_delta
from common.images import write_npz
from common.local_data import LocalData, data_suffix, load_local_data, server_split_path
from common.policy import Policy, PolicyError, Scalar
from common.text import STDLIB_TOPICS, TextData, stdlib_docstrings, write_jsonl
from fedcommons.local_federation import LocalFederation, NodeSpec
from fedcommons.partition import (
    load_digits_data,
    partition_dirichlet,
    partition_iid,
    split_holdout,
)
from fedcommons.startup import STARTUP_TIMEOUT, free_port
from ledger import Ledger
from ledger.schema import LedgerTreeHead
from server.deploy import DeployConfig, OperatorFiles
from server.operator.consortium import Register, admit, init_consortium
from server.operator.status import registrar

__all__ = [
    "BERT_DEMO",
    "DEMO_INSTITUTIONS",
    "DemoConsortium",
    "DemoLayout",
    "admit_all",
    "collect_receipts",
    "created_folder",
    "demo_consortium",
    "prepare_data",
    "started_federation",
    "with_model",
]

DEMO_INSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("university-a", "academia"),
    ("university-b", "academia"),
    ("company-c", "industry"),
)

BERT_DEMO: dict[str, Scalar] = {
    "model.name": "bert",
    "model.num-classes": len(STDLIB_TOPICS),
    "model.train-layers": 0,
    "model.max-length": 64,
    "data.dataset": "stdlib-docs",
    "data.labels": ",".join(STDLIB_TOPICS),
    "federation.rounds": 8,
    # full-batch DP-SGD (q = 1): far less noise per step for the same budget; tuned on
    # the validation split (BENCHMARKS.md, issue 19)
    "training.local-epochs": 4,
    "training.batch-size": 512,
    "training.learning-rate": 2.0,
}
"""What ``--model bert`` changes in a CNN policy: the text demo's model, data and training."""


def with_model(policy: Policy, model: str) -> Policy:
    """``policy`` switched to ``model``; switching to BERT applies :data:`BERT_DEMO`."""
    if model == policy.model.name:
        return policy
    if model == "bert":
        return policy.with_overrides(BERT_DEMO)
    return policy.with_overrides({"model.name": model})


@dataclass(frozen=True)
class DemoLayout:
    """Where the demo put each party's data."""

    nodes: list[NodeSpec]
    kinds: dict[str, str]
    examples: dict[str, int]
    server_data_dir: Path


def prepare_data(
    workdir: Path,
    policy: Policy,
    institutions: Sequence[tuple[str, str]] = DEMO_INSTITUTIONS,
) -> DemoLayout:
    """Split the embedded data set and write each party's share to its own folder.

    ``institutions`` are ``(name, kind)`` pairs (default: the demo's three);
    the benchmarks size larger consortia with them.

    Digits become ``.npz`` files, the standard-library docstrings ``.jsonl``
    files (the formats a participant would supply). Every file is read back
    through the participant loader, so a problem surfaces here, before any
    process starts.

    Raises
    ------
    PolicyError
        Fewer institutions than ``federation.min-nodes``; nothing is written.
    PartitionError
        The training split cannot be shared among that many institutions
        (the message names the most it can); nothing is written.
    """
    count = len(institutions)
    if count < 1 or len({name for name, _ in institutions}) != count:
        raise ValueError(f"institutions need distinct names, got {list(institutions)}")
    if count < policy.federation.min_nodes:
        raise PolicyError(
            f"federation.min-nodes = {policy.federation.min_nodes} but {count} institution(s) "
            "take part: every round would wait for more until it timed out; give at least "
            f"{policy.federation.min_nodes} institutions or lower federation.min-nodes"
        )
    seed = policy.federation.seed
    fractions = (policy.data.validation_fraction, policy.data.test_fraction)
    splits: tuple[LocalData, LocalData, LocalData]
    if policy.data.dataset == "stdlib-docs":
        splits = split_holdout(stdlib_docstrings(), *fractions, seed)
    else:
        splits = split_holdout(load_digits_data(), *fractions, seed)
    train, validation, test = splits
    if policy.data.partition == "iid":
        parts = partition_iid(len(train), count, seed)
    else:
        parts = partition_dirichlet(train.labels, count, policy.data.dirichlet_alpha, seed)
    server_dir = OperatorFiles(workdir / "operator").data_dir
    for split, split_data in (("validation", validation), ("test", test)):
        _write(server_split_path(policy, server_dir, split), split_data, policy)
    nodes, examples = [], {}
    for (name, _kind), index in zip(institutions, parts, strict=True):
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
    return DemoLayout(nodes, dict(institutions), examples, server_dir)


DEMO_LICENCES = {"university-a": "CC-BY-4.0", "university-b": "CC-BY-NC-4.0"}
"""The licences the demo's universities declare; company-c declares custom terms.

Any other academic institution (a simulation's) declares CC-BY-4.0, any
other company custom terms like company-c's.
"""

COMPANY_TERMS = """# {title}'s terms for its data: research only, credit the company.
name = "{name}-research"
commercial = false
derivatives = true
share-alike = false
attribution = "{title} (industrial partner data)"
purposes = ["research"]
"""


@dataclass(frozen=True)
class DemoConsortium:
    """The demo's operator folder, its enrolled institutions and their data."""

    workdir: Path
    operator: OperatorFiles
    layout: DemoLayout
    nodes: list[NodeSpec]
    """Each institution's SuperNode, with its state folder and SuperNode key."""


@contextmanager
def created_folder(folder: Path) -> Iterator[Path]:
    """Make ``folder`` (and its missing parents); if the block fails, remove what was made.

    A folder that was already there stays as it is (with whatever the block
    wrote into it): a command that fails on its first use leaves nothing behind.
    """
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if missing:
            shutil.rmtree(missing[-1], ignore_errors=True)
        raise


def demo_consortium(
    workdir: Path,
    policy: Policy,
    ledger_url: str,
    institutions: Sequence[tuple[str, str]] = DEMO_INSTITUTIONS,
) -> DemoConsortium:
    """Data, the operator's folder (created once, then reused) and every enrolment.

    The operator's deploy settings name ``ledger_url`` (the demo may switch
    ledgers between runs in the same folder). ``institutions`` are ``(name,
    kind)`` pairs, as for :func:`prepare_data`.
    """
    workdir = workdir.resolve()
    layout = prepare_data(workdir, policy, institutions)
    operator = OperatorFiles(workdir / "operator")
    if not operator.consortium_file.exists():
        init_consortium(
            operator.root,
            name="FedCommons demo",
            superlink=f"127.0.0.1:{free_port()}",
            hosts=["127.0.0.1", "localhost"],
            ledger_url=ledger_url,
        )
    deploy = DeployConfig.defaults(operator).with_values(
        {"ledger-url": ledger_url}, operator.root, "the demo"
    )
    write_atomic(operator.deploy_file, deploy.to_toml(operator.root))
    nodes = _enrol_institutions(layout, operator, policy)
    _receipts_of_another_log(ledger_url, nodes)
    return DemoConsortium(workdir, operator, layout, nodes)


def _receipts_of_another_log(ledger_url: str, nodes: list[NodeSpec]) -> list[Path]:
    """Move the institutions' receipts aside when the demo starts a new ledger in this folder.

    A node's receipts bind it to one log: it refuses any head that does not
    extend the largest one it holds (a fork). A demo pointed at a new, empty
    ledger is a new log, so each institution's receipts of the old one are
    moved to ``STATE/receipts-before-<time>`` (kept, as evidence) and the
    institutions start the new log afresh. A real node never does this by itself.
    """
    ledger = Ledger(ledger_url)
    try:
        with ledger.session() as session:
            fresh = session.scalar(select(func.count()).select_from(LedgerTreeHead)) == 0
    finally:
        ledger.close()
    moved: list[Path] = []
    if not fresh:
        return moved
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for node in nodes:
        receipts = (node.state_dir or node.data_dir) / "receipts"
        if any(receipts.glob("run-*.json")):
            target = receipts.with_name(f"receipts-before-{stamp}")
            receipts.rename(target)
            moved.append(target)
            typer.echo(
                f"{node.institution}: a new ledger, so its receipts of the earlier one are "
                f"kept in {target}",
                err=True,
            )
    return moved


@contextmanager
def started_federation(
    demo: DemoConsortium,
    policy: Policy,
    *,
    insecure: bool = False,
    isolation: str = "warm",
    encoder_cache: bool = True,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> Iterator[LocalFederation]:
    """The demo's SuperLink and SuperNodes on loopback; each institution admitted on the way.

    With TLS (unless ``insecure``), admission registers each SuperNode's key,
    so only those nodes get in. Every process is stopped on leaving.
    ``startup_timeout`` is the most seconds each may take to start
    (:func:`~fedcommons.startup.wait_for_port`).
    """

    def admit_institutions(federation: LocalFederation) -> None:
        admit_all(demo, policy, None if insecure else registrar(demo.operator, federation.cli))

    with LocalFederation(
        demo.workdir,
        demo.nodes,
        insecure=insecure,
        on_superlink=admit_institutions,
        operator_dir=demo.operator.root,
        isolation=isolation,
        encoder_cache=encoder_cache,
        startup_timeout=startup_timeout,
    ) as federation:
        yield federation


def admit_all(demo: DemoConsortium, policy: Policy, register: Register | None) -> None:
    """The operator admits every institution's request (``register`` adds its SuperNode key)."""
    ledger = Ledger(demo.operator.deploy().ledger_url)
    consortium = demo.operator.consortium()
    try:
        for node in demo.nodes:
            if node.state_dir is None:
                continue
            admit(
                ledger,
                consortium,
                ParticipantState(node.state_dir).request,
                register=register,
                purpose=policy.federation.purpose,
            )
    finally:
        ledger.close()


def _licence_for(node: NodeSpec, kind: str) -> str:
    """An SPDX id, or a company's custom terms written beside its data."""
    name = node.institution
    if name in DEMO_LICENCES:
        return DEMO_LICENCES[name]
    if kind == "academia":
        return "CC-BY-4.0"
    terms = node.data_dir.parent / "licence.toml"
    title = name.replace("-", " ").title()
    terms.write_text(COMPANY_TERMS.format(name=name, title=title), encoding="utf-8")
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
            licence=_licence_for(node, layout.kinds[node.institution]),
            consortium_file=operator.consortium_file,
            policy=policy,
            reuse_keys=True,
        )
        nodes.append(dataclasses.replace(node, state_dir=state.root))
    return nodes


def _write(path: Path, data: LocalData, policy: Policy) -> None:
    if isinstance(data, TextData):
        write_jsonl(path, data, policy.data.text_column, policy.data.label_column)
    else:
        write_npz(path, data)


def collect_receipts(folder: Path, nodes: list[NodeSpec]) -> Path:
    """Copy each institution's receipts into ``folder/NAME``, as they would hand them over."""
    for node in nodes:
        if node.state_dir is None:
            continue
        target = folder / node.institution
        target.mkdir(parents=True, exist_ok=True)
        for receipt in sorted((node.state_dir / "receipts").glob("run-*.json")):
            shutil.copyfile(receipt, target / receipt.name)
    return folder
