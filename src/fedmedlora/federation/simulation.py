"""In-process federation: the real ServerApp and ClientApp, one process, messages serialised like on the wire.

Owns: ``InProcessGrid`` (a ``flwr.serverapp.Grid`` that hands each message to the ClientApp of its destination
node, after a protobuf round trip — ``message_to_proto(...).SerializeToString()`` and back, the same encoding the
Deployment Engine sends — and records the size and contents of every message), per-site ``Context`` objects
(``node_config = {"site", "data-dir"}``, persistent ``state``), and ``run_federation(cfg, run_dir)``.

Why not ``flwr.simulation.run_simulation`` (Ray)? On a 2-core laptop Ray adds tens of seconds of start-up per
run, a worker process per virtual node holding its own copy of the model, and an empty ``run_config`` /
``partition-id``-only ``node_config`` in its Python API (see docs/federation.md for the measurements). This driver
calls the *same* ``server_app.app`` and ``client_app.app`` objects with the same ``Message``/``Context`` types, so
the apps run unchanged on the Deployment Engine (``flwr run`` with SuperLink/SuperNodes). Sites run one after the
other; each keeps its state in ``site_state/<site>/`` under the run folder through the same code a hospital's
SuperNode runs (``fedmedlora.federation.site_state``: protobuf, not pickle; a site answering round r starts from
its newest state before r, so a site that replied in a round that was then interrupted does not carry that
round's state into the resumed run).

May import flwr; torch only through the apps.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedmedlora.benchmark import load_benchmark
from fedmedlora.config import RunConfig
from fedmedlora.federation import client_app as client_module
from fedmedlora.federation import server_app as server_module
from fedmedlora.federation.messages import describe
from fedmedlora.federation.site import default_data_dir
from fedmedlora.federation.site_state import STATE_DIR_KEY
from fedmedlora.lm.adapter_io import load_adapter_arrays
from fedmedlora.runs import FINAL, ROUNDS_FILE, SITE_STATE_DIR, RunDir

log = logging.getLogger(__name__)

#: Node ids of the virtual sites: 1001, 1002, ... in site order (deterministic, so sampling is reproducible).
FIRST_NODE_ID = 1001
CLIENT_ERROR_CODE = 1


@dataclass
class WireRecord:
    """One message as it crossed the (simulated) wire."""

    direction: str  # "down" (server → site) or "up" (site → server)
    node_id: int
    site: str
    message_type: str
    wire_bytes: int  # serialised protobuf size
    content: dict[str, Any] = field(default_factory=dict)  # messages.describe(): tensors, metric/config keys
    error: str | None = None


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process; every message goes through protobuf bytes.

    Args:
        client_app: The ClientApp every node runs.
        contexts: node id → that node's ``Context`` (node_config, state, run_config).
        run: The run these messages belong to.

    Per-site state is the sites' own business (``fedmedlora.federation.site_state``): each virtual node's
    ``node_config`` names a ``state-dir`` under the run folder, exactly as a hospital's SuperNode does.
    """

    def __init__(self, client_app: ClientApp, contexts: dict[int, Context], run: Run) -> None:
        self.client_app = client_app
        self.contexts = contexts
        self._run = run
        self.wire: list[WireRecord] = []
        self._pending: dict[str, bytes] = {}
        self._replies: dict[str, Message] = {}

    # -- Grid API ------------------------------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self) -> list[SimpleNamespace]:
        """Node id and site name of every node (as the Deployment Engine reports a registered node's name)."""
        return [SimpleNamespace(node_id=n, name=str(c.node_config.get("site", ""))) for n, c in self.contexts.items()]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"message to unknown node {msg.metadata.dst_node_id}; nodes: {list(self.contexts)}")
            msg_id = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = msg_id
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            msg.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            msg.metadata.__dict__["_created_at"] = time.time()
            data = message_to_proto(msg).SerializeToString()
            self._record("down", msg.metadata.dst_node_id, msg, len(data))
            self._pending[msg_id] = data
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for msg_id in message_ids:
            if msg_id in self._pending:
                self._replies[msg_id] = self._deliver(self._pending.pop(msg_id))
            if msg_id in self._replies:
                out.append(self._replies.pop(msg_id))
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(list(self.push_messages(messages)))

    # -- delivery ------------------------------------------------------------------------------------------------
    def _deliver(self, data: bytes) -> Message:
        proto = ProtoMessage()
        proto.ParseFromString(data)
        msg = message_from_proto(proto)
        node = msg.metadata.dst_node_id
        ctx = self.contexts[node]
        try:
            reply = self.client_app(msg, ctx)
        except Exception as err:
            log.error("site %s failed:\n%s", ctx.node_config.get("site"), traceback.format_exc())
            reply = Message(Error(CLIENT_ERROR_CODE, f"{type(err).__name__}: {err}"), reply_to=msg)
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        wire = message_to_proto(reply).SerializeToString()
        back = ProtoMessage()
        back.ParseFromString(wire)
        reply = message_from_proto(back)
        self._record("up", node, reply, len(wire))
        return reply

    def _record(self, direction: str, node: int, msg: Message, size: int) -> None:
        site = str(self.contexts[node].node_config.get("site", node))
        rec = WireRecord(direction, node, site, msg.metadata.message_type, size)
        if msg.has_error():
            rec.error = msg.error.reason
        else:
            rec.content = describe(msg.content)
        self.wire.append(rec)


