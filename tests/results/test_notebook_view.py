"""The notebook view (``_repr_html_``): self-contained, a score/M/S/I switch without script, shading by value."""

import re
from html.parser import HTMLParser
from pathlib import Path

from heta_fast import Attribution, AttributionSequence

FIXTURES = Path(__file__).parent / "fixtures"


class _Page(HTMLParser):
    """Collects the radios, the views and the shaded token spans of one rendering."""

    def __init__(self):
        super().__init__()
        self.tags, self.radios, self.views, self.view = [], [], {}, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "input":
            self.radios.append(a)
        if tag == "div" and "heta-view" in (a.get("class") or "").split():
            self.view = a["data-by"]
            self.views[self.view] = []
        if tag == "span" and self.view and "background:rgba(0,128,0," in (a.get("style") or ""):
            alpha = float(re.search(r"rgba\(0,128,0,([0-9.]+)\)", a["style"]).group(1))
            self.views[self.view].append((alpha, a["title"]))


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    return p


def test_single_result_view_has_a_switch_and_is_self_contained():
    r = Attribution.load(FIXTURES / "attribution_v1.json")
    r.tokens[3] = "<b>l</b>"  # token text must be escaped, never markup
    page = r._repr_html_()
    p = _parse(page)
    assert "script" not in p.tags and "<script" not in page.lower()
    assert not re.search(r"(src|href)\s*=|url\(|@import|https?:", page)  # nothing fetched from anywhere
    assert "&lt;b&gt;l&lt;/b&gt;" in page and "<b>l</b>" not in page
    # One radio per component, the score checked, all in one group of their own.
    assert [x["class"] for x in p.radios] == ["heta-by-scores", "heta-by-M", "heta-by-S", "heta-by-I"]
    assert [("checked" in x) for x in p.radios] == [True, False, False, False]
    assert len({x["name"] for x in p.radios}) == 1
    # Every view shades every context token; the darkest token of each view is that component's largest value.
    for name, spans in p.views.items():
        assert len(spans) == len(r.tokens)
        values = getattr(r, name)
        darkest = max(range(len(spans)), key=lambda i: spans[i][0])
        assert values[darkest] == max(values) and spans[darkest][0] == 1.0
        assert spans[darkest][1].startswith(f"pos {darkest}, scores=")
    # Without script, CSS alone switches: views hidden except the one whose radio is checked.
    uid = p.radios[0]["name"]
    assert f"#{uid} .heta-view{{display:none}}" in page
    for name in ("scores", "M", "S", "I"):
        assert f"#{uid} .heta-by-{name}:checked ~ .heta-views .heta-view-{name}{{display:block}}" in page
    # The score view comes first, so a front end that drops <style> still shows it first.
    assert list(p.views) == ["scores", "M", "S", "I"]
    assert _parse(r._repr_html_()).radios[0]["name"] != uid  # a second output gets its own radio group


def test_missing_components_have_no_switch_position():
    r = Attribution.load(FIXTURES / "attribution_v1.json")
    r.S = None
    p = _parse(r._repr_html_())
    assert [x["class"] for x in p.radios] == ["heta-by-scores", "heta-by-M", "heta-by-I"] and "S" not in p.views


def test_sequence_view_has_one_line_per_target():
    seq = AttributionSequence.load(FIXTURES / "attribution_sequence_v1.json")
    page = seq._repr_html_()
    p = _parse(page)
    assert len(p.radios) == 4
    for spans in p.views.values():
        assert len(spans) == sum(len(r.tokens) for r in seq)
    assert "2 targets: &#x27;f&#x27;, &#x27;g&#x27;" in page and "sink gate mass" in page
    assert "empty" in AttributionSequence()._repr_html_()
