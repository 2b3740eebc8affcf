"""Tests for fedmedlora.lm.generate with the tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from fedmedlora.config import LoraConfig
from fedmedlora.lm.generate import generate, left_pad
from fedmedlora.lm.model import attach_lora, encode_prompt, load_base_model
from fedmedlora.lm.train import TrainSettings, train_local
from tinymodel import FakeExample

PROMPTS = [
    "Extract drugs: Started metformin 500 mg daily.",
    "hi",
    "Extract problems: The patient denies chest pain but reports mild shortness of breath.",
    "No fever.",
]


def _greedy_reference(model, tok, prompt, max_new_tokens):
    """Token-by-token argmax without padding or model.generate: the ground truth for one prompt."""
    ids = torch.tensor([encode_prompt(tok, prompt, True)])
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(new, skip_special_tokens=True)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_batched_matches_reference_and_keeps_order(tiny):
    model, tok = tiny
    expected = [_greedy_reference(model, tok, p, 6) for p in PROMPTS]
    batched = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, progress=False)
    assert batched == expected
    singles = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=1, progress=False)
    assert singles == expected
    assert generate(model, tok, [], max_new_tokens=6, progress=False) == []


def test_stops_at_eos_after_training(tiny_model_dir):
    """A model trained on 'prompt → answer<EOS>' reproduces exactly the answer, and only it."""
    model, tok = load_base_model(tiny_model_dir, device="cpu")
    model = attach_lora(model, LoraConfig(r=8, alpha=16), seed=0)
    examples = [FakeExample("Extract drugs: aspirin daily", "aspirin"), FakeExample("Extract tests: CT", "CT")]
    settings = TrainSettings(learning_rate=1e-2, batch_size=2, max_steps=60, warmup_ratio=0, schedule="constant")
    result = train_local(model, tok, examples, settings, progress=False)
    # (the tiny model's logits cannot get very sharp: tied 32-dim embeddings, so the loss plateaus near 0.85)
    assert result.losses[-1] < 0.3 * result.losses[0]
    out = generate(model, tok, [e.prompt for e in examples], max_new_tokens=20, batch_size=2, progress=False)
    assert out == ["aspirin", "CT"]


def test_bad_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="must be positive"):
        generate(model, tok, ["x"], max_new_tokens=0, progress=False)


# ---- the fast path: shared-prefix cache, early stop, rows dropped ------------------------------------------------


def _study_like_prompts():
    """NER and RE prompts in both formats for a few sentences: long shared instruction prefixes per group."""
    from fedmedlora.prompts import build_prompt
    from fedmedlora.schema import Entity, LabelSet, Sentence

    ls = LabelSet(frozenset({"problem", "drug"}), frozenset({"negation", "dosage"}))
    texts = [
        "No chest pain.",
        "Aspirin 81 mg daily was continued.",
        "Mother had breast cancer.",
        "No fever, no cough.",
        "CT of the abdomen showed no acute abnormality.",
    ]
    prompts = []
    for i, t in enumerate(texts):
        first = t.split(" ")[0]
        s = Sentence(f"s{i}", 0, len(t), t, (Entity("T1", "problem", 0, len(first), first),))
        for fmt in ("json", "html"):
            prompts.append(build_prompt(s, ls, "ner", fmt))
            prompts.append(build_prompt(s, ls, "re", fmt, head="T1"))
    return prompts


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_fast_path_returns_plain_generate_cut_by_the_same_stop_rule(tiny, batch_size):
    from fedmedlora.lm.generate import generate_hf
    from fedmedlora.stopping import StopRule, cut_at_stop

    model, tok = tiny
    prompts = _study_like_prompts()
    plain_ids = generate_hf(model, tok, prompts, max_new_tokens=40, batch_size=batch_size, return_ids=True)

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=True)

    expected = [
        decode(cut_at_stop(ids, decode, StopRule.for_prompt(p))) for ids, p in zip(plain_ids, prompts, strict=False)
    ]
    fast = generate(model, tok, prompts, max_new_tokens=40, batch_size=batch_size, progress=False)
    assert fast == expected
    # the stop rules really fired (else this test would not exercise row dropping), and uncached = cached
    assert sum(len(e) < len(decode(ids)) for e, ids in zip(expected, plain_ids, strict=False)) >= 3
    assert generate(model, tok, prompts, max_new_tokens=40, batch_size=batch_size, progress=False,
                    prefix_cache=False) == fast  # fmt: skip


def test_without_stop_rules_the_fast_path_is_plain_greedy(tiny):
    from fedmedlora.lm.generate import generate_hf

    model, tok = tiny
    prompts = _study_like_prompts()
    plain = generate_hf(model, tok, prompts, max_new_tokens=24, batch_size=4)
    fast = generate(
        model, tok, prompts, max_new_tokens=24, batch_size=4, progress=False, early_stop=False,
        stop_on_repetition=False,
    )  # fmt: skip
    assert fast == plain


def test_groups_share_a_prefix_longer_than_the_chat_header(tiny):
    from fedmedlora.lm.generate import _prefix_lengths

    _, tok = tiny
    prompts = _study_like_prompts()
    encoded = [encode_prompt(tok, p, True) for p in prompts]
    order, lengths = _prefix_lengths(encoded, prompts)
    assert sorted(order) == list(range(len(prompts)))
    by_group: dict[str, set] = {}
    for i, p in enumerate(prompts):
        assert 50 < lengths[i] < len(encoded[i])  # the instruction text, not just "<|im_start|>user"
        by_group.setdefault(p.instruction, set()).add(tuple(encoded[i][: lengths[i]]))
    assert len(by_group) == 4 and all(len(v) == 1 for v in by_group.values())


def test_constrained_decoding_never_fails_to_parse_on_200_fuzzed_prompts(tiny):
    """Random sentences, types, heads and quotes: every answer parses with zero failures and every item's text is
    exactly the sentence's characters at the span the parser assigns."""
    import json
    import random

    from fedmedlora.lm.constrained import constraint_for
    from fedmedlora.parsing import parse
    from fedmedlora.prompts import build_prompt
    from fedmedlora.schema import Entity, LabelSet, Sentence
    from tinymodel import TRAINING_TEXT

    model, tok = tiny
    rng = random.Random(7)
    words = [w for w in TRAINING_TEXT.replace("\n", " ").split(" ") if w]
    prompts = []
    for i in range(200):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))
        if rng.random() < 0.2:
            text += ' said "no" \\ again'
        types = rng.sample(["problem", "drug", "test", "treatment"], rng.randint(1, 4))
        ls = LabelSet(frozenset(types), frozenset({"negation", "dosage", "temporal"}))
        first = text.split(" ")[0]
        sent = Sentence(f"s{i}", 0, len(text), text, (Entity("T1", "problem", 0, len(first), first),))
        task = "re" if i % 3 == 0 else "ner"
        prompts.append(build_prompt(sent, ls, task, "json", head="T1" if task == "re" else None))
    outs = generate(model, tok, prompts, max_new_tokens=48, batch_size=16, progress=False,
                    constraint=constraint_for(tok))  # fmt: skip
    n_spans = 0
    for p, out in zip(prompts, outs, strict=True):
        res = parse(out, p.sentence, p.task, "json", p.types, head=p.head)
        assert res.n_failures == 0, (out, res.failures)
        texts = sorted(item["text"] for item in json.loads(out))
        assert sorted(p.sentence[s.start : s.end] for s in res.spans) == texts
        n_spans += len(res.spans)
    assert n_spans > 20  # the model did write spans, not only "[]"


