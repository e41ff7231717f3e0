"""A participant's SuperNode: one way to build its command line, one way to start it.

:func:`supernode_argv` is the only place a ``flower-supernode`` command line
is written; ``fedcommons client start`` (:func:`start`) and the demo's
loopback federation both use it. :func:`start` reads everything from the
state folder ``client enroll`` created and refuses to start, with the reason,
when that folder is incomplete, when the data no longer match the manifest
the operator admitted, or when the SuperLink's certificate is not one the
pinned consortium CA issued.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import tomllib
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from client.enrolment import ParticipantState, dataset_manifest
from common.consortium import Consortium, check_institution, read_json_object
from common.errors import UserError
from common.keys import KeyFileError, load_supernode_key, passphrase_from_env
from common.policy import Policy
from common.processes import flower_env, run_foreground
from common.protocol import NodeConfig

__all__ = [
    "ISOLATIONS",
    "NodeStartError",
    "ReadyNode",
    "check_state",
    "check_superlink_certificate",
    "node_settings",
    "start",
    "supernode_argv",
]

log = logging.getLogger(__name__)

ISOLATIONS = ("warm", "subprocess")
"""How a node runs its ClientApps: forked by a warm runner, or Flower's fresh subprocesses."""


class NodeStartError(UserError, RuntimeError):
    """The SuperNode must not start from this state folder (the message says why)."""


def supernode_argv(
    *,
    superlink: str,
    node_config: NodeConfig,
    ca_certificate: Path | None,
    auth_key: Path | None,
    clientappio_port: int | None = None,
    insecure: bool = False,
    warm: bool = False,
) -> list[str]:
    """The ``flower-supernode`` command line.

    Parameters
    ----------
    superlink : str
        ``host:port`` of the consortium's SuperLink.
    node_config : NodeConfig
        Institution, data and state folder, handed to every ClientApp.
    ca_certificate : Path or None
        The CA the SuperLink's certificate must come from (``None``: the
        system's roots).
    auth_key : Path or None
        The SuperNode's authentication key (the SuperLink accepts registered keys only).
    clientappio_port : int, optional
        Local port for its ClientApps (each SuperNode on one machine needs its own).
    insecure : bool (default: False)
        Plaintext, for Flower-only tests on one machine.
    warm : bool (default: False)
        ``--isolation process``: a warm runner (:mod:`client.warm`) beside it
        starts the ClientApps; otherwise Flower starts each one afresh.
    """
    security: list[str] = []
    if insecure:
        security.append("--insecure")
    else:
        if ca_certificate is not None:
            security += ["--root-certificates", str(ca_certificate)]
        if auth_key is not None:
            security += ["--auth-supernode-private-key", str(auth_key)]
    port = ["--port", str(clientappio_port)] if clientappio_port is not None else []
    return [
        "flower-supernode",
        *security,
        "--superlink", superlink,
        *port,
        "--isolation", "process" if warm else "subprocess",
        "--node-config", node_config.to_flag(),
    ]  # fmt: skip


@dataclass(frozen=True)
class ReadyNode:
    """A state folder that passed every check: what the SuperNode starts with."""

    state: ParticipantState
    consortium: Consortium
    node_config: NodeConfig
    dataset_sha256: str


def _require(path: Path, made_by: str) -> None:
    if not path.is_file():
        raise NodeStartError(
            f"the state folder {path.parent} is incomplete: {path.name} is missing ({made_by}). "
            "Restore the folder from its backup, or enrol again into a new folder and have "
            "the operator admit the new request"
        )


def check_state(state_dir: Path) -> ReadyNode:
    """Every file ``client enroll`` wrote is there and consistent, and the data are unchanged."""
    if not state_dir.is_dir():
        raise NodeStartError(
            f"no state folder at {state_dir}: create it with 'fedcommons client enroll --state'"
        )
    state = ParticipantState(state_dir.resolve())
    for path, made_by in (
        (state.signing_key, "this node's signing key"),
        (state.supernode_key, "this node's SuperNode key"),
        (state.supernode_public_key, "its public half"),
        (state.consortium, "the consortium you enrolled in"),
        (state.ca_certificate, "the consortium CA, which the SuperLink must match"),
        (state.request, "the enrolment request the operator admitted"),
        (state.node_settings, "which institution and data this node serves"),
        (state.data_policy, "how the data were read at enrolment"),
    ):
        _require(path, made_by)
    consortium = Consortium.load(state.consortium)
    if state.ca_certificate.read_text(encoding="ascii").strip() != (
        consortium.ca_certificate.strip()
    ):
        raise NodeStartError(
            f"{state.ca_certificate} is not the CA in {state.consortium}: the pinned CA was "
            "changed; restore both from the folder's backup"
        )
    request = read_json_object(state.request, "enrolment request")
    institution, data = node_settings(state)
    if request.get("institution") != institution:
        raise NodeStartError(
            f"{state.node_settings} names {institution!r} but the enrolment request is for "
            f"{request.get('institution')!r}"
        )
    public = state.supernode_public_key.read_text(encoding="ascii").strip()
    if request.get("supernode_public_key", "").strip() != public:
        raise NodeStartError(
            f"{state.supernode_public_key} is not the SuperNode key in the admitted request: "
            "the SuperLink would refuse this node"
        )
    try:
        state.load_signing_key(passphrase_from_env())
    except KeyFileError as err:
        raise NodeStartError(f"{err} (every update is signed with it)") from None
    try:
        supernode = load_supernode_key(state.supernode_key)
    except KeyFileError as err:
        raise NodeStartError(f"{err} (the SuperNode authenticates with it)") from None
    openssh = supernode.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    if openssh.decode("ascii").split()[:2] != public.split()[:2]:
        raise NodeStartError(
            f"{state.supernode_key} is not the private half of {state.supernode_public_key}: "
            "the SuperLink would refuse this node"
        )
    enrolled = str(request.get("dataset", {}).get("sha256", ""))
    try:
        now = dataset_manifest(Policy.load(state.data_policy), data)["sha256"]
    except UserError as err:
        raise NodeStartError(
            f"the data this node was enrolled with cannot be read: {err}"
        ) from None
    if now != enrolled:
        raise NodeStartError(
            f"the data at {data} no longer match the manifest the operator admitted "
            f"(sha256 {enrolled[:16]}... at enrolment, {now[:16]}... now): restore the "
            "enrolled data, or enrol the new data in a new state folder and have it admitted"
        )
    node_config = NodeConfig(institution, data, state.root)
    return ReadyNode(state, consortium, node_config, enrolled)


