"""The operator's folder and its deploy settings, which never leave the operator's machine.

``fedcommons operator init DIR`` lays out::

    DIR/keys/operator-signing.pem   Ed25519: signs the ledger's tree heads
    DIR/keys/aggregator.pem         X25519: updates are encrypted to it
    DIR/tls/ca.pem, ca-key.pem      the consortium CA
    DIR/tls/superlink.pem, superlink-key.pem
    DIR/consortium.json             public: what participants enrol with
    DIR/policy.toml                 the run policy to edit (sent to every node)
    DIR/deploy.toml                 operator-only settings (never sent)
    DIR/ledger.db                   the ledger (unless another URL is given)
    DIR/data/                       the server's validation and test splits
    DIR/snapshots/                  the global model after every round
    DIR/flwr-home/config.toml       the ``flwr`` CLI's connection to the SuperLink

Flower hands a run's config to every ClientApp, so nothing here goes into
it. The ServerApp finds this folder through ``$FEDCOMMONS_OPERATOR_DIR``,
set in the SuperLink's environment (the SuperLink starts the ServerApp).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.consortium import Consortium
from common.errors import UserError
from common.keys import load_x25519_key
from common.policy import Policy
from common.tls import TlsFiles

__all__ = ["DEPLOY_FILE", "OPERATOR_DIR_ENV", "DeployConfig", "DeployError", "OperatorFiles"]

OPERATOR_DIR_ENV = "FEDCOMMONS_OPERATOR_DIR"
"""Environment variable naming the operator folder, read by the ServerApp."""
DEPLOY_FILE = "deploy.toml"


class DeployError(UserError, ValueError):
    """The operator folder or its deploy.toml is missing or malformed."""


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
    def deploy_file(self) -> Path:
        return self.root / DEPLOY_FILE

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def snapshot_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def default_ledger_url(self) -> str:
        return f"sqlite:///{(self.root / 'ledger.db').resolve()}"

    def consortium(self) -> Consortium:
        return Consortium.load(self.consortium_file)

    def policy(self) -> Policy:
        return Policy.load(self.policy_file)

    def deploy(self) -> DeployConfig:
        return DeployConfig.load(self)

    def load_aggregator_key(self, passphrase: str | None = None) -> X25519PrivateKey:
        return load_x25519_key(self.aggregator_key, passphrase=passphrase)


_KEYS = ("ledger-url", "server-data-dir", "snapshot-dir", "aggregator-key", "operator-key")


@dataclass(frozen=True)
class DeployConfig:
    """The operator's own settings: where the ledger, keys, data and snapshots are.

    Parameters
    ----------
    ledger_url : str
        SQLAlchemy URL of the ledger (default: ``DIR/ledger.db``).
    server_data_dir : Path
        The server's ``validation`` and ``test`` splits (default: ``DIR/data``).
    snapshot_dir : Path
        Where the global model is saved after every round (default: ``DIR/snapshots``).
    aggregator_key : Path
        The aggregator's X25519 private key; updates are encrypted to it. If it
        is passphrase-protected, the ServerApp reads ``$FEDCOMMONS_KEY_PASSPHRASE``.
    operator_key : Path or None
        The operator's Ed25519 key, which signs a tree head after every round;
        ``None`` (``operator-key = ""``) signs none.
    """

    ledger_url: str
    server_data_dir: Path
    snapshot_dir: Path
    aggregator_key: Path
    operator_key: Path | None

    @classmethod
    def defaults(cls, files: OperatorFiles) -> DeployConfig:
        return cls(
            ledger_url=files.default_ledger_url,
            server_data_dir=files.data_dir,
            snapshot_dir=files.snapshot_dir,
            aggregator_key=files.aggregator_key,
            operator_key=files.signing_key,
        )

    @classmethod
    def load(cls, files: OperatorFiles) -> DeployConfig:
        """``DIR/deploy.toml`` over the folder's defaults; relative paths are under ``DIR``."""
        if not files.root.is_dir():
            raise DeployError(f"no operator folder at {files.root} ('fedcommons operator init')")
        defaults = cls.defaults(files)
        if not files.deploy_file.exists():
            return defaults
        try:
            table = tomllib.loads(files.deploy_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise DeployError(f"cannot read {files.deploy_file}: {err}") from None
        return defaults.with_values(table, files.root, str(files.deploy_file))

    def with_values(self, table: Mapping[str, Any], root: Path, source: str) -> DeployConfig:
        """A copy with the kebab-case ``table`` applied; errors name ``source`` and the key."""
        unknown = sorted(set(table) - set(_KEYS))
        if unknown:
            raise DeployError(
                f"{source}: unknown key '{unknown[0]}'; keys allowed: {', '.join(_KEYS)}"
            )
        for key, value in table.items():
            if not isinstance(value, str):
                raise DeployError(f"{source}: '{key}' must be a string, got {value!r}")
        if table.get("ledger-url") == "":
            raise DeployError(f"{source}: 'ledger-url' is empty; the server records every round")

        def path(key: str, default: Path) -> Path:
            value = table.get(key)
            return default if value is None else (root / value).resolve()

        signing = table.get("operator-key")
        return DeployConfig(
            ledger_url=str(table.get("ledger-url", self.ledger_url)),
            server_data_dir=path("server-data-dir", self.server_data_dir),
            snapshot_dir=path("snapshot-dir", self.snapshot_dir),
            aggregator_key=path("aggregator-key", self.aggregator_key),
            operator_key=(
                self.operator_key if signing is None else (root / signing if signing else None)
            ),
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> DeployConfig:
        """The settings of the operator folder ``$FEDCOMMONS_OPERATOR_DIR`` names."""
        folder = (environ if environ is not None else os.environ).get(OPERATOR_DIR_ENV)
        if not folder:
            raise DeployError(
                f"${OPERATOR_DIR_ENV} is not set: the ServerApp reads the operator's ledger, "
                "keys and data from that folder; start the SuperLink with it set "
                "('fedcommons operator init' creates the folder)"
            )
        return OperatorFiles(Path(folder).resolve()).deploy()

    def to_toml(self, root: Path | None = None) -> str:
        """The ``deploy.toml`` that :meth:`load` reads back as this.

        With ``root`` (the operator folder), paths inside it are written
        relative to it, so the folder can move, and a ledger URL that is the
        folder's default is left as a comment.
        """

        def shown(path: Path | None) -> str:
            if path is None:
                return ""
            if root is not None and path.resolve().is_relative_to(root.resolve()):
                return str(path.resolve().relative_to(root.resolve()))
            return str(path)

        lines = [
            "# Operator-only settings: read by the ServerApp (through $FEDCOMMONS_OPERATOR_DIR),",
            "# never sent to participants. Relative paths are relative to this folder.",
        ]
        default_url = root is not None and self.ledger_url == OperatorFiles(root).default_ledger_url
        ledger = f'ledger-url = "{_escape(self.ledger_url)}"'
        lines.append(f"# {ledger}  (the default: ledger.db here)" if default_url else ledger)
        values = {
            "server-data-dir": shown(self.server_data_dir),
            "snapshot-dir": shown(self.snapshot_dir),
            "aggregator-key": shown(self.aggregator_key),
            "operator-key": shown(self.operator_key),
        }
        lines += [f'{key} = "{_escape(value)}"' for key, value in values.items()]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
