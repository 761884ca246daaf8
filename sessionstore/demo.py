"""The demo site: several applications sharing one session cookie.

* ``/shop``: a shop whose cart lives in the ``shop`` store;
* ``/prefs``: preferences in the ``prefs`` store;
* ``/login`` calls ``regenerate()`` (the id changes, the data stays);
* ``/logout`` calls ``destroy()`` (the old cookie is dead);
* ``/session``: what the session holds, store by store.

Served by ``sessionstore serve examples/demo.ini`` (``use = egg:sessionstore#demo``).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

PRODUCTS = {"book": "A book on WSGI", "mug": "A coffee mug", "pen": "A fountain pen"}
THEMES = ("light", "dark")

# Two themes from one set of colours; every text colour has a contrast of at
# least 4.5:1 on the backgrounds it is drawn on (WCAG AA; tests/test_demo_look.py
# computes them, and the browser test checks what Chromium draws).
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

Handler = Callable[[Any, dict[str, str]], "Response"]
Response = tuple[str, list[tuple[str, str]], str]


def _page(session: Any, title: str, body: str) -> Response:
    theme = session.store("prefs").get_default("theme", "light")
    user = session.store("auth").get_default("user")
    who = f"signed in as <b>{html.escape(user)}</b>" if user else "not signed in"
    cart = len(session.store("shop").get_default("cart", []))
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} - sessionstore demo</title>
<style>{_STYLE}</style></head>
<body class="{html.escape(theme)}">
<nav><a href="/">Home</a><a href="/shop">Shop ({cart})</a><a href="/prefs">Preferences</a>
<a href="/session">Session</a></nav>
<p class="note">You are {who}.</p>
<h1>{html.escape(title)}</h1>
{body}
</body></html>"""
    return "200 OK", [("Content-Type", "text/html; charset=utf-8")], doc


def _redirect(location: str) -> Response:
    return (
        "303 See Other",
        [("Location", location), ("Content-Type", "text/plain")],
        "See " + location,
    )


def home(session: Any, form: dict[str, str]) -> Response:
    user = session.store("auth").get_default("user")
    if user:
        account = '<form method="post" action="/logout"><button>Log out</button></form>'
    else:
        account = """<form method="post" action="/login"><label>Name
<input name="user" required></label> <button>Log in</button></form>"""
    body = f"""<p>Three applications share one session cookie, each with its own store:
the <a href="/shop">shop</a> keeps your cart, <a href="/prefs">preferences</a> keep
your theme, and the login keeps your name. <a href="/session">Look inside</a>.</p>
<p>{account}</p>
<p class="note">Logging in gives the session a new id and keeps its data; logging out
destroys it.</p>"""
    return _page(session, "Welcome", body)


def shop(session: Any, form: dict[str, str]) -> Response:
    cart = session.store("shop").get_default("cart", [])
    rows = "".join(
        f"""<tr><td>{html.escape(label)}</td><td><form method="post" action="/shop/add">
<input type="hidden" name="item" value="{name}"><button>Add to cart</button></form></td></tr>"""
        for name, label in PRODUCTS.items()
    )
    items = "".join(f"<li>{html.escape(PRODUCTS.get(i, i))}</li>" for i in cart) or "<li>empty</li>"
    body = f"""<table>{rows}</table><h2>Your cart</h2><ul id="cart">{items}</ul>
<form method="post" action="/shop/empty"><button>Empty the cart</button></form>"""
    return _page(session, "Shop", body)


def shop_add(session: Any, form: dict[str, str]) -> Response:
    item = form.get("item", "")
    if item in PRODUCTS:
        store = session.store("shop")
        # update(), not a read then a set: two tabs adding at once both count.
        # (Store.update lands with the new commit protocol; until then, set.)
        if hasattr(store, "update"):
            store.update("cart", lambda cart: [*cart, item], [])
        else:
            store["cart"] = [*store.get_default("cart", []), item]
    return _redirect("/shop")


def shop_empty(session: Any, form: dict[str, str]) -> Response:
    session.store("shop").empty()
    return _redirect("/shop")