@dataclass
class FederationResult:
    """What ``run_federation`` returns."""

    arrays: dict[str, np.ndarray]
    rounds: list[dict[str, Any]]
    run_dir: Path
    sites: list[str]
    wire: list[WireRecord]
    seconds: float


def resolve_sites(cfg: RunConfig, data_dir: Path) -> list[str]:
    """``federation.sites``, else the benchmark's training sites."""
    if cfg.federation.sites:
        missing = [s for s in cfg.federation.sites if not (data_dir / s).is_dir()]
        if missing:
            present = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("_"))
            raise ValueError(f"federation.sites: no data folder for {missing} in {data_dir} (sites there: {present})")
        return list(cfg.federation.sites)
    sites = load_benchmark(data_dir).train_sites
    if not sites:
        raise ValueError(f"{data_dir}: the benchmark has no training sites; set federation.sites")
    return sites


def run_federation(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    data_dir: str | Path | None = None,
    sites: Sequence[str] | None = None,
    server_app: ServerApp | None = None,
    client_app: ClientApp | None = None,
) -> FederationResult:
    """Run the ServerApp and one ClientApp per site in this process.

    Args:
        cfg: Run configuration (``federation.*`` selects rule, rounds, sampling).
        run_dir: Output folder (see ``server_app``); ``resume=True`` continues the run found there.
        resume: Continue after the last checkpointed round.
        data_dir: Benchmark folder; each virtual site reads only ``<data_dir>/<site>/``, the server only
            ``<data_dir>/_server/``. Default ``data.benchmark`` or the bundled sample.
        sites: Sites to simulate (default ``federation.sites`` or the benchmark's training sites).
        server_app: Override for tests (default ``fedmedlora.federation.server_app.app``).
        client_app: Override for tests (default ``fedmedlora.federation.client_app.app``).

    Returns:
        The final global adapter, the round records, the wire log and the wall time.
    """
    t0 = time.perf_counter()
    run_path = Path(run_dir)
    if data_dir is None:
        data_dir = default_data_dir(cfg)
    data_path = Path(data_dir)
    site_list = list(sites) if sites is not None else resolve_sites(cfg, data_path)
    if len(set(site_list)) != len(site_list):
        raise ValueError(f"duplicate site names in {site_list}")
    run_cfg = cfg.to_flower_run_config()

    run_id = 1
    run = Run.create_empty(run_id=run_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1
    contexts = {
        FIRST_NODE_ID + i: Context(
            run_id=run_id,
            node_id=FIRST_NODE_ID + i,
            node_config={
                "site": site,
                "data-dir": str(data_path),
                STATE_DIR_KEY: str((run_path / SITE_STATE_DIR / site).resolve()),
            },
            state=RecordDict(),
            run_config=dict(run_cfg),
        )
        for i, site in enumerate(site_list)
    }
    grid = InProcessGrid(client_app or client_module.app, contexts, run)
    server_ctx = Context(
        run_id=run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config={**run_cfg, "run-dir": str(run_path), "resume": resume, "server-data-dir": str(data_path)},
    )
    (server_app or server_module.app)(grid, server_ctx)
    arrays = load_adapter_arrays(RunDir(run_path).adapter_dir(FINAL))
    rounds = RunDir(run_path).read_jsonl(ROUNDS_FILE)
    return FederationResult(arrays, rounds, run_path, site_list, grid.wire, time.perf_counter() - t0)
