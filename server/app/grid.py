"""A Grid wrapper that polls for replies at the policy's interval and watches the quorum.

Flower's ``Grid.send_and_receive`` sleeps a fixed 3 s between pulls. The
wrapper uses only the public ``push_messages``/``pull_messages`` API of the
Grid it wraps, so Flower itself is unchanged. A reply counts whether it is
an update or an error (Flower answers for a node whose SuperNode is gone),
so a round ends as soon as every node asked has answered. Flower's node
sampling waits, without end, for enough nodes to connect; with a quorum
set, :meth:`PollingGrid.get_node_ids` gives up after ``quorum_wait``
seconds below it (:class:`QuorumLost`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["PollingGrid", "QuorumLost"]


class QuorumLost(RuntimeError):
    """Fewer nodes than the quorum stayed connected for longer than the wait allowed."""


class PollingGrid(Grid):
    """Delegate to ``grid``; wait for replies polling every ``poll_interval`` s.

    Parameters
    ----------
    quorum : int (default: 0)
        Nodes a round needs; 0 watches nothing.
    quorum_wait : float (default: 600.0)
        Seconds to wait for the quorum to connect before :class:`QuorumLost`.
    clock, sleep : callables (default: ``time.monotonic``, ``time.sleep``)
        For tests.
    """

    def __init__(
        self,
        grid: Grid,
        poll_interval: float,
        *,
        quorum: int = 0,
        quorum_wait: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
        self._grid = grid
        self.poll_interval = poll_interval
        self.quorum = quorum
        self.quorum_wait = quorum_wait
        self._short_since: float | None = None
        self._clock, self._sleep = clock, sleep

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        nodes = list(self._grid.get_node_ids())
        if len(nodes) >= self.quorum:
            self._short_since = None
            return nodes
        now = self._clock()
        self._short_since = self._short_since if self._short_since is not None else now
        if now - self._short_since > self.quorum_wait:
            raise QuorumLost(
                f"only {len(nodes)} node(s) connected, the quorum is {self.quorum}, and "
                f"none more came in {self.quorum_wait:.0f} s"
            )
        return nodes

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else self._clock() + timeout
        replies: list[Message] = []
        while pending:
            pulled = list(self.pull_messages(pending))
            replies.extend(pulled)
            pending -= {m.metadata.reply_to_message_id for m in pulled}
            if not pending or (deadline is not None and self._clock() >= deadline):
                break
            self._sleep(self.poll_interval)
        return replies
