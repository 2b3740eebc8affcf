"""A site's durable state: its ``context.state`` kept in a site-local folder, round by round, surviving restarts.

What a site carries between rounds (FedSA's private B, AdamW moments, the int8 transport's error feedback, the
DP-SGD ledger) lives in Flower's ``context.state``, which a SuperNode keeps only in memory. With the node config
key ``state-dir`` (``fedmedlora deploy supernode --state-dir``; the in-process simulation sets it to
``<run>/site_state/<site>``) the ClientApp instead:

* before handling round ``r``, loads the newest saved state of a round **before** ``r`` (a site that answered
  round ``r`` and then saw the coordinator resume from round ``r − 1`` starts round ``r`` again from its
  round ``r − 1`` state, exactly as the uninterrupted run);
* after answering round ``r``, writes ``<state-dir>/<run key>/round_<r>.pb`` atomically (temporary file, fsync,
  rename, fsync of the folder) and keeps the two newest rounds.

The file is the protobuf encoding of Flower's ``RecordDict`` (never a pickle) with a header record naming the
format version, the site, the run key and the round. A file that does not parse, or whose header names another
site, run or round, is a ``SiteStateError`` naming the file: never a silent fresh start. The run key is the run
name plus a digest of the configuration (``federation.rounds`` excluded, so a longer resumed run keeps its
state); a different configuration starts in a folder of its own. Nothing here ever leaves the site.

May import flwr; must not import torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # pylint: disable=no-name-in-module

from fedmedlora.config import RunConfig
from fedmedlora.federation.messages import replace_contents

#: Node config key: the site-local folder of this node's state.
STATE_DIR_KEY = "state-dir"
log = logging.getLogger(__name__)

#: The header record inside every saved state.
HEADER = "fedmedlora-site-state"
VERSION = 1
KEEP = 2


class SiteStateError(RuntimeError):
    """A saved site state cannot be used (corrupt, another site's or run's); the message names the file."""


def run_key(cfg: RunConfig) -> str:
    """``<name>-<12 hex>``: the run name and a digest of its configuration without ``federation.rounds``."""
    tree = cfg.model_dump(mode="json")
    tree["federation"].pop("rounds", None)
    digest = hashlib.sha256(json.dumps(tree, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    return f"{cfg.name}-{digest}"


class SiteStateStore:
    """The saved states of one site in one run: ``<root>/<run key>/round_<r>.pb``."""

    def __init__(self, root: str | Path, site: str, key: str) -> None:
        self.folder = Path(root) / key
        self.site = site
        self.key = key

    def rounds(self) -> dict[int, Path]:
        if not self.folder.is_dir():
            return {}
        out = {}
        for p in self.folder.glob("round_*.pb"):
            tail = p.stem.removeprefix("round_")
            if tail.isdigit():
                out[int(tail)] = p
        return out

    def load(self, path: Path, round_: int) -> RecordDict:
        """Parse one saved state and check its header.

        Raises:
            SiteStateError: the file does not parse, or names another site, run, round or format version.
        """
        proto = ProtoRecordDict()
        try:
            proto.ParseFromString(path.read_bytes())
            state = recorddict_from_proto(proto)
        except Exception as e:  # protobuf raises DecodeError, flwr ValueError/KeyError on odd records
            raise SiteStateError(f"{path}: not a saved site state ({type(e).__name__}: {e})") from None
        header = state.config_records.get(HEADER)
        expected = {"version": VERSION, "site": self.site, "run": self.key, "round": round_}
        found = dict(header) if header is not None else {}
        if found != expected:
            raise SiteStateError(
                f"{path}: this state belongs elsewhere (header {found or 'missing'}, expected {expected}); "
                "move it away to start this site afresh"
            )
        return state

    def load_before(self, round_: int) -> RecordDict | None:
        """The newest saved state of a round before ``round_`` (``None``: none saved yet)."""
        older = {r: p for r, p in self.rounds().items() if r < round_}
        if not older:
            return None
        r = max(older)
        return self.load(older[r], r)

    def load_newest(self) -> RecordDict | None:
        """The newest saved state of any round (``None``: none saved)."""
        rounds = self.rounds()
        if not rounds:
            return None
        r = max(rounds)
        return self.load(rounds[r], r)

    def save(self, state: RecordDict, round_: int) -> Path:
        """Write ``state`` as the state after ``round_`` (atomic), keep the ``KEEP`` newest rounds."""
        self.folder.mkdir(parents=True, exist_ok=True)
        state[HEADER] = ConfigRecord({"version": VERSION, "site": self.site, "run": self.key, "round": int(round_)})
        path = self.folder / f"round_{round_}.pb"
        tmp = path.with_suffix(".partial")
        with open(tmp, "wb") as f:
            f.write(recorddict_to_proto(state).SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        try:  # make the rename durable too (POSIX)
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
        saved = self.rounds()
        for r in sorted(saved)[:-KEEP]:
            saved[r].unlink(missing_ok=True)
        return path


def store_for(context: Context, cfg: RunConfig, site: str) -> SiteStateStore | None:
    """The node's state store (``None`` when its node config has no ``state-dir``)."""
    raw = context.node_config.get(STATE_DIR_KEY)
    return SiteStateStore(Path(str(raw)), site, run_key(cfg)) if raw else None


def restore(context: Context, cfg: RunConfig, site: str, round_: int) -> SiteStateStore | None:
    """Before handling ``round_``: replace ``context.state`` by the saved state of the round before (or an empty
    one on the run's first round), when the node keeps its state on disk. Returns the store for ``save``."""
    store = store_for(context, cfg, site)
    if store is not None:
        saved = store.load_before(round_)
        if saved is None and round_ > 1:
            others = sorted(p.name for p in store.folder.parent.glob(f"{cfg.name}-*") if p != store.folder)
            (log.warning if others else log.info)(
                "site %s: no saved state before round %d in %s; starting round %d from an empty state%s",
                site,
                round_,
                store.folder,
                round_,
                f" (states of other configurations of run {cfg.name!r}: {', '.join(others)}; a change of "
                "fedmedlora version or config at this site changes the key)"
                if others
                else "",
            )
        replace_contents(context.state, saved or RecordDict())
    return store


__all__ = ["STATE_DIR_KEY", "SiteStateError", "SiteStateStore", "restore", "run_key", "store_for"]
