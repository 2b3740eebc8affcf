"""The federated strategies (one class per rule) with mock replies: no network, no model, exact expected arrays."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedmedlora.aggregation import AggregationSettings
from fedmedlora.federation.messages import (
    ARRAYS_KEY,
    INFO_KEY,
    METRICS_KEY,
    NUM_TOKENS,
    SITE_VAL_LOSS,
    TRAIN_LOSS,
    from_record,
    to_record,
)
from fedmedlora.federation.strategies import FederationError, LoraStrategy, make_strategy
from fedmedlora.screening import ScreeningSettings

A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
SITES = {11: "bc5cdr", 12: "chia", 13: "phee"}


@pytest.fixture(autouse=True)
def _task_identity(server_identity):
    """Messages created outside a Flower runtime need a task identity (``tests/conftest.py``)."""


class FakeGrid(Grid):
    """Only what configure_train needs: the connected node ids."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self.ids = list(node_ids)

    def set_run(self, run):  # pragma: no cover - unused
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover - unused
        raise NotImplementedError

    def create_message(self, *a, **k):  # pragma: no cover - unused
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return self.ids

    def push_messages(self, messages):  # pragma: no cover - unused
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover - unused
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - unused
        raise NotImplementedError


def global_arrays() -> dict[str, np.ndarray]:
    return {A: np.ones((2, 4), dtype=np.float32), B: np.zeros((4, 2), dtype=np.float32)}


def reply(
    sent: Message,
    arrays: dict[str, np.ndarray],
    *,
    tokens: float = 10,
    loss: float = 1.0,
    site: str | None = None,
    extra_metrics: dict | None = None,
    extra_records: dict | None = None,
) -> Message:
    sent.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    content = RecordDict(
        {
            ARRAYS_KEY: to_record(arrays),
            METRICS_KEY: MetricRecord({NUM_TOKENS: tokens, TRAIN_LOSS: loss, **(extra_metrics or {})}),
            INFO_KEY: ConfigRecord({"site": site or SITES[sent.metadata.dst_node_id]}),
            **(extra_records or {}),
        }
    )
    return Message(content, reply_to=sent)


def configure(strategy: LoraStrategy, server_round: int = 1, g=None) -> list[Message]:
    return list(
        strategy.configure_train(server_round, to_record(g or global_arrays()), ConfigRecord(), FakeGrid(SITES))
    )


def site_arrays(a: float, b: float) -> dict[str, np.ndarray]:
    return {A: np.full((2, 4), a, dtype=np.float32), B: np.full((4, 2), b, dtype=np.float32)}


def test_configure_train_sends_global_and_round_config() -> None:
    s = make_strategy(AggregationSettings(), num_rounds=2, min_train_nodes=3)
    msgs = configure(s)
    assert sorted(m.metadata.dst_node_id for m in msgs) == [11, 12, 13]
    cfg = msgs[0].content["config"]
    assert cfg["server-round"] == 1 and cfg["rule"] == "fedmedlora" and cfg["send-private"] is False
    np.testing.assert_array_equal(from_record(msgs[0].content[ARRAYS_KEY])[A], global_arrays()[A])
    assert [m["direction"] for m in s.messages] == ["down"] * 3
    assert s.messages[0]["bytes"] >= (8 + 8) * 4  # .npy header + float32 payload


def test_sampling_is_seeded_and_offset_aware() -> None:
    s = make_strategy(AggregationSettings(), num_rounds=5, fraction_train=0.5, seed=3)
    picks = [s.sample([13, 11, 12, 14], r) for r in range(1, 6)]
    assert all(len(p) == 2 for p in picks)
    assert len({tuple(p) for p in picks}) > 1  # not always the same pair
    again = make_strategy(AggregationSettings(), num_rounds=5, fraction_train=0.5, seed=3, round_offset=2)
    assert again.sample([11, 12, 13, 14], 1) == picks[2]  # round 3 either way


