"""Encoder baseline (``fedmedlora.encoder``) with a tiny random BERT and a tiny WordPiece tokenizer built offline."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fedmedlora.encoder import run as et  # noqa: E402
from fedmedlora.encoder.bio import IGNORE_INDEX, tags_to_spans  # noqa: E402
from fedmedlora.encoder.model import EncoderLora, _finish, get_state, set_state  # noqa: E402
from fedmedlora.schema import Document, Entity, LabelSet, Modifier, Sentence, Span  # noqa: E402

_VOCAB = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] @ * . , ; : ( ) % > < / - ' problem drug test treatment the patient "
    "denies chest pain reports mild severe shortness of breath started met ##formin 500 ##mg mg orally "
    "twice daily for type 2 diabetes no fever cough aspirin 81 was continued ct abdomen showed sj ##o "
    "##gren s syndrome diab ##et ##ic hb ##a ##1 ##c 7 5 po b i d headache given ibuprofen left knee x "
    "##ray "
)
WORDS = _VOCAB.split()


def build_wordpiece_tokenizer():
    """An uncased, accent-stripping BERT WordPiece fast tokenizer over ``WORDS`` (like MiniLM's, but tiny)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(WORDS))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def bert_config(tokenizer):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def tiny_classifier(tokenizer, labels, *, lora=None, seed=0):
    from transformers import BertForTokenClassification

    torch.manual_seed(seed)
    cfg = bert_config(tokenizer)
    cfg.num_labels = len(labels)
    cfg.id2label = dict(enumerate(labels))
    cfg.label2id = {lab: i for i, lab in enumerate(labels)}
    return _finish(BertForTokenClassification(cfg), lora=lora, freeze_embeddings=False, seed=seed)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: these tiny models gain nothing from more, and the CI machine is shared."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def tok():
    return build_wordpiece_tokenizer()


def sent(sid: str, text: str, ents=(), mods=()) -> Sentence:
    e = tuple(Entity(i, t, a, b, text[a:b]) for i, t, a, b in ents)
    m = tuple(Modifier(i, t, a, b, text[a:b], h) for i, t, a, b, h in mods)
    return Sentence(sid, 0, len(text), text, e, m)


def find(text: str, sub: str) -> tuple[int, int]:
    i = text.index(sub)
    return i, i + len(sub)


ALL = LabelSet(frozenset({"problem", "drug", "test"}), frozenset({"severity", "bodyloc", "dosage", "negation"}))


def corpus() -> list[Sentence]:
    t1 = "The patient denies chest pain but reports severe headache."
    t2 = "Started metformin 500mg orally twice daily for type 2 diabetes."
    t3 = "Given ibuprofen for pain in the left knee."
    t4 = "CT of abdomen showed no fever; aspirin 81 mg was continued."
    return [
        sent(
            "d:1",
            t1,
            [("T1", "problem", *find(t1, "chest pain")), ("T2", "problem", *find(t1, "headache"))],
            [("M1", "negation", *find(t1, "denies"), "T1"), ("M2", "severity", *find(t1, "severe"), "T2")],
        ),
        sent(
            "d:2",
            t2,
            [("T1", "drug", *find(t2, "metformin")), ("T2", "problem", *find(t2, "type 2 diabetes"))],
            [("M1", "dosage", *find(t2, "500mg"), "T1")],
        ),
        sent(
            "d:3",
            t3,
            [("T1", "drug", *find(t3, "ibuprofen")), ("T2", "problem", *find(t3, "pain"))],
            [("M1", "bodyloc", *find(t3, "left knee"), "T2")],
        ),
        sent(
            "d:4",
            t4,
            [
                ("T1", "test", *find(t4, "CT")),
                ("T2", "problem", *find(t4, "fever")),
                ("T3", "drug", *find(t4, "aspirin")),
            ],
            [("M1", "negation", *find(t4, "no"), "T2"), ("M2", "dosage", *find(t4, "81 mg"), "T3")],
        ),
    ]


# ---- alignment through a real (tiny) uncased tokenizer ------------------------------------------------------


def test_uncased_tokenizer_offsets_map_to_cased_text_with_crlf_and_accents(tok):
    text = "Sjögren's Syndrome,\r\n500mg PO b.i.d.  Diabetic HbA1c>7%"
    gold = [Span(*find(text, "Sjögren's Syndrome"), "problem"), Span(*find(text, "HbA1c"), "test")]
    s = sent("x:0", text, [(f"T{i}", g.type, g.start, g.end) for i, g in enumerate(gold)])
    view = et.TokenizerView(tok)
    stats = et.AlignStats()
    feats = et.ner_features([(s, ALL)], view, 64, stats=stats)
    assert len(feats) == 1 and stats.placed == 2 and stats.not_token_aligned == 0
    f = feats[0]
    assert f.offsets[0] is None and f.offsets[-1] is None  # [CLS] / [SEP]
    assert f.labels[0] == IGNORE_INDEX and f.labels[-1] == IGNORE_INDEX
    tags = et.NER_SCHEME.decode(f.labels)
    spans = tags_to_spans(tags, f.offsets)
    assert spans == sorted(gold)
    assert [text[a.start : a.end] for a in spans] == ["Sjögren's Syndrome", "HbA1c"]  # original case, accents


def test_entity_ending_mid_word_is_expanded_and_reported(tok):
    text = "Diabetic patient"
    s = sent("x:0", text, [("T1", "problem", 0, 5)])  # "Diabe": ends inside the sub-word "##et"
    stats = et.AlignStats()
    f = et.ner_features([(s, ALL)], et.TokenizerView(tok), 64, stats=stats)[0]
    assert stats.not_token_aligned == 1
    assert tags_to_spans(et.NER_SCHEME.decode(f.labels), f.offsets) == [Span(0, 6, "problem")]  # "Diabet"


def test_long_sentences_are_windowed_without_losing_spans(tok):
    text = " ".join(["pain"] * 40)
    ents = [(f"T{i}", "problem", 5 * i, 5 * i + 4) for i in range(40)]
    s = sent("x:0", text, ents)
    feats = et.ner_features([(s, ALL)], et.TokenizerView(tok), 16, stats=(st := et.AlignStats()))
    assert len(feats) == 3 and all(len(f.input_ids) <= 16 for f in feats)
    got = sorted(sp for f in feats for sp in tags_to_spans(et.NER_SCHEME.decode(f.labels), f.offsets))
    assert got == sorted(Span(a, b, t) for _, t, a, b in ents) and st.placed == 40


def test_re_features_mark_the_head_and_mask_labels(tok):
    s = corpus()[0]
    ls = LabelSet(frozenset({"problem"}), frozenset({"negation"}))  # severity not annotated here
    view = et.TokenizerView(tok)
    feats = et.re_features([(s, ls)], view, 64)
    assert [f.head.id for f in feats] == ["T1", "T2"]
    f = feats[0]
    opener, closer = view.marker("@ * problem *"), view.marker("@")
    ids = f.input_ids
    k = next(i for i in range(len(ids)) if ids[i : i + len(opener)] == opener)
    assert all(f.offsets[i] is None and f.labels[i] == IGNORE_INDEX for i in range(k, k + len(opener)))
    # the head's sub-words follow the opener, then the closer
    head_pos = [
        i
        for i, o in enumerate(f.offsets)
        if o is not None and o[0] >= s.entities[0].start and o[1] <= s.entities[0].end
    ]
    assert head_pos[0] == k + len(opener) and ids[head_pos[-1] + 1 : head_pos[-1] + 1 + len(closer)] == closer
    assert tags_to_spans(et.RE_SCHEME.decode(f.labels), f.offsets) == [Span(*find(s.text, "denies"), "negation")]
    assert f.allowed == et.RE_SCHEME.allowed({"negation"})
    # the severity modifier of T2 is not annotated by this site: not a label, and masked out of the softmax
    assert all(lab == 0 or lab == IGNORE_INDEX for lab in feats[1].labels)
    assert not feats[1].allowed[et.RE_SCHEME.label2id["B-severity"]]


def test_masked_loss_gives_no_gradient_to_unannotated_labels():
    logits = torch.randn(1, 3, len(et.NER_SCHEME.labels), requires_grad=True)
    labels = torch.tensor([[0, 1, 0]])  # O, B-problem, O
    allowed = torch.tensor([et.NER_SCHEME.allowed({"problem"})])
    et.masked_loss(logits, labels, allowed).backward()
    drug = [et.NER_SCHEME.label2id["B-drug"], et.NER_SCHEME.label2id["I-drug"]]
    assert torch.all(logits.grad[..., drug] == 0)
    assert torch.any(logits.grad[..., 1] != 0)
    # without the mask, an O token would push the drug labels down (the bug the mask prevents)
    logits.grad = None
    torch.nn.functional.cross_entropy(logits.reshape(-1, 9), labels.reshape(-1)).backward()
    assert torch.all(logits.grad[..., drug] > 0)


# ---- training, prediction, federation -----------------------------------------------------------------------


def test_training_reduces_loss_and_recovers_training_spans(tok):
    torch.manual_seed(0)
    units = [(s, ALL) for s in corpus()]
    view = et.TokenizerView(tok)
    models = et.EncoderModels(
        tiny_classifier(tok, et.NER_SCHEME.labels), tiny_classifier(tok, et.RE_SCHEME.labels), tok
    )
    nf = et.ner_features(units, view, 64)
    rf = et.re_features(units, view, 64)
    before = (et.evaluate_loss(models.ner, nf), et.evaluate_loss(models.re, rf))
    for m, f in ((models.ner, nf), (models.re, rf)):
        log = et.train_model(m, f, epochs=40, learning_rate=1e-2, batch_size=16, warmup_ratio=0.0)
        assert log["steps"] == 40 * -(-len(f) // 16)
    after = (et.evaluate_loss(models.ner, nf), et.evaluate_loss(models.re, rf))
    assert after[0] < 0.2 * before[0] and after[1] < 0.2 * before[1]
    pred = et.predict_sentences(models, units, heads="gold", max_length=64)
    for (g, _), p in zip(units, pred, strict=True):
        assert p.id == g.id
        assert sorted(e.span for e in p.entities) == sorted(e.span for e in g.entities)
        assert sorted((m.head, m.span) for m in p.modifiers) == sorted((m.head, m.span) for m in g.modifiers)
        for e in p.entities:
            assert g.text[e.start : e.end] == e.text
    # end-to-end: RE heads are the predicted entities (P-ids); same relations since NER is perfect here
    pred = et.predict_sentences(models, units, heads="predicted", max_length=64)
    for (g, _), p in zip(units, pred, strict=True):
        heads = {e.id: e.span for e in p.entities}
        assert all(m.head.startswith("P") for m in p.modifiers)
        assert sorted((heads[m.head], m.span) for m in p.modifiers) == sorted(
            (g.entity(m.head).span, m.span) for m in g.modifiers
        )


def test_decoding_never_predicts_types_outside_the_label_set(tok):
    units = [(s, LabelSet(frozenset({"drug"}))) for s in corpus()]
    models = et.EncoderModels(tiny_classifier(tok, et.NER_SCHEME.labels, seed=3), None, tok)
    with torch.no_grad():  # bias the head hard towards B-problem: the mask must still win
        models.ner.classifier.bias[et.NER_SCHEME.label2id["B-problem"]] = 100.0
    pred = et.predict_sentences(models, units, max_length=64)
    assert all(e.type == "drug" for p in pred for e in p.entities)


@pytest.mark.parametrize("lora", [False, True])
def test_state_round_trip_and_lora_is_smaller(tok, lora):
    m = tiny_classifier(tok, et.NER_SCHEME.labels, lora=EncoderLora(r=2, alpha=4, dropout=0.0) if lora else None)
    st = get_state(m)
    if lora:
        assert any("lora_A" in k for k in st) and any("classifier" in k for k in st)
        assert not any("embeddings" in k for k in st)
        full = get_state(tiny_classifier(tok, et.NER_SCHEME.labels))
        assert et.nbytes(st) < et.nbytes(full)
    changed = {k: v + 1.0 for k, v in st.items()}
    set_state(m, changed)
    back = get_state(m)
    assert set(back) == set(st) and all(np.allclose(back[k], changed[k]) for k in st)
    with pytest.raises(ValueError):
        set_state(m, {"nope": np.zeros(1)} if not lora else {})


@pytest.mark.parametrize("lora", [False, True])
def test_federated_round_is_the_weighted_mean_of_site_states(tok, lora):
    cs = corpus()
    view = et.TokenizerView(tok)
    site_feats = {
        "a": et.ner_features([(s, ALL) for s in cs[:3]], view, 48),
        "b": et.ner_features([(s, LabelSet(frozenset({"problem"}))) for s in cs[3:]], view, 48),
        "empty": [],  # a site with nothing to train sits the round out
    }
    lo = EncoderLora(r=2, alpha=4, dropout=0.0) if lora else None
    model = tiny_classifier(tok, et.NER_SCHEME.labels, lora=lo)
    g0 = get_state(model)
    r = et.federated_round(model, g0, site_feats, learning_rate=1e-2, batch_size=2, pad_id=view.pad_id)
    assert set(r.site_states) == {"a", "b"} and r.weights == {"a": 3.0, "b": 1.0}
    w = np.array([3.0, 1.0]) / 4.0
    changed = 0
    for k in g0:
        a, b = r.site_states["a"][k], r.site_states["b"][k]
        assert np.allclose(r.global_state[k], w[0] * a + w[1] * b, atol=1e-6), k
        changed += not np.allclose(a, b)
    assert changed > 0  # the sites really trained to different weights
    now = get_state(model)  # the model holds the new global state
    assert all(np.allclose(now[k], r.global_state[k]) for k in g0)
    per_msg = et.nbytes(g0)
    assert r.bytes_up == r.bytes_down == 2 * per_msg


def test_run_encoder_setting_end_to_end(tok, tiny_encoder_dir, tmp_path):
    pytest.importorskip("fedmedlora.metrics")
    cs = corpus()
    _write_benchmark(
        tmp_path / "bench",
        {
            "a": (LabelSet(frozenset({"problem", "drug"}), frozenset({"negation", "dosage"})), cs[:2]),
            "b": (LabelSet(frozenset({"problem"}), frozenset()), cs[2:]),
        },
    )
    settings = {"model": str(tiny_encoder_dir), "rounds": 1, "batch_size": 2, "max_length": 48, "threads": 1}
    full = et.run_encoder_setting("federated_full", tmp_path / "bench", settings=settings, out_dir=tmp_path / "f")
    lora = et.run_encoder_setting("federated_lora", tmp_path / "bench", settings=settings)
    assert full["communication"]["bytes_per_round"] > lora["communication"]["bytes_per_round"] > 0
    # NER: both sites; RE: only site a annotates modifiers
    assert set(full["train"]["rounds"][0]["ner"]["weights"]) == {"a", "b"}
    assert set(full["train"]["rounds"][0]["re"]["weights"]) == {"a"}
    ner_msg, re_msg = full["communication"]["message_bytes"]["ner"], full["communication"]["message_bytes"]["re"]
    assert full["communication"]["rounds"][0]["bytes_up"] == 2 * ner_msg + re_msg
    ev = full["eval"]["federated_full"]
    assert set(ev) == {"a", "b"} and ev["a"]["n_sentences"] == 2
    assert "ner" in ev["a"]["metrics"]["counts"] and "re" in ev["a"]["metrics"]["counts"]
    assert (tmp_path / "f" / "result.json").is_file()
    assert (tmp_path / "f" / "predictions" / "federated_full" / "a.test.jsonl").is_file()
    single = et.run_encoder_setting("single_site", tmp_path / "bench", settings=settings | {"tasks": ["ner"]})
    assert set(single["eval"]) == {"a", "b"} and set(single["eval"]["a"]) == {"a", "b"}
    with pytest.raises(ValueError, match="not in the benchmark"):
        et.run_encoder_setting("centralized", tmp_path / "bench", sites=["zzz"], settings=settings)
    with pytest.raises(ValueError, match="unknown field"):
        et.run_encoder_setting("centralized", tmp_path / "bench", settings={"learning_rat": 1.0})


def _write_benchmark(root, sites):
    from fedmedlora.jsonl import write_documents

    manifest = {"name": "tiny", "seed": 0, "sites": {}, "server_validation": None}
    for site, (ls, sents) in sites.items():
        for split in ("train", "dev", "test"):
            docs = [
                Document(f"{site}-{split}-{i}", site, split, s.text, (s,), ls, {})
                for i, s in enumerate(_restrict(sents, ls))
            ]
            write_documents(root / site / f"{split}.jsonl", docs)
        manifest["sites"][site] = {"role": "train", "label_set": ls.to_dict(), "n_docs": {}}
    (root / "benchmark.json").write_text(json.dumps(manifest))


def _restrict(sents, ls):
    out = []
    for s in sents:
        ents = tuple(e for e in s.entities if e.type in ls.entities)
        ids = {e.id for e in ents}
        mods = tuple(m for m in s.modifiers if m.head in ids and m.type in ls.modifiers)
        out.append(Sentence(s.id, 0, len(s.text), s.text, ents, mods))
    return out


@pytest.fixture
def tiny_encoder_dir(tok, tmp_path):
    from transformers import BertModel

    torch.manual_seed(0)
    d = tmp_path / "tiny-bert"
    BertModel(bert_config(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_score_sentence_uses_gold_heads_like_the_llm_path():
    from fedmedlora.metrics import Evaluation

    g = corpus()[0]
    ls = LabelSet(frozenset({"problem"}), frozenset({"negation", "severity"}))
    # predicted entities get P-ids; modifiers point at the gold head ids (heads="gold")
    pred = Sentence(
        g.id,
        g.start,
        g.end,
        g.text,
        tuple(Entity(f"P{i}", e.type, e.start, e.end, e.text) for i, e in enumerate(g.entities)),
        (
            Modifier("M1", "negation", *find(g.text, "denies"), "denies", "T1"),
            Modifier("M2", "severity", *find(g.text, "reports"), "reports", "T2"),  # wrong span
        ),
    )
    ev = Evaluation()
    et.score_sentence(ev, g, pred, ls, tasks=("ner", "re"), heads="gold")
    assert (ev.get("ner", "strict").tp, ev.get("ner", "strict").fp) == (2, 0)
    re_c = ev.get("re", "strict")
    assert (re_c.tp, re_c.fp, re_c.fn) == (1, 1, 1)
