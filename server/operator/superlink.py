"""The operator's SuperLink: one way to build its command line, one way to run it.

:func:`superlink_argv` is the only place a ``flower-superlink`` command line
is written; ``fedcommons operator serve`` (:func:`serve`) and the demo's
loopback federation both use it. :func:`serve` first checks what the
SuperLink and the ServerApp it starts will need from the operator folder
(TLS files that belong together, the deploy settings, the ledger, the keys),
so a mistake is a one-line refusal here, not a stack trace in a log later.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from common.errors import UserError
from common.keys import (
    KeyFileError,
    load_ec_key,
    load_ed25519_key,
    load_x25519_key,
    passphrase_from_env,
)
from common.processes import flower_env, run_foreground
from common.tls import TlsFiles
from ledger import Ledger
from server.deploy import OPERATOR_DIR_ENV, DeployError, OperatorFiles

__all__ = ["ServeError", "SuperLinkSettings", "check_operator_folder", "serve", "superlink_argv"]

log = logging.getLogger(__name__)

LISTEN_ALL = "0.0.0.0"


class ServeError(UserError, RuntimeError):
    """The SuperLink cannot be started from this operator folder (the message says why)."""


@dataclass(frozen=True)
class SuperLinkSettings:
    """Where the SuperLink listens and keeps its state.

    Parameters
    ----------
    host : str
        Address to listen on (``0.0.0.0``: every address of this host).
    port : int
        Its one port: Fleet (SuperNodes), Control (``flwr``) and ServerApp APIs.
    database : Path
        Its state database, kept across restarts (runs, registered nodes).
    tls : TlsFiles or None
        Certificate, key and CA; with them only registered SuperNodes get in.
        ``None`` (plaintext, anyone may join) is for Flower-only tests.
    simulation : bool (default: False)
        Run Flower's Simulation Engine instead of serving SuperNodes: each run
        gets virtual SuperNodes (``fedcommons simulate``). TLS then guards the
        Control API only.
    """

    host: str
    port: int
    database: Path
    tls: TlsFiles | None
    simulation: bool = False


def superlink_argv(settings: SuperLinkSettings) -> list[str]:
    """The ``flower-superlink`` command line for ``settings``."""
    if settings.tls is not None:
        security = [
            "--ssl-ca-certfile", str(settings.tls.ca_certificate),
            "--ssl-certfile", str(settings.tls.certificate),
            "--ssl-keyfile", str(settings.tls.private_key),
            *([] if settings.simulation else ["--enable-supernode-auth"]),
        ]  # fmt: skip
    else:
        security = ["--insecure"]
    return [
        "flower-superlink",
        *security,
        *(["--simulation"] if settings.simulation else []),
        "--host", settings.host,
        "--port", str(settings.port),
        "--database", str(settings.database),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip


def superlink_env(files: OperatorFiles) -> dict[str, str]:
    """The SuperLink's environment: the operator folder for the ServerApp, Flower on PATH."""
    env = flower_env(FLWR_TELEMETRY_ENABLED="0", PYTHONUNBUFFERED="1")
    env[OPERATOR_DIR_ENV] = str(files.root.resolve())
    return env