def test_fedmedlora_token_weighted_exact_arrays() -> None:
    s = make_strategy(AggregationSettings(), num_rounds=2, min_train_nodes=3)
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    replies = [
        reply(sent[11], site_arrays(1, 1), tokens=10, loss=2.0),
        reply(sent[12], site_arrays(2, 4), tokens=30, loss=1.0),
        reply(sent[13], site_arrays(4, 8), tokens=60, loss=0.5),
    ]
    arrays, metrics = s.aggregate_train(1, replies)
    out = from_record(arrays)
    np.testing.assert_allclose(out[A], np.full((2, 4), 0.1 * 1 + 0.3 * 2 + 0.6 * 4), rtol=1e-6)
    np.testing.assert_allclose(out[B], np.full((4, 2), 0.1 * 1 + 0.3 * 4 + 0.6 * 8), rtol=1e-6)
    assert out[A].dtype == np.float32
    log = s.rounds[1]
    assert log.sites == ["bc5cdr", "chia", "phee"]
    assert log.weights == pytest.approx({"bc5cdr": 0.1, "chia": 0.3, "phee": 0.6})
    assert log.train_loss == {"bc5cdr": 2.0, "chia": 1.0, "phee": 0.5}
    assert log.bytes_up == {site: (8 + 8) * 4 for site in SITES.values()}
    assert metrics[TRAIN_LOSS] == pytest.approx(0.1 * 2 + 0.3 * 1 + 0.6 * 0.5)
    assert sum(1 for m in s.messages if m["direction"] == "up") == 3


def test_fedmedlora_plus_server_losses_weight_lower_loss_higher() -> None:
    seen = []

    def loss_fn(arrays):
        seen.append(float(arrays[A][0, 0]))
        return {1.0: 2.0, 2.0: 1.0, 4.0: 0.0}[float(arrays[A][0, 0])]

    s = make_strategy(AggregationSettings(rule="fedmedlora+"), num_rounds=1, server_loss_fn=loss_fn)
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    arrays, _ = s.aggregate_train(1, [reply(sent[n], site_arrays(v, v)) for n, v in ((11, 1), (12, 2), (13, 4))])
    w = np.exp([-2.0, -1.0, 0.0]) / np.exp([-2.0, -1.0, 0.0]).sum()
    assert sorted(seen) == [1.0, 2.0, 4.0]
    assert list(s.rounds[1].weights.values()) == pytest.approx(list(w))
    assert s.rounds[1].losses == {"bc5cdr": 2.0, "chia": 1.0, "phee": 0.0}
    np.testing.assert_allclose(from_record(arrays)[A][0, 0], w @ [1, 2, 4], rtol=1e-6)


def test_fedmedlora_plus_needs_a_loss_source() -> None:
    with pytest.raises(ValueError, match="server_loss_fn"):
        make_strategy(AggregationSettings(rule="fedmedlora+"), num_rounds=1)


def test_fedmedlora_plus_site_losses() -> None:
    s = make_strategy(AggregationSettings(rule="fedmedlora+", loss_source="site"), num_rounds=1)
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    replies = [
        reply(sent[n], site_arrays(1, 1), extra_metrics={SITE_VAL_LOSS: L}) for n, L in ((11, 3), (12, 1), (13, 2))
    ]
    s.aggregate_train(1, replies)
    assert s.rounds[1].weights["chia"] > s.rounds[1].weights["phee"] > s.rounds[1].weights["bc5cdr"]
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    with pytest.raises(FederationError, match=r"site bc5cdr \(node 11\): missing metrics \['site-val-loss'\]"):
        s.aggregate_train(1, [reply(sent[11], site_arrays(1, 1))])


def test_fedsa_shares_a_only_then_everything_in_last_round() -> None:
    s = make_strategy(AggregationSettings(rule="fedsa"), num_rounds=2)
    sent = {m.metadata.dst_node_id: m for m in configure(s, 1)}
    assert sent[11].content["config"]["send-private"] is False
    with pytest.raises(FederationError, match=r"site bc5cdr \(node 11\): unexpected tensor set.*lora_B"):
        s.aggregate_train(1, [reply(sent[11], site_arrays(3, 3))])
    sent = {m.metadata.dst_node_id: m for m in configure(s, 1)}
    arrays, _ = s.aggregate_train(1, [reply(sent[n], {A: site_arrays(v, 0)[A]}) for n, v in ((11, 1), (12, 3))])
    out = from_record(arrays)
    np.testing.assert_allclose(out[A], 2.0)
    np.testing.assert_array_equal(out[B], global_arrays()[B])  # server B untouched during training
    assert s.rounds[1].bytes_up == {"bc5cdr": 32, "chia": 32}
    sent = {m.metadata.dst_node_id: m for m in configure(s, 2)}
    assert sent[11].content["config"]["send-private"] is True
    arrays, _ = s.aggregate_train(2, [reply(sent[n], site_arrays(v, v)) for n, v in ((11, 1), (12, 3))])
    np.testing.assert_allclose(from_record(arrays)[B], 2.0)


