"""Tests for fedmedlora.lm.adapter_io: arrays ↔ PEFT model, checks, and adapter folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedmedlora.aggregation import nbytes
from fedmedlora.config import LoraConfig
from fedmedlora.lm.adapter_io import (
    AdapterMismatchError,
    get_adapter_arrays,
    load_adapter_arrays,
    read_adapter_meta,
    save_adapter,
    set_adapter_arrays,
)
from fedmedlora.lm.model import attach_lora, load_base_model

LORA = LoraConfig(r=4, alpha=8)


def _randomise(peft_model, seed=0):
    """LoRA B starts at zero (a no-op adapter); give every LoRA weight random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _logits(model, tok):
    ids = torch.tensor([tok("The patient denies chest pain.")["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def peft_pair(tiny_model_dir):
    """Two independently loaded LoRA models with different adapter weights."""
    a, tok = load_base_model(tiny_model_dir, device="cpu")
    b, _ = load_base_model(tiny_model_dir, device="cpu")
    pa, pb = attach_lora(a, LORA, seed=0), attach_lora(b, LORA, seed=1)
    _randomise(pa, 0)
    _randomise(pb, 1)
    return pa, pb, tok


def test_get_arrays_layout(peft_pair):
    pa, _, _ = peft_pair
    arrays = get_adapter_arrays(pa)
    assert len(arrays) == 2 * 7 * 2
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in arrays.values())
    assert all(k.startswith("base_model.model.") and ("lora_A" in k or "lora_B" in k) for k in arrays)
    key = next(k for k in arrays if k.endswith("q_proj.lora_A.weight"))
    assert arrays[key].shape == (4, 32)
    assert nbytes(arrays) == 4 * sum(v.size for v in arrays.values())
    # copies, not views of the parameters
    arrays[key][:] = 0
    assert np.abs(get_adapter_arrays(pa)[key]).sum() > 0


def test_set_arrays_transfers_weights_and_logits(peft_pair):
    pa, pb, tok = peft_pair
    assert not torch.allclose(_logits(pa, tok), _logits(pb, tok))
    set_adapter_arrays(pb, get_adapter_arrays(pa))
    assert torch.equal(_logits(pa, tok), _logits(pb, tok))


def test_set_arrays_accepts_float64(peft_pair):
    pa, pb, tok = peft_pair
    arrays64 = {k: v.astype(np.float64) for k, v in get_adapter_arrays(pa).items()}
    set_adapter_arrays(pb, arrays64)
    assert torch.equal(_logits(pa, tok), _logits(pb, tok))


def test_set_arrays_rejects_mismatches(peft_pair):
    pa, pb, _ = peft_pair
    good = get_adapter_arrays(pa)
    keys = sorted(good)
    before = get_adapter_arrays(pb)

    missing = dict(good)
    del missing[keys[0]]
    with pytest.raises(AdapterMismatchError, match=r"1 missing key\(s\): " + keys[0].replace(".", r"\.")):
        set_adapter_arrays(pb, missing)

    extra = dict(good, **{"base_model.model.bogus.lora_A.weight": np.zeros((4, 4), np.float32)})
    with pytest.raises(AdapterMismatchError, match="1 unexpected key"):
        set_adapter_arrays(pb, extra)

    bad_shape = dict(good, **{keys[1]: np.zeros((3, 3), np.float32)})
    with pytest.raises(AdapterMismatchError, match=r"shape \(3, 3\)"):
        set_adapter_arrays(pb, bad_shape)

    bad_dtype = dict(good, **{keys[2]: good[keys[2]].astype(np.int64)})
    with pytest.raises(AdapterMismatchError, match="dtype int64"):
        set_adapter_arrays(pb, bad_dtype)

    nan = dict(good, **{keys[3]: np.full_like(good[keys[3]], np.nan)})
    with pytest.raises(AdapterMismatchError, match="NaN"):
        set_adapter_arrays(pb, nan)

    # a rejected load changes nothing
    after = get_adapter_arrays(pb)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_save_load_round_trip(peft_pair, tmp_path, tiny_model_dir):
    from peft import PeftModel

    pa, _, tok = peft_pair
    meta = {"prompt_format": "html", "label_set": ["problem", "drug"], "base_model": "tiny", "seed": 3, "round": 2}
    out = save_adapter(pa, tmp_path / "adapter", meta)
    assert {p.name for p in out.iterdir()} == {"adapter_model.safetensors", "adapter_config.json", "fedmedlora.json"}
    assert read_adapter_meta(out) == meta
    info = json.loads((out / "fedmedlora.json").read_text())
    assert info["num_tensors"] == 28 and info["nbytes"] == nbytes(get_adapter_arrays(pa))

    loaded = load_adapter_arrays(out)
    original = get_adapter_arrays(pa)
    assert loaded.keys() == original.keys()
    assert all(np.array_equal(loaded[k], original[k]) for k in original)

    # standard PEFT folder: loadable by PeftModel.from_pretrained, identical logits
    base, _ = load_base_model(tiny_model_dir, device="cpu")
    reloaded = PeftModel.from_pretrained(base, out)
    assert torch.equal(_logits(reloaded, tok), _logits(pa, tok))


def test_save_arrays_needs_config(peft_pair, tmp_path):
    pa, pb, tok = peft_pair
    arrays = get_adapter_arrays(pa)
    with pytest.raises(ValueError, match="needs peft_config"):
        save_adapter(arrays, tmp_path / "x")
    out = save_adapter(arrays, tmp_path / "y", {"round": 1}, peft_config=pa.peft_config["default"])
    set_adapter_arrays(pb, load_adapter_arrays(out))
    assert torch.equal(_logits(pa, tok), _logits(pb, tok))


def test_meta_errors(peft_pair, tmp_path):
    pa, _, _ = peft_pair
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_adapter(pa, tmp_path / "a", {"x": object()})
    with pytest.raises(FileNotFoundError, match=r"fedmedlora\.json"):
        read_adapter_meta(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.safetensors"):
        load_adapter_arrays(tmp_path)
    (tmp_path / "fedmedlora.json").write_text("{broken")
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        read_adapter_meta(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_adapter_arrays(tmp_path)