def node_settings(state: ParticipantState) -> tuple[str, Path]:
    """The institution this node is and its data folder, from ``node.toml``."""
    try:
        doc = tomllib.loads(state.node_settings.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise NodeStartError(f"{state.node_settings} is not valid TOML: {err}") from None
    institution, data = doc.get("institution"), doc.get("data")
    if not isinstance(institution, str) or not isinstance(data, str) or not data:
        raise NodeStartError(
            f'{state.node_settings} needs institution = "..." and data = "..." '
            f"(got {institution!r}, {data!r})"
        )
    return check_institution(institution), Path(data)


def check_superlink_certificate(address: str, ca_certificate: Path, *, wait: float = 60.0) -> None:
    """Connect to the SuperLink and check its certificate against the pinned CA.

    Waits up to ``wait`` seconds for it to accept connections (it may be
    starting). :class:`NodeStartError` if it never does, or if its
    certificate was not issued by the CA for this address.
    """
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit():
        raise NodeStartError(f"the SuperLink address {address!r} is not host:port")
    context = ssl.create_default_context(cafile=str(ca_certificate))
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            with (
                socket.create_connection((host, int(port_text)), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=host),
            ):
                return
        except ssl.SSLCertVerificationError as err:
            raise NodeStartError(
                f"the SuperLink at {address} presented a certificate that the pinned "
                f"consortium CA ({ca_certificate}) did not issue for {host}: "
                f"{err.verify_message}. Not connecting: this may not be your consortium's "
                "SuperLink"
            ) from None
        except (OSError, ssl.SSLError) as err:
            if time.monotonic() >= deadline:
                raise NodeStartError(
                    f"cannot reach the SuperLink at {address}: {err}. Is the operator's "
                    "SuperLink running, and does the firewall let this host reach that port?"
                ) from None
            if not said:
                log.warning("waiting for the SuperLink at %s (%s)", address, err)
                said = True
            time.sleep(1.0)


def start(
    state_dir: Path,
    *,
    superlink: str | None = None,
    clientappio_port: int | None = None,
    insecure: bool = False,
    wait: float = 60.0,
    say: Callable[[str], None] = log.info,
    warm: bool = True,
    encoder_cache: bool = True,
) -> int:
    """Check the state folder and the SuperLink, then run the SuperNode in the foreground.

    With ``warm`` (the default) its ClientApps are forked by a warm runner
    (:mod:`client.warm`) that loaded torch and the base model once;
    ``warm=False`` leaves Flower to start each ClientApp from scratch.

    Returns its exit status: 0 after SIGTERM or Ctrl-C; non-zero when the
    SuperLink refused it (not registered, or a session it still holds).
    """
    node = check_state(state_dir)
    address = superlink or node.consortium.superlink
    if insecure:
        say("WARNING: starting the SuperNode WITHOUT TLS (not checking the SuperLink)")
    else:
        check_superlink_certificate(address, node.state.ca_certificate, wait=wait)
    argv = supernode_argv(
        superlink=address,
        node_config=replace(node.node_config, encoder_cache=encoder_cache),
        ca_certificate=node.state.ca_certificate,
        auth_key=node.state.supernode_key,
        clientappio_port=clientappio_port,
        insecure=insecure,
        warm=warm,
    )
    say(
        f"SuperNode for {node.node_config.institution} -> {address} (data "
        f"{node.dataset_sha256[:12]}... as admitted); Ctrl-C or SIGTERM stops it"
    )
    env = flower_env(FLWR_TELEMETRY_ENABLED="0", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    companion = None
    if warm:
        from client.warm import runner_argv

        companion = runner_argv(f"127.0.0.1:{clientappio_port or 9094}", node.state.root)
    return run_foreground(argv, env=env, cwd=node.state.root, companion=companion)
