"""Driving Flower from the operator's side: the ``flwr`` CLI, run configs and the app.

``flwr`` is Flower's documented control interface (submit, list, log, register
SuperNodes); :class:`FlwrCli` calls it with ``--format json`` and turns every
failure into a :class:`FederationError` with Flower's own message.
:func:`build_app_dir` lays out the FedCommons Flower App (the ``server``,
``client`` and ``common`` packages, nothing above them), which ``flwr run``
packages and sends to the SuperLink.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.policy import Policy, Scalar
from common.processes import flower_env

__all__ = [
    "CONNECTION",
    "PACKAGES",
    "FederationError",
    "FlwrCli",
    "assemble_app",
    "build_app_dir",
    "write_connection",
    "write_run_config",
]

CONNECTION = "fedcommons"
"""Name of the ``flwr`` CLI connection to the consortium's SuperLink."""
PACKAGES = ("server", "ledger", "client", "common")
"""What the Flower App carries: the rooms ServerApp and ClientApp import, nothing above."""


class FederationError(UserError, RuntimeError):
    """A Flower process failed to start, or a run failed."""


@dataclass(frozen=True)
class FlwrCli:
    """The ``flwr`` CLI, with ``FLWR_HOME`` pointing at a folder holding its connections.

    Parameters
    ----------
    flwr_home : Path
        Holds ``config.toml`` (see :func:`write_connection`).
    connection : str (default: "fedcommons")
        The connection in it to use.
    env : mapping, optional
        The environment to run ``flwr`` in (default: this process's).
    cwd : Path, optional
        Folder to run it in.
    federation_config : mapping, optional
        ``flwr run --federation-config`` settings for every run submitted: a
        SuperLink running the Simulation Engine takes ``num-supernodes`` and
        the backend's resources from them.
    """

    flwr_home: Path
    connection: str = CONNECTION
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    federation_config: Mapping[str, int | float | str] | None = None

    def _env(self) -> dict[str, str]:
        """The environment given, with ``FLWR_HOME`` set and the ``flwr`` installed beside
        this Python first on the ``PATH``."""
        env = flower_env(self.env)
        env["FLWR_HOME"] = str(self.flwr_home)
        return env

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
        """Run ``flwr ARGS``; :class:`FederationError` if it cannot run or times out."""
        try:
            return subprocess.run(
                ["flwr", *args],
                capture_output=True,
                env=self._env(),
                cwd=self.cwd,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FederationError(f"flwr {' '.join(args)} could not run: {err}") from err

    def json(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run ``flwr ARGS --format json``; its reply, or :class:`FederationError` if it fails."""
        completed = self._run([*args, "--format", "json"], timeout)
        text = completed.stdout.decode(errors="replace")
        try:
            reply: dict[str, Any] = json.loads(text[text.index("{") :])
        except ValueError:
            raise FederationError(
                f"flwr {' '.join(args)} gave no JSON (exit {completed.returncode}): "
                f"{text.strip()} {completed.stderr.decode(errors='replace').strip()}"
            ) from None
        if not reply.get("success", False):
            raise FederationError(
                f"flwr {' '.join(args)} failed: {reply.get('error-message', reply)}"
            )
        return reply

    def submit(self, app_dir: Path, run_config: Path) -> int:
        """Submit the app with ``flwr run`` and return the run id."""
        federation = [
            arg
            for key, value in (self.federation_config or {}).items()
            for arg in ("--federation-config", f"{key}={json.dumps(value)}")
        ]
        reply = self.json(
            "run", str(app_dir), self.connection, "--run-config", str(run_config), *federation
        )
        return int(reply["run-id"])

    def run_status(self, run_id: int) -> dict[str, Any]:
        """Flower's view of a run (``flwr ls --run-id``)."""
        runs: list[dict[str, Any]] = self.json("ls", self.connection, "--run-id", str(run_id))[
            "runs"
        ]
        return runs[0]

    def run_log(self, run_id: int, timeout: float = 60.0) -> str:
        """The ServerApp's log of a run, as ``flwr log --show`` prints it."""
        try:
            completed = self._run(["log", str(run_id), self.connection, "--show"], timeout)
        except FederationError as err:
            return f"(no log: {err})"
        return completed.stdout.decode(errors="replace") + completed.stderr.decode(errors="replace")

    def register_node(self, public_key: Path, name: str | None = None) -> int:
        """Add a SuperNode's public key to the SuperLink's allow-list; return its node id."""
        args = ["supernode", "register", str(public_key), self.connection]
        if name:
            args += ["--name", name]
        return int(self.json(*args)["node-id"])


def write_connection(flwr_home: Path, name: str, address: str, ca_certificate: Path | None) -> Path:
    """Write the ``flwr`` CLI's ``config.toml``: one connection, verified by ``ca_certificate``.

    Without a CA certificate the connection is plaintext (``insecure = true``).
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    tls = (
        f'root-certificates = "{ca_certificate.resolve()}"\n'
        if ca_certificate is not None
        else "insecure = true\n"
    )
    path = flwr_home / "config.toml"
    path.write_text(f'[superlink.{name}]\naddress = "{address}"\n{tls}', encoding="utf-8")
    return path


def write_run_config(path: Path, config: Mapping[str, Scalar]) -> Path:
    """Write a flat run config as the TOML file ``flwr run --run-config`` reads."""
    path.write_text(_flat_toml(config), encoding="utf-8")
    return path


def _flat_toml(config: Mapping[str, Scalar]) -> str:
    return "".join(f'"{key}" = {json.dumps(value)}\n' for key, value in config.items())


def assemble_app(
    target: Path,
    *,
    name: str,
    sources: Mapping[str, Path],
    serverapp: str,
    clientapp: str,
    config: Mapping[str, Scalar],
) -> Path:
    """Lay out a Flower App in ``target``: the ``sources`` packages plus a pyproject.

    Parameters
    ----------
    target : Path
        Folder to (re)create.
    name : str
        Project name and publisher of the app.
    sources : mapping of str to Path
        Package name in the app -> folder it is copied from.
    serverapp, clientapp : str
        Component references, e.g. ``"server.app.server_app:app"``.
    config : mapping
        The app's default run config (``flwr run --run-config`` overrides it).
    """
    if target.exists():
        shutil.rmtree(target)
    for package, source in sources.items():
        shutil.copytree(
            source, target / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    include = ", ".join(f'"{package}/**/*.py"' for package in sources)
    (target / "pyproject.toml").write_text(
        f"""[project]
name = "{name}"
version = "0.1.0"

[tool.flwr.app]
publisher = "{name}"
fab-include = [{include}]

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
{_flat_toml(config)}""",
        encoding="utf-8",
    )
    return target


def build_app_dir(target: Path) -> Path:
    """Assemble the FedCommons Flower App (``pyproject.toml`` + the three packages).

    The packages are copied from wherever they are installed, so the demo works
    from a checkout and from a wheel alike; the run config is the default
    policy, which ``flwr run --run-config`` then overrides key by key.
    """
    import common

    root = Path(common.__file__).resolve().parent.parent
    return assemble_app(
        target,
        name="fedcommons",
        sources={package: root / package for package in PACKAGES},
        serverapp="server.app.server_app:app",
        clientapp="client.client_app:app",
        config=Policy().to_run_config(),
    )
