"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest


@pytest.fixture()
def server_identity():
    """Messages with a destination are created by a ServerApp: Flower needs its run/node/task identity set (the
    runtimes set it; tests building messages by hand use this)."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, SUPERLINK_NODE_ID, 1
