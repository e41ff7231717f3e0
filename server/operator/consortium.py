"""The operator's side of identities: create a consortium, admit participants.

:func:`init_consortium` lays out an operator folder (:class:`server.deploy.OperatorFiles`
lists its files): keys, the CA and the SuperLink's certificate, the public
``consortium.json``, the ledger, a policy to edit, the operator-only
``deploy.toml`` and the ``flwr`` CLI's connection. It is all-or-nothing: the
folder is built beside its target and moved into place only once complete,
so a failed attempt (a bad ledger URL, say) leaves nothing behind and can
simply be repeated.

Every private key is mode 0600; the Ed25519, X25519 and CA keys are encrypted
when a passphrase is given (the SuperLink's TLS key never is: it is read
unattended).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.atomic import write_atomic
from common.consortium import (
    Consortium,
    EnrolmentError,
    EnrolmentRequest,
    default_log_origin,
    read_request,
)
from common.keys import encode_public, write_private_key
from common.note import verifier_key
from common.policy import Policy
from common.tls import write_tls
from ledger import Ledger, admit_participant, refuse_admission
from ledger.schema import LogOrigin
from ledger.tree_heads import TreeHeadError, set_log_origin
from server.deploy import DEPLOY_FILE, DeployConfig, OperatorFiles
from server.operator.flower import CONNECTION, FederationError, write_connection

__all__ = ["Register", "admit", "init_consortium"]

_CREATED = ("keys", "tls", "consortium.json", "policy.toml", DEPLOY_FILE, "ledger.db", "flwr-home")
"""What :func:`init_consortium` creates in the operator folder."""


def init_consortium(
    root: Path,
    *,
    name: str,
    superlink: str,
    hosts: list[str],
    ledger_url: str | None = None,
    policy: Policy | None = None,
    passphrase: str | None = None,
    log_origin: str | None = None,
) -> OperatorFiles:
    """Create a consortium in ``root`` (see the module docstring), all or nothing.

    Parameters
    ----------
    root : Path
        A new folder, or one that holds none of the files a consortium has
        (it may already hold the server's ``data/``).
    name : str
        The consortium's name (the CA's organisation).
    superlink : str
        ``host:port`` participants reach the SuperLink at.
    hosts : list of str
        Host names and IP addresses for the SuperLink certificate's SANs.
    ledger_url : str, optional
        The ledger; ``DIR/ledger.db`` (SQLite) if omitted. Created and migrated here.
    policy : Policy, optional
        The starting policy (default: the built-in one).
    passphrase : str, optional
        Encrypts the operator, aggregator and CA keys.

    Raises
    ------
    FileExistsError
        ``root`` is a consortium already, or holds one of its files.
    """
    files = OperatorFiles(root.resolve())
    if files.consortium_file.exists():
        raise FileExistsError(f"{files.consortium_file} exists: {root} is a consortium already")
    clashes = [entry for entry in _CREATED if (files.root / entry).exists()]
    if clashes:
        raise FileExistsError(
            f"{files.root} already holds {', '.join(clashes)}: a consortium is created in a new "
            "folder, or one without these"
        )
    if ":" not in superlink:
        raise ValueError(f"the SuperLink address must be host:port, not {superlink!r}")
    files.root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{files.root.name}.", dir=files.root.parent))
    try:
        _populate(
            OperatorFiles(staging),
            final=files,
            name=name,
            superlink=superlink,
            hosts=hosts,
            ledger_url=ledger_url,
            policy=policy,
            passphrase=passphrase,
            log_origin=log_origin,
        )
        _move_into_place(staging, files.root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


def _log_origin(url: str, wanted: str | None, signing: Ed25519PrivateKey) -> str:
    """Create (or migrate) the ledger and fix its log origin: ``wanted``, or the one it has.

    A ledger that already holds checkpoints keeps its origin: a log's identity
    never changes (another ``--log-origin`` is refused).
    """
    ledger = Ledger(url)
    try:
        with ledger.session() as session:
            held = session.get(LogOrigin, 1)
            origin = wanted or (held.origin if held else default_log_origin(signing.public_key()))
            return set_log_origin(session, origin)
    except TreeHeadError as err:
        raise ValueError(f"--log-origin: {err}") from None
    finally:
        ledger.close()


def _populate(
    files: OperatorFiles,
    *,
    final: OperatorFiles,
    name: str,
    superlink: str,
    hosts: list[str],
    ledger_url: str | None,
    policy: Policy | None,
    passphrase: str | None,
    log_origin: str | None,
) -> None:
    """Write every file into ``files`` (the staging folder), naming ``final``'s paths inside."""
    signing = Ed25519PrivateKey.generate()
    aggregator = X25519PrivateKey.generate()
    # The ledger is created where it will live: a SQLite file in the staging
    # folder (moved with it), or another database (migrating it twice is harmless).
    origin = _log_origin(ledger_url or files.default_ledger_url, log_origin, signing)
    write_private_key(files.signing_key, signing, passphrase=passphrase)
    write_private_key(files.aggregator_key, aggregator, passphrase=passphrase)
    tls = write_tls(files.root / "tls", name, hosts, passphrase=passphrase)
    Consortium(
        name=name,
        superlink=superlink,
        aggregator_public_key=encode_public(aggregator.public_key()),
        operator_public_key=encode_public(signing.public_key()),
        ca_certificate=tls.ca_certificate.read_text(encoding="ascii"),
        log_origin=origin,
        operator_verifier_key=verifier_key(origin, signing.public_key()),
    ).write(files.consortium_file)
    deploy = DeployConfig.defaults(final)
    if ledger_url:
        deploy = deploy.with_values({"ledger-url": ledger_url}, final.root, "--ledger")
    write_atomic(files.deploy_file, deploy.to_toml(final.root))
    write_atomic(files.policy_file, (policy or Policy()).to_toml())
    write_connection(files.flwr_home, CONNECTION, superlink, final.tls.ca_certificate)