def test_ffa_shares_b_only() -> None:
    s = make_strategy(AggregationSettings(rule="ffa"), num_rounds=1)
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    arrays, _ = s.aggregate_train(1, [reply(sent[n], {B: site_arrays(0, v)[B]}) for n, v in ((11, 1), (13, 5))])
    out = from_record(arrays)
    np.testing.assert_allclose(out[B], 3.0)
    np.testing.assert_array_equal(out[A], global_arrays()[A])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"arrays": {**site_arrays(1, 1), "model.embed_tokens.weight": np.zeros((3, 2), np.float32)}},
            r"site chia \(node 12\): unexpected tensor set.*embed_tokens",
        ),
        ({"arrays": {A: np.zeros((4, 2), np.float32), B: site_arrays(1, 1)[B]}}, r"chia \(node 12\).*shape \(4, 2\)"),
        ({"arrays": {A: np.zeros((2, 4), np.float64), B: site_arrays(1, 1)[B]}}, "dtype float64"),
        ({"extra_metrics": {"note": 1.0}}, r"unexpected metrics \['note'\]"),
        ({"extra_records": {"text": ConfigRecord({"sentence": "Patient denies chest pain."})}}, r"unexpected records"),
        ({"site": "x" * 200}, r"node 12: record 'info' may only hold 'site'"),
        ({"site": "chia; DROP TABLE"}, "short name"),
        ({"extra_metrics": {SITE_VAL_LOSS: float("nan")}}, "site-val-loss is nan"),
    ],
)
def test_a_bad_reply_excludes_its_site_by_name_and_the_round_goes_on(kwargs: dict, match: str) -> None:
    s = make_strategy(AggregationSettings(), num_rounds=1)
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    arrays = kwargs.pop("arrays", site_arrays(1, 1))
    out, _ = s.aggregate_train(1, [reply(sent[11], site_arrays(1, 1)), reply(sent[12], arrays, **kwargs)])
    rlog = s.rounds[1]
    assert rlog.sites == ["bc5cdr"]
    np.testing.assert_allclose(from_record(out)[A], 1.0)  # the honest site's update alone
    ((who, reason),) = rlog.excluded.items()
    assert who in ("chia", "node 12") and re.search(match, reason), (who, reason)
    assert any(f.startswith(f"{who}: excluded from round 1") for f in rlog.failures)
    # alone, the bad reply leaves too few sites: the round fails naming it
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    with pytest.raises(FederationError, match=match):
        s.aggregate_train(1, [reply(sent[12], arrays, **kwargs)])


def test_error_replies_are_recorded_and_too_few_sites_fail() -> None:
    from flwr.app import Error

    s = make_strategy(AggregationSettings(), num_rounds=1, min_train_nodes=2)
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    sent[13].metadata.__dict__["_message_id"] = str(uuid.uuid4())
    err = Message(Error(code=0, reason="site phee ran out of memory"), reply_to=sent[13])
    s.aggregate_train(1, [reply(sent[11], site_arrays(1, 1)), reply(sent[12], site_arrays(3, 3)), err])
    assert s.rounds[1].sites == ["bc5cdr", "chia"]
    assert "out of memory" in s.rounds[1].failures[0]
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    with pytest.raises(RuntimeError, match="1 valid site replies, 2 required"):
        s.aggregate_train(1, [reply(sent[11], site_arrays(1, 1))])


def test_duplicate_site_names_exclude_both_claims() -> None:
    s = make_strategy(AggregationSettings(), num_rounds=1)
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    with pytest.raises(FederationError, match="2 replies claim site chia"):
        s.aggregate_train(1, [reply(sent[11], site_arrays(1, 1), site="chia"), reply(sent[12], site_arrays(1, 1))])
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    s.aggregate_train(
        1,
        [
            reply(sent[11], site_arrays(1, 1), site="chia"),
            reply(sent[12], site_arrays(1, 1)),
            reply(sent[13], site_arrays(2, 2)),
        ],
    )
    assert s.rounds[1].sites == ["phee"] and "chia" in s.rounds[1].excluded


# ---- a coordinator one hostile site cannot poison (issue 14, item 3) ---------------------------------------------


