"""Warm ClientApps (``client.warm``): the Flower internals it stands on, fresh randomness per
fork, and a runner that stops its node when it dies.

The runner serving real rounds is tested end to end by the demo
(``tests/fedcommons/test_end_to_end.py``), which uses it by default.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import client.warm as warm
from client.warm import RuntimeHttpClient, run_clientapp  # type: ignore[attr-defined]
from common.processes import run_foreground
from tests.support.processes import alive


def test_the_flower_internals_the_runner_uses_are_where_it_expects_them() -> None:
    """Fails loudly when a Flower upgrade moves or changes what :mod:`client.warm` calls."""
    import flwr
    from flwr.proto.runtime_pb2 import AcquireTaskRequest, AcquireTaskResponse
    from flwr.supercore.constant import TaskType

    assert flwr.__version__.startswith("1.41."), "re-check client/warm.py against this Flower"
    assert TaskType.CLIENT_APP.value == "flwr-clientapp"
    assert "supported_task_types" in AcquireTaskRequest.DESCRIPTOR.fields_by_name
    assert {"task", "token"} <= set(AcquireTaskResponse.DESCRIPTOR.fields_by_name)
    params = inspect.signature(run_clientapp).parameters
    assert list(params)[:6] == ["runtime_api_address", "token", "insecure", "certificates",
                                "parent_pid", "runtime_dependency_install"]  # fmt: skip
    client = inspect.signature(RuntimeHttpClient.from_server_address).parameters
    assert {"server_address", "insecure", "root_certificates", "interceptors",
            "retry_invoker"} <= set(client)  # fmt: skip
    assert callable(RuntimeHttpClient.AcquireTask)
    supernode_help = subprocess.run(
        [str(Path(sys.executable).parent / "flower-supernode"), "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "--isolation {subprocess,process}" in supernode_help


def _draw_in_child() -> tuple[list[float], float]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        warm.fresh_randomness()
        draw = f"{torch.randn(3).tolist()};{np.random.rand()}"
        os.write(write, draw.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    noise, uniform = text.split(";")
    return [float(x) for x in noise.strip("[]").split(",")], float(uniform)


def test_every_forked_clientapp_draws_fresh_randomness() -> None:
    """DP noise repeated across rounds would cancel out of two updates' difference."""
    torch.manual_seed(0)
    np.random.seed(0)
    first, second = _draw_in_child(), _draw_in_child()
    assert first != second
    # and neither is the parent's own next draw (what a fork without reseeding gives)
    torch.manual_seed(0)
    np.random.seed(0)
    inherited = (torch.randn(3).tolist(), np.random.rand())
    assert inherited not in (first, second)


@pytest.mark.parametrize("code", [3, 0])
def test_a_node_stops_when_its_warm_runner_dies(tmp_path: Path, code: int) -> None:
    """No SuperNode is left waiting for tasks nothing will run; the runner's status is returned."""
    marker = tmp_path / "main.pid"
    main = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    companion = f"import time, sys; time.sleep(1); sys.exit({code})"
    returned = run_foreground(
        [sys.executable, "-c", main],
        env=dict(os.environ),
        companion=[sys.executable, "-c", companion],
    )
    assert returned == (code or 1)  # a runner that ended, even cleanly, is a failure here
    pid = int(marker.read_text())
    assert not alive(pid)  # the node was stopped with it


def test_runner_argv_names_the_runtime_api_and_the_state_folder(tmp_path: Path) -> None:
    argv = warm.runner_argv("127.0.0.1:9094", tmp_path)
    assert argv[:3] == [sys.executable, "-m", "client.warm"]
    assert argv[3:] == ["--runtime-api-address", "127.0.0.1:9094", "--state", str(tmp_path)]
