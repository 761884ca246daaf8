"""The demo site's look: two themes from one set of colours, and its stylesheet.

Every text colour has a contrast of at least 4.5:1 on the backgrounds it is
drawn on (WCAG AA): ``TEXT_ON`` lists those pairs, ``tests/test_demo_look.py``
computes their contrast, and the browser test checks what Chromium draws.
"""

from __future__ import annotations

THEMES = ("light", "dark")

THEME_COLOURS = {
    "light": {
        "bg": "#ffffff",
        "fg": "#1b1b1f",
        "muted": "#4d4f5a",
        "link": "#0b57d0",
        "line": "#c4c6cf",
        "panel": "#f1f3f6",
        "button-bg": "#0b57d0",
        "button-fg": "#ffffff",
        "button-hover": "#0842a0",
        "field-bg": "#ffffff",
    },
    "dark": {
        "bg": "#16181d",
        "fg": "#e8e8ec",
        "muted": "#b4b7c2",
        "link": "#8ab4f8",
        "line": "#4a4e59",
        "panel": "#20232a",
        "button-bg": "#8ab4f8",
        "button-fg": "#0e1116",
        "button-hover": "#aecbfa",
        "field-bg": "#23262e",
    },
}
# (text, background) pairs as drawn by the style sheet below.
TEXT_ON = [
    ("fg", "bg"),
    ("muted", "bg"),
    ("link", "bg"),
    ("fg", "panel"),
    ("link", "panel"),
    ("muted", "panel"),
    ("button-fg", "button-bg"),
    ("button-fg", "button-hover"),
    ("fg", "field-bg"),
]


def _variables(theme: str) -> str:
    return " ".join(f"--{name}: {value};" for name, value in THEME_COLOURS[theme].items())


_STYLE = f"""
body {{ {_variables("light")} color-scheme: light; }}
body.dark {{ {_variables("dark")} color-scheme: dark; }}
body {{ background: var(--bg); color: var(--fg); font: 16px/1.5 system-ui, sans-serif;
  max-width: 44rem; margin: 0 auto; padding: 1.5rem 1rem; }}
a {{ color: var(--link); }}
nav {{ display: flex; flex-wrap: wrap; gap: .25rem 1.25rem; padding-bottom: .6rem;
  border-bottom: 1px solid var(--line); }}
nav a {{ text-decoration: none; font-weight: 600; }} nav a:hover {{ text-decoration: underline; }}
h1 {{ margin: 1rem 0 .75rem; font-size: 1.6rem; }} h2 {{ font-size: 1.2rem; }}
.note {{ color: var(--muted); font-size: .9rem; }}
table {{ border-collapse: collapse; background: var(--panel); }}
td, th {{ border: 1px solid var(--line); padding: .4rem .6rem; text-align: left;
  vertical-align: middle; }}
form {{ display: inline; }}
button {{ font: inherit; font-weight: 600; color: var(--button-fg); background: var(--button-bg);
  border: 0; border-radius: .4rem; padding: .35rem .9rem; cursor: pointer; }}
button:hover {{ background: var(--button-hover); }}
input, select {{ font: inherit; color: var(--fg); background: var(--field-bg);
  border: 1px solid var(--line); border-radius: .4rem; padding: .3rem .5rem; }}
a:focus-visible, button:focus-visible, input:focus-visible, select:focus-visible {{
  outline: 3px solid var(--link); outline-offset: 2px; }}
ul#cart {{ background: var(--panel); border: 1px solid var(--line); border-radius: .4rem;
  padding: .5rem .5rem .5rem 2rem; }}
"""