def default_settings(
    files: OperatorFiles, *, host: str | None, port: int | None, database: Path | None
) -> SuperLinkSettings:
    """Settings from the folder (port from ``consortium.json``), each overridable."""
    if port is None:
        address = files.consortium().superlink
        try:
            port = int(address.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            raise ServeError(
                f"{files.consortium_file}: the SuperLink address {address!r} has no port; "
                "give --port"
            ) from None
    return SuperLinkSettings(
        host=host or LISTEN_ALL,
        port=port,
        database=(database or files.root / "superlink.db").resolve(),
        tls=files.tls,
    )


def check_operator_folder(files: OperatorFiles) -> None:
    """Refuse (:class:`ServeError`) what would make the SuperLink or its ServerApp fail later."""
    if not files.consortium_file.is_file() or not files.deploy_file.is_file():
        raise ServeError(
            f"{files.root} is not a consortium folder (no consortium.json or deploy.toml): "
            "create it with 'fedcommons operator init'"
        )
    try:
        files.tls.check()
    except KeyFileError as err:
        raise ServeError(f"the SuperLink's TLS files are not usable: {err}") from None
    _check_certificate_pair(files.tls)
    try:
        deploy = files.deploy()
    except DeployError as err:
        raise ServeError(str(err)) from None
    passphrase = passphrase_from_env()
    try:  # the ServerApp loads both keys at every run; find out now
        load_x25519_key(deploy.aggregator_key, passphrase=passphrase)
        if deploy.operator_key is not None:
            load_ed25519_key(deploy.operator_key, passphrase=passphrase)
    except KeyFileError as err:
        raise ServeError(f"{err} (the ServerApp needs it at every run)") from None
    try:
        Ledger(deploy.ledger_url, migrate=False).close()
    except UserError as err:
        raise ServeError(f"the ledger in {files.deploy_file} cannot be opened: {err}") from None


def _check_certificate_pair(tls: TlsFiles) -> None:
    """The certificate is the CA's and matches the key (else every node would be refused)."""
    ca = x509.load_pem_x509_certificate(tls.ca_certificate.read_bytes())
    certificate = x509.load_pem_x509_certificate(tls.certificate.read_bytes())
    try:
        certificate.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as err:
        raise ServeError(
            f"{tls.certificate} was not issued by the consortium CA {tls.ca_certificate} "
            f"({type(err).__name__}): SuperNodes would refuse it"
        ) from None
    key = load_ec_key(tls.private_key)
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or (
        public.public_numbers() != key.public_key().public_numbers()
    ):
        raise ServeError(f"{tls.private_key} is not the key of {tls.certificate}")


def local_address(host: str) -> str:
    """Where the SuperLink's own SuperExec and ServerApps connect to it (as Flower resolves it)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _check_certificate_covers(tls: TlsFiles, host: str) -> None:
    """The certificate names ``host``: the SuperExec verifies it like any client."""
    certificate = x509.load_pem_x509_certificate(tls.certificate.read_bytes())
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    covered = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} | set(
        names.get_values_for_type(x509.DNSName)
    )
    wanted = local_address(host)
    if wanted not in covered:
        raise ServeError(
            f"{tls.certificate} does not cover {wanted} (it names {', '.join(sorted(covered))}): "
            f"the SuperLink's own SuperExec connects there and would be refused. Listen on "
            "an address it names (--host), or issue the certificate again with it"
        )


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            reason = "in use" if err.errno == errno.EADDRINUSE else err.strerror
            raise ServeError(
                f"cannot listen on {host}:{port}: {reason} (another SuperLink? give --port)"
            ) from None


def serve(
    files: OperatorFiles,
    *,
    host: str | None = None,
    port: int | None = None,
    database: Path | None = None,
    insecure: bool = False,
    say: Callable[[str], None] = log.info,
) -> int:
    """Check the folder, then run the SuperLink in the foreground; return its exit status.

    SIGTERM or Ctrl-C stops it (and the SuperExec and ServerApp it started)
    and returns 0. ``insecure`` (plaintext, any node may join) is only for
    tests on one machine.
    """
    check_operator_folder(files)
    settings = default_settings(files, host=host, port=port, database=database)
    if insecure:
        log.warning("starting the SuperLink WITHOUT TLS and SuperNode authentication")
        settings = SuperLinkSettings(settings.host, settings.port, settings.database, None)
    if settings.tls is not None:
        _check_certificate_covers(settings.tls, settings.host)
    _check_port_free(settings.host, settings.port)
    settings.database.parent.mkdir(parents=True, exist_ok=True)
    say(
        f"SuperLink on {settings.host}:{settings.port} ("
        + ("plaintext" if settings.tls is None else "TLS, registered SuperNodes only")
        + f"), state in {settings.database}; Ctrl-C or SIGTERM stops it"
    )
    return run_foreground(superlink_argv(settings), env=superlink_env(files), cwd=files.root)
