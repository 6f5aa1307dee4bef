"""The one HTML report writer: every page extends one base with the one stylesheet, and
escapes what it is given."""
from __future__ import annotations

from importlib.resources import files

import pytest

from lrkit.pages import render

CSS = files("lrkit").joinpath("templates/lrkit.css").read_text()
PAGES = {
    "autopilot.html": dict(optimizer="<SGD>", lr_text="0.1", schedule="cosine(0.1, total=10)",
                           steps=10, relative_compute="1.50", compute="training 10 steps",
                           final_loss="0.5", final_val="", metrics=[("<acc>", "0.9", "0.8")],
                           decisions=["a < b"], image="AAAA",
                           probes=[(0, "0.1", 5, "0.3")], events=[],
                           horizon={"rows": [(5, "<0.2>", "0.4"), (20, "0.1", "0.3")],
                                    "beta": "0.50", "peak": "0.05", "steps": 10,
                                    "predicted": "0.2", "realised": "0.25"}),
    "tune.html": dict(study="<study>", best={"number": 3, "value": "0.25",
                                             "schedule": "cosine(0.1, total=10)",
                                             "params": [("lr", "0.1")]},
                      direction="minimize", counts="4 complete",
                      meaning="final <loss>, minimised",
                      figures=[{"title": "History", "image": "AAAA"},
                               {"title": "Slice", "image": None, "error": "too few <trials>"}]),
    "arena.html": dict(sections=[{"title": "A & B", "text": ["run `lrkit bench` <now>"],
                                  "image": "AAAA", "caption": "c", "table": (["m"], [["x"]])}]),
}


@pytest.mark.parametrize("name", sorted(PAGES))
def test_every_page_has_the_one_stylesheet_and_escapes(name):
    page = render(name, **PAGES[name])
    assert page.startswith("<!DOCTYPE html>") and page.count("<style>") == 1
    assert CSS.strip() in page
    assert "data:image/png;base64,AAAA" in page
    assert "<SGD>" not in page and "<study>" not in page and "<now>" not in page
    assert "<trials>" not in page and "a < b" not in page


def test_arena_text_marks_code():
    page = render("arena.html", **PAGES["arena.html"])
    assert "<code>lrkit bench</code> &lt;now&gt;" in page and "A &amp; B" in page


def test_an_unknown_template_names_the_choices():
    with pytest.raises(ValueError, match="template must be one of .*arena.html"):
        render("nope.html")
