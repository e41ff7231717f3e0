"""The layout: one package per user, imports only downwards, and what ships where."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import tomllib

from common.policy import Policy
from server.operator.flower import PACKAGES, build_app_dir

REPO = Path(__file__).resolve().parent.parent
ROOMS = ("common", "client", "ledger", "server", "audit", "fedcommons")

ALLOWED: dict[str, tuple[str, ...]] = {
    "common": ("common",),
    "client": ("common", "client"),
    "ledger": ("common", "ledger"),
    "server": ("common", "ledger", "server"),
    "audit": ("common", "ledger", "audit"),  # the shared record, never the operator's code
    "fedcommons": ("common", "client", "ledger", "server", "audit", "fedcommons"),
}
"""Which first-party modules each room may import: the direction, written once."""

ML_STACK = ("torch", "opacus", "transformers", "peft")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (also inside functions), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _allowed(room: str, module: str) -> bool:
    return any(module == a or module.startswith(f"{a}.") for a in ALLOWED[room])


def test_every_import_runs_downwards() -> None:
    wrong = []
    for room in ROOMS:
        for path in sorted((REPO / room).rglob("*.py")):
            for line, module in _imports(path):
                first_party = module.split(".")[0] in ROOMS
                if first_party and not _allowed(room, module):
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert wrong == []


def _module_graph() -> dict[str, set[str]]:
    """Each product module and the product modules it imports (type-only and deferred too)."""
    paths = {}
    for room in ROOMS:
        for path in (REPO / room).rglob("*.py"):
            if "migrations" not in path.parts:
                parts = path.relative_to(REPO).with_suffix("").parts
                paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in paths.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # ``from a import b``: module a.b, or a itself
                    full = f"{node.module}.{alias.name}"
                    edges.add(full if full in paths else node.module)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
        graph[name] = {edge for edge in edges if edge in paths and edge != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group: list[str] = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_no_module_imports_its_way_back_to_itself() -> None:
    """No import circle anywhere, counting imports only for type checking and deferred ones."""
    assert _circles(_module_graph()) == []
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}  # the check finds one
    assert _circles(graph) == [["a", "b", "c"]]


def test_the_direction_check_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ledger import Ledger\n")
    ((line, module),) = _imports(bad)
    assert (line, module) == (2, "ledger")
    assert not _allowed("common", module) and not _allowed("client", module)
    assert _allowed("audit", module) and not _allowed("audit", "server.release.release")
    assert not _allowed("ledger", "server.app.valuation") and not _allowed("audit", "server")


def test_packages_import_from_this_repository() -> None:
    for name in ROOMS:
        module = importlib.import_module(name)
        assert Path(str(module.__file__)).resolve().parent == REPO / name, module.__file__


def _loaded_ml_modules(*args: str) -> list[str]:
    """The ML-stack modules ``python -X importtime -m fedcommons.cli ARGS`` imports."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fedcommons.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    names = [line.rsplit("|", 1)[-1].strip() for line in completed.stderr.splitlines()]
    return [n for n in names if n.split(".")[0] in ML_STACK]


def test_audit_verify_imports_no_ml_stack(tmp_path: Path) -> None:
    from ledger import Ledger

    assert _loaded_ml_modules("audit", "verify", "--help") == []
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).close()
    assert _loaded_ml_modules("audit", "verify", "--ledger", url, "--skip-signatures") == []
    assert _loaded_ml_modules("audit", "show", "--ledger", url, "--format", "json") == []
    # the check itself works: the demo does load torch
    assert "torch" in _loaded_ml_modules("demo", "--help")


def test_flower_app_default_config_is_the_default_policy() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    app = pyproject["tool"]["flwr"]["app"]
    assert app["config"] == Policy().to_run_config()
    assert not any(key.startswith("deploy.") for key in app["config"])
    assert app["components"] == {
        "serverapp": "server.app.server_app:app",
        "clientapp": "client.client_app:app",
    }
    assert app["fab-include"] == [f"{package}/**/*.py" for package in PACKAGES]


def test_the_app_bundle_carries_the_apps_rooms_only(tmp_path: Path) -> None:
    app = build_app_dir(tmp_path / "app")
    assert sorted(p.name for p in app.iterdir()) == [
        "client", "common", "ledger", "pyproject.toml", "server",
    ]  # fmt: skip
    config = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert config == Policy().to_run_config()


def test_flower_components_resolve_to_apps() -> None:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from client.client_app import app as client_app
    from server.app.server_app import app as server_app

    assert isinstance(server_app, ServerApp)
    assert isinstance(client_app, ClientApp)


def test_console_script_is_declared() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {"fedcommons": "fedcommons.cli:main"}


LONGER = {"ledger/schema.py": 480}
"""The one exception, by design: every ledger table is declared in one module (issue 30).
It holds declarations only, no logic."""


def test_no_product_module_is_over_400_lines() -> None:
    long = {
        name: n
        for room in ROOMS
        for path in (REPO / room).rglob("*.py")
        if (n := len(path.read_text().splitlines()))
        > LONGER.get(name := str(path.relative_to(REPO)), 420)
    }
    assert long == {}, json.dumps(long)
