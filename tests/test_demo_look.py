"""The demo's pages as a visitor meets them: readable themes, a real 404, HEAD like GET."""

from __future__ import annotations

import re

import pytest
from webtest import TestApp

from sessionstore import SessionMiddleware
from sessionstore.demo import _STYLE, TEXT_ON, THEME_COLOURS, demo_app


def luminance(colour: str) -> float:
    """WCAG 2 relative luminance of ``#rrggbb``."""
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_contrast_formula_matches_known_values():
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    # The old dark theme: #666 notes on #222.
    assert contrast("#666666", "#222222") < 3


@pytest.mark.parametrize("theme", sorted(THEME_COLOURS))
@pytest.mark.parametrize(("text", "background"), TEXT_ON, ids=lambda name: name)
def test_every_text_colour_is_readable(theme, text, background):
    colours = THEME_COLOURS[theme]
    assert contrast(colours[text], colours[background]) >= 4.5


def test_every_colour_the_style_draws_text_with_is_checked():
    # Each "color: var(--x)" in the style sheet is a text colour of TEXT_ON.
    drawn = set(re.findall(r"(?<![-\w])color: var\(--([\w-]+)\)", _STYLE))
    assert drawn and drawn <= {text for text, _ in TEXT_ON}
    backgrounds = set(re.findall(r"background: var\(--([\w-]+)\)", _STYLE))
    assert backgrounds <= {background for _, background in TEXT_ON}


@pytest.fixture
def web():
    middleware = SessionMiddleware(demo_app, secret="s" * 32, backend="memory")
    yield TestApp(middleware)
    middleware.close()


def test_unknown_page_is_a_proper_404(web):
    page = web.get("/no/such<page>", status=404)
    assert page.content_type == "text/html"
    assert "<title>Page not found - sessionstore demo</title>" in page.text
    assert "<code>/no/such&lt;page&gt;</code>" in page.text
    assert '<a href="/">Back to the start</a>' in page.text
    assert "<nav>" in page.text and "<style>" in page.text  # the site's own look
    assert "Set-Cookie" not in page.headers  # a 404 starts no session


def test_head_is_get_without_a_body(web):
    for path, status in [("/", 200), ("/shop", 200), ("/session", 200), ("/nosuch", 404)]:
        got = web.get(path, status=status)
        head = web.head(path, status=status)
        assert head.body == b""
        assert head.headers["Content-Type"] == got.headers["Content-Type"]
        assert int(head.headers["Content-Length"]) == len(got.body) > 0


def test_wrong_method_is_405_naming_the_allowed_ones(web):
    response = web.get("/login", status=405)
    assert response.headers["Allow"] == "POST"
    response = web.post("/session", status=405)
    assert response.headers["Allow"] == "GET, HEAD"
    assert web.head("/logout", status=405).body == b""
