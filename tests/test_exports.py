"""Every package says what it exports: its ``__all__``, checked against its modules.

One rule for every package ``P`` under the product's rooms, whether its
``__init__.py`` is a namespace (``client``: nothing but a docstring and the
names of its modules) or an API (``ledger``: it re-exports what callers use):

1. ``P`` sets ``__all__``, a list of distinct names;
2. every name in it is an attribute of ``P`` once ``P`` is imported (a
   submodule it names is imported first, as ``from P import *`` would);
3. every name in it is ``P``'s own: a submodule or subpackage of ``P``, or
   a name its ``__init__.py`` defines, or imports from a module inside ``P``
   (a name from elsewhere is imported from where it lives, not through ``P``);
4. every public submodule and subpackage of ``P`` (a name without a leading
   underscore) is named in ``__all__`` or re-exports at least one name in it.

So a namespace package, which defines and imports nothing, lists exactly its
submodules and subpackages; an API package lists what it re-exports and
each module none of whose names it re-exports. Alembic's
``ledger/migrations`` has no ``__init__.py`` (scripts, not a package) and is
not walked.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOMS = ("common", "client", "ledger", "server", "audit", "fedcommons")


def _walk(path: Path, name: str) -> Iterator[str]:
    """``name`` and every package below it, found on disk (nothing is imported)."""
    yield name
    for info in pkgutil.iter_modules([str(path)]):
        if info.ispkg:
            yield from _walk(path / info.name, f"{name}.{info.name}")


PACKAGES = sorted(package for room in ROOMS for package in _walk(REPO / room, room))


def _exports(package: str) -> list[str]:
    return list(vars(importlib.import_module(package)).get("__all__", []))


def _submodules(package: str) -> list[str]:
    """The public modules and subpackages directly inside ``package``."""
    paths = importlib.import_module(package).__path__
    return sorted(info.name for info in pkgutil.iter_modules(paths) if info.name[0] != "_")


def _init_names(package: str) -> tuple[set[str], dict[str, str]]:
    """What ``package``'s ``__init__.py`` defines, and each name it imports with its module."""
    init = Path(str(importlib.import_module(package).__file__))
    defined: set[str] = set()
    imported: dict[str, str] = {}
    for node in ast.parse(init.read_text(), str(init)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            imported.update({alias.asname or alias.name: module for alias in node.names})
        elif isinstance(node, ast.Import):
            imported.update({alias.asname or alias.name: alias.name for alias in node.names})
    return defined, imported


def _inside(module: str, package: str) -> bool:
    return module.startswith(f"{package}.")


def _unresolved(package: str) -> list[str]:
    """Names in ``__all__`` that are not attributes of the imported package (rule 2)."""
    module = importlib.import_module(package)
    submodules = _submodules(package)
    for name in _exports(package):
        if name in submodules:
            importlib.import_module(f"{package}.{name}")
    return [name for name in _exports(package) if not hasattr(module, name)]


def _foreign(package: str) -> list[str]:
    """Names in ``__all__`` that are neither ``package``'s modules nor its names (rule 3)."""
    defined, imported = _init_names(package)
    submodules = _submodules(package)
    return [
        name
        for name in _exports(package)
        if name not in submodules
        and name not in defined
        and not _inside(imported.get(name, ""), package)
    ]


def _unreachable(package: str) -> list[str]:
    """Public submodules that ``__all__`` neither names nor re-exports from (rule 4)."""
    exports = _exports(package)
    _, imported = _init_names(package)
    sources = {imported[name] for name in exports if name in imported}
    return [
        sub
        for sub in _submodules(package)
        if sub not in exports
        and not any(s == f"{package}.{sub}" or _inside(s, f"{package}.{sub}") for s in sources)
    ]


def test_the_walk_finds_every_package() -> None:
    on_disk = sorted(
        ".".join(init.parent.relative_to(REPO).parts)
        for room in ROOMS
        for init in (REPO / room).rglob("__init__.py")
    )
    assert on_disk == PACKAGES  # no folder with an __init__.py below one without
    assert {"client", "common.policy", "ledger.verify", "server.app.strategy"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_declares_its_exports(package: str) -> None:
    exports = vars(importlib.import_module(package)).get("__all__")
    assert isinstance(exports, list), f"{package} has no __all__ list"
    assert all(isinstance(name, str) for name in exports)
    assert len(set(exports)) == len(exports), f"{package}.__all__ repeats a name"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package: str) -> None:
    assert _unresolved(package) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_exports_only_its_own_modules_and_names(package: str) -> None:
    assert _foreign(package) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_module_is_reachable_from_the_exports(package: str) -> None:
    assert _unreachable(package) == []


def test_the_checks_catch_a_missing_a_foreign_and_a_forgotten_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = tmp_path / "exports_probe"
    (probe / "inner").mkdir(parents=True)
    (probe / "__init__.py").write_text(
        "from pathlib import Path\n"
        "from exports_probe.api import VALUE\n"
        "from .inner.deep import Deep\n"
        "__all__ = ['Deep', 'Path', 'VALUE', 'gone', 'listed']\n"
    )
    for name in ("api.py", "listed.py", "forgotten.py", "_private.py", "inner/__init__.py"):
        (probe / name).write_text("VALUE = 1\n")
    (probe / "inner" / "deep.py").write_text("class Deep: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert _submodules("exports_probe") == ["api", "forgotten", "inner", "listed"]
        assert _unresolved("exports_probe") == ["gone"]
        assert _foreign("exports_probe") == ["Path", "gone"]
        assert _unreachable("exports_probe") == ["forgotten"]
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "exports_probe"]:
            del sys.modules[name]
