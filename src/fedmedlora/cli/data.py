"""``fedmedlora data``: build the federated benchmark from the open corpora, re-partition its training sites
(``data split``), check it, and print its statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from fedmedlora.benchmark import BenchmarkError, default_benchmark_dir, load_benchmark
from fedmedlora.benchmark_stats import benchmark_stats
from fedmedlora.cli.common import fail
from fedmedlora.corpora import CorpusError, default_corpora_dir
from fedmedlora.jsonl import JsonlError
from fedmedlora.prepare import prepare_benchmark

data_app = typer.Typer(no_args_is_help=True, help="Build and inspect the federated benchmark.")


@data_app.command("prepare")
def data_prepare(
    corpora: Path = typer.Option(
        None, "--corpora", help="Folder with chia/, phee/, bc5cdr/, maccrobat/ (default: ../shared/datasets)."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Benchmark folder to write (default with --sample: the bundled sample)."
    ),
    seed: int = typer.Option(13, help="Seed of the Chia/MACCROBAT splits, the server set and the sample."),
    max_docs: int = typer.Option(None, help="Read at most N documents per corpus (per split file); quick checks."),
    sample: bool = typer.Option(False, "--sample", help="Write the small bundled sample, not the full benchmark."),
    site: list[str] = typer.Option(None, "--site", help="Only these sites (repeatable; default: all four)."),
) -> None:
    """Convert the open corpora into the federated benchmark and print its statistics."""
    corpora = corpora or default_corpora_dir()
    if corpora is None or not corpora.is_dir():
        raise fail(
            f"corpora folder not found: {corpora or '../shared/datasets'} (pass --corpora or set FEDMEDLORA_CORPORA)"
        )
    if out is None:
        if not sample:
            raise fail("--out is required (or pass --sample to regenerate the bundled sample)")
        out = default_benchmark_dir()
    try:
        stats = prepare_benchmark(corpora, out, seed=seed, max_docs=max_docs, sites=site or None, sample=sample)
    except (CorpusError, BenchmarkError) as e:
        raise fail(str(e)) from None
    stats.print(Console(width=None if sys.stdout.isatty() else 160))
    typer.echo(f"wrote {out} (benchmark.json, <site>/{{train,dev,test}}.jsonl, stats.md, stats.json)")


@data_app.command("check")
def data_check(root: Path = typer.Argument(None, help="Benchmark folder (default: the bundled sample).")) -> None:
    """Check a benchmark: every site's folder, document ids unique and in one split, document site/split/label set
    agreeing with the file and the manifest. Exits 1 listing every problem."""
    from fedmedlora.benchmark import check_benchmark

    try:
        bench = load_benchmark(root)
    except (BenchmarkError, JsonlError, ValueError) as e:
        raise fail(str(e)) from None
    problems = check_benchmark(bench)
    for p in problems:
        typer.echo(f"problem: {p}")
    n_sites = len(bench.sites)
    if problems:
        typer.echo(f"{bench.root}: {len(problems)} problem(s) in {n_sites} sites")
        raise typer.Exit(1)
    typer.echo(f"{bench.root}: {n_sites} sites, every check passed")


@data_app.command("split")
def data_split(
    benchmark: Path = typer.Argument(
        None, help="Benchmark folder whose training sites are partitioned (default: the bundled sample)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="New benchmark folder to write (must not exist or be empty)."),
    sites: int = typer.Option(..., "--sites", "-n", min=1, help="Number of new sites N."),
    alpha: float = typer.Option(
        float("inf"), "--alpha", help="Dirichlet label skew over entity-type mixes (small = skewed; inf = IID)."
    ),
    size_skew: float = typer.Option(
        None, "--size-skew", help="Share in (0, 1) of one large site; the other N-1 share the rest equally."
    ),
    proportions: str = typer.Option(None, "--proportions", help="Relative site sizes, e.g. 6,1,1,1 (N numbers)."),
    seed: int = typer.Option(13, "--seed", min=0, help="Seed of the Dirichlet draws and the assignment."),
    source: list[str] = typer.Option(None, "--source", help="Source sites to pool (repeatable; default: all train)."),
    prefix: str = typer.Option("site", "--prefix", help="New site names: <prefix>01, <prefix>02, ..."),
    drop_other_sites: bool = typer.Option(
        False, "--drop-other-sites", help="Leave out the sites that are not partitioned (new site, external)."
    ),
) -> None:
    """Re-partition a benchmark's training sites by document into N new sites (IID, Dirichlet label skew, size
    skew), write the result as a new benchmark whose manifest records how every site was made, and check it."""
    from fedmedlora.benchmark import check_benchmark
    from fedmedlora.partition import PartitionError, PartitionSettings, split_benchmark

    props = None
    if proportions is not None:
        try:
            props = tuple(float(x) for x in proportions.split(","))
        except ValueError:
            raise fail(f"--proportions {proportions!r}: expected comma-separated numbers, e.g. 6,1,1,1") from None
    try:
        settings = PartitionSettings(sites, alpha, seed, proportions=props, size_skew=size_skew, prefix=prefix)
        manifest = split_benchmark(
            benchmark or default_benchmark_dir(), out, settings, sites=source or None,
            keep_other_sites=not drop_other_sites,
        )  # fmt: skip
    except (PartitionError, BenchmarkError, JsonlError) as e:
        raise fail(str(e)) from None
    part = manifest["partition"]
    for name, info in manifest["sites"].items():
        if "partition" in info:
            n = info["n_docs"]
            typer.echo(
                f"{name}: {n['train']} train / {n['dev']} dev / {n['test']} test documents from "
                f"{', '.join(info['partition']['source_sites'])}; type-mix distance to the pool "
                f"{info['partition']['train_tv_to_pool']:.3f}"
            )
    if part.get("sites_left_out"):
        typer.echo(f"left out (--drop-other-sites): {', '.join(part['sites_left_out'])}")
    problems = check_benchmark(load_benchmark(out))
    for p in problems:
        typer.echo(f"problem: {p}")
    if problems:
        raise typer.Exit(1)
    typer.echo(
        f"wrote {out} ({part['method']}, alpha={part['alpha']}, seed={part['seed']}; mean type-mix distance to the "
        f"pool {part['mean_train_tv_to_pool']:.3f}); every check passed"
    )


@data_app.command("stats")
def data_stats(
    root: Path = typer.Argument(None, help="Benchmark folder (default: the bundled sample)."),
    drops: bool = typer.Option(False, "--drops", help="Also print the conversion's dropped-annotation counts."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown table instead of rich tables."),
) -> None:
    """Print the statistics table of a benchmark folder (sites × entity/modifier types, sentences, documents)."""
    try:
        stats = benchmark_stats(load_benchmark(root))
    except (BenchmarkError, JsonlError) as e:
        raise fail(str(e)) from None
    if markdown:
        typer.echo(stats.to_markdown() if drops else stats.to_markdown().split("\n## Dropped")[0])
    else:
        stats.print(drops=drops)
