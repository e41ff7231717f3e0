import importlib
from pathlib import Path

import tomllib

from common.policy import Policy

REPO = Path(__file__).resolve().parent.parent


def test_packages_import_from_this_repository() -> None:
    for name in ("common", "client", "server"):
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().parent == REPO / name, module.__file__


def test_flower_app_default_config_is_the_default_policy() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    app = pyproject["tool"]["flwr"]["app"]
    assert app["config"] == Policy().to_run_config()
    assert app["components"] == {
        "serverapp": "server.server_app:app",
        "clientapp": "client.client_app:app",
    }


def test_flower_components_resolve_to_apps() -> None:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from client.client_app import app as client_app
    from server.server_app import app as server_app

    assert isinstance(server_app, ServerApp)
    assert isinstance(client_app, ClientApp)


def test_console_script_is_declared() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {"fedcommons": "common.cli.app:main"}
