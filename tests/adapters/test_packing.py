"""Prefix-shared training batches (fedmedlora.lm.packing): the tree, its mask, and equality with the padded batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmedlora.config import LoraConfig
from fedmedlora.lm.model import attach_lora, load_base_model
from fedmedlora.lm.packing import attention_kind, pack_shared_prefixes, packed_loss
from fedmedlora.lm.train import IGNORE_INDEX, TrainSettings, collate, encode_examples, labels_for, train_local
from tinymodel import FakeExample

LORA = LoraConfig(r=8, alpha=16)
X = IGNORE_INDEX

# Two tasks with a long shared instruction each, several sentences, and one exact duplicate (rows 0 and 4).
DRUGS = "Extract drugs from the note below. List each drug.\nNote: "
SHARED = [
    FakeExample(DRUGS + "Started metformin 500 mg daily.", "metformin"),
    FakeExample(DRUGS + "Aspirin 81 mg daily.", "Aspirin"),
    FakeExample("Extract problems from the note below.\nNote: The patient denies chest pain.", "chest pain"),
    FakeExample(DRUGS + "No fever, no cough.", "[]"),
    FakeExample(DRUGS + "Started metformin 500 mg daily.", "metformin"),
]


def _peft(tiny_model_dir, attention: str = "sdpa"):
    model, tok = load_base_model(tiny_model_dir, device="cpu", dtype="float32")
    model.config._attn_implementation = attention
    return attach_lora(model, LORA, seed=0), tok


def test_tree_shares_prefixes_and_keeps_positions():
    rows = [[5, 6, 7, 8], [5, 6, 9], [5, 6, 7, 8], [4]]
    labels = [[X, X, 7, 8], [X, X, 9], [X, X, 7, 8], [X]]
    p = pack_shared_prefixes(rows, labels)
    # tree: 5 6 7 8 | 9 (under 6) | 4 (a new root); the duplicate row adds no position
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 4]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 2, 0]]
    assert p.parents == [-1, 0, 1, 2, 1, -1]
    assert p.num_row_tokens == 4 + 3 + 4 + 1
    # every supervised token keeps its term: 7 and 8 twice (duplicate row), 9 once
    terms = sorted(zip(p.keep[p.loss_rows].tolist(), p.targets.tolist(), strict=True))
    assert terms == [(1, 7), (1, 7), (1, 9), (2, 8), (2, 8)]
    assert p.keep.tolist() == [1, 2]
    mask = p.attention_mask("sdpa")[0, 0]
    assert mask.tolist() == [
        [True, False, False, False, False, False],
        [True, True, False, False, False, False],
        [True, True, True, False, False, False],
        [True, True, True, True, False, False],
        [True, True, False, False, True, False],  # 9 sees 5 6, not 7 8
        [False, False, False, False, False, True],
    ]
    eager = p.attention_mask("eager")[0, 0]
    assert torch.equal(eager == 0, mask)


def test_bad_rows_are_named():
    with pytest.raises(ValueError, match="row 1 is empty"):
        pack_shared_prefixes([[1], []], [[X], []])
    with pytest.raises(ValueError, match="row 0 has 2 ids but 1 labels"):
        pack_shared_prefixes([[1, 2]], [[X]])
    with pytest.raises(ValueError, match="attention implementation"):
        pack_shared_prefixes([[1, 2]], [[X, 2]]).attention_mask("flash_attention_2")


def test_attention_kind():
    class Cfg:
        _attn_implementation = "flash_attention_2"

    class M:
        config = Cfg()

    assert attention_kind(M()) is None
    Cfg._attn_implementation = "eager"
    assert attention_kind(M()) == "eager"


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("loss_on", ["answer", "all"])
def test_packed_loss_and_gradients_equal_the_padded_batch(tiny_model_dir, attention, loss_on):
    model, tok = _peft(tiny_model_dir, attention)
    # non-zero B so that the LoRA A matrices get gradients too
    with torch.no_grad():
        for n, param in model.named_parameters():
            if "lora_B" in n:
                param.normal_(0, 0.05)
    settings = TrainSettings(max_length=128, loss_on=loss_on)
    rows = encode_examples(tok, SHARED, settings).examples
    packed = pack_shared_prefixes([r.input_ids for r in rows], [labels_for(r, loss_on) for r in rows])
    assert packed.length < sum(len(r.input_ids) for r in rows)  # the prefixes were shared

    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    padded = model(**collate(rows, tok.pad_token_id, loss_on), use_cache=False).loss
    padded.backward()
    ref = [p.grad.clone() for p in params]
    model.zero_grad()
    loss = packed_loss(model, packed, attention, torch.device("cpu"))
    loss.backward()
    assert loss.item() == pytest.approx(padded.item(), abs=1e-5)
    for g_ref, p in zip(ref, params, strict=True):
        assert torch.allclose(p.grad, g_ref, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in ref)


def test_train_local_with_and_without_prefix_sharing_agree(tiny_model_dir, monkeypatch):
    import fedmedlora.lm.train as train_mod

    calls = []

    def spy(*args, **kwargs):
        calls.append(args[1].length)
        return packed_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "packed_loss", spy)
    results = {}
    for sharing in (False, True):
        model, tok = _peft(tiny_model_dir)
        settings = TrainSettings(
            learning_rate=1e-2, batch_size=3, max_steps=4, warmup_ratio=0.0, seed=7, max_length=128,
            prefix_sharing=sharing,
        )  # fmt: skip
        results[sharing] = train_local(model, tok, SHARED, settings, progress=False)
    a, b = results[False], results[True]
    assert len(calls) == 4  # every step of the sharing run, none of the other
    assert b.losses == pytest.approx(a.losses, abs=1e-5)
    assert (a.num_seen_tokens, a.num_input_tokens) == (b.num_seen_tokens, b.num_input_tokens)
    for k in a.arrays:
        assert np.allclose(a.arrays[k], b.arrays[k], atol=1e-5), k


def test_unsupported_attention_falls_back_to_padded_batches(tiny_model_dir, monkeypatch):
    import fedmedlora.lm.train as train_mod

    calls = []
    monkeypatch.setattr(train_mod, "packed_loss", lambda *a, **k: calls.append(1))
    model, tok = _peft(tiny_model_dir)
    monkeypatch.setattr(train_mod, "attention_kind", lambda m: None)
    settings = TrainSettings(batch_size=2, max_steps=1, max_length=128, seed=7)
    result = train_local(model, tok, SHARED, settings, progress=False)
    assert not calls and np.isfinite(result.losses[0])


def test_validation_loss_with_and_without_prefix_sharing_agree(tiny_model_dir):
    from fedmedlora.lm.train import validation_loss

    model, tok = _peft(tiny_model_dir)
    settings = TrainSettings(max_length=128, batch_size=3)
    shared = validation_loss(model, tok, SHARED, settings)
    padded = validation_loss(model, tok, SHARED, settings.model_copy(update={"prefix_sharing": False}))
    assert shared == pytest.approx(padded, rel=1e-5)


def test_large_batches_without_shared_prefixes_stay_padded():
    from fedmedlora.lm.train import EncodedExample, _pack

    distinct = [EncodedExample([100 + i] + [i] * 9, 5) for i in range(8)]  # nothing shared: L = 8 x 10
    assert _pack(distinct[:4], "answer") is not None  # 40² <= 4 x 4 x 10²
    assert _pack(distinct, "answer") is None  # 80² > 4 x 8 x 10²
    shared = [EncodedExample([7] * 9 + [i], 5) for i in range(8)]  # one prefix: L = 9 + 8
    assert _pack(shared, "answer").length == 17
    assert _pack([EncodedExample([1, 2, 3], 3)], "answer") is None  # no supervised token
