"""Tests that need a program from outside Python: skipped where it is missing, failed in CI.

A test that needs Chromium, Go, ``systemd-analyze`` or network namespaces is
marked with :func:`needs`, or calls :func:`missing_tool` when only running it
tells (``deploy/netns-test.sh`` exits 77). On a machine without the tool the
test is skipped, and ``-rs`` (pyproject's ``addopts``) lists it with the
reason. Where the environment variable ``FEDCOMMONS_REQUIRE`` names the tool,
the skip is a failure instead::

    FEDCOMMONS_REQUIRE=go,systemd pytest tests/common/test_interop.py tests/server/test_deploy.py
    FEDCOMMONS_REQUIRE=all pytest tests     # what .ci/run does

``all`` requires every tool in :data:`TOOLS` and fails a skip of any other
kind too (a later ``importorskip``, say): CI cannot pass while a test it is
meant to run did not run. tests/conftest.py loads this module as a plugin.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = [
    "CHROMIUM",
    "REQUIRE",
    "TOOLS",
    "missing_tool",
    "needs",
    "needs_chromium",
    "needs_systemd",
    "required_tools",
]

REQUIRE = "FEDCOMMONS_REQUIRE"
TOOLS = ("chromium", "go", "netns", "systemd")
"""What a test may need from outside Python, by the name ``FEDCOMMONS_REQUIRE`` uses."""
CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium, which Playwright drives (it never downloads a browser here)."""


def _required() -> str:
    return os.environ.get(REQUIRE, "").strip()


def required_tools() -> frozenset[str]:
    """The tools ``FEDCOMMONS_REQUIRE`` names (``all``: every one of :data:`TOOLS`).

    Raises
    ------
    pytest.UsageError
        A name that is not in :data:`TOOLS` (a typo must not require nothing).
    """
    value = _required()
    if value == "all":
        return frozenset(TOOLS)
    names = {name.strip() for name in value.split(",") if name.strip()}
    if unknown := names - set(TOOLS):
        raise pytest.UsageError(
            f"{REQUIRE}={value!r} names {', '.join(sorted(unknown))}: give 'all' or a "
            f"comma-separated list of {', '.join(TOOLS)}"
        )
    return frozenset(names)


def needs(tool: str, *, missing: str | None) -> pytest.MarkDecorator:
    """Mark a test as needing ``tool``; ``missing`` says why it is absent here (``None``: present).

    Raises
    ------
    ValueError
        ``tool`` is not one of :data:`TOOLS`.
    """
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}: add it to tests.support.tools.TOOLS")
    return pytest.mark.needs(tool, missing=missing)


def missing_tool(tool: str, reason: str) -> NoReturn:
    """Skip the running test because ``tool`` is missing, or fail it where it is required."""
    __tracebackhide__ = True  # -rs names the caller's line
    if tool in required_tools():
        pytest.fail(f"{tool} is required here ({REQUIRE}={_required()}): {reason}", pytrace=False)
    pytest.skip(f"needs {tool}: {reason}")


needs_chromium = needs(
    "chromium",
    missing=None if CHROMIUM.exists() else "no /usr/bin/chromium (apt-get install chromium)",
)
needs_systemd = needs(
    "systemd",
    missing=None
    if shutil.which("systemd-analyze")
    else "systemd-analyze is not installed (apt-get install systemd)",
)


# -- the plugin ------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"needs(tool, missing): needs a tool from outside Python; skipped where missing "
        f"unless {REQUIRE} requires it (tests/support/tools.py)",
    )
    required_tools()  # a bad value stops the run before any test


def _missing(item: pytest.Item) -> Iterator[tuple[str, str]]:
    for mark in item.iter_markers("needs"):
        if mark.kwargs["missing"] is not None:
            yield mark.args[0], mark.kwargs["missing"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    required = required_tools()
    for item in items:  # a skip mark, so that -rs names the test's own line
        for tool, reason in _missing(item):
            if tool not in required:
                item.add_marker(pytest.mark.skip(reason=f"needs {tool}: {reason}"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for tool, reason in _missing(item):
        missing_tool(tool, reason)  # only a required one is left: it fails


def _refused_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """With ``FEDCOMMONS_REQUIRE=all``, turn a skip into a failure that gives its reason."""
    if not report.skipped or hasattr(report, "wasxfail") or _required() != "all":
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"{REQUIRE}=all: every test must run here, and this one skipped: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _refused_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _refused_skip(report)
    return report
