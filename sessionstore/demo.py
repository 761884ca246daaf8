"""The demo site: several applications sharing one session cookie.

* ``/shop``: a shop whose cart lives in the ``shop`` store;
* ``/prefs``: preferences in the ``prefs`` store;
* ``/login`` calls ``regenerate()`` (the id changes, the data stays);
* ``/logout`` calls ``destroy()`` (the old cookie is dead);
* ``/session``: what the session holds, store by store.

Served by ``sessionstore serve examples/demo.ini`` (``use = egg:sessionstore#demo``).
Given session settings in its own section, the demo wraps itself in the
session middleware: with no ``secret`` there it takes ``$SESSIONSTORE_SECRET``,
or draws a random one and writes it into the ini's empty ``secret =`` line
(saying so on stderr).  Over https it uses a ``__Host-`` cookie.  Without any
settings it is the bare application, for use under a ``[filter:session]``.

Every form carries a CSRF token.  A visitor with a session has it in the
session (the ``demo`` store); before that it lives in a ``demo_csrf`` cookie
(nothing is stored for a visitor who only looks).  A POST without the right
token is refused (403) before the session is touched, so it stores nothing,
and a failed or empty login creates no session.
"""

from __future__ import annotations

import hmac
import html
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from webob.cookies import make_cookie

from .demostyle import _STYLE, TEXT_ON, THEME_COLOURS, THEMES  # noqa: F401 (tests read them here)
from .middleware import SessionMiddleware

PRODUCTS = {"book": "A book on WSGI", "mug": "A coffee mug", "pen": "A fountain pen"}

CSRF_COOKIE = "demo_csrf"
#: Where the demo site puts itself in the environ (for the user's sessions page).
_SITE_KEY = "sessionstore.demo.site"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")

Handler = Callable[[Any, dict[str, Any]], "Response"]
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


def home(session: Any, form: dict[str, Any]) -> Response:
    user = session.store("auth").get_default("user")
    if user:
        account = f"""<form method="post" action="/logout">{_csrf(form)}
<button>Log out</button></form>"""
    else:
        account = f"""<form method="post" action="/login">{_csrf(form)}<label>Name
<input name="user" required></label> <button>Log in</button></form>"""
    body = f"""<p>Three applications share one session cookie, each with its own store:
the <a href="/shop">shop</a> keeps your cart, <a href="/prefs">preferences</a> keep
your theme, and the login keeps your name. <a href="/session">Look inside</a>.</p>
<p>{account}</p>
<p class="note">Logging in gives the session a new id and keeps its data; logging out
destroys it.</p>"""
    return _page(session, "Welcome", body)


def shop(session: Any, form: dict[str, Any]) -> Response:
    cart = session.store("shop").get_default("cart", [])
    rows = "".join(
        f"""<tr><td>{html.escape(label)}</td><td><form method="post" action="/shop/add">
{_csrf(form)}<input type="hidden" name="item" value="{name}"><button>Add to cart</button>
</form></td></tr>"""
        for name, label in PRODUCTS.items()
    )
    items = "".join(f"<li>{html.escape(PRODUCTS.get(i, i))}</li>" for i in cart) or "<li>empty</li>"
    body = f"""<table>{rows}</table><h2>Your cart</h2><ul id="cart">{items}</ul>
<form method="post" action="/shop/empty">{_csrf(form)}<button>Empty the cart</button></form>"""
    return _page(session, "Shop", body)


def shop_add(session: Any, form: dict[str, Any]) -> Response:
    item = form.get("item", "")
    if item in PRODUCTS:
        _keep_token(session, form)
        # update(), not a read then a set: two tabs adding at once both count.
        session.store("shop").update("cart", lambda cart: [*cart, item], [])
    return _redirect("/shop")


def shop_empty(session: Any, form: dict[str, Any]) -> Response:
    if session.exists:  # emptying nothing must not create a session
        session.store("shop").empty()
    return _redirect("/shop")


