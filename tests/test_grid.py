"""PollingGrid: the reply-wait loop that replaces Flower's fixed 3 s sleep."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest

from server.grid import PollingGrid


class ScriptedGrid:
    """Answers message i on pull number ``ready_after[i]``."""

    def __init__(self, ready_after: list[int]) -> None:
        self.ready_after = ready_after
        self.pulls = 0

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids: Iterable[str]) -> list[Any]:
        self.pulls += 1
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in ids
            if self.ready_after[int(i[1:])] <= self.pulls
        ]


def test_collects_every_reply_once_polling_at_the_interval() -> None:
    inner = ScriptedGrid([1, 3, 2])
    grid = PollingGrid(inner, poll_interval=0.01)  # type: ignore[arg-type]
    replies = list(grid.send_and_receive(["a", "b", "c"], timeout=5))  # type: ignore[list-item]
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert inner.pulls == 3


def test_gives_up_at_the_timeout_with_what_arrived() -> None:
    inner = ScriptedGrid([1, 10**9])
    replies = list(PollingGrid(inner, 0.01).send_and_receive(["a", "b"], timeout=0.1))  # type: ignore[arg-type, list-item]
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]


def test_rejects_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="poll_interval must be > 0"):
        PollingGrid(ScriptedGrid([]), 0)  # type: ignore[arg-type]
