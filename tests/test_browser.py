"""The demo in a real browser: Debian's headless Chromium, driven by Selenium.

Log in, add to the cart from two tabs at once, change the theme, log out,
with a screenshot of each step (in ``$SESSIONSTORE_SCREENSHOTS`` when set,
else the test's tmp_path).  Skips where Chromium or its driver is missing,
except with ``CI=true``, where that is a failure.

The two tabs' requests meet at a barrier inside the server after each has
read the cart, so they always overlap: both read the same cart and both
commit, and the second commit must not lose the first one's item.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from paste.deploy import loadapp
from webtest.http import StopableWSGIServer

from .conftest import IN_CI, ROOT
from .test_demo_look import contrast

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 30  # seconds, for any page to show what it should

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture
def site(tmp_path):
    """The demo ini served in this process, two cart additions held at a barrier."""
    ini = tmp_path / "demo.ini"
    shutil.copy(ROOT / "examples" / "demo.ini", ini)
    site_app = loadapp(f"config:{ini}")  # the demo behind its session middleware(s)
    middleware = site_app.plain  # the one plain http goes through
    meeting = threading.Barrier(2, timeout=WAIT)
    demo = middleware.app

    def two_at_once(environ, start_response):
        if environ["PATH_INFO"] == "/shop/add":
            # Both requests read the cart before either goes on to write it.
            environ["session"].store("shop").get_default("cart")
            meeting.wait()  # BrokenBarrierError (a 500) if the other tab never came
        return demo(environ, start_response)

    middleware.app = two_at_once
    server = StopableWSGIServer.create(site_app, threads=4)
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.shutdown()
        site_app.close()


def _chromium(profile: Path, agent: str | None = None):
    """A headless Chromium with a profile (its own cookies) of its own."""
    problem = _missing()
    if problem:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root, in a container
        "--disable-dev-shm-usage",
        "--window-size=1000,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    if agent:
        options.add_argument(f"--user-agent={agent}")
    # Navigation is waited for by the test itself: a click on "Add to cart"
    # must return while its request is still held at the barrier.
    options.page_load_strategy = "none"
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    return driver


@pytest.fixture
def browser(tmp_path):
    driver = _chromium(tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("SESSIONSTORE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Page:
    """Helpers over one driver: open, wait for, click, read, screenshot."""

    def __init__(self, driver, base: str, shots: Path) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.base = base
        self.shots = shots
        self.wait = WebDriverWait(driver, WAIT)

    def open(self, path: str, shows: str) -> None:
        self.leaving()
        self.driver.get(self.base + path)
        self.until_shows(shows)

    def click(self, element, shows: str) -> None:
        """Click something that loads a page, and wait for that page."""
        self.leaving()
        element.click()
        self.until_shows(shows)

    def leaving(self) -> None:
        # Marks this document: the next page is the one without the mark (the
        # old page may show the awaited text too, and go stale under the test).
        self.driver.execute_script("window.__leaving = true")

    def until_shows(self, text: str) -> None:
        def shown(driver):
            try:
                state = driver.execute_script(
                    "return window.__leaving ? 'old' : document.readyState"
                )
                return state == "complete" and text in driver.find_element("tag name", "body").text
            except Exception:  # the page is being replaced
                return False

        self.wait.until(shown, f"the page never showed {text!r}")

    def button(self, label: str, within: str = "body"):
        for element in self.driver.find_elements("css selector", f"{within} button"):
            if element.text == label:
                return element
        raise AssertionError(f"no button {label!r} in {within}")

    def cart(self) -> list[str]:
        return [li.text for li in self.driver.find_elements("css selector", "#cart li")]

    def shot(self, name: str) -> None:
        assert self.driver.save_screenshot(str(self.shots / f"{name}.png"))

    def contrasts(self) -> dict[str, float]:
        """Contrast of each visible text element against what is drawn behind it."""
        found = self.driver.execute_script(
            """
            const out = [];
            const selector = "nav a, h1, h2, p, .note, td, th, li, button, select, label, code";
            for (const el of document.querySelectorAll(selector)) {
              if (!el.offsetParent) continue;
              let bg = null;
              for (let n = el; n; n = n.parentElement) {
                const c = getComputedStyle(n).backgroundColor;
                if (c && c !== "rgba(0, 0, 0, 0)" && c !== "transparent") { bg = c; break; }
              }
              out.push([el.tagName + "." + el.className + " " + el.textContent.trim().slice(0, 20),
                        getComputedStyle(el).color, bg || "rgb(255, 255, 255)"]);
            }
            return out;
            """
        )
        return {name: contrast(_hex(fg), _hex(bg)) for name, fg, bg in found}


def _hex(css: str) -> str:
    r, g, b = (int(v) for v in re.findall(r"\d+", css)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def test_a_visit_in_chromium(site, browser, shots):
    page = Page(browser, site, shots)
    page.open("/", "not signed in")
    page.shot("1-home")
    low = {k: v for k, v in page.contrasts().items() if v < 4.5}
    assert not low, f"light theme text below 4.5:1: {low}"

    # Log in.
    browser.find_element("css selector", "input[name=user]").send_keys("ada")
    page.click(page.button("Log in"), "signed in as ada")
    page.shot("2-logged-in")

    # Two tabs on the shop; each adds a different item, at once.
    page.open("/shop", "Your cart")
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    second = browser.current_window_handle
    page.open("/shop", "Your cart")
    page.leaving()
    page.button("Add to cart", "tr:nth-child(2)").click()  # the mug, held at the barrier
    browser.switch_to.window(first)
    page.leaving()
    page.button("Add to cart", "tr:nth-child(1)").click()  # the book: both go on
    for handle in (first, second):
        browser.switch_to.window(handle)
        page.until_shows("Empty the cart")
    browser.switch_to.window(second)
    page.shot("3-second-tab-after-adding")
    browser.switch_to.window(first)
    page.open("/shop", "Your cart")
    page.shot("4-first-tab-reloaded")
    cart = sorted(page.cart())
    assert cart == ["A book on WSGI", "A coffee mug"]  # update(): both adds land
    page.until_shows(f"Shop ({len(cart)})")

    # The dark theme, as stored in the prefs store, on every page.
    page.open("/prefs", "Theme")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("css selector", "select[name=theme]")).select_by_value("dark")
    page.click(page.button("Save"), "Theme")
    assert browser.find_element("tag name", "body").get_attribute("class") == "dark"
    page.shot("5-prefs-dark")
    for path, shows in (("/shop", "Your cart"), ("/", "signed in"), ("/nosuch", "no page")):
        page.open(path, shows)
        assert browser.find_element("tag name", "body").get_attribute("class") == "dark"
        low = {k: v for k, v in page.contrasts().items() if v < 4.5}
        assert not low, f"dark theme text below 4.5:1 on {path}: {low}"
    page.shot("6-not-found-dark")
    page.open("/shop", "Your cart")
    page.shot("7-shop-dark")

    # Log out: the session is gone, and its cookie with it.
    page.open("/", "signed in as ada")
    page.click(page.button("Log out"), "not signed in")
    page.shot("8-logged-out")
    # The session cookie is gone (the anonymous CSRF cookie stays: it holds nothing).
    assert [c["name"] for c in browser.get_cookies() if c["name"] != "demo_csrf"] == []
    page.open("/shop", "Shop (0)")
    assert page.cart() == ["empty"]


def test_signing_out_everywhere_else_from_another_browser(site, tmp_path, shots):
    """Two browsers (two profiles: two cookie jars) sign in as one user; the
    laptop sees the phone under "Your other sessions" and signs it out."""
    laptop_driver = _chromium(tmp_path / "laptop", "LaptopBrowser/1.0")
    try:
        phone_driver = _chromium(tmp_path / "phone", "PhoneBrowser/2.0")
        try:
            laptop, phone = Page(laptop_driver, site, shots), Page(phone_driver, site, shots)
            for page, driver in ((phone, phone_driver), (laptop, laptop_driver)):
                page.open("/", "not signed in")
                driver.find_element("css selector", "input[name=user]").send_keys("ada")
                page.click(page.button("Log in"), "signed in as ada")
            laptop.open("/session", "Your other sessions")
            laptop.shot("9-other-sessions")
            others = laptop_driver.find_element("css selector", "#others").text
            assert "PhoneBrowser/2.0" in others and "LaptopBrowser/1.0" not in others
            laptop.click(laptop.button("Sign out everywhere else"), "signed in here only")
            laptop.shot("10-signed-out-elsewhere")
            phone.open("/", "not signed in")  # the phone's session is gone
            phone.shot("11-phone-signed-out")
            laptop.open("/", "signed in as ada")  # the laptop's is not
        finally:
            phone_driver.quit()
    finally:
        laptop_driver.quit()
