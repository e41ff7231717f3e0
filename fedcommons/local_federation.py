"""Run a real Flower federation on loopback: one SuperLink, N SuperNodes, ``flwr run``.

Every process is started in its own session so that it and the helpers it
spawns (SuperExec, ClientApp and ServerApp subprocesses) can be stopped as one
group; only groups this object started are ever signalled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from common.protocol import NodeConfig
from common.tls import TlsFiles
from server.deploy import OPERATOR_DIR_ENV
from server.flower import CONNECTION, FederationError, FlwrCli, write_connection

__all__ = ["LocalFederation", "NodeSpec", "free_port"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode: its institution, that institution's data and state folders.

    ``state_dir`` holds what the node keeps between rounds and runs (its
    privacy accountant); DP training refuses to run without one.
    """

    institution: str
    data_dir: Path
    state_dir: Path | None = None
    auth_key: Path | None = None
    """The SuperNode's authentication key (OpenSSH ECDSA); needed when the SuperLink has TLS."""

    def node_config(self) -> str:
        """Flower's ``--node-config`` string for this node (one thread per ClientApp)."""
        return NodeConfig(self.institution, self.data_dir, self.state_dir).to_flag()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FederationError(f"{name} exited with code {process.returncode} while starting")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise FederationError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


class LocalFederation:
    """Start, use and always stop a loopback Flower deployment.

    Parameters
    ----------
    workdir : Path
        Holds ``superlink.db`` and ``logs/``. ``superlink.db`` is started
        afresh: a previous federation's nodes, left registered in it, would
        otherwise be sampled and time out.
    nodes : list of NodeSpec
        One SuperNode is started per entry.
    startup_timeout : float (default: 60.0)
        Seconds each process may take to start listening.
    env : mapping, optional
        Extra environment variables for every process.
    tls : TlsFiles, optional
        The SuperLink's certificate, key and CA. With them the SuperLink
        serves TLS and admits only registered SuperNodes (each node needs its
        ``auth_key``); without them everything is plaintext and any node may
        join, which is only for tests and benchmarks of Flower itself.
    on_superlink : callable, optional
        Called with this object once the SuperLink listens and before any
        SuperNode starts: register the nodes' keys here (:meth:`register_node`).
    operator_dir : Path, optional
        The operator folder the ServerApp reads its deploy settings from
        (``$FEDCOMMONS_OPERATOR_DIR`` in the SuperLink's environment).
    flwr_home : Path, optional
        Where the ``flwr`` CLI's connection is written (default:
        ``operator_dir/flwr-home``, else ``workdir/flwr-home``), named
        :data:`~server.flower.CONNECTION` and pointed at this SuperLink.
    """

    def __init__(
        self,
        workdir: Path,
        nodes: list[NodeSpec],
        *,
        startup_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        on_superlink: Callable[[LocalFederation], None] | None = None,
        operator_dir: Path | None = None,
        flwr_home: Path | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("a federation needs at least one node")
        if tls is not None:
            tls.check()
            for node in nodes:
                if node.auth_key is None:
                    raise ValueError(
                        f"node {node.institution!r} has no auth_key: with TLS, the "
                        "SuperLink admits registered SuperNodes only"
                    )
        self.tls = tls
        self.on_superlink = on_superlink
        self.workdir = workdir.resolve()
        self.nodes = nodes
        self.startup_timeout = startup_timeout
        default_home = (operator_dir or self.workdir) / "flwr-home"
        self.flwr_home = (flwr_home or default_home).resolve()
        self.log_dir = self.workdir / "logs"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.superlink_port = 0
        self.superlink_db = self.workdir / "superlink.db"
        bin_dir = Path(sys.executable).parent
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "HF_HUB_OFFLINE": "1",
            # SuperExec picks up new ClientApp tasks every 0.1 s instead of 1 s.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
            # Several ClientApps share few cores; one thread each avoids thrashing.
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **({OPERATOR_DIR_ENV: str(operator_dir.resolve())} if operator_dir else {}),
            **(env or {}),
        }
        self.cli = FlwrCli(self.flwr_home, CONNECTION, env=self.env, cwd=self.workdir)

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handle = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(handle)
        process = subprocess.Popen(
            args,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.workdir,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def start(self) -> None:
        """Start the SuperLink, then every SuperNode, and write the connection."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.superlink_port = free_port()
        for stale in self.workdir.glob("superlink.db*"):
            stale.unlink()
        security = (
            [
                "--ssl-ca-certfile", str(self.tls.ca_certificate),
                "--ssl-certfile", str(self.tls.certificate),
                "--ssl-keyfile", str(self.tls.private_key),
                "--enable-supernode-auth",
            ]
            if self.tls is not None
            else ["--insecure"]
        )  # fmt: skip
        if self.tls is None:
            log.warning("starting the SuperLink WITHOUT TLS and SuperNode authentication")
        superlink = self._spawn(
            "superlink",
            [
                "flower-superlink",
                *security,
                "--host", "127.0.0.1",
                "--port", str(self.superlink_port),
                "--database", str(self.superlink_db),
                "--disable-runtime-dependency-installation",
            ],
        )  # fmt: skip
        _wait_for_port(self.superlink_port, superlink, "SuperLink", self.startup_timeout)
        write_connection(
            self.flwr_home,
            CONNECTION,
            f"127.0.0.1:{self.superlink_port}",
            self.tls.ca_certificate if self.tls is not None else None,
        )
        if self.on_superlink is not None:
            self.on_superlink(self)
        started: list[tuple[int, subprocess.Popen[bytes], str]] = []
        for node in self.nodes:
            port = free_port()
            process = self.start_node(node, port)
            started.append((port, process, node.institution))
        for port, process, name in started:
            _wait_for_port(port, process, f"SuperNode {name}", self.startup_timeout)

    def start_node(
        self,
        node: NodeSpec,
        port: int,
        *,
        ca_certificate: Path | Literal["default"] | None = "default",
    ) -> subprocess.Popen[bytes]:
        """Start one SuperNode (its ClientAppIo API on ``port``) and return its process.

        ``ca_certificate`` overrides the CA the node trusts (``None``: the
        system's roots), for tests of a node that lacks the consortium CA.
        """
        if ca_certificate == "default":
            ca_certificate = self.tls.ca_certificate if self.tls is not None else None
        security: list[str] = []
        if self.tls is None:
            security.append("--insecure")
        elif ca_certificate is not None:
            security += ["--root-certificates", str(ca_certificate)]
        if node.auth_key is not None and self.tls is not None:
            security += ["--auth-supernode-private-key", str(node.auth_key)]
        return self._spawn(
            f"supernode-{node.institution}",
            [
                "flower-supernode",
                *security,
                "--superlink", f"127.0.0.1:{self.superlink_port}",
                "--port", str(port),
                "--node-config", node.node_config(),
            ],
        )  # fmt: skip

    def register_node(self, public_key: Path, name: str | None = None) -> int:
        """Add a SuperNode's public key to the SuperLink's allow-list; return its node id."""
        return self.cli.register_node(public_key, name)

    def stop(self, grace: float = 5.0) -> None:
        """Stop every process group this object started (SIGTERM, then SIGKILL)."""
        for process in self.processes.values():
            if process.poll() is None:
                self._signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            # The leader may be gone while its helpers linger: clear the group.
            self._signal_group(process, signal.SIGKILL)
            if process.poll() is None:
                process.wait()
        self.processes.clear()
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)  # the group id is the leader's pid

    # -- runs ---------------------------------------------------------------

    def flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Call the ``flwr`` CLI against this federation and parse its JSON reply."""
        return self.cli.json(*args, timeout=timeout)

    def submit(self, app_dir: Path, run_config: Path) -> int:
        """Submit the app with ``flwr run`` and return the run id."""
        return self.cli.submit(app_dir, run_config)

    def run_status(self, run_id: int) -> dict[str, Any]:
        """Flower's view of a run (``flwr ls --run-id``)."""
        return self.cli.run_status(run_id)

    def run_log(self, run_id: int) -> str:
        """The ServerApp's log of a run, as ``flwr log --show`` prints it."""
        return self.cli.run_log(run_id)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise FederationError(
                    f"{name} exited unexpectedly with code {process.returncode}; "
                    f"see {self.log_dir / (name + '.log')}"
                )
