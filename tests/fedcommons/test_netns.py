"""The consortium across five hosts in network namespaces: ``deploy/netns-test.sh``.

The script is the test (it is also what an operator can run to try a
release); here it runs with this checkout's ``fedcommons`` first on PATH.
It exits 77 only where network namespaces cannot be created, and says why:
the test is then skipped, or failed where ``FEDCOMMONS_REQUIRE`` requires
``netns`` (:mod:`tests.support.tools`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import missing_tool

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.postgres]

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "netns-test.sh"
SKIPPED = 77


def test_a_consortium_across_five_namespaced_hosts(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode == SKIPPED:
        missing_tool("netns", output.strip().splitlines()[-1])
    assert result.returncode == 0, output[-6000:]
    assert "the unregistered host was refused" in output
    assert "participants reach only the SuperLink port" in output
    assert "every role command stopped cleanly on SIGTERM" in output
    assert "hold no participant data and none of 9 plaintext updates" in output
    assert "ledger intact with 9 receipts from 3 hosts" in output
    (prefix,) = re.findall(r"namespaces (fc\d+)-\*", output)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert f"{prefix}-" not in left.stdout  # every namespace it made is gone
