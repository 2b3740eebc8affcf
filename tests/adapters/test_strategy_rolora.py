"""RoLoRA and the Fed-MedLoRA+ temperature rule on the Flower strategy, with hand-made replies (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_strategy import A, B, configure, global_arrays, reply, site_arrays

from fedmedlora.aggregation import AggregationSettings
from fedmedlora.federation.messages import ARRAYS_KEY, SITE_VAL_LOSS, from_record
from fedmedlora.federation.strategies import FederationError, make_strategy


@pytest.fixture(autouse=True)
def _task_identity(server_identity):
    """Messages created outside a Flower runtime need a task identity (``tests/conftest.py``)."""


def test_rolora_alternates_the_shared_factor_and_keeps_the_frozen_one() -> None:
    s = make_strategy(AggregationSettings(rule="rolora"), num_rounds=2)
    sent = {m.metadata.dst_node_id: m for m in configure(s, 1)}
    cfg = sent[11].content["config"]
    assert cfg["rule"] == "rolora" and cfg["server-round"] == 1 and cfg["send-private"] is False
    with pytest.raises(FederationError, match=r"site bc5cdr \(node 11\): unexpected tensor set.*lora_A"):
        s.aggregate_train(1, [reply(sent[11], site_arrays(3, 3))])
    sent = {m.metadata.dst_node_id: m for m in configure(s, 1)}
    replies = [reply(sent[n], {B: site_arrays(0, v)[B]}, tokens=t) for n, v, t in ((11, 1, 10), (12, 5, 30))]
    arrays, _ = s.aggregate_train(1, replies)
    out = from_record(arrays)
    np.testing.assert_allclose(out[B], 0.25 * 1 + 0.75 * 5)  # size-weighted mean of the trained factor
    np.testing.assert_array_equal(out[A], global_arrays()[A])  # frozen factor untouched
    assert s.rounds[1].trained_factor == "B" and s.rounds[1].uploaded_keys == 1
    assert s.rounds[1].weights_entropy == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2))

    g2 = {A: out[A], B: out[B]}
    sent = {m.metadata.dst_node_id: m for m in configure(s, 2, g2)}
    assert sent[11].content["config"]["server-round"] == 2
    np.testing.assert_allclose(from_record(sent[11].content[ARRAYS_KEY])[B], out[B])
    replies = [reply(sent[n], {A: site_arrays(v, 0)[A]}, tokens=10) for n, v in ((11, 2), (13, 4))]
    arrays, _ = s.aggregate_train(2, replies)
    out2 = from_record(arrays)
    np.testing.assert_allclose(out2[A], 3.0)
    np.testing.assert_array_equal(out2[B], out[B])
    assert s.rounds[2].trained_factor == "A"
    # the product is the weighted mean of the sites' products (B shared and frozen this round)
    prod = [out[B] @ site_arrays(v, 0)[A] for v in (2, 4)]
    np.testing.assert_allclose(out2[B] @ out2[A], 0.5 * prod[0] + 0.5 * prod[1], rtol=1e-6)


def test_rolora_uploads_about_half_of_fedmedlora() -> None:
    up = {}
    for rule in ("fedmedlora", "rolora"):
        s = make_strategy(AggregationSettings(rule=rule), num_rounds=2)
        total = 0
        for rnd in (1, 2):
            sent = {m.metadata.dst_node_id: m for m in configure(s, rnd)}
            keys = [A, B] if rule == "fedmedlora" else ([B] if rnd == 1 else [A])
            s.aggregate_train(rnd, [reply(sent[n], {k: site_arrays(1, 1)[k] for k in keys}) for n in (11, 12)])
            total += sum(s.rounds[rnd].bytes_up.values())
        up[rule] = total
        # the comm log counts the same bytes (what comm.jsonl records)
        assert sum(m["bytes"] for m in s.messages if m["direction"] == "up") == total
    assert up["rolora"] == pytest.approx(up["fedmedlora"] / 2, rel=0.2)


def test_plus_range_temperature_logged_with_entropy() -> None:
    s = make_strategy(
        AggregationSettings(rule="fedmedlora+", loss_source="site", temperature_rule="range"), num_rounds=1
    )
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    losses = {11: 1.20, 12: 1.28, 13: 1.36}
    s.aggregate_train(
        1, [reply(sent[n], site_arrays(1, 1), extra_metrics={SITE_VAL_LOSS: L}) for n, L in losses.items()]
    )
    log = s.rounds[1]
    assert log.temperature == pytest.approx(0.16)
    assert log.weights["bc5cdr"] / log.weights["phee"] == pytest.approx(math.e)
    assert 0.5 < log.weights_entropy < 0.97
    s2 = make_strategy(AggregationSettings(rule="fedmedlora+", loss_source="site"), num_rounds=1)
    sent = {m.metadata.dst_node_id: m for m in configure(s2)}
    s2.aggregate_train(
        1, [reply(sent[n], site_arrays(1, 1), extra_metrics={SITE_VAL_LOSS: L}) for n, L in losses.items()]
    )
    assert s2.rounds[1].temperature == 1.0
    assert s2.rounds[1].weights_entropy > 0.99 > log.weights_entropy


def test_rolora_with_loss_weights_from_sites_and_server() -> None:
    s = make_strategy(
        AggregationSettings(rule="rolora", loss_weighted=True, loss_source="site", temperature_rule="range"),
        num_rounds=2,
    )
    sent = {m.metadata.dst_node_id: m for m in configure(s, 1)}
    replies = [
        reply(sent[n], {B: site_arrays(0, v)[B]}, extra_metrics={SITE_VAL_LOSS: L})
        for n, v, L in ((11, 1, 1.0), (12, 5, 1.2))
    ]
    arrays, _ = s.aggregate_train(1, replies)
    w = s.rounds[1].weights
    assert w["bc5cdr"] / w["chia"] == pytest.approx(math.e)  # range rule: best / worst = e
    np.testing.assert_allclose(from_record(arrays)[B], w["bc5cdr"] * 1 + w["chia"] * 5, rtol=1e-6)
    sent = {m.metadata.dst_node_id: m for m in configure(s, 1)}
    with pytest.raises(FederationError, match=r"missing metrics \['site-val-loss'\]"):
        s.aggregate_train(1, [reply(sent[11], {B: site_arrays(0, 1)[B]})])

    seen = []

    def loss_fn(arrays):  # the server scores the global adapter with the site's trained factor in place
        seen.append((float(arrays[A][0, 0]), float(arrays[B][0, 0])))
        return {1.0: 0.5, 3.0: 1.5}[float(arrays[B][0, 0])]

    s = make_strategy(AggregationSettings(rule="rolora", loss_weighted=True), num_rounds=2, server_loss_fn=loss_fn)
    sent = {m.metadata.dst_node_id: m for m in configure(s, 1)}
    s.aggregate_train(1, [reply(sent[n], {B: site_arrays(0, v)[B]}) for n, v in ((11, 1), (12, 3))])
    assert sorted(seen) == [(1.0, 1.0), (1.0, 3.0)]  # A: the frozen global (ones)
    expected = np.exp([-0.5, -1.5]) / np.exp([-0.5, -1.5]).sum()
    assert list(s.rounds[1].weights.values()) == pytest.approx(list(expected))
    with pytest.raises(ValueError, match="server_loss_fn"):
        make_strategy(AggregationSettings(rule="rolora", loss_weighted=True), num_rounds=1)
    with pytest.raises(ValueError, match="loss_weighted applies to rule 'rolora'"):
        AggregationSettings(rule="ffa", loss_weighted=True)
