"""The ServerApp's grid wrapper: a round's wait ends when every node asked has answered.

Flower answers for a node whose SuperNode is gone itself (an error reply
from the SuperLink once two heartbeats are missed); that answer ends the
wait as a node's own reply does, so nobody waits out the round's timeout
for a dead node. Below the quorum for longer than the wait allowed, node
sampling gives up with :class:`QuorumLost` instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import Message, MessageType, RecordDict
from flwr.server.superlink.linkstate.utils import (
    create_message_error_unavailable_res_message,
)
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from server.app.grid import PollingGrid, QuorumLost
from tests.support.sealed_updates import server_task_identity

pytestmark = pytest.mark.usefixtures("server_task_identity")
assert server_task_identity  # imported so that pytest finds the fixture


class Clock:
    """A clock that only ``sleep`` moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedGrid(Grid):
    """Connected nodes, and which reply each node gives at which pull."""

    def __init__(self, nodes: list[int], answers: dict[int, tuple[int, str]]) -> None:
        self.nodes = nodes
        self.answers = answers  # node -> (pull number it answers at, "reply" | "gone")
        self.sent: dict[str, Message] = {}
        self.pulls = 0

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for number, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{number}"
            self.sent[f"m{number}"] = message
            ids.append(f"m{number}")
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        replies = []
        for message_id in message_ids:
            request = self.sent[message_id]
            at, kind = self.answers.get(request.metadata.dst_node_id, (10**9, ""))
            if at != self.pulls:
                continue
            if kind == "gone":  # what the SuperLink writes for a node that missed heartbeats
                replies.append(create_message_error_unavailable_res_message(request.metadata, ""))
            else:
                replies.append(Message(RecordDict(), reply_to=request))
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise NotImplementedError


def _requests(grid: Grid, nodes: list[int]) -> list[Message]:
    return [grid.create_message(RecordDict(), MessageType.TRAIN, node, "1") for node in nodes]


def test_the_wait_ends_when_the_last_node_answers_or_is_reported_gone() -> None:
    inner = ScriptedGrid([10, 11, 12], {10: (1, "reply"), 11: (2, "reply"), 12: (4, "gone")})
    clock = Clock()
    grid = PollingGrid(inner, 0.5, clock=clock, sleep=clock.sleep)
    replies = list(grid.send_and_receive(_requests(grid, [10, 11, 12]), timeout=600.0))
    assert len(replies) == 3 and inner.pulls == 4  # not one pull more
    assert clock.now == pytest.approx(1.5)  # three polls' sleep, not the 600 s timeout
    (gone,) = [r for r in replies if r.has_error()]
    assert gone.metadata.reply_to_message_id == "m2"  # names the request, so the node


def test_a_node_that_never_answers_is_waited_for_until_the_timeout_only() -> None:
    inner = ScriptedGrid([10, 11], {10: (1, "reply")})
    clock = Clock()
    grid = PollingGrid(inner, 0.5, clock=clock, sleep=clock.sleep)
    replies = list(grid.send_and_receive(_requests(grid, [10, 11]), timeout=3.0))
    assert len(replies) == 1 and clock.now == pytest.approx(3.0)


def test_below_the_quorum_for_longer_than_the_wait_the_run_gives_up_and_says_why() -> None:
    inner = ScriptedGrid([10, 11, 12], {})
    clock = Clock()
    grid = PollingGrid(inner, 0.5, quorum=2, quorum_wait=60.0, clock=clock, sleep=clock.sleep)
    assert list(grid.get_node_ids()) == [10, 11, 12]
    inner.nodes = [10]  # two SuperNodes gone
    assert list(grid.get_node_ids()) == [10]  # Flower's sampling asks again, and waits
    clock.sleep(59.0)
    assert list(grid.get_node_ids()) == [10]
    inner.nodes = [10, 12]  # one came back in time: the wait starts afresh next time
    assert list(grid.get_node_ids()) == [10, 12]
    inner.nodes = [10]
    grid.get_node_ids()
    clock.sleep(61.0)
    with pytest.raises(QuorumLost, match=r"only 1 node\(s\) connected, the quorum is 2, and none"):
        grid.get_node_ids()


def test_a_poll_interval_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="poll_interval must be > 0, got 0"):
        PollingGrid(ScriptedGrid([], {}), 0.0)