def _move_into_place(staging: Path, root: Path) -> None:
    """Rename the finished staging folder to ``root``, or its entries into an existing ``root``."""
    if not root.exists():
        os.rename(staging, root)
        return
    moved: list[Path] = []
    try:
        for entry in sorted(staging.iterdir()):
            target = root / entry.name
            os.rename(entry, target)
            moved.append(target)
    except BaseException:
        for target in moved:  # put back what was moved, so nothing half-made stays
            with contextlib.suppress(OSError):
                os.rename(target, staging / target.name)
        raise


Register = Callable[[Path, str], object]
"""Adds a SuperNode's OpenSSH public key file to the SuperLink's allow-list, for an institution."""


def admit(
    ledger: Ledger,
    consortium: Consortium,
    request_path: Path,
    *,
    register: Register | None,
    purpose: str,
    today: date | None = None,
) -> EnrolmentRequest:
    """Verify an enrolment request, check its licence, record it, allow its SuperNode in.

    The request is verified first, so a tampered request changes nothing. A
    licence that does not allow ``purpose`` (today) is refused: the refusal
    is a ledger entry with its reason, and :class:`EnrolmentError` says why.
    The ledger commits before the SuperNode key is registered: a failed
    registration can be retried by admitting the same request again.
    """
    request = read_request(request_path, consortium)
    request_sha256 = hashlib.sha256(request_path.read_bytes()).hexdigest()
    refusal = request.licence_terms.refusal(purpose, today or date.today())
    if refusal is not None:
        with ledger.session() as session:
            refuse_admission(session, request, request_sha256, f"{refusal} ({purpose} run)")
        raise EnrolmentError(
            f"{request.institution} is not admitted: {refusal}, and this consortium's runs "
            f"are for {purpose}"
        )
    with ledger.session() as session:
        admit_participant(session, request, request_sha256)
    if register is not None:
        with tempfile.TemporaryDirectory() as folder:
            key_file = Path(folder) / f"{request.institution}-supernode.pub"
            key_file.write_text(request.supernode_public_key + "\n", encoding="ascii")
            try:
                register(key_file, request.institution)
            except FederationError as err:
                raise FederationError(
                    f"{request.institution} is admitted in the ledger, but its SuperNode key "
                    f"could not be registered with the SuperLink: {err}. Once the SuperLink is "
                    "up, run the same 'fedcommons operator admit' again: admitting is "
                    "idempotent and retries the registration"
                ) from None
    return request
