import pytest

from fedmedlora.config import ConfigError, RunConfig, load_config


def test_defaults_are_the_reference_hyperparameters():
    cfg = RunConfig()
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 64, 0.0)
    assert cfg.train.learning_rate == 2e-4 and cfg.train.batch_size == 4


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: demo\ntrain:\n  max_steps: 5\nfederation:\n  strategy: fedmedlora+\n")
    cfg = load_config(p, ["train.max_steps=7", "federation.sites=[chia, phee]", "model.name=null"])
    assert cfg.name == "demo" and cfg.train.max_steps == 7
    assert cfg.federation.strategy == "fedmedlora+" and cfg.federation.sites == ["chia", "phee"]
    assert cfg.model.name is None
    cfg.save(tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg


def test_all_errors_reported_with_field_names(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  batch_size: 0\n  lr: 1\nfederation:\n  strategy: fedprox\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert str(p) in msg
    assert "train.batch_size" in msg and "train.lr" in msg and "federation.strategy" in msg


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.max_steps"])


def test_flower_run_config_round_trip():
    cfg = load_config(None, ["federation.sites=[chia, bc5cdr]", "train.max_steps=3", "lora.target_modules=[q_proj]"])
    flat = cfg.to_flower_run_config()
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
    assert RunConfig.from_flower_run_config({**flat, "num-server-rounds": 3}) == cfg


def test_pyproject_flower_config_is_the_demo_preset():
    """`flwr run .` reads [tool.flwr.app.config]; it must resolve to the packaged demo preset (no drift)."""
    import tomllib
    from pathlib import Path

    from flwr.common.config import flatten_dict

    root = Path(__file__).parents[2]
    app_cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    flat = flatten_dict(app_cfg)
    assert {"num-server-rounds", "run-dir", "resume", "server-data-dir"} <= set(flat)
    assert RunConfig.from_flower_run_config(flat) == load_config("demo")
    # every field is listed: Flower only accepts --run-config overrides of keys the app config declares
    missing = set(load_config("demo").to_flower_run_config()) - set(flat)
    assert not missing, f"[tool.flwr.app.config] lacks {sorted(missing)}"


def test_bad_override_values_are_config_errors():
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, ["model.name=[foo"])
    with pytest.raises(ConfigError, match="seed"):
        load_config(None, ["seed=-1"])


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.learning_rate=inf", "train.learning_rate"),
        ("train.dp.noise_multiplier=.nan", "train.dp.noise_multiplier"),
        ("train.max_steps=true", "train.max_steps"),
        ("eval.batch_size=false", "eval.batch_size"),
    ],
)
def test_nonsense_numbers_are_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])