def prefs(session: Any, form: dict[str, Any]) -> Response:
    current = session.store("prefs").get_default("theme", "light")
    options = "".join(
        f'<option value="{t}"{" selected" if t == current else ""}>{t}</option>' for t in THEMES
    )
    body = f"""<form method="post" action="/prefs">{_csrf(form)}
<label>Theme <select name="theme">{options}
</select></label> <button>Save</button></form>
<p class="note">Stored in the <code>prefs</code> store; the shop cannot see it.</p>"""
    return _page(session, "Preferences", body)


def prefs_save(session: Any, form: dict[str, Any]) -> Response:
    if form.get("theme") in THEMES:
        _keep_token(session, form)
        session.store("prefs")["theme"] = form["theme"]
    return _redirect("/prefs")


def login(session: Any, form: dict[str, Any]) -> Response:
    user = form.get("user", "").strip()[:40]
    if user:  # an empty login creates no session
        session.regenerate()  # a new id at login: the fixation defence
        _keep_token(session, form)
        session.store("auth")["user"] = user
        session.bind_user(user)  # listed among the user's sessions
    return _redirect("/")


def logout(session: Any, form: dict[str, Any]) -> Response:
    session.destroy()
    return _redirect("/")


def _csrf(form: dict[str, Any]) -> str:
    """The hidden CSRF field of a form."""
    return f'<input type="hidden" name="csrf" value="{html.escape(form["csrf"])}">'


def _keep_token(session: Any, form: dict[str, Any]) -> None:
    """Before a handler's first write: keep the form's token in the session."""
    demo = session.store("demo")
    if "csrf" not in demo:
        demo["csrf"] = form["csrf"]


def _session_token(session: Any) -> str | None:
    if not session.exists:
        return None
    token = session.store("demo").get_default("csrf")
    return token if isinstance(token, str) else None


def _cookie_token(environ: dict[str, Any]) -> str | None:
    header: str = environ.get("HTTP_COOKIE", "")
    for pair in header.split(";"):
        name, _, value = pair.strip().partition("=")
        if name == CSRF_COOKIE and _TOKEN_RE.fullmatch(value):
            return value
    return None


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def inspect(session: Any, form: dict[str, Any]) -> Response:
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
<h2>Stores</h2><table>{stores}</table>{_other_sessions(session, form)}"""
    return _page(session, "Session", body)


def _other_sessions(session: Any, form: dict[str, Any]) -> str:
    """The user's other sessions (other browsers and devices), and a button
    that signs them all out."""
    site = form.get("site")
    user = session.user
    if not isinstance(site, _Site) or user is None:
        return ""
    others = [s for s in site.plain.sessions_of(user) if s.session_id != session.id]
    rows = "".join(
        f"<tr><td>{_when(s.created_at)}</td><td>{_when(s.accessed_at)}</td>"
        f"<td>{html.escape(s.address or '?')}</td><td>{html.escape(s.user_agent[:80])}</td></tr>"
        for s in others
    )
    if not rows:
        return '<h2>Your other sessions</h2><p id="others">None: you are signed in here only.</p>'
    return f"""<h2>Your other sessions</h2><table id="others">
