"""A test that needs a missing tool is a listed skip here, and a failure where it is required.

Each case runs pytest on a small test file (pytester, in process) with
``tests.support.tools`` as its plugin and ``FEDCOMMONS_REQUIRE`` set as CI or a
developer would set it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.tools import REQUIRE, TOOLS

pytest_plugins = ["pytester"]

CI_RUN = Path(__file__).resolve().parent.parent / ".ci" / "run"

TESTS = """
import pytest
from tests.support.tools import missing_tool, needs

@needs("go", missing="no go here")
def test_go() -> None:
    pass

@needs("chromium", missing="no chromium here")
def test_chromium() -> None:
    pass

@needs("systemd", missing=None)
def test_present() -> None:
    pass

def test_netns() -> None:
    missing_tool("netns", "cannot create network namespaces here")

def test_other_skip() -> None:
    pytest.skip("some other reason")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug() -> None:
    raise AssertionError
"""


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, required: str | None
) -> pytest.RunResult:
    if required is None:
        monkeypatch.delenv(REQUIRE, raising=False)
    else:
        monkeypatch.setenv(REQUIRE, required)
    pytester.makepyfile(test_needs=TESTS)
    return pytester.runpytest("-p", "tests.support.tools", "-rs")


def test_nothing_required_every_missing_tool_is_a_skip_with_its_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, None)
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_needs.py:*: needs go: no go here",
            "SKIPPED [[]1[]] test_needs.py:*: needs chromium: no chromium here",
            "SKIPPED [[]1[]] test_needs.py:*: needs netns: cannot create network namespaces here",
            "SKIPPED [[]1[]] test_needs.py:*: some other reason",
        ],
        consecutive=False,
    )


def test_a_required_tool_that_is_missing_fails_and_the_others_still_skip(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, "go, netns")
    result.assert_outcomes(passed=1, skipped=2, failed=1, errors=1, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_go*",
            f"go is required here ({REQUIRE}=go, netns): no go here",
            "*_ test_netns _*",
            f"netns is required here ({REQUIRE}=go, netns): cannot create network namespaces here",
            "SKIPPED [[]1[]] test_needs.py:*: needs chromium: no chromium here",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_all_fails_every_skip_but_not_an_expected_failure(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, "all")
    result.assert_outcomes(passed=1, failed=2, errors=2, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_go*",
            f"go is required here ({REQUIRE}=all): no go here",
            "*ERROR at setup of test_chromium*",
            f"chromium is required here ({REQUIRE}=all): no chromium here",
            "*_ test_netns _*",
            f"netns is required here ({REQUIRE}=all): cannot create network namespaces here",
            "*_ test_other_skip _*",
            f"{REQUIRE}=all: every test must run here, and this one skipped: some other reason",
        ]
    )
    assert "SKIPPED" not in result.stdout.str()


def test_all_fails_a_module_skipped_at_collection(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRE, "all")
    pytester.makepyfile(
        test_gone='import pytest\npytest.importorskip("no_such_module_here")\n\n'
        "def test_never() -> None:\n    pass\n"
    )
    result = pytester.runpytest("-p", "tests.support.tools", "-rs")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{REQUIRE}=all: every test must run here*no_such_module_here*"])
    monkeypatch.delenv(REQUIRE)
    pytester.runpytest("-p", "tests.support.tools", "-rs").assert_outcomes(skipped=1)


def test_an_unknown_tool_name_stops_the_run_before_any_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, "chromium,gopher")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    expected = f"names gopher: give 'all' or a comma-separated list of {', '.join(TOOLS)}"
    result.stderr.fnmatch_lines([f"*{REQUIRE}='chromium,gopher' {expected}"])


def test_ci_installs_every_tool_and_requires_them_all() -> None:
    script = CI_RUN.read_text()
    installed = re.search(r"apt-get install -y -q (.*)", script)
    assert installed is not None
    packages = set(installed.group(1).split())
    assert {"chromium", "golang-go", "golang-golang-x-mod-dev", "iproute2", "systemd"} <= packages
    exported, test_command = script.index(f"export {REQUIRE}=all"), script.index('eval "$TEST')
    assert exported < test_command
