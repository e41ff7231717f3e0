"""Run a real Flower federation on loopback: one SuperLink, N SuperNodes, ``flwr run``.

With an operator folder, the SuperLink is started exactly as an operator
starts it (``fedcommons operator serve``) and each enrolled node exactly as
its institution does (``fedcommons client start``), with every check those
commands make; without one (Flower-only tests and benchmarks) the same
command lines are run directly, in plaintext.

Every process is started in its own session so that it and the helpers it
spawns (SuperExec, ClientApp and ServerApp subprocesses) can be stopped as one
group; only groups this object started are ever signalled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from client.supernode import supernode_argv
from common.atomic import write_atomic
from common.processes import ProcessTree, flower_env
from common.protocol import NodeConfig
from fedcommons.startup import STARTUP_TIMEOUT, free_port, wait_for_port
from server.deploy import OPERATOR_DIR_ENV, OperatorFiles
from server.operator.flower import CONNECTION, FederationError, FlwrCli, write_connection
from server.operator.superlink import SuperLinkSettings, superlink_argv

__all__ = ["LocalFederation", "NodeSpec"]

log = logging.getLogger(__name__)

RESTART_PATIENCE = 120.0
"""Seconds a restarted SuperNode is started again whenever it exits with an error.

After a node's crash the SuperLink keeps its old session online until two
heartbeat intervals (60 s by default) pass without a heartbeat; a node
restarted sooner is refused ("Exit Code: 305 ... Failed to activate
SuperNode" in its log, exit status 1) and must simply be started again, as
``Restart=on-failure`` does under systemd.
"""

RESTART_BACKOFF = 3.0
"""Seconds between attempts to restart a node the SuperLink still holds online."""


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode: its institution, that institution's data and state folders.

    ``state_dir`` holds what the node keeps between rounds and runs (its
    privacy accountant); DP training refuses to run without one.
    """

    institution: str
    data_dir: Path
    state_dir: Path | None = None


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
    startup_timeout : float (default: :data:`STARTUP_TIMEOUT`)
        Seconds each process may take at most to start listening; one that
        exits, or uses no CPU for a fifth of it, fails sooner (:func:`wait_for_port`).
    env : mapping, optional
        Extra environment variables for every process.
    on_superlink : callable, optional
        Called with this object once the SuperLink listens and before any
        SuperNode starts: register the nodes' keys here (:meth:`register_node`).
    operator_dir : Path, optional
        The consortium folder (``operator init``). With it, the SuperLink is
        ``fedcommons operator serve`` (TLS with the folder's certificate,
        registered SuperNodes only; the ServerApp reads the folder's deploy
        settings) and each node ``fedcommons client start`` from its state
        folder. Without it everything is plaintext and any node may join,
        which is only for tests and benchmarks of Flower itself.
    insecure : bool (default: False)
        With ``operator_dir``: the same commands, TLS and authentication off.
    flwr_home : Path, optional
        Where the ``flwr`` CLI's connection is written (default:
        ``operator_dir/flwr-home``, else ``workdir/flwr-home``), named
        :data:`~server.operator.flower.CONNECTION` and pointed at this SuperLink.
    """

    def __init__(
        self,
        workdir: Path,
        nodes: list[NodeSpec],
        *,
        startup_timeout: float = STARTUP_TIMEOUT,
        env: Mapping[str, str] | None = None,
        on_superlink: Callable[[LocalFederation], None] | None = None,
        operator_dir: Path | None = None,
        insecure: bool = False,
        flwr_home: Path | None = None,
        isolation: str = "warm",
        encoder_cache: bool = True,
    ) -> None:
        if not nodes:
            raise ValueError("a federation needs at least one node")
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be more than 0 seconds, got {startup_timeout}")
        self.operator = OperatorFiles(operator_dir.resolve()) if operator_dir else None
        if self.operator is not None:
            for node in nodes:
                if node.state_dir is None:
                    raise ValueError(
                        f"node {node.institution!r} has no state folder: 'client start' "
                        "needs the one 'client enroll' made"
                    )
        self.insecure = insecure or self.operator is None
        self.isolation = isolation
        """How 'client start' runs ClientApps: warm (forked by a warm runner) or subprocess."""
        self.encoder_cache = encoder_cache
        self.on_superlink = on_superlink
        self.workdir = workdir.resolve()
        self.nodes = nodes
        self.startup_timeout = startup_timeout
        default_home = (operator_dir or self.workdir) / "flwr-home"
        self.flwr_home = (flwr_home or default_home).resolve()
        self.log_dir = self.workdir / "logs"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        """The latest process under each name (a restarted node replaces its old one)."""
        self._started: list[subprocess.Popen[bytes]] = []
        self.tree = ProcessTree()
        """Every process started here and everything they started, down to the ClientApps."""
        self._logs: list[IO[bytes]] = []
        self._restarts: dict[str, tuple[NodeSpec, int, float, float]] = {}
        self.superlink_port = 0
        self.superlink_db = self.workdir / "superlink.db"
        self.env = {
            **flower_env(),
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
        self._started.append(process)
        self.tree.add_root(process.pid)
        return process

    def start(self) -> None:
        """Start the SuperLink, then every SuperNode, and write the connection."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.superlink_port = free_port()
        for stale in self.workdir.glob("superlink.db*"):
            stale.unlink()
        self._spawn("superlink", self._superlink_argv())
        self._wait_for("superlink", self.superlink_port, "SuperLink")
        write_connection(
            self.flwr_home,
            CONNECTION,
            f"127.0.0.1:{self.superlink_port}",
            None if self.insecure or self.operator is None else self.operator.tls.ca_certificate,
        )
        if self.on_superlink is not None:
            self.on_superlink(self)
        self._start_supernodes()

    def _superlink_argv(self) -> list[str]:
        """``operator serve`` with the operator folder, else a plaintext ``flower-superlink``."""
        if self.operator is None:
            log.warning("starting the SuperLink WITHOUT TLS and SuperNode authentication")
            settings = SuperLinkSettings("127.0.0.1", self.superlink_port, self.superlink_db, None)
            return superlink_argv(settings)
        return self._fedcommons(
            "operator", "serve", str(self.operator.root),
            "--host", "127.0.0.1",
            "--port", str(self.superlink_port),
            "--database", str(self.superlink_db),
        )  # fmt: skip

    def _start_supernodes(self) -> None:
        """One SuperNode per node, each on its own port; wait until every one listens."""
        ports = {node.institution: free_port() for node in self.nodes}
        for node in self.nodes:
            self.start_node(node, ports[node.institution])
        for name, port in ports.items():
            self._wait_for(f"supernode-{name}", port, f"SuperNode {name}")

    def _wait_for(self, process: str, port: int, title: str) -> None:
        """Wait for the process named ``process`` (see :meth:`_spawn`) to listen on ``port``."""
        wait_for_port(
            port,
            self.processes[process],
            title,
            timeout=self.startup_timeout,
            log_file=self.log_dir / f"{process}.log",
        )

    def _fedcommons(self, *args: str) -> list[str]:
        """A ``fedcommons`` command line (run by this Python), ``--insecure`` if so asked."""
        return [
            sys.executable, "-m", "fedcommons.cli", *args,
            *(["--insecure"] if self.insecure else []),
        ]  # fmt: skip

    def start_node(self, node: NodeSpec, port: int) -> subprocess.Popen[bytes]:
        """Start one SuperNode (its ClientAppIo API on ``port``) and return its process."""
        address = f"127.0.0.1:{self.superlink_port}"
        if self.operator is not None and node.state_dir is not None:
            argv = self._fedcommons(
                "client", "start",
                "--state", str(node.state_dir),
                "--superlink", address,
                "--port", str(port),
                "--wait", "0",
                "--isolation", self.isolation,
                *([] if self.encoder_cache else ["--no-encoder-cache"]),
            )  # fmt: skip
        else:
            argv = supernode_argv(
                superlink=address,
                node_config=NodeConfig(node.institution, node.data_dir, node.state_dir),
                ca_certificate=None,
                auth_key=None,
                clientappio_port=port,
                insecure=True,
            )
        return self._spawn(f"supernode-{node.institution}", argv)

    def restart_node(self, node: NodeSpec, port: int | None = None) -> None:
        """Start ``node``'s SuperNode again after it died, as its machine would after a reboot.

        While the SuperLink still holds the dead node's session it refuses
        the new one; :meth:`check_alive` then starts the node again every
        :data:`RESTART_BACKOFF` seconds, for up to :data:`RESTART_PATIENCE`
        seconds, until the SuperLink lets it in.
        """
        port = port if port is not None else free_port()
        now = time.monotonic()
        self._restarts[node.institution] = (node, port, now, now)
        self.start_node(node, port)

    def _retry_restarts(self) -> None:
        now = time.monotonic()
        for name, (node, port, first, last) in list(self._restarts.items()):
            process = self.processes.get(f"supernode-{name}")
            if process is None or process.poll() in (None, 0):
                continue
            if now - first > RESTART_PATIENCE:
                del self._restarts[name]  # given up: dead_nodes() reports it
            elif now - last >= RESTART_BACKOFF:
                log.info("%s's SuperNode was refused (see its log); starting it again", name)
                self._restarts[name] = (node, port, first, now)
                self.start_node(node, port)

    def register_node(self, public_key: Path, name: str | None = None) -> int:
        """Add a SuperNode's public key to the SuperLink's allow-list; return its node id."""
        return self.cli.register_node(public_key, name)

    def stop(self, grace: float = 5.0) -> None:
        """Stop every process this object started and all they started (SIGTERM, then SIGKILL).

        Descendants are found through ``/proc`` and noted with their start
        times whenever :meth:`check_alive` looks, so even a ServerApp whose
        SuperLink was killed (it lives on in its own session) is stopped,
        and no reused PID is ever signalled.
        """
        self.tree.stop(grace)
        for process in self._started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)
        self.processes.clear()
        self._started.clear()
        for handle in self._logs:
            handle.close()
        self._logs.clear()

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

    def keep_run_log(self, run_id: int) -> Path:
        """Write the ServerApp's log of a run to ``logs/run-N.log`` and return that path.

        The SuperLink holds the log only while it runs, and it stops with this object.
        """
        return write_atomic(self.log_dir / f"run-{run_id}.log", self.run_log(run_id))

    def check_alive(self) -> None:
        """Raise :class:`FederationError` if the SuperLink is gone (a SuperNode may come and go).

        Also notes every process started since the last look (see :meth:`stop`)
        and starts again a restarted node that the SuperLink refused because
        it still held the node's old session (see :meth:`restart_node`).
        """
        self.tree.look()
        self._retry_restarts()
        superlink = self.processes.get("superlink")
        if superlink is not None and superlink.poll() is not None:
            raise FederationError(
                f"the SuperLink exited unexpectedly with code {superlink.returncode}; "
                f"see {self.log_dir / 'superlink.log'}"
            )

    def crash_superlink(self) -> set[int]:
        """Kill the SuperLink and what it started (SuperExec, the ServerApp) at once: SIGKILL.

        For fault tests and benchmarks: a crash, not a stop, so nothing is
        recorded by the processes themselves. Returns the PIDs killed.
        """
        return self._crash("superlink")

    def crash_node(self, institution: str) -> set[int]:
        """Kill a SuperNode and what it started (its ClientApps) at once, as a power cut would."""
        return self._crash(f"supernode-{institution}")

    def _crash(self, name: str) -> set[int]:
        process = self.processes[name]
        # taken while it lives: the processes it detached into sessions of their own
        killed = self.tree.descendants(process.pid)
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()
        return killed

    def dead_nodes(self) -> list[str]:
        """The institutions whose SuperNode process has exited."""
        return [
            name.removeprefix("supernode-")
            for name, process in self.processes.items()
            if name.startswith("supernode-") and process.poll() is not None
        ]
