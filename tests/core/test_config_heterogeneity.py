"""Config for issue 17: the ``heterogeneity`` preset, ``federation.temperature_rule`` and RoLoRA's refusals."""

from __future__ import annotations

import pytest

from fedmedlora.config import ConfigError, RunConfig, load_config


def test_heterogeneity_preset_loads_and_round_trips_through_flower() -> None:
    cfg = load_config("heterogeneity")
    assert cfg.federation.temperature_rule == "range" and cfg.federation.rounds % 2 == 0
    assert not cfg.train.keep_optimizer_state
    assert RunConfig.from_flower_run_config(cfg.to_flower_run_config()) == cfg
    rolora = load_config("heterogeneity", ["federation.strategy=rolora"])
    assert rolora.federation.strategy == "rolora"


def test_temperature_rule_is_checked() -> None:
    assert load_config(overrides=["federation.temperature_rule=std"]).federation.temperature_rule == "std"
    with pytest.raises(ConfigError, match=r"federation\.temperature_rule"):
        load_config(overrides=["federation.temperature_rule=auto"])


def test_temperature_floor_is_checked_and_reaches_the_strategy() -> None:
    pytest.importorskip("flwr")
    from fedmedlora.federation.server_app import aggregation_settings

    assert load_config().federation.temperature_floor == 0.0
    het = load_config("heterogeneity")
    assert het.federation.temperature_floor == 0.05 and aggregation_settings(het).temperature_floor == 0.05
    for bad in ("-0.1", "inf", "nan"):
        with pytest.raises(ConfigError, match=r"federation\.temperature_floor"):
            load_config(overrides=[f"federation.temperature_floor={bad}"])


def test_rolora_refuses_carried_optimizer_state_and_composes_with_privacy() -> None:
    with pytest.raises(ConfigError, match=r"rolora.*keep_optimizer_state"):
        load_config(overrides=["federation.strategy=rolora", "train.keep_optimizer_state=true"])
    cfg = load_config(
        overrides=[
            "federation.strategy=rolora",
            "federation.secure_aggregation=true",
            "federation.dp.noise_multiplier=1",
        ]
    )
    assert cfg.federation.secure_aggregation and cfg.federation.dp.enabled


def test_loss_weighted_rolora_refuses_client_dp_and_server_losses_under_secagg() -> None:
    loss_rolora = ["federation.strategy=rolora", "federation.rolora_weights=loss"]
    with pytest.raises(ConfigError, match=r"rolora weighted by loss"):
        load_config(overrides=[*loss_rolora, "federation.dp.noise_multiplier=1"])
    with pytest.raises(ConfigError, match=r"plus_loss_source=site"):
        load_config(overrides=[*loss_rolora, "federation.secure_aggregation=true"])
    ok = load_config(overrides=[*loss_rolora, "federation.plus_loss_source=site", "federation.secure_aggregation=true"])
    assert ok.federation.rolora_weights == "loss"
