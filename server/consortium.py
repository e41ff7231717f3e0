"""The operator's side of identities: create a consortium, admit participants.

``fedcommons operator init DIR`` lays out::

    DIR/keys/operator-signing.pem   Ed25519: signs ledger checkpoints
    DIR/keys/aggregator.pem         X25519: updates are encrypted to it
    DIR/tls/ca.pem, ca-key.pem      the consortium CA
    DIR/tls/superlink.pem, superlink-key.pem
    DIR/consortium.json             public: what participants enrol with
    DIR/policy.toml                 the run policy to edit
    DIR/ledger.db                   the ledger (unless another URL is given)
    DIR/flwr-home/config.toml       the ``flwr`` CLI's connection to the SuperLink

Every private key is mode 0600; the Ed25519, X25519 and CA keys are encrypted
when a passphrase is given (the SuperLink's TLS key never is: it is read
unattended).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.identity import Consortium, EnrolmentError, EnrolmentRequest, read_request
from common.keys import encode_public, load_x25519_key, write_private_key
from common.local_federation import write_connection
from common.policy import Policy
from common.tls import TlsFiles, write_tls
from server.ledger import Ledger, admit_participant, refuse_admission

__all__ = ["CONNECTION", "OperatorFiles", "admit", "init_consortium"]

CONNECTION = "fedcommons"
"""Name of the ``flwr`` CLI connection ``operator init`` writes."""


@dataclass(frozen=True)
class OperatorFiles:
    """Where an operator folder keeps each file (see the module docstring)."""

    root: Path

    @property
    def signing_key(self) -> Path:
        return self.root / "keys" / "operator-signing.pem"

    @property
    def aggregator_key(self) -> Path:
        return self.root / "keys" / "aggregator.pem"

    @property
    def tls(self) -> TlsFiles:
        folder = self.root / "tls"
        return TlsFiles(folder / "ca.pem", folder / "superlink.pem", folder / "superlink-key.pem")

    @property
    def consortium_file(self) -> Path:
        return self.root / "consortium.json"

    @property
    def policy_file(self) -> Path:
        return self.root / "policy.toml"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def default_ledger_url(self) -> str:
        return f"sqlite:///{(self.root / 'ledger.db').resolve()}"

    def consortium(self) -> Consortium:
        return Consortium.load(self.consortium_file)

    def policy(self) -> Policy:
        return Policy.load(self.policy_file)

    def load_aggregator_key(self, passphrase: str | None = None) -> X25519PrivateKey:
        return load_x25519_key(self.aggregator_key, passphrase=passphrase)


def init_consortium(
    root: Path,
    *,
    name: str,
    superlink: str,
    hosts: list[str],
    ledger_url: str | None = None,
    policy: Policy | None = None,
    passphrase: str | None = None,
) -> OperatorFiles:
    """Create a consortium in ``root`` (see the module docstring).

    Parameters
    ----------
    root : Path
        A new or empty folder; existing keys are never overwritten.
    name : str
        The consortium's name (the CA's organisation).
    superlink : str
        ``host:port`` participants reach the SuperLink at.
    hosts : list of str
        Host names and IP addresses for the SuperLink certificate's SANs.
    ledger_url : str, optional
        The ledger; ``DIR/ledger.db`` (SQLite) if omitted. Created and migrated here.
    policy : Policy, optional
        The starting policy (default: the built-in one); its ``deploy`` section
        is pointed at this folder's ledger and aggregator key.
    passphrase : str, optional
        Encrypts the operator, aggregator and CA keys.
    """
    files = OperatorFiles(root.resolve())
    if files.consortium_file.exists():
        raise FileExistsError(f"{files.consortium_file} exists: {root} is a consortium already")
    if ":" not in superlink:
        raise ValueError(f"the SuperLink address must be host:port, not {superlink!r}")
    signing = Ed25519PrivateKey.generate()
    aggregator = X25519PrivateKey.generate()
    write_private_key(files.signing_key, signing, passphrase=passphrase)
    write_private_key(files.aggregator_key, aggregator, passphrase=passphrase)
    tls = write_tls(files.root / "tls", name, hosts, passphrase=passphrase)
    Consortium(
        name=name,
        superlink=superlink,
        aggregator_public_key=encode_public(aggregator.public_key()),
        operator_public_key=encode_public(signing.public_key()),
        ca_certificate=tls.ca_certificate.read_text(encoding="ascii"),
    ).write(files.consortium_file)
    url = ledger_url or files.default_ledger_url
    Ledger(url).close()
    configured = (policy or Policy()).with_deploy(
        ledger_url=url,
        aggregator_key=str(files.aggregator_key),
        operator_key=str(files.signing_key),
    )
    files.policy_file.write_text(configured.to_toml(), encoding="utf-8")
    write_connection(files.flwr_home, CONNECTION, superlink, tls.ca_certificate)
    return files


Register = Callable[[Path], object]
"""Adds a SuperNode's OpenSSH public key file to the SuperLink's allow-list."""


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
            register(key_file)
    return request