def _three(s, values, per_site=None):
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    per_site = per_site or {}
    return [reply(sent[n], site_arrays(v, v), **per_site.get(n, {})) for n, v in zip((11, 12, 13), values, strict=True)]


def test_a_huge_size_claim_is_capped_at_ten_times_the_median() -> None:
    s = make_strategy(AggregationSettings(), num_rounds=1)
    s.aggregate_train(1, _three(s, (1, 2, 3), {13: {"tokens": 1e300}}))
    w = s.rounds[1].weights
    assert w["phee"] == pytest.approx(100 / 120)  # 10 × median(10, 10, 1e300) = 100 against 10 + 10
    assert "capped" in s.rounds[1].screening["phee"]
    assert all(np.isfinite(list(w.values())))


def test_a_scaled_update_is_excluded_as_a_norm_outlier() -> None:
    s = make_strategy(AggregationSettings(), num_rounds=1)
    out, _ = s.aggregate_train(1, _three(s, (1.5, 2, 1e6)))
    assert s.rounds[1].sites == ["bc5cdr", "chia"]
    assert "norm_outlier_factor" in s.rounds[1].excluded["phee"]
    assert float(np.abs(from_record(out)[B]).max()) < 3  # the global B stays at the honest sites' scale
    bounded = make_strategy(
        AggregationSettings(), num_rounds=1, screening=ScreeningSettings(max_update_norm=5.0, norm_outlier_factor=None)
    )
    bounded.aggregate_train(1, _three(bounded, (1.2, 1.3, 10)))
    assert list(bounded.rounds[1].excluded) == ["phee"] and "max_update_norm=5.0" in bounded.rounds[1].excluded["phee"]


def test_a_negative_site_loss_is_excluded_not_given_weight_one() -> None:
    s = make_strategy(AggregationSettings(rule="fedmedlora+", loss_source="site"), num_rounds=1)
    losses = {11: 1.0, 12: 1.2, 13: -1e300}
    s.aggregate_train(1, _three(s, (1, 1, 1), {n: {"extra_metrics": {SITE_VAL_LOSS: v}} for n, v in losses.items()}))
    assert s.rounds[1].sites == ["bc5cdr", "chia"] and "outside [0" in s.rounds[1].excluded["phee"]


def test_a_nan_reply_excludes_one_site_not_the_round() -> None:
    s = make_strategy(AggregationSettings(), num_rounds=1)
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    nan = site_arrays(1, 1)
    nan[A][0, 0] = np.nan
    replies = [reply(sent[11], site_arrays(1, 1)), reply(sent[12], site_arrays(3, 3)), reply(sent[13], nan)]
    out, _ = s.aggregate_train(1, replies)
    assert s.rounds[1].sites == ["bc5cdr", "chia"] and "NaN" in s.rounds[1].excluded["phee"]
    assert np.all(np.isfinite(from_record(out)[A]))


@pytest.mark.parametrize("robust", ["median", "trimmed-mean"])
def test_robust_rules_keep_a_hostile_site_inside_the_honest_range_without_screening(robust: str) -> None:
    """Norm screening off: the 1e6× update reaches aggregation, and the robust rule still ignores it."""
    s = make_strategy(
        AggregationSettings(robust=robust, trim_fraction=0.34),
        num_rounds=1,
        screening=ScreeningSettings(norm_outlier_factor=None, max_size_factor=None),
    )
    out, _ = s.aggregate_train(1, _three(s, (1.5, 2, 1e6), {13: {"tokens": 1e300}}))
    g = from_record(out)
    assert s.rounds[1].sites == ["bc5cdr", "chia", "phee"]  # nobody excluded ...
    np.testing.assert_allclose(g[B], 2.0)  # ... the middle of (1.5, 2, 1e6) per coordinate, whatever the weight
    assert s.rounds[1].robust == {"rule": robust, "trimmed_per_end": 1 if robust == "trimmed-mean" else None}
    plain = make_strategy(
        AggregationSettings(), num_rounds=1, screening=ScreeningSettings(norm_outlier_factor=None, max_size_factor=None)
    )
    out, _ = plain.aggregate_train(1, _three(plain, (1.5, 2, 1e6), {13: {"tokens": 1e300}}))
    assert float(from_record(out)[B].max()) > 1e5  # what the weighted mean does with the same replies
