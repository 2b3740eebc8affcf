"""The study report and ``extract --html`` (``fedmedlora.html_report``), read as HTML and, where a headless
Chromium is installed, looked at as a screenshot."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fedmedlora.html_report import Mark, nest, notes_html, tracks, write_notes_html, write_report
from report_study import SITES, make_study


class Page(HTMLParser):
    """The parts of a page the tests look at: tables, marks (class, title, text, and the text of their tag; the
    legend's marks left out), images, controls, and every URL-valued attribute."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: list[dict[str, str]] = []
        self.marks: list[dict[str, str]] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.options: list[str] = []
        self.checkboxes: list[tuple[str, str]] = []
        self.scripts_with_src = 0
        self._open: list[dict[str, str] | None] = []  # open marks (None: a mark of the legend)
        self._spans: list[dict[str, str] | None] = []  # open spans: the mark whose tag it is (None: not a tag)
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        for k in ("src", "href", "action", "data"):
            if k in a:
                self.urls.append(a[k])
        if tag == "table":
            self.tables.append(a)
        elif tag == "mark":
            m = None if "key" in classes else {"class": a.get("class", ""), "title": a.get("title", "")}
            if m is not None:
                m.update(text="", tag="")
                self.marks.append(m)
            self._open.append(m)
        elif tag == "span":
            self._spans.append(self._open[-1] if "tag" in classes and self._open else None)
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "option":
            self.options.append(a.get("value", ""))
        elif tag == "input" and a.get("type") == "checkbox":
            self.checkboxes.append((a.get("class", ""), a.get("value", "")))
        elif (tag == "script" and "src" in a) or tag == "link":
            self.scripts_with_src += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "mark" and self._open:
            self._open.pop()
        elif tag == "span" and self._spans:
            self._spans.pop()

    def handle_data(self, data: str) -> None:
        owner = next((m for m in reversed(self._spans) if m is not None), None)
        if owner is not None:  # a mark's tag: its own, not the text of the marks around it
            owner["tag"] += data
            return
        for m in self._open:
            if m is not None:
                m["text"] += data


# ---- the layout of marks ----------------------------------------------------------------------------------------


def test_marks_nest_and_crossing_marks_go_to_another_line() -> None:
    text = "severe chest pain today"
    outer = Mark(0, 17, "problem", "gold", "problem")
    inner = Mark(7, 12, "bodyloc", "gold", "bodyloc → chest pain", modifier=True)
    crossing = Mark(13, 23, "temporal", "gold", "temporal", modifier=True)
    lines = tracks([crossing, inner, outer, Mark(3, 3, "drug", "gold", "empty")])
    assert lines == [[outer, inner], [crossing]]  # the zero-length mark is dropped
    tokens = nest(text, lines[0])
    kinds = [next(iter(t)) for t in tokens]
    assert kinds == ["open", "text", "open", "text", "close", "text", "close", "text"]
    assert [t["open"] for t in tokens if "open" in t] == [outer, inner]
    assert [t["close"] for t in tokens if "close" in t] == [inner, outer]
    assert "".join(t["text"] for t in tokens if "text" in t) == text


# ---- the report of a finished study -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("report") / "study")


@pytest.fixture(scope="module")
def page(study: Path) -> tuple[str, Page]:
    path = write_report(study)
    assert path == study / "report.html"
    html = path.read_text(encoding="utf-8")
    return html, Page(html)


def _gold_texts(study: Path) -> dict[str, set[str]]:
    """Gold entity texts per type on the evaluation sentences of the study's sites."""
    from fedmedlora.benchmark import open_benchmark
    from fedmedlora.config import load_config
    from fedmedlora.sampling import eval_items

    cfg = load_config(study / "config.yaml")
    bench = open_benchmark(cfg.data.benchmark)
    out: dict[str, set[str]] = {}
    for site in SITES:
        for sent, _ in eval_items(bench, site, cfg)[1]:
            for e in sent.entities:
                out.setdefault(e.type, set()).add(e.text)
    return out


def test_report_has_the_tables(page) -> None:
    html, p = page
    classes = [t.get("class", "") for t in p.tables]
    comparison = [c for c in classes if "comparison" in c.split()]
    assert len(comparison) == 3  # chia, phee, in-domain (all)
    assert all("sortable" in c.split() for c in comparison)
    for name in ("paired", "types", "sites", "parse", "runs", "extras"):
        assert any(name in c.split() for c in classes), name
    # the oracle with errors beats answering nothing on every document set: a win, with its interval
    assert '<span class="verdict v-win">win</span>' in html
    # scores are shown with their 95% interval, in the unseen-site table too
    assert '<span class="ci">[' in html
    unseen = html[html.index('<table class="sortable unseen">') :]
    unseen = unseen[: unseen.index("</table>")]
    assert "<td>zero-shot</td><td>phee</td>" in unseen and unseen.count('<span class="ci">[') == 4


def test_report_highlights_gold_and_predicted_spans_by_type_and_kind(page, study: Path) -> None:
    _, p = page
    gold = _gold_texts(study)
    matches = [m for m in p.marks if "k-match" in m["class"].split()]
    assert matches
    for m in matches:  # an exact match shows a gold span's text, coloured by that span's type
        (t,) = [c[2:] for c in m["class"].split() if c.startswith("t-")]
        if "mod" not in m["class"].split():
            assert m["text"] in gold[t], (m, t)
            assert m["tag"].startswith(t)
    kinds = {c for m in p.marks for c in m["class"].split() if c.startswith("k-")}
    assert {"k-gold", "k-match", "k-miss", "k-false_positive", "k-boundary", "k-type"} <= kinds
    boundary = next(m for m in p.marks if "k-boundary" in m["class"].split() and "mod" not in m["class"])
    assert "gold:" in boundary["title"]  # the gold span is named where the prediction differs
    # modifiers are drawn tied to their head
    assert any("mod" in m["class"].split() and "→" in m["tag"] for m in p.marks)


def test_report_shows_the_raw_answers_escaped(page) -> None:
    html, _ = page
    # the oracle answers in the paper's inline markup: shown as text under each model's line, never as markup
    assert "raw NER answer" in html
    assert "&lt;span class=&#34;" in html
    assert '<span class="drug">' not in html and '<span class="problem">' not in html


def test_report_filters_and_curves_are_inline(page) -> None:
    html, p = page
    assert set(SITES) <= set(p.options)
    assert ("f-model", "Fed-MedLoRA") in p.checkboxes and ("f-model", "zero-shot") in p.checkboxes
    assert {v for c, v in p.checkboxes if c == "f-kind"} == {"match", "miss", "false_positive", "boundary", "type"}
    assert len(p.images) >= 4  # validation F1, loss, aggregation weights, bytes
    assert all(src.startswith("data:image/png;base64,") for src in p.images)
    # self-contained: no resource loaded from anywhere
    assert p.scripts_with_src == 0
    assert not [u for u in p.urls if not u.startswith(("data:", "#"))]
    assert "http://" not in html and "https://" not in html


def test_report_escapes_row_names(tmp_path: Path) -> None:
    name = "zero-shot <img src=x onerror=alert(1)>"
    html = write_report(make_study(tmp_path / "study", zero_shot_name=name)).read_text(encoding="utf-8")
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert ("f-model", name) in Page(html).checkboxes  # and the filter still names it


def test_report_cli(study: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedmedlora.cli import app

    out = tmp_path / "elsewhere" / "r.html"
    r = CliRunner().invoke(app, ["report", str(study), "--out", str(out), "--sentences", "2"])
    assert r.exit_code == 0, r.output
    assert str(out) in r.output and out.is_file()
    assert len(Page(out.read_text(encoding="utf-8")).options) == 1 + len(SITES)
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code != 0
    assert "study.json" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["report", str(study), "--out", str(tmp_path)])
    assert r.exit_code != 0 and "is a folder" in " ".join(r.output.split())


# ---- extract --html ---------------------------------------------------------------------------------------------

NOTE = "Pt has <script>alert('x')</script> fever; takes aspirin 81 mg daily."


def _record(note_id: str = "n1") -> dict:
    a = NOTE.index("aspirin")
    f = NOTE.index("fever")
    s = NOTE.index("81 mg")
    return {
        "id": note_id,
        "entities": [
            {"id": "n1:0:P1", "type": "problem", "start": f, "end": f + 5, "text": "fever"},
            {"id": "n1:0:P2", "type": "drug", "start": a, "end": a + 7, "text": "aspirin"},
        ],
        "modifiers": [{"type": "strength", "start": s, "end": s + 5, "text": "81 mg", "head": "n1:0:P2"}],
    }


def test_notes_html_marks_predictions_and_escapes_note_text() -> None:
    html = notes_html([("n1", NOTE)], [_record()])
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    p = Page(html)
    assert {(m["text"], m["class"]) for m in p.marks if "k-pred" in m["class"]} == {
        ("fever", "ent t-problem k-pred"),
        ("aspirin", "ent t-drug k-pred"),
        ("81 mg", "ent t-strength k-pred mod"),
    }
    assert next(m["tag"] for m in p.marks if m["text"] == "81 mg") == "strength → aspirin"
    assert p.scripts_with_src == 0 and not [u for u in p.urls if not u.startswith(("data:", "#"))]


def test_extract_html_option(tmp_path: Path, monkeypatch) -> None:
    """``fedmedlora extract --html``: the predictions the command wrote, drawn over the user's notes (the model
    is replaced by a stand-in that writes the JSONL the real one writes)."""
    from typer.testing import CliRunner

    import fedmedlora.recipes.extract as extract_module
    from fedmedlora.cli import app

    note = tmp_path / "n1.txt"
    note.write_text(NOTE, encoding="utf-8")

    def fake_extract_notes(cfg, paths, out, **kw) -> int:
        Path(out).write_text(json.dumps(_record()) + "\n", encoding="utf-8")
        return 1

    monkeypatch.setattr(extract_module, "extract_notes", fake_extract_notes)
    html = tmp_path / "notes.html"
    r = CliRunner().invoke(app, ["extract", str(note), "--out", str(tmp_path / "p.jsonl"), "--html", str(html)])
    assert r.exit_code == 0, r.output
    assert "notes.html" in r.output
    p = Page(html.read_text(encoding="utf-8"))
    assert {m["text"] for m in p.marks if "k-pred" in m["class"]} == {"fever", "aspirin", "81 mg"}
    # a folder given as --html is refused before any extraction runs
    monkeypatch.setattr(extract_module, "extract_notes", lambda *a, **k: pytest.fail("ran extraction"))
    r = CliRunner().invoke(app, ["extract", str(note), "--out", str(tmp_path / "p.jsonl"), "--html", str(tmp_path)])
    assert r.exit_code != 0 and f"--html {tmp_path}: is a folder" in " ".join(r.output.split())


def test_notes_html_refuses_a_record_of_an_unknown_note(tmp_path: Path) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps(_record("other")) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'other': no note with that id"):
        write_notes_html([("n1", NOTE)], preds, tmp_path / "n.html")


# ---- as a person sees it ----------------------------------------------------------------------------------------

CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


def screenshot(html: Path, png: Path, size: str = "1400,2400") -> None:
    """A headless Chromium screenshot of ``html`` (no network: the page needs none)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += [f"--screenshot={png}", f"--window-size={size}", html.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (apt-get install chromium)")
def test_screenshot_shows_the_tables_and_highlighted_sentences(page, study: Path, tmp_path: Path) -> None:
    from PIL import Image

    html, _ = page
    # the page as it opens (tables), and the error browser alone (the sections above it hidden)
    top = tmp_path / "top.png"
    screenshot(study / "report.html", top)
    browser_only = tmp_path / "browser.html"
    hide = ("comparison", "paired", "unseen", "curves", "breakdowns", "parse")
    for section in hide:
        html = html.replace(f'<section id="{section}"', f'<section hidden id="{section}"')
    browser_only.write_text(html, encoding="utf-8")
    errors = tmp_path / "errors.png"
    screenshot(browser_only, errors)

    def colours(png: Path) -> dict[tuple[int, int, int], int]:
        img = Image.open(png).convert("RGB")
        return {c: n for n, c in img.getcolors(maxcolors=1 << 24)}

    shown = colours(top)
    assert len(shown) > 50  # text, tables and header: not a blank page
    assert shown.get((0x0F, 0x3D, 0x5E), 0) > 10_000  # the header band
    assert shown.get((0xF6, 0xF8, 0xFA), 0) > 2_000  # table header cells
    marks = colours(errors)
    type_colours = [(0xFE, 0xCA, 0xCA), (0xBB, 0xF7, 0xD0), (0xBF, 0xDB, 0xFE), (0xFD, 0xE6, 0x8A)]
    assert sum(marks.get(c, 0) for c in type_colours) > 2_000  # highlighted spans are drawn
    assert marks.get((0x1A, 0x7F, 0x37), 0) > 50  # the green frame of exact matches


def test_the_report_modules_load_neither_torch_nor_flwr() -> None:
    import sys

    code = (
        "import sys, fedmedlora.html_report, fedmedlora.span_errors; "
        "print([m for m in ('torch', 'flwr', 'transformers', 'peft') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (apt-get install chromium)")
def test_filters_and_sorting_work_in_a_browser(page, tmp_path: Path) -> None:
    """The inline JS, run by Chromium: choose a site and one error kind, sort a column; read the DOM back."""
    html, _ = page
    act = """<script>
    var site = document.getElementById("f-site");
    site.value = "phee";
    document.querySelectorAll(".f-kind").forEach(function (c) { c.checked = c.value === "boundary"; });
    site.dispatchEvent(new Event("change", {bubbles: true}));
    var th = document.querySelector("table.comparison thead th:nth-child(2)");
    th.click(); th.click();
    </script></body>"""
    page_file = tmp_path / "acted.html"
    page_file.write_text(html.replace("</body>", act), encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page_file.resolve().as_uri()]
    dom = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout

    class Dom(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.sentences: list[dict] = []  # site, hidden, and its model lines (model, kinds, hidden)
            self.first_rows: list[str] = []  # the first cell of every row of the first comparison table
            self._table = self._row = self._cell = 0

        def handle_starttag(self, tag, attrs) -> None:
            a = dict(attrs)
            cls = (a.get("class") or "").split()
            if tag == "div" and "sent" in cls:
                self.sentences.append({"site": a.get("data-site"), "hidden": "hidden" in a, "lines": []})
            elif tag == "div" and "pred" in cls:
                line = {"model": a.get("data-model"), "kinds": a.get("data-kinds", "").split(), "hidden": "hidden" in a}
                self.sentences[-1]["lines"].append(line)
            elif tag == "table" and "comparison" in cls:
                self._table += 1
            elif tag == "tr" and self._table == 1:
                self._row = 1
            elif tag == "td" and self._row == 1:
                self._cell, self._row = 1, 2

        def handle_endtag(self, tag) -> None:
            if tag == "td":
                self._cell = 0

        def handle_data(self, data) -> None:
            if self._cell and data.strip():
                self.first_rows.append(data.strip())
                self._cell = 0

    d = Dom()
    d.feed(dom)
    assert d.sentences
    shown = [s for s in d.sentences if not s["hidden"]]
    assert shown and all(s["site"] == "phee" for s in shown)
    for s in shown:
        for line in s["lines"]:
            assert line["hidden"] == ("boundary" not in line["kinds"] and bool(line["kinds"])), line
    assert any(not line["hidden"] and "boundary" in line["kinds"] for s in shown for line in s["lines"])
    assert d.first_rows == ["Fed-MedLoRA", "zero-shot"]  # NER strict F1, sorted high to low after two clicks


def test_notes_html_draws_one_mark_per_span() -> None:
    rec = _record()
    f = NOTE.index("fever")
    rec["entities"].append({"id": "n1:0:P3", "type": "test", "start": f, "end": f + 5, "text": "fever"})
    rec["modifiers"].append(
        {
            "type": "dosage",
            "start": rec["modifiers"][0]["start"],
            "end": rec["modifiers"][0]["end"],
            "text": "81 mg",
            "head": "n1:0:P2",
        }
    )
    html = notes_html([("n1", NOTE)], [rec])
    marks = Page(html).marks
    assert "found: dosage 1 · drug 1 · problem 1 · strength 1 · test 1" in html  # every prediction counted
    assert [(m["text"], m["tag"], m["class"]) for m in marks] == [
        ("fever", "problem · test", "ent t-problem k-pred"),
        ("aspirin", "drug", "ent t-drug k-pred"),
        ("81 mg", "strength → aspirin · dosage → aspirin", "ent t-strength k-pred mod"),
    ]


def test_encoder_rows_are_in_the_error_browser_from_their_saved_predictions(tmp_path: Path) -> None:
    """An encoder row has no run folder; its saved predictions (``<study>/encoder/<setting>/predictions/``) on the
    same sentences are drawn like an LLM row's. A perfect encoder shows exact matches only; a broken prediction
    file is named in a note instead of failing the report."""
    from fedmedlora.benchmark import open_benchmark
    from fedmedlora.config import load_config
    from fedmedlora.html_report import build_report
    from fedmedlora.sampling import eval_items

    study = make_study(tmp_path / "study")
    summary = json.loads((study / "study.json").read_text())
    summary["rows"] += [{**r, "model": "encoder centralized"} for r in summary["rows"] if r["model"] == "zero-shot"]
    summary["rows"] += [
        {**r, "model": "encoder single-site (chia)"} for r in summary["rows"] if r["model"] == "zero-shot"
    ]
    (study / "study.json").write_text(json.dumps(summary))
    cfg = load_config(study / "config.yaml")
    bench = open_benchmark(cfg.data.benchmark)
    for site in SITES:
        path = study / "encoder" / "centralized" / "predictions" / "centralized" / f"{site}.test.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for sent, _ in eval_items(bench, site, cfg)[1]:  # a perfect encoder: its predictions are the gold spans
            ents = [{"id": e.id, "type": e.type, "start": e.start, "end": e.end, "text": e.text} for e in sent.entities]
            mods = [
                {"id": m.id, "type": m.type, "start": m.start, "end": m.end, "text": m.text, "head": m.head}
                for m in sent.modifiers
            ]
            lines.append(json.dumps({"sentence_id": sent.id, "entities": ents, "modifiers": mods}))
        path.write_text("\n".join(lines) + "\n")
    broken = study / "encoder" / "single_site" / "predictions" / "single_site-chia" / "chia.test.jsonl"
    broken.parent.mkdir(parents=True)
    first = eval_items(bench, "chia", cfg)[1][0][0].id
    broken.write_text(
        '{"sentence_id": "x", "entities": [{"id": "T1"}]}\n'
        + json.dumps({"sentence_id": first, "entities": [{"id": "T1"}]})
        + "\n"
    )

    html = build_report(study)
    assert 'class="f-model" value="encoder centralized"' in html
    start = '<div class="row pred" data-model="encoder centralized"'
    segments = [part.split('<div class="row', 1)[0] for part in html.split(start)[1:]]
    assert segments  # one line per shown sentence
    encoder_marks = [m for seg in segments for m in Page(seg).marks]
    assert encoder_marks and all("k-match" in m["class"].split() for m in encoder_marks), encoder_marks[:3]
    # a sentence the study did not score is skipped (line 1); a malformed record of one it did is named (line 2)
    assert "chia.test.jsonl:1:" not in html
    assert "single_site-chia/chia.test.jsonl:2: not an encoder prediction record (KeyError" in html
    assert "encoder single-site (chia) on phee: no predictions" in html
