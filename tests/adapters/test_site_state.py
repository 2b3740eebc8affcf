"""fedmedlora.federation.site_state: a site's durable state, atomic, versioned, never silently replaced."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from fedmedlora.config import load_config
from fedmedlora.federation.messages import from_record, to_record
from fedmedlora.federation.site_state import SiteStateError, SiteStateStore, restore, run_key


def _state(value: float) -> RecordDict:
    return RecordDict({"b": to_record({"x": np.full(3, value, np.float32)}), "c": ConfigRecord({"k": 1})})


def test_save_load_before_and_keep_two(tmp_path):
    store = SiteStateStore(tmp_path, "chia", "run-abc")
    for r in (1, 2, 3):
        store.save(_state(r), r)
    assert sorted(store.rounds()) == [2, 3]
    assert store.load_before(1) is None
    assert from_record(store.load_before(3)["b"])["x"][0] == 2.0  # round 3 starts from round 2's state
    assert from_record(store.load_before(9)["b"])["x"][0] == 3.0
    assert not list(store.folder.glob("*.partial"))


def test_corrupt_or_foreign_state_is_an_error_naming_the_file(tmp_path):
    store = SiteStateStore(tmp_path, "chia", "run-abc")
    store.save(_state(1), 1)
    other = SiteStateStore(tmp_path, "phee", "run-abc")  # same folder, another site
    with pytest.raises(SiteStateError, match=r"round_1\.pb: this state belongs elsewhere"):
        other.load_before(2)
    (store.folder / "round_1.pb").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(SiteStateError, match=r"round_1\.pb: not a saved site state"):
        store.load_before(2)


def test_restore_replaces_the_state_in_place_and_run_key_ignores_rounds(tmp_path):
    cfg = load_config(overrides=["name=r"])
    assert run_key(cfg) == run_key(load_config(overrides=["name=r", "federation.rounds=9"]))
    assert run_key(cfg) != run_key(load_config(overrides=["name=r", "seed=1"]))
    ctx = Context(run_id=1, node_id=5, node_config={"state-dir": str(tmp_path)}, state=_state(7), run_config={})
    same = ctx.state
    store = restore(ctx, cfg, "chia", 1)  # first round: nothing saved, start empty (not from memory)
    assert store is not None and ctx.state is same and "b" not in ctx.state
    store.save(_state(4), 1)
    restore(ctx, cfg, "chia", 2)
    assert from_record(ctx.state["b"])["x"][0] == 4.0
    plain = Context(run_id=1, node_id=5, node_config={}, state=_state(7), run_config={})
    assert restore(plain, cfg, "chia", 2) is None and from_record(plain.state["b"])["x"][0] == 7.0
