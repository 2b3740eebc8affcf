"""Node liveness during a round: a site whose node dies mid-round is noticed early and may rejoin the round.

Flower's SuperLink tracks each SuperNode's heartbeats; a node that misses them (e.g. SIGKILLed) is marked offline
and every message waiting on it is answered with a ``NODE_UNAVAILABLE`` error reply, long before the round timeout.
``RejoiningGrid`` wraps the ServerApp's grid so that such a site is not simply dropped: if its node comes back
online (same key, so the same node id; its durable site state restores the previous round) within
``federation.rejoin_wait_s``, the round's instruction is sent to it again, and because local training is seeded by
(run seed, site, round) the re-run gives the reply the lost one would have been. If the node does not come back in
time, the error reply is passed on and the strategy records the failure with the node named, as before.

Layer: adapter (imports flwr). The strategy sees an ordinary grid; the in-process simulation uses the same wrapper.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message
from flwr.common.constant import ErrorCode

log = logging.getLogger(__name__)


def _node_unavailable(msg: Message) -> bool:
    return msg.has_error() and msg.error.code == ErrorCode.NODE_UNAVAILABLE


class RejoiningGrid:
    """A grid whose ``send_and_receive`` resends a round's message to a node that went offline and came back.

    Args:
        grid: the ServerApp's grid (Flower's, or the in-process one).
        rejoin_wait_s: how long to wait for a lost node to come back online (0: never resend).
        max_resends: resends per node within one ``send_and_receive``.
        poll_s: seconds between pulls.
        describe: node id → name for log lines (optional).
    """

    def __init__(
        self,
        grid: Any,
        *,
        rejoin_wait_s: float,
        max_resends: int = 1,
        poll_s: float = 1.0,
        describe: Callable[[int], str] | None = None,
    ) -> None:
        self._grid = grid
        self.rejoin_wait_s = rejoin_wait_s
        self.max_resends = max_resends
        self.poll_s = poll_s
        self._describe = describe or (lambda nid: f"node {nid}")
        #: (node id, message type) of every resend, for tests and the run log
        self.resent: list[tuple[int, str]] = []

    def __getattr__(self, name: str) -> Any:  # run, get_node_ids, push/pull_messages, create_message, ...
        return getattr(self._grid, name)

    def _activations(self) -> dict[int, str]:
        """node id → when it last (re)activated, where the grid reports it (the Deployment Engine does)."""
        try:
            nodes = list(self._grid.get_nodes())
        except Exception as err:  # a failed status call must not end the round
            log.debug("node status unavailable: %s", err)
            return {}
        return {
            int(n.node_id): str(getattr(n, "last_activated_at", ""))
            for n in nodes
            if getattr(n, "last_activated_at", "")
        }

    def _resend(
        self, sent: Message, pending: dict[str, tuple[Message, str]], activated: str, resends: dict[int, int]
    ) -> None:
        nid = sent.metadata.dst_node_id
        again = Message(
            sent.content, dst_node_id=nid, message_type=sent.metadata.message_type, group_id=sent.metadata.group_id
        )
        (new_id,) = list(self._grid.push_messages([again]))
        pending[new_id] = (again, activated)
        resends[nid] = resends.get(nid, 0) + 1
        self.resent.append((nid, sent.metadata.message_type))
        log.warning("%s is back online: sent it the %s again", self._describe(nid), sent.metadata.message_type)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push, then pull until every message is answered or ``timeout`` passes, resending to rejoined nodes.

        A node counts as lost when Flower answers for it with ``NODE_UNAVAILABLE`` (missed heartbeats) or when it
        re-activated after the message was sent (restarted faster than its heartbeat expired: the new process never
        sees the old message). Each node is resent at most ``max_resends`` times per call.
        """
        messages = list(messages)
        if self.rejoin_wait_s <= 0:
            return self._grid.send_and_receive(messages, timeout=timeout)
        end = None if timeout is None else time.monotonic() + timeout
        at_push = self._activations()
        ids = list(self._grid.push_messages(messages))
        pending: dict[str, tuple[Message, str]] = {
            mid: (m, at_push.get(m.metadata.dst_node_id, "")) for mid, m in zip(ids, messages, strict=True)
        }
        lost: dict[int, tuple[Message, Message | None, float]] = {}  # node → (instruction, error reply, give-up)
        resends: dict[int, int] = {}
        replies: list[Message] = []
        while pending or lost:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            if pending:
                for reply in self._grid.pull_messages(list(pending)):
                    sent, _ = pending.pop(reply.metadata.reply_to_message_id, (None, ""))
                    if sent is None:
                        continue
                    nid = sent.metadata.dst_node_id
                    if _node_unavailable(reply) and resends.get(nid, 0) < self.max_resends:
                        log.warning(
                            "%s went offline during %s; waiting up to %.0f s for it to rejoin",
                            self._describe(nid),
                            sent.metadata.message_type,
                            self.rejoin_wait_s,
                        )
                        lost[nid] = (sent, reply, now + self.rejoin_wait_s)
                    else:
                        replies.append(reply)
            activations = self._activations() if (pending or lost) else {}
            for mid, (sent, activated) in list(pending.items()):
                nid = sent.metadata.dst_node_id
                current = activations.get(nid, "")
                if activated and current and current != activated and resends.get(nid, 0) < self.max_resends:
                    log.warning(
                        "%s restarted during %s: its message was lost", self._describe(nid), sent.metadata.message_type
                    )
                    del pending[mid]
                    self._resend(sent, pending, current, resends)
            if lost:
                online = set(self._grid.get_node_ids())
                for nid, (sent, error, give_up) in list(lost.items()):
                    if nid in online:
                        del lost[nid]
                        self._resend(sent, pending, activations.get(nid, ""), resends)
                    elif now >= give_up:
                        del lost[nid]
                        if error is not None:
                            replies.append(error)
            if pending or lost:
                time.sleep(self.poll_s)
        replies += [error for _sent, error, _ in lost.values() if error is not None]  # the timeout came first
        return replies