def test_joining_caches_pads_each_left_and_releases_the_inputs():
    from transformers import DynamicCache

    from fedmedlora.lm.generate import _join_caches

    torch.manual_seed(0)
    old_kv = [(torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)) for _ in range(2)]
    new_kv = [(torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)) for _ in range(2)]
    old, new = DynamicCache(ddp_cache_data=old_kv), DynamicCache(ddp_cache_data=new_kv)
    old_mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    new_mask = torch.tensor([[0, 0, 1, 1, 1]])
    joined, mask = _join_caches(old, old_mask, new, new_mask, None)
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    for layer, (ko, vo), (kn, vn) in zip(joined.layers, old_kv, new_kv, strict=True):
        for got, o, n in ((layer.keys, ko, kn), (layer.values, vo, vn)):
            assert got.shape == (3, 1, 5, 4)
            assert torch.equal(got[:2, :, 2:], o) and torch.equal(got[2:], n)
            assert not got[:2, :, :2].any()  # the padding the mask hides
    assert all(layer.keys is None and layer.values is None for layer in (*old.layers, *new.layers))


def test_decoding_keeps_no_stale_cache_alive_between_refills(tiny, monkeypatch):
    """At every decoding step only the running batch's cache may be alive. A cache kept in a local (as the decoder
    once did with the tensors of its last join) holds extra copies of the batch's keys and values for the whole
    decoding phase: the demo's zero-shot evaluation peaked at 5.8 GB RSS instead of 3.3 GB (docs/performance.md)."""
    import weakref

    import fedmedlora.lm.generate as gen_mod

    model, tok = tiny
    real = gen_mod._refill
    recorded: list[weakref.ref] = []
    state = {"joins": 0, "checked_steps": 0, "in_refill": False}

    def tensors(cache):
        return [] if cache is None else [t for layer in cache.layers for t in (layer.keys, layer.values)]

    def spy(*args):
        state["in_refill"] = True
        try:
            running = args[5]  # the batch's cache before the join (None when no row is running)
            state["joins"] += running is not None
            recorded.extend(weakref.ref(t) for t in tensors(running))
            out = real(*args)
        finally:
            state["in_refill"] = False
        recorded.extend(weakref.ref(t) for t in tensors(out[0]))
        return out

    def check_step(module, args, kwargs):
        if state["in_refill"]:
            return  # a prefill: the running cache is legitimately alive until the join
        # no gc.collect(): the decoder must free a cache by reference counting, at once, not at the next collection
        current = {id(t) for t in tensors(kwargs.get("past_key_values"))}
        stale = sum(r() is not None and id(r()) not in current for r in recorded)
        assert stale == 0, f"{stale} cache tensors of an earlier batch are still alive at a decoding step"
        state["checked_steps"] += 1

    monkeypatch.setattr(gen_mod, "_refill", spy)
    handle = model.register_forward_pre_hook(check_step, with_kwargs=True)
    try:
        generate(model, tok, _study_like_prompts(), max_new_tokens=24, batch_size=4, progress=False)
    finally:
        handle.remove()
    # joins into a running batch happened, and decoding steps after them were checked
    assert state["joins"] >= 2 and state["checked_steps"] >= 10
