"""``fedmedlora compare``: two evaluations compared on the same documents (``intervals.compare_evaluations`` and the
CLI), on evaluations built from hand-made sentences."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedmedlora.intervals import OVERALL, compare_evaluations, document_counts
from fedmedlora.metrics import score_sentences
from fedmedlora.schema import Entity, LabelSet, Sentence

TEXT = "No fever, no cough, started metformin."
GOLD = [("problem", "fever"), ("problem", "cough"), ("drug", "metformin")]


def _sentence(doc: str, ents: list[tuple[str, str]]) -> Sentence:
    spans = tuple(Entity(f"T{j}", t, TEXT.index(s), TEXT.index(s) + len(s), s) for j, (t, s) in enumerate(ents))
    return Sentence(f"{doc}:0", 0, len(TEXT), TEXT, spans)


def _site(found: list[int], n_docs: int = 20) -> dict:
    """A site's evaluation: document i finds the first ``found[i % len(found)]`` gold entities, nothing else."""
    docs = [f"d{i}" for i in range(n_docs)]
    items = [(_sentence(d, GOLD), LabelSet()) for d in docs]
    preds = [_sentence(d, GOLD[: found[i % len(found)]]) for i, d in enumerate(docs)]
    return {
        "metrics": score_sentences(items, preds, ["ner"]).to_dict(),
        "documents": document_counts(items, preds, docs, ["ner"]),
    }


def test_a_consistently_better_model_wins_on_each_site_and_pooled():
    a = {"s1": _site([3]), "s2": _site([3, 2]), OVERALL: {}}
    b = {"s1": _site([1]), "s2": _site([1, 0]), OVERALL: {}}
    rows = compare_evaluations(a, b, label_a="new", label_b="old", n_resamples=200)
    strict = [r for r in rows if (r["task"], r["rule"]) == ("ner", "strict")]
    assert [r["sites"] for r in strict] == [["s1"], ["s2"], ["s1", "s2"]]
    assert all(r["verdict"] == "win" and r["difference"] > 0 for r in strict)
    assert strict[0]["comparison"] == "new vs old" and strict[-1]["kind"] == "new vs old, sites pooled"
    # the reverse is a loss of the same size
    back = compare_evaluations(b, a, ["s1"], n_resamples=200)
    assert back[0]["verdict"] == "loss" and back[0]["difference"] == pytest.approx(-strict[0]["difference"])


def test_a_model_against_itself_is_not_significant_and_sites_are_checked():
    a = {"s1": _site([3, 0, 1])}
    rows = compare_evaluations(a, a, n_resamples=100)
    assert rows and all(r["difference"] == 0 and r["verdict"] == "not significant" for r in rows)
    assert len({tuple(r["sites"]) for r in rows}) == 1  # one site: no pooled row
    with pytest.raises(ValueError, match="'s9'"):
        compare_evaluations(a, a, ["s9"])
    with pytest.raises(ValueError, match="no site in common"):
        compare_evaluations(a, {"s2": _site([1])})


def test_different_documents_get_no_interval_and_say_why():
    rows = compare_evaluations({"s1": _site([3], n_docs=20)}, {"s1": _site([3], n_docs=19)}, n_resamples=50)
    assert all(r["low"] is None and r["verdict"] is None for r in rows)
    assert {r["note"] for r in rows} == {"the two models scored different documents"}


def _run(tmp_path, name: str, results: dict) -> str:
    (tmp_path / name / "eval").mkdir(parents=True)
    (tmp_path / name / "eval" / "test.json").write_text(json.dumps(results))
    return str(tmp_path / name)


def test_cli_prints_the_table_writes_rows_and_names_bad_files(tmp_path):
    from fedmedlora.cli import app

    a = _run(tmp_path, "constrained", {"s1": _site([3]), "s2": _site([2])})
    b = _run(tmp_path, "plain", {"s1": _site([1]), "s2": _site([0])})
    out = tmp_path / "cmp" / "rows.json"
    r = CliRunner().invoke(app, ["compare", a, b, "--resamples", "100", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "constrained vs plain" in r.output and "| s1, s2 | NER strict |" in r.output and "win" in r.output
    rows = json.loads(out.read_text())
    assert {tuple(x["sites"]) for x in rows} == {("s1",), ("s2",), ("s1", "s2")}
    # an evaluation file given directly, one site, a CSV
    r = CliRunner().invoke(app, ["compare", f"{a}/eval/test.json", b, "--site", "s2", "-o", str(tmp_path / "x.csv")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "x.csv").read_text().count("\n") == 1 + 2  # header + NER strict/lenient on s2

    (tmp_path / "bad.json").write_text("{not json")
    for args, message in [
        ([str(tmp_path / "missing"), b], "no such evaluation"),
        ([str(tmp_path / "bad.json"), b], "bad.json: not a readable evaluation JSON"),
        ([a, b, "--site", "s9"], "'s9': not in the evaluation of constrained"),
        ([a, b, "-o", str(tmp_path / "rows.txt")], "use a .json, .csv or .md file"),
    ]:
        r = CliRunner().invoke(app, ["compare", *args])
        assert r.exit_code == 2 and message in " ".join(r.output.split()), (args, r.output)


def test_too_few_documents_get_an_interval_but_no_verdict():
    # one document: every resample is that document, so the "interval" is a point that excludes 0
    rows = compare_evaluations({"s1": _site([3], n_docs=1)}, {"s1": _site([1], n_docs=1)}, n_resamples=50)
    strict = next(r for r in rows if r["rule"] == "strict")
    assert strict["low"] == strict["high"] == strict["difference"] > 0
    assert strict["verdict"] is None and "too few for a verdict" in strict["note"]
    # five documents are enough for a verdict
    five = compare_evaluations({"s1": _site([3], n_docs=5)}, {"s1": _site([1], n_docs=5)}, n_resamples=50)
    assert all(r["verdict"] == "win" for r in five)