def prefs(session: Any, form: dict[str, str]) -> Response:
    current = session.store("prefs").get_default("theme", "light")
    options = "".join(
        f'<option value="{t}"{" selected" if t == current else ""}>{t}</option>' for t in THEMES
    )
    body = f"""<form method="post" action="/prefs"><label>Theme <select name="theme">{options}
</select></label> <button>Save</button></form>
<p class="note">Stored in the <code>prefs</code> store; the shop cannot see it.</p>"""
    return _page(session, "Preferences", body)


def prefs_save(session: Any, form: dict[str, str]) -> Response:
    if form.get("theme") in THEMES:
        session.store("prefs")["theme"] = form["theme"]
    return _redirect("/prefs")


def login(session: Any, form: dict[str, str]) -> Response:
    user = form.get("user", "").strip()[:40]
    if user:
        session.regenerate()  # a new id at login: the fixation defence
        session.store("auth")["user"] = user
    return _redirect("/")


def logout(session: Any, form: dict[str, str]) -> Response:
    session.destroy()
    return _redirect("/")


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def inspect(session: Any, form: dict[str, str]) -> Response:
    if not session.exists:
        return _page(session, "Session", "<p>No session yet: nothing has been stored.</p>")
    stores = "".join(
        f"<tr><th>{html.escape(app)}</th><td>"
        + "<br>".join(
            f"{html.escape(k)} = {html.escape(repr(v))}" for k, v in session.store(app).items()
        )
        + "</td></tr>"
        for app in sorted(session.apps())
    )
    body = f"""<table>
<tr><th>id</th><td><code id="session-id">{html.escape(session.id)}</code></td></tr>
<tr><th>created</th><td>{_when(session.created_at)}</td></tr>
<tr><th>last access</th><td>{_when(session.accessed_at)}</td></tr>
<tr><th>expires</th><td>{_when(session.expires_at)}</td></tr></table>
<h2>Stores</h2><table>{stores}</table>"""
    return _page(session, "Session", body)


ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "/"): home,
    ("GET", "/shop"): shop,
    ("POST", "/shop/add"): shop_add,
    ("POST", "/shop/empty"): shop_empty,
    ("GET", "/prefs"): prefs,
    ("POST", "/prefs"): prefs_save,
    ("POST", "/login"): login,
    ("POST", "/logout"): logout,
    ("GET", "/session"): inspect,
}


def not_found(session: Any, path: str) -> Response:
    body = f"""<p>There is no page at <code>{html.escape(path)}</code>.</p>
<p><a href="/">Back to the start</a>, or to the <a href="/shop">shop</a>.</p>"""
    _, headers, doc = _page(session, "Page not found", body)
    return "404 Not Found", headers, doc


def demo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO") or "/"
    # HEAD is GET without the body (the same status and headers).
    handler = ROUTES.get(("GET" if method == "HEAD" else method, path))
    if handler is None:
        allowed = {m for m, p in ROUTES if p == path}
        if allowed:
            allowed |= {"HEAD"} if "GET" in allowed else set()
            start_response(
                "405 Method Not Allowed",
                [("Allow", ", ".join(sorted(allowed))), ("Content-Type", "text/plain")],
            )
            return [] if method == "HEAD" else [b"Method not allowed\n"]
        status, headers, body = not_found(environ["session"], path)
    else:
        form: dict[str, str] = {}
        if method == "POST":
            try:
                length = min(int(environ.get("CONTENT_LENGTH") or 0), 10_000)
            except ValueError:
                length = 0
            raw = environ["wsgi.input"].read(length).decode("utf-8", "replace")
            form = {k: v[0] for k, v in parse_qs(raw).items()}
        status, headers, body = handler(environ["session"], form)
    data = body.encode("utf-8")
    start_response(status, [*headers, ("Content-Length", str(len(data)))])
    return [] if method == "HEAD" else [data]


def make_app(global_conf: dict[str, Any], **local_conf: Any) -> Callable[..., Iterable[bytes]]:
    """``paste.app_factory`` for ``use = egg:sessionstore#demo``."""
    if local_conf:
        raise ValueError(f"the demo takes no settings, got {sorted(local_conf)}")
    return demo_app
