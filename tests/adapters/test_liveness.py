"""RejoiningGrid: a node reported unavailable mid-round is sent the instruction again once it is back online."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

from fedmedlora.federation.liveness import RejoiningGrid


@pytest.fixture(autouse=True)
def _server_identity(server_identity):
    """Every test here builds messages by hand (``tests/conftest.py``)."""


class FakeGrid:
    """Nodes 1 and 2; node 2 dies after receiving its first message and is back online after ``down_polls`` polls."""

    def __init__(self, down_polls: int) -> None:
        self.down_polls = down_polls
        self.polls = 0
        self.sent: dict[str, Message] = {}
        self.pushed: list[int] = []

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            mid = f"m{len(self.sent)}-{i}"
            msg.metadata.__dict__["_message_id"] = mid
            self.sent[mid] = msg
            self.pushed.append(msg.metadata.dst_node_id)
            ids.append(mid)
        return ids

    def get_node_ids(self):
        self.polls += 1
        return [1, 2] if self.polls > self.down_polls else [1]

    def pull_messages(self, ids):
        out = []
        for mid in ids:
            msg = self.sent[mid]
            nid = msg.metadata.dst_node_id
            first_to_2 = nid == 2 and self.pushed.count(2) == 1
            if first_to_2:
                out.append(Message(Error(ErrorCode.NODE_UNAVAILABLE, "Node Unavailable"), reply_to=msg))
            else:
                out.append(Message(RecordDict({"info": ConfigRecord({"node": nid})}), reply_to=msg))
        return out

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def _round() -> list[Message]:
    return [
        Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=n, message_type="train")
        for n in (1, 2)
    ]


def test_a_node_back_online_in_time_is_sent_the_round_again() -> None:
    grid = FakeGrid(down_polls=2)
    replies = RejoiningGrid(grid, rejoin_wait_s=60, poll_s=0).send_and_receive(_round(), timeout=60)
    assert sorted(r.content.config_records["info"]["node"] for r in replies) == [1, 2]
    assert not any(r.has_error() for r in replies)
    assert grid.pushed == [1, 2, 2]


def test_a_node_not_back_in_time_is_reported_unavailable() -> None:
    grid = FakeGrid(down_polls=10**9)
    replies = RejoiningGrid(grid, rejoin_wait_s=0.05, poll_s=0.01).send_and_receive(_round(), timeout=60)
    errors = [r for r in replies if r.has_error()]
    assert len(replies) == 2 and len(errors) == 1 and errors[0].error.code == ErrorCode.NODE_UNAVAILABLE
    assert grid.pushed == [1, 2]


def test_the_round_timeout_ends_the_wait_and_zero_disables_rejoining() -> None:
    grid = FakeGrid(down_polls=10**9)
    replies = RejoiningGrid(grid, rejoin_wait_s=3600, poll_s=0.01).send_and_receive(_round(), timeout=0.1)
    assert sum(r.has_error() for r in replies) == 1  # the error reply is passed on when the timeout comes first
    grid = FakeGrid(down_polls=0)
    replies = RejoiningGrid(grid, rejoin_wait_s=0).send_and_receive(_round(), timeout=60)
    assert sum(r.has_error() for r in replies) == 1 and grid.pushed == [1, 2]


class RestartingGrid(FakeGrid):
    """Node 2 restarts (re-activates) before its heartbeat lapses: no error reply, its first message never answered."""

    def get_nodes(self):
        self.polls += 1
        restarted = self.polls > self.down_polls
        return [
            SimpleNamespace(node_id=1, last_activated_at="t0"),
            SimpleNamespace(node_id=2, last_activated_at="t1" if restarted else "t0"),
        ]

    def pull_messages(self, ids):
        return [
            Message(RecordDict({"info": ConfigRecord({"node": m.metadata.dst_node_id})}), reply_to=m)
            for m in (self.sent[i] for i in ids)
            if not (m.metadata.dst_node_id == 2 and self.pushed.count(2) == 1)
        ]


def test_a_node_that_restarted_before_its_heartbeat_lapsed_is_sent_the_round_again() -> None:
    grid = RestartingGrid(down_polls=3)
    replies = RejoiningGrid(grid, rejoin_wait_s=60, poll_s=0).send_and_receive(_round(), timeout=60)
    assert sorted(r.content.config_records["info"]["node"] for r in replies) == [1, 2]
    assert grid.pushed == [1, 2, 2]
