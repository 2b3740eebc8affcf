"""Tiny random causal LMs and a small offline tokenizer for tests (no download).

Shared by tests/adapters, tests/e2e and tests/core (via ``pythonpath = ["tests"]`` in pyproject): the tokenizer is
trained on a few hundred characters of clinical-ish text, has ChatML-style special tokens, a minimal chat template
and **no pad token** (like SmolLM2), so tests go through the same ``prepare_tokenizer`` path (pad = EOS) as the real
model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRAINING_TEXT = """\
The patient denies chest pain but reports mild shortness of breath since Monday.
Started metformin 500 mg orally twice daily for type 2 diabetes; HbA1c was 8.1 % (ref 4.0-5.6).
CT of the abdomen showed no acute abnormality. Aspirin 81 mg daily was continued.
<span class="problem">chest pain</span> <span class="drug">aspirin</span> <span class="test">CT</span>
{"entities": [{"type": "drug", "text": "metformin"}, {"type": "problem", "text": "diabetes"}]}
Mother had breast cancer. No fever, no cough. Blood pressure 140/90 mmHg, heart rate 88.
"""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class FakeExample:
    """Stand-in for ``fedmedlora.prompts.Example`` (training code only reads .prompt and .target)."""

    prompt: str
    target: str
    task: str = "ner"
    sentence_id: str = "s0"
    site: str = "test"
    head: str | None = None


def build_tiny_tokenizer():
    """A byte-level BPE fast tokenizer (vocab ~350) with ChatML specials and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer, seed: int = 0, layers: int = 2):
    """A 2-layer (or ``layers``) Llama (hidden 32, 4 heads / 2 KV heads, intermediate 64), seeded random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        # Larger than the default 0.02 so the random model has informative logits and a LoRA-only update can
        # fit a few examples within ~30 steps (with 0.02 the loss barely moves from ln(vocab)).
        initializer_range=0.2,
    )
    return LlamaForCausalLM(config)


def save_tiny_model(out: Path, seed: int = 0, layers: int = 2) -> Path:
    """Build and save a tiny model + tokenizer folder loadable by ``fedmedlora.lm.model.load_base_model``."""
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, seed=seed, layers=layers).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---- a tiny federated world: model + per-site JSONL benchmark + the coordinator's validation set ----------------

TEXTS = [
    ("The patient denies chest pain.", [("problem", "chest pain")]),
    ("Started metformin 500 mg daily.", [("drug", "metformin")]),
    ("CT of the abdomen was normal.", [("test", "CT")]),
    ("Aspirin 81 mg daily was continued.", [("drug", "Aspirin")]),
    ("No fever, no cough.", [("problem", "fever"), ("problem", "cough")]),
]


def make_doc(site: str, split: str, i: int, text: str, ents: list[tuple[str, str]]):
    """A one-sentence document of ``site`` annotating the surface strings ``ents`` (first occurrence each)."""
    from fedmedlora.schema import Document, Entity, LabelSet, Sentence

    entities = []
    for j, (typ, surface) in enumerate(ents):
        start = text.index(surface)
        entities.append(Entity(f"T{j}", typ, start, start + len(surface), surface))
    sent = Sentence(f"{site}-{split}-{i}:0", 0, len(text), text, tuple(entities))
    return Document(f"{site}-{split}-{i}", site, split, text, (sent,), LabelSet())


def build_tiny_world(root: Path, sites: list[str], train_docs: list[int], layers: int = 2) -> Path:
    """``root/model`` (tiny Llama) + ``root/bench/<site>/{train,dev}.jsonl`` (``train_docs[k]`` training documents
    at site k, one dev document) + ``root/bench/_server/validation.jsonl``. Returns ``root``."""
    from fedmedlora.jsonl import write_documents

    if not (root / "model" / "config.json").is_file():
        save_tiny_model(root / "model", layers=layers)
    for k, site in enumerate(sites):
        (root / "bench" / site).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", train_docs[k]), ("dev", 1)):
            docs = [make_doc(site, split, i, *TEXTS[(i + k) % len(TEXTS)]) for i in range(n)]
            write_documents(root / "bench" / site / f"{split}.jsonl", docs)
    (root / "bench" / "_server").mkdir(parents=True, exist_ok=True)
    write_documents(
        root / "bench" / "_server" / "validation.jsonl", [make_doc("srv", "dev", i, *TEXTS[i]) for i in range(2)]
    )
    return root


def tiny_model_overrides(model: Path) -> list[str]:
    """The config overrides that run fedmedlora on a saved tiny model: CPU, float32, a rank-2 LoRA."""
    return [f"model.name={model}", "model.device=cpu", "model.dtype=float32", "lora.r=2", "lora.alpha=4"]


def tiny_world_config(world: Path, name: str, *overrides: str):
    """The RunConfig the federation tests share: the tiny model of ``build_tiny_world``, 2 local steps, NER only.

    The simulation and the deployment tests both build on it, so their results stay comparable."""
    from fedmedlora.config import load_config

    return load_config(
        overrides=[
            f"name={name}",
            *tiny_model_overrides(world / "model"),
            "train.max_steps=2",
            "train.batch_size=2",
            "train.max_length=128",
            "data.tasks=[ner]",
            *overrides,
        ]
    )


def tiny_federation_config(
    world: Path, name: str, sites: list[str], *overrides: str, rounds: int = 2, min_sites: int | None = None
):
    """``tiny_world_config`` for an in-process federation of ``sites`` (all required unless ``min_sites``)."""
    return tiny_world_config(
        world,
        name,
        f"federation.rounds={rounds}",
        f"federation.sites=[{','.join(sites)}]",
        f"federation.min_sites={len(sites) if min_sites is None else min_sites}",
        *overrides,
    )
