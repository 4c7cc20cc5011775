"""The report: one self-contained HTML page that parses, fetches nothing, and shows the run's numbers."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from pqlflow.analysis.backtest import run_backtest
from pqlflow.analysis.report import pct, render_html, render_text
from pqlflow.qualify.definition import parse_definition

from tests.unit.analysis.test_backtest import TINY, tiny_history, write


class Page(HTMLParser):
    """Collects tags, every URL-bearing attribute, inline styles and the visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.open: list[str] = []
        self.urls: list[str] = []
        self.styles: list[str] = []
        self.text: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in ("meta", "link", "br", "img", "input", "rect", "line", "circle", "polyline", "path"):
            self.open.append(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "data", "poster", "srcset") and value:
                self.urls.append(value)
            if name == "style" and value:
                self.styles.append(value)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href") and value:
                self.urls.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:
            while self.open and self.open.pop() != tag:
                pass
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)
        else:
            self.text.append(data)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = write(tmp_path_factory.mktemp("h") / "h.jsonl", tiny_history(), ["not json"])
    defs = [
        (parse_definition(TINY % 3, "a.yaml"), "a.yaml"),
        (parse_definition(TINY % 2, "b.yaml"), "b.yaml"),
    ]
    return run_backtest([path], defs, measure_decode=True).to_dict()


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    return parser


def test_report_parses_and_is_one_self_contained_page(data: dict[str, Any]) -> None:
    # When the report is rendered
    page = render_html(data)
    parsed = parse(page)
    # Then it is one HTML document with inline CSS and SVG charts and no scripts
    assert page.startswith("<!DOCTYPE html>")
    assert parsed.tags.count("html") == 1 and parsed.tags.count("style") == 1
    assert parsed.tags.count("svg") >= 5
    assert "script" not in parsed.tags and "link" not in parsed.tags and "img" not in parsed.tags
    assert not parsed.open  # every element closed
    # And it references nothing outside itself
    assert parsed.urls == []
    css = " ".join(parsed.styles)
    assert "@import" not in css and "url(" not in css and "@font-face" not in css
    assert not re.search(r"https?://", page)


def test_report_contains_the_numbers_of_the_run(data: dict[str, Any]) -> None:
    a = data["definitions"][0]
    text = " ".join(parse(render_html(data)).text)
    # Then the headline numbers are there, as the run computed them
    for value in (
        pct(a["pql_conversion_rate"]),
        pct(a["non_pql_conversion_rate"]),
        pct(a["recall"]),
        f"{a['lift']:.2f}×",
        f"{a['time_to_convert']['median_days']:.1f} days",
    ):
        assert value in text, value
    assert "tiny v1" in text and "Side by side" in text and "qualified by both" in text
    assert "Threshold sweep" in text and "messages ≥ 3" in text
    # And the bad line is listed with its line number
    bad = data["history"]["bad"][0]
    assert f"{Path(bad['file']).name}" in text and f":{bad['line']}" in text


def test_report_escapes_what_it_shows(data: dict[str, Any]) -> None:
    # Given a definition name and a bad line carrying markup
    evil = json.loads(json.dumps(data))
    evil["definitions"][0]["definition"]["name"] = "<script>alert(1)</script>"
    evil["history"]["bad"][0]["reason"] = '<img src="http://x">'
    page = render_html(evil)
    # Then it is shown as text, never as markup
    assert "<script>" not in page and '<img src="http://x">' not in page
    assert parse(page).urls == []


def test_report_shows_replay_parts_when_present(data: dict[str, Any]) -> None:
    # Given replay data: nudges and per-channel results with a holdout
    replay = json.loads(json.dumps(data))
    replay["source"] = "replay"
    replay["definitions"] = replay["definitions"][:1]
    replay["definitions"][0]["nudged"] = 2
    replay["definitions"][0]["channels"] = [
        {"channel": "email", "pqls": 2, "converted": 1, "conversion_rate": 0.5, "median_days": 3.0},
        {"channel": "holdout", "pqls": 1, "converted": 0, "conversion_rate": 0.0, "median_days": None},
    ]
    text = " ".join(parse(render_html(replay)).text)
    assert "Nudged" in text and "holdout" in text and "50.0%" in text
    assert "Not available in a backtest" not in text


def test_text_report_is_aligned_tables(data: dict[str, Any]) -> None:
    text = render_text(data)
    assert "Comparison" in text and "precision" in text and "Threshold sweep" in text
    rule_lines = [line for line in text.splitlines() if line.startswith("─")]
    assert rule_lines  # header rules under each table
    assert "bad line" in text and "not valid JSON" in text