<tr><th>signed in</th><th>last seen</th><th>from</th><th>browser</th></tr>{rows}</table>
<form method="post" action="/session/others">{_csrf(form)}
<button>Sign out everywhere else</button></form>"""


def sign_out_others(session: Any, form: dict[str, Any]) -> Response:
    site = form.get("site")
    if isinstance(site, _Site) and session.user is not None:
        site.plain.destroy_user(session.user, keep=session.id)
    return _redirect("/session")


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
    ("POST", "/session/others"): sign_out_others,
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
        extra: list[tuple[str, str]] = []
    else:
        session = environ["session"]
        token = _session_token(session) or _cookie_token(environ)
        extra = []
        form: dict[str, Any] = {}
        if method == "POST":
            try:
                length = min(int(environ.get("CONTENT_LENGTH") or 0), 10_000)
            except ValueError:
                length = 0
            raw = environ["wsgi.input"].read(length).decode("utf-8", "replace")
            form = {k: v[0] for k, v in parse_qs(raw).items()}
            sent = form.get("csrf", "").encode("utf-8")
            if token is None or not hmac.compare_digest(sent, token.encode("ascii")):
                # Refused before any write: a forged or anonymous POST stores nothing.
                start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"The form's token is missing or stale: reload the page and try again.\n"]
        elif token is None:
            token = secrets.token_urlsafe(32)
            https = environ.get("wsgi.url_scheme") == "https"
            cookie = make_cookie(
                CSRF_COOKIE, token, path="/", secure=https, httponly=True, samesite="Strict"
            )
            extra.append(("Set-Cookie", cookie))
        form["csrf"] = token
        status, headers, body = handler(session, {**form, "site": environ.get(_SITE_KEY)})
    data = body.encode("utf-8")
    start_response(status, [*headers, *extra, ("Content-Length", str(len(data)))])
    return [] if method == "HEAD" else [data]


class _Site:
    """The demo behind two session middlewares on one backend: over https the
    cookie is ``__Host-`` prefixed (Secure, host-only, ``Path=/``)."""

    def __init__(self, plain: SessionMiddleware, https: SessionMiddleware | None) -> None:
        self.plain = plain
        self.https = https
        #: What tools that walk a pipeline find (``serve --stats``): both
        #: middlewares share one backend; this one counts plain http.
        self.app = plain

    def close(self) -> None:
        """Close the backend both middlewares share."""
        self.plain.close()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ[_SITE_KEY] = self
        if self.https is not None and environ.get("wsgi.url_scheme") == "https":
            return self.https(environ, start_response)
        return self.plain(environ, start_response)


def make_app(global_conf: dict[str, Any], **local_conf: Any) -> Callable[..., Iterable[bytes]]:
    """``paste.app_factory`` for ``use = egg:sessionstore#demo``.

    Without settings: the bare application (put a session filter in front).
    With session settings (the keys of ``egg:sessionstore#session``): the
    whole site, its secret from the ini, ``$SESSIONSTORE_SECRET`` or drawn now.
    """
    if not local_conf:
        return demo_app
    from .paste import split_ini

    conf = dict(local_conf)
    conf["secret"] = _secret(conf.get("secret", ""), global_conf.get("__file__"))
    kwargs = split_ini(conf)
    plain = SessionMiddleware(demo_app, **kwargs)
    name = plain.settings.cookie_name
    if name.startswith("__") or plain.settings.cookie_domain or plain.settings.cookie_path != "/":
        return _Site(plain, None)
    kwargs.update(backend=plain.backend, backend_options=None, cookie_name="__Host-" + name)
    return _Site(plain, SessionMiddleware(demo_app, **kwargs))


def _secret(configured: str, ini: str | None) -> str:
    """The demo's secret: the ini's, the environment's, or a fresh one that is
    written into the ini's empty ``secret =`` line (the file becomes 0600)."""
    if configured.strip():
        return configured
    from_env = os.environ.get("SESSIONSTORE_SECRET", "").strip()
    if from_env:
        print("demo: using the secret from $SESSIONSTORE_SECRET", file=sys.stderr, flush=True)
        return from_env
    secret = secrets.token_urlsafe(32)
    if ini and _write_secret(ini, secret):
        print(f"demo: wrote a new random secret into {ini}", file=sys.stderr, flush=True)
    else:
        print(
            "demo: no secret configured; using a random one until the server stops",
            file=sys.stderr,
            flush=True,
        )
    return secret


def _write_secret(ini: str, secret: str) -> bool:
    """Fill the one empty ``secret =`` line of ``ini``; False when there is none."""
    with open(ini, encoding="utf-8") as file:
        text = file.read()
    filled, count = re.subn(r"(?m)^secret[ \t]*=[ \t]*$", f"secret = {secret}", text)
    if count != 1:
        return False
    # A temp file beside it, then rename: the ini is never half-written.
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(ini)), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp makes it 0600
            file.write(filled)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, ini)
    except BaseException:
        os.unlink(temp)
        raise
    return True
