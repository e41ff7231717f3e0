"""The operator's deploy settings: their own file, never in the run config every node gets."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Context, Message, MessageType, RecordDict
from typer.testing import CliRunner

from client.client_app import train
from common.policy import Policy
from common.protocol import ExclusionCode, Refusal
from fedcommons.cli import app
from ledger import LedgerError
from server.deploy import OPERATOR_DIR_ENV, DeployConfig, DeployError, OperatorFiles
from server.operator.consortium import init_consortium
from tests.support.sealed_updates import server_task_identity
from tests.support.tools import needs_systemd

assert server_task_identity  # imported so that pytest finds the fixture


def _init(folder: Path, ledger_url: str | None = None) -> OperatorFiles:
    return init_consortium(
        folder, name="Test", superlink="127.0.0.1:9092", hosts=["127.0.0.1"], ledger_url=ledger_url
    )


def test_init_writes_deploy_settings_that_follow_the_folder(tmp_path: Path) -> None:
    files = _init(tmp_path / "op")
    text = files.deploy_file.read_text()
    assert 'aggregator-key = "keys/aggregator.pem"' in text  # relative: the folder may move
    assert "# ledger-url" in text  # the default ledger, ledger.db here
    moved = OperatorFiles(tmp_path / "moved")
    shutil.move(files.root, moved.root)
    deploy = moved.deploy()
    assert deploy.aggregator_key == moved.aggregator_key.resolve()
    assert deploy.operator_key is not None and deploy.operator_key.is_file()
    assert deploy.snapshot_dir == moved.snapshot_dir.resolve()
    assert deploy.server_data_dir == moved.data_dir.resolve()
    assert deploy.ledger_url == moved.default_ledger_url


def test_a_ledger_url_given_at_init_is_kept_as_is(tmp_path: Path, postgres_url: str) -> None:
    files = _init(tmp_path / "op", ledger_url=postgres_url)
    assert files.deploy().ledger_url == postgres_url
    assert not (files.root / "ledger.db").exists()


def test_the_server_app_finds_the_folder_through_its_environment(tmp_path: Path) -> None:
    files = _init(tmp_path / "op")
    assert DeployConfig.from_environment({OPERATOR_DIR_ENV: str(files.root)}) == files.deploy()
    with pytest.raises(DeployError, match=f"{OPERATOR_DIR_ENV} is not set"):
        DeployConfig.from_environment({})
    with pytest.raises(DeployError, match="no operator folder at"):
        DeployConfig.from_environment({OPERATOR_DIR_ENV: str(tmp_path / "absent")})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('ledger-url = "sqlite:///x.db"\nsecret = "x"\n', "unknown key 'secret'; keys allowed"),
        ("snapshot-dir = 3\n", "'snapshot-dir' must be a string, got 3"),
        ('ledger-url = ""\n', "'ledger-url' is empty"),
        ("ledger-url = \n", "cannot read"),
    ],
)
def test_bad_deploy_settings_name_the_key(tmp_path: Path, content: str, message: str) -> None:
    files = _init(tmp_path / "op")
    files.deploy_file.write_text(content)
    with pytest.raises(DeployError, match=message) as err:
        files.deploy()
    assert str(files.deploy_file) in str(err.value)


def test_an_empty_operator_key_signs_nothing(tmp_path: Path) -> None:
    files = _init(tmp_path / "op")
    files.deploy_file.write_text('operator-key = ""\nsnapshot-dir = "/srv/snapshots"\n')
    deploy = files.deploy()
    assert deploy.operator_key is None
    assert deploy.snapshot_dir == Path("/srv/snapshots")
    assert DeployConfig.load(files) == deploy


def test_a_failed_init_leaves_nothing_and_can_be_repeated(tmp_path: Path) -> None:
    folder = tmp_path / "op"
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    with pytest.raises(LedgerError, match="cannot open ledger"):
        _init(folder, ledger_url=unreachable)
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left either
    files = _init(folder)
    assert files.consortium_file.is_file()


def test_init_into_a_folder_that_already_holds_the_servers_data(tmp_path: Path) -> None:
    folder = tmp_path / "op"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "validation.npz").write_bytes(b"kept")
    files = _init(folder)
    assert (folder / "data" / "validation.npz").read_bytes() == b"kept"
    assert files.deploy_file.is_file() and files.signing_key.is_file()
    with pytest.raises(FileExistsError, match="is a consortium already"):
        _init(folder)


def test_a_client_app_refuses_a_run_config_that_carries_operator_settings(
    tmp_path: Path, server_task_identity: None
) -> None:
    """Every ClientApp gets the run config: an operator setting in it is an error there."""
    config = {**Policy().to_run_config(), "deploy.ledger-url": "postgresql://op:pw@db/ledger"}
    context = Context(
        run_id=7,
        node_id=1,
        node_config={"institution": "uni-a", "data-dir": str(tmp_path)},
        state=RecordDict(),
        run_config=config,
    )
    request = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    reply = train(request, context)
    assert reply.has_error() and reply.error.code == ExclusionCode.BAD_INPUT
    detail = Refusal.from_reason(reply.error.reason or "").detail
    assert "the [deploy] section is the operator's own" in detail


UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"


def _exec_start(unit: Path) -> list[str]:
    (line,) = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=").split()


@pytest.mark.parametrize("unit", sorted(UNITS.glob("*.service")), ids=lambda p: p.name)
def test_service_units_run_a_role_command_unprivileged_and_restart(unit: Path) -> None:
    text = unit.read_text()
    assert "User=fedcommons" in text and "User=root" not in text
    assert "Restart=on-failure" in text and "NoNewPrivileges=true" in text
    binary, *args = _exec_start(unit)
    assert binary.endswith("/bin/fedcommons")
    assert args[:2] in (["operator", "serve"], ["client", "start"])
    result = CliRunner().invoke(app, [*args, "--help"])  # every option in the line exists
    assert result.exit_code == 0, result.output


@needs_systemd
def test_service_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    fedcommons = Path(sys.executable).parent / "fedcommons"
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text().replace("/opt/fedcommons/venv/bin/fedcommons", str(fedcommons))
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
