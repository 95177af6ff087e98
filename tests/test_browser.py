"""The panel and the demo in headless Chromium (Debian's chromium, driven by Playwright).

Never ``playwright install``: the browser is the system's ``/usr/bin/chromium`` (``apt-get install
chromium``), given to Playwright as ``executable_path``. When it is missing the tests are skipped
with the reason; CI installs it. Screenshots go to ``QUOTA_SCREENSHOT_DIR`` when set (``docs/``
keeps the ones the README shows), else to the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from quota_server import get_quota

from .api_support import ADMIN, SERVICE, bearer, live_server, user_token

CHROMIUM = os.environ.get("QUOTA_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SYS, CUS = "system_deepseek", "custom_llama"

HAVE_CHROMIUM = os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is not None
# CI sets QUOTA_REQUIRE_BROWSER=1: there a missing browser fails the run instead of skipping.
REQUIRED = os.environ.get("QUOTA_REQUIRE_BROWSER") == "1"
if REQUIRED:
    assert HAVE_CHROMIUM, f"QUOTA_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM}"
    import playwright.sync_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = [
    pytest.mark.skipif(not HAVE_CHROMIUM, reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium (CI does)"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def server(redis_server, clock):
    redis_server.client().flushall()
    s = live_server(redis_server.url, clock, QUOTA_DEMO="1", QUOTA_PANEL_REFRESH_S="1")
    yield s
    s.stop()


@pytest.fixture
def shots(tmp_path) -> Path:
    where = Path(os.environ.get("QUOTA_SCREENSHOT_DIR") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


def api(server, method, path, token=SERVICE, **body):
    import json
    import urllib.request

    request = urllib.request.Request(
        server.url + path,
        method=method,
        headers=bearer(token) | {"Content-Type": "application/json"},
        data=json.dumps(body).encode() if body else None,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


CUSTOM_PRICE = {"cost_per_1k_input": "0.004", "cost_per_1k_output": "0.008"}


def post_usage(server, user, model, tokens_in, tokens_out=0, **cache):
    price = {"price": CUSTOM_PRICE} if model.startswith("custom") else {}
    price.update(cache)  # cached_input_tokens, cache_write_tokens
    return api(
        server,
        "POST",
        "/v1/usage",
        user=user,
        model_id=model,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        **price,
    )


# Recorded before any page script runs (an init script is injected by the browser, not by the page,
# so the page's own CSP does not apply to it): every directive the Content-Security-Policy blocked.
WATCH_CSP = """document.addEventListener("securitypolicyviolation", (e) => {
  (window.__cspViolations = window.__cspViolations || []).push(e.violatedDirective + " " + e.blockedURI);
});"""


def open_page(browser, **options):
    """A new tab that records CSP violations (read them with csp_violations). Predicates given to
    wait_for_function are written as functions: Playwright polls a bare expression string with
    eval, which the pages' CSP (no 'unsafe-eval') refuses."""
    page = browser.new_page(**options)
    page.add_init_script(WATCH_CSP)
    return page


def csp_violations(page) -> list[str]:
    return page.evaluate("window.__cspViolations || []")


def loads(page) -> int:
    return int(page.get_attribute("body", "data-loaded") or 0)


def wait_for_refresh(page, after: int) -> None:
    page.wait_for_function("(after) => Number(document.body.dataset.loaded || 0) > after", arg=after, timeout=10_000)


def check_panel_against_api(page, stats) -> None:
    percent = page.locator("#percent")
    assert float(percent.inner_text().rstrip("%")) == stats["percent_used"]
    width = page.eval_on_selector("#bar-fill", "e => e.style.width")
    assert float(width.rstrip("%")) == min(stats["percent_used"], 100)
    assert float(page.get_attribute("#used", "data-value")) == stats["monthly_used"]
    assert float(page.get_attribute("#credit", "data-value")) == stats["monthly_credit"]
    assert float(page.get_attribute("#remaining", "data-value")) == stats["remaining"]
    assert float(page.get_attribute("#held", "data-value")) == stats["held"]
    assert float(page.get_attribute("#available", "data-value")) == stats["available"]
    assert page.get_attribute("#resets", "data-value") == stats["resets_at"]
    rows = page.locator("#models tbody tr[data-model]")
    assert rows.count() == len(stats["models"])
    for model_id, m in stats["models"].items():
        row = page.locator(f'#models tbody tr[data-model="{model_id}"]')
        values = [float(v) for v in row.locator("td[data-value]").evaluate_all("cs => cs.map(c => c.dataset.value)")]
        assert values == [m["input_tokens"], m["output_tokens"], m["calls"], m["cost"]]
        cache = row.locator("td.cached")  # the input figure, marked when part of it hit or wrote the cache
        if m["cached_input_tokens"] or m["cache_write_tokens"]:
            assert cache.get_attribute("data-cached") == str(m["cached_input_tokens"])
            assert cache.get_attribute("data-cache-write") == str(m["cache_write_tokens"])
            assert cache.get_attribute("title")
        else:
            assert cache.count() == 0
        line = page.locator(f'#models tbody tr[data-purposes-of="{model_id}"] td')
        if m["purposes"]:  # the small per-purpose line under the model's row
            assert json.loads(line.get_attribute("data-value")) == m["purposes"]
        else:
            assert line.count() == 0
    months = page.locator("#history tbody tr").evaluate_all("rs => rs.map(r => r.dataset.month)")
    assert months == list(stats["history"])  # newest first, as the API gives them
    for month, models in stats["history"].items():
        cells = page.locator(f'#history tbody tr[data-month="{month}"] td[data-value]')
        got = [float(v) for v in cells.evaluate_all("cs => cs.map(c => c.dataset.value)")]
        want = [
            sum(m["input"] for m in models.values()),
            sum(m["output"] for m in models.values()),
            sum(m["calls"] for m in models.values()),
            sum(m["cost"] for m in models.values() if m["is_system"]),
            sum(m["cost"] for m in models.values() if not m["is_system"]),
        ]
        assert got == pytest.approx(want, abs=1e-9)
    assert page.locator("#chart g.bar-group").count() == len(stats["history"])


def bar_level(page) -> str:
    return page.get_attribute("#bar", "class").replace("bar", "").strip()


def wait_for_fill_colour(page, rgb: str) -> None:
    """The bar's computed colour (after its CSS transition): green, amber or red."""
    page.wait_for_function(
        "(rgb) => getComputedStyle(document.getElementById('bar-fill')).backgroundColor === rgb",
        arg=rgb,
        timeout=10_000,
    )


def test_panel_matches_the_api_and_follows_it_without_reloading(browser, server, clock, shots):
    for month, spend in (((2025, 11, 10), 3_000_000), ((2025, 12, 10), 4_400_000)):
        clock.set(*month)
        post_usage(server, "alice", SYS, spend, 100_000)
        post_usage(server, "alice", CUS, 50_000, 20_000)
    clock.set(2026, 1, 15, 12, 0, 0)
    post_usage(server, "alice", SYS, 2_000_000, 250_000)  # 2.5 CNY: 50 %
    post_usage(server, "alice", CUS, 80_000, 9_000, cached_input_tokens=60_000, cache_write_tokens=1_000)

    page = open_page(browser, locale="en-US", viewport={"width": 960, "height": 1200})
    page.goto(f"{server.url}/panel#user=alice&token={user_token('alice')}")
    page.wait_for_function("() => Number(document.body.dataset.loaded || 0) > 0", timeout=10_000)
    assert "token=" not in page.url  # the token is wiped from the address bar
    stats = api(server, "GET", "/v1/users/alice/token-stats")
    assert stats["percent_used"] == 50.0
    check_panel_against_api(page, stats)
    assert bar_level(page) == "level-ok"
    wait_for_fill_colour(page, "rgb(22, 163, 74)")
    assert page.locator("#resets").inner_text().startswith("2026-02-01")
    assert page.locator('#models tr[data-model="custom_llama"] td.kind').inner_text() == "custom · counted, not limited"
    assert page.locator('#models tr[data-model="system_deepseek"] td.kind').inner_text() == "system"
    assert page.locator('#models tr[data-model="custom_llama"] td.cached').get_attribute("title") == (
        "of which 60,000 cache hits and 1,000 cache writes, priced at their own rates"
    )
    assert page.inner_text("h1") == "Token usage"
    assert page.locator("#over-note").is_hidden()

    seen = loads(page)
    post_usage(server, "alice", SYS, 1_700_000)  # 4.2 CNY: 84 %, amber
    wait_for_refresh(page, seen)
    page.wait_for_function("() => document.getElementById('bar').classList.contains('level-warn')", timeout=10_000)
    check_panel_against_api(page, api(server, "GET", "/v1/users/alice/token-stats"))
    wait_for_fill_colour(page, "rgb(245, 158, 11)")
    assert page.locator("#warn-note").inner_text() == "You have used 80% of this month's system-model credit."
    page.screenshot(path=str(shots / "panel.png"), full_page=True, animations="disabled")

    post_usage(server, "alice", SYS, 1_000_000)  # 5.2 CNY: over
    page.wait_for_function("() => document.getElementById('bar').classList.contains('level-over')", timeout=10_000)
    stats = api(server, "GET", "/v1/users/alice/token-stats")
    wait_for_refresh(page, loads(page))
    check_panel_against_api(page, stats)
    assert stats["percent_used"] > 100 and page.locator("#over-note").is_visible()
    assert stats["alerted_threshold"] == 100 and page.locator("#warn-note").is_hidden()  # the over-note says it
    wait_for_fill_colour(page, "rgb(220, 38, 38)")
    assert csp_violations(page) == []  # the bar's width and the SVG chart are set from JS, not inline
    page.close()


def test_panel_shows_the_part_held_by_replies_in_progress(browser, server, redis_server, clock, shots):
    """Turn holds (issue 9): the bar shows the held part after the spent part, and both figures."""
    from quota import Meter

    post_usage(server, "hana", SYS, 1_000_000)  # 1 of 5 CNY spent: 20 %
    meter = Meter.from_url(redis_server.url, clock=clock, history=None, prefix="apitest")  # the app's prefix
    turn = meter.turn("hana", SYS, hold="1.5")  # a reply in progress holds 1.5
    turn.__enter__()
    try:
        page = browser.new_page(locale="en-US")
        page.goto(f"{server.url}/panel#user=hana&token={user_token('hana')}")
        page.wait_for_function("Number(document.body.dataset.loaded || 0) > 0", timeout=10_000)
        stats = api(server, "GET", "/v1/users/hana/token-stats")
        assert (stats["held"], stats["available"]) == (1.5, 2.5)
        check_panel_against_api(page, stats)
        assert page.eval_on_selector("#bar-held", "e => e.style.width") == "30%"
        assert "1.5" in page.locator("#held").inner_text()
        page.screenshot(path=str(shots / "panel-held.png"), animations="disabled")
        seen = loads(page)
        turn.__exit__(None, None, None)  # the reply ends: the hold is given back
        wait_for_refresh(page, seen)
        page.wait_for_function("document.getElementById('bar-held').style.width === '0%'", timeout=10_000)
        assert float(page.get_attribute("#held", "data-value")) == 0
        page.close()
    finally:
        turn.__exit__(None, None, None)
        meter.close()


def test_panel_shows_the_users_grants(browser, server, clock, shots):
    """Grants (issue 12): the card lists them, live first, and the facts show what is left of them."""
    page = open_page(browser, locale="en-US")
    page.goto(f"{server.url}/panel#user=gina&token={user_token('gina')}")
    page.wait_for_function("() => Number(document.body.dataset.loaded || 0) > 0", timeout=10_000)
    assert page.is_hidden("#grants-card") and page.is_hidden("#grants-fact")  # no grants: nothing shown
    api(server, "POST", "/v1/users/gina/grants", token=ADMIN, amount=1, grant_id="order-7", reason="order 7")
    api(
        server,
        "POST",
        "/v1/users/gina/grants",
        token=ADMIN,
        amount=2,
        grant_id="promo",
        expires_at="2026-01-20T00:00:00Z",
    )
    post_usage(server, "gina", SYS, 5_500_000)  # 5.5 CNY: 0.5 past the credit, drawn from promo (expires first)
    wait_for_refresh(page, loads(page))
    page.wait_for_function("() => !document.getElementById('grants-card').hidden", timeout=10_000)
    rows = page.locator("#grants tbody tr")
    assert [rows.nth(i).get_attribute("data-grant") for i in range(rows.count())] == ["promo", "order-7"]
    promo = rows.nth(0).locator("td")
    assert promo.nth(2).get_attribute("data-value") == "1.5" and promo.nth(3).get_attribute("data-value") == "2"
    assert "2026-01-20 00:00" in promo.nth(4).inner_text()
    assert "never" in rows.nth(1).locator("td").nth(4).inner_text()
    assert float(page.get_attribute("#grants-left", "data-value")) == 2.5
    assert page.is_visible("#grants-note") and page.is_hidden("#over-note")  # past the credit, on grants
    stats = api(server, "GET", "/v1/users/gina/token-stats")
    assert stats["available"] == 2.5
    check_panel_against_api(page, stats)
    page.screenshot(path=str(shots / "panel-grants.png"), full_page=True, animations="disabled")
    assert csp_violations(page) == []
    page.close()


@pytest.mark.parametrize("written", ["alice+work@corp.com", "alice%2Bwork%40corp.com"])
def test_panel_reads_a_plus_in_the_user_id_as_a_plus(browser, server, written):
    """Issue 15: the fragment was parsed as a query string, so "+" became a space (an invalid id)."""
    post_usage(server, "alice+work@corp.com", SYS, 1_000_000)
    page = browser.new_page(locale="en-US")
    page.goto(f"{server.url}/panel#user={written}&token={user_token('alice+work@corp.com')}")
    page.wait_for_function("() => Number(document.body.dataset.loaded || 0) > 0", timeout=10_000)
    assert float(page.get_attribute("#used", "data-value")) == 1.0
    page.close()


def test_panel_in_chinese(browser, server):
    post_usage(server, "bob", CUS, 1000, 1000)
    page = open_page(browser, locale="zh-CN")
    page.goto(f"{server.url}/panel#user=bob&token={user_token('bob')}")
    page.wait_for_function("() => Number(document.body.dataset.loaded || 0) > 0", timeout=10_000)
    assert page.inner_text("h1") == "Token 用量"
    assert page.locator('#models tr[data-model="custom_llama"] td.kind').inner_text() == "自定义 · 仅计数，不限额"
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    assert csp_violations(page) == []
    page.close()


def test_panel_explains_a_missing_foreign_expired_or_revoked_token(browser, server):
    carl = user_token("carl")
    api(server, "POST", "/v1/users/carl/tokens/revoke", token=ADMIN)
    cases = [
        ("", "quota serve"),
        (f"#user=bob&token={user_token('alice')}", "may not read"),
        (f"#user=alice&token={user_token('alice', ttl_s=5, now_s=1000)}", "expired"),
        (f"#user=carl&token={carl}", "was revoked"),
    ]
    for fragment, text in cases:
        page = open_page(browser, locale="en-US")  # a fresh tab each: sessionStorage is per tab
        page.goto(f"{server.url}/panel{fragment}")
        page.wait_for_function("() => !document.getElementById('alert').hidden", timeout=10_000)
        assert text in page.locator("#alert").inner_text()
        assert page.locator("#models tbody tr").count() == 0 and csp_violations(page) == []
        page.close()


def send(page, text: str) -> None:
    turns = int(page.get_attribute("body", "data-turns") or 0)
    page.fill("#message", text)
    page.click("#send")
    page.wait_for_function("(turns) => Number(document.body.dataset.turns || 0) > turns", arg=turns, timeout=10_000)


def demo_stats(server, user):
    """A demo user's stats: the demo lives under its own key prefix, apart from real users."""
    return api(server, "GET", f"/demo/users/{user}/token-stats")


def test_demo_chat_until_quota_exceeded_then_custom_model_keeps_working(browser, server, shots):
    get_quota(server.app).demo_meter.set_monthly_credit("demo-ann", "0.6")
    page = open_page(browser, locale="en-US", viewport={"width": 900, "height": 900})
    page.goto(f"{server.url}/demo#user=demo-ann")
    assert page.input_value("#user") == "demo-ann"
    replies = 0
    for number in range(1, 30):
        send(page, f"Question {number}: what does the metering record?")
        if page.locator(".msg.quota-exceeded").count():
            break
        replies += 1
        assert page.locator(".msg.assistant").count() == replies
        assert page.locator(".msg.assistant").last.locator("li[data-purpose]").count() == (4 if number == 1 else 3)
    notice = page.locator(".msg.quota-exceeded")
    assert notice.count() == 1 and "custom models keep working" in notice.inner_text()
    warnings = page.locator(".msg.quota-warning")  # 80% and 100%, each shown once, under the reply that crossed it
    assert sorted(warnings.nth(i).get_attribute("data-threshold") for i in range(warnings.count())) == ["100", "80"]
    assert "Credit alert" in warnings.first.inner_text()
    assert notice.get_attribute("data-resets-at") == "2026-02-01T00:00:00Z"
    stats = demo_stats(server, "demo-ann")
    assert stats["exceeded"] and stats["monthly_used"] > 0.6  # the reply that crossed the credit finished
    assert stats["models"][SYS]["calls"] == 3 * replies + 1 and replies >= 2
    page.screenshot(path=str(shots / "demo.png"), full_page=True, animations="disabled")

    page.select_option("#model", "custom_demo")
    send(page, "And on my own model?")
    assert page.locator(".msg").last.get_attribute("class") == "msg assistant"
    assert demo_stats(server, "demo-ann")["models"]["custom_demo"]["calls"] == 3
    assert api(server, "GET", "/v1/users/demo-ann/token-stats")["models"] == {}  # no real user was touched
    assert csp_violations(page) == []
    page.close()


def test_the_panel_follows_the_demo_chat_without_a_token(browser, server):
    chat = open_page(browser, locale="en-US")
    chat.goto(f"{server.url}/demo#user=demo-kim")
    assert chat.get_attribute("#panel-link", "href") == "/panel#demo=1&user=demo-kim"
    send(chat, "hello")
    panel = open_page(browser, locale="en-US")
    panel.goto(f"{server.url}/panel#demo=1&user=demo-kim")
    panel.wait_for_function("() => Number(document.body.dataset.loaded || 0) > 0", timeout=10_000)
    assert "demo-kim" in panel.inner_text("#who") and panel.locator("#alert").is_hidden()
    check_panel_against_api(panel, demo_stats(server, "demo-kim"))
    send(chat, "and again")
    stats = demo_stats(server, "demo-kim")
    assert stats["models"][SYS]["calls"] == 7
    wait_for_refresh(panel, loads(panel) + 1)  # a load whose request started after this point
    check_panel_against_api(panel, stats)
    assert csp_violations(chat) == [] and csp_violations(panel) == []
    chat.close()
    panel.close()


def test_the_csp_blocks_injected_inline_script_and_the_pages_need_none(browser, server):
    """The check above can fail: an inline script added to the page is refused and recorded."""
    page = open_page(browser, locale="en-US")
    response = page.goto(f"{server.url}/demo#user=demo-eve")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert csp_violations(page) == []
    page.evaluate("""() => { const s = document.createElement("script");
                             s.textContent = "window.injected = 1"; document.body.append(s); }""")
    page.wait_for_function("() => (window.__cspViolations || []).length > 0", timeout=10_000)
    assert page.evaluate("window.injected") is None
    assert csp_violations(page)[0].startswith("script-src")
    page.close()


def test_enter_in_the_demo_settings_does_not_reload_the_page(browser, server):
    """The settings form was kept from submitting by an inline onsubmit, which the CSP now
    forbids; demo.js does it instead."""
    page = open_page(browser, locale="en-US")
    page.goto(f"{server.url}/demo#user=demo-ann")
    page.evaluate("window.stayed = true")
    page.fill("#user", "demo-bob")
    page.press("#user", "Enter")
    page.wait_for_timeout(300)
    assert page.evaluate("window.stayed") is True and "?" not in page.url
    assert csp_violations(page) == []
    page.close()


# --- the operator's view (/admin) ----------------------------------------------------------------------


def fill_month(server) -> None:
    """Ten users in January 2026: two over the credit, one at 84 %, the rest below; custom models too."""
    for i, spend in enumerate((5_600_000, 5_100_000, 4_200_000, 3_000_000, 2_100_000, 1_500_000, 900_000)):
        post_usage(server, f"user{i}", SYS, spend, 50_000)
    for i, tokens in enumerate((400_000, 90_000, 30_000)):
        post_usage(server, f"dev{i}", CUS, tokens, tokens // 2)
    post_usage(server, "user3", CUS, 120_000, 40_000, cached_input_tokens=90_000, cache_write_tokens=5_000)


def admin_loaded(page, after: int = 0) -> None:
    page.wait_for_function("(after) => Number(document.body.dataset.loaded || 0) > after", arg=after, timeout=15_000)


def test_admin_page_shows_the_month_and_downloads_its_csv(browser, server, shots):
    fill_month(server)
    summary = api(server, "GET", "/v1/admin/months/2026-01/summary", token=ADMIN)
    page = open_page(browser, locale="en-US", viewport={"width": 1160, "height": 1000}, accept_downloads=True)
    page.goto(f"{server.url}/admin#token={ADMIN}&month=2026-01")
    admin_loaded(page)
    assert ADMIN not in page.url  # the token is wiped from the address bar
    assert page.inner_text("h1") == "Operator's view" and page.input_value("#month-pick") == "2026-01"
    value = lambda sel: page.get_attribute(sel, "data-value")  # noqa: E731
    assert value("#t-users") == str(summary["users"]) == "10"
    assert float(value("#t-cost")) == summary["cost"] and float(value("#t-system")) == summary["system_cost"]
    assert value("#t-over80") == "3" and value("#t-over100") == "2"
    models = page.locator("#models tbody tr")
    assert [models.nth(i).get_attribute("data-model") for i in range(models.count())] == list(summary["models"])
    assert page.locator("#mix g.mix-row").count() == len(summary["models"])
    top = page.locator("#top tbody tr")
    assert [top.nth(i).get_attribute("data-user") for i in range(3)] == ["user0", "user1", "user2"]
    user3 = page.locator('#top tr[data-user="user3"]')  # its cache hits and writes, in their columns
    assert user3.locator("td.cache-hits").get_attribute("data-value") == "90000"
    assert user3.locator("td.cache-writes").inner_text() == "5,000" and top.locator("td.cache-hits").count() == 10
    near = page.locator("#near tbody tr")
    assert [near.nth(i).get_attribute("data-user") for i in range(near.count())] == ["user0", "user1", "user2"]
    assert near.nth(0).get_attribute("class") == "level-over" and near.nth(2).get_attribute("class") == "level-warn"
    page.screenshot(path=str(shots / "admin.png"), full_page=True, animations="disabled")

    with page.expect_download() as download:
        page.click("#csv")
    assert download.value.suggested_filename == "quota-2026-01.csv"
    text = Path(download.value.path()).read_text(encoding="utf-8")
    lines = text.strip().splitlines()
    assert lines[0].startswith("month,user,model_id,") and len(lines) == 1 + 11  # 10 users, user3 on two models

    page.fill("#month-pick", "2025-12")  # an empty month
    page.dispatch_event("#month-pick", "change")
    page.wait_for_function("() => document.body.dataset.month === '2025-12'", timeout=15_000)
    assert value("#t-users") == "0" and page.locator("#models-empty").is_visible()
    assert csp_violations(page) == []
    page.close()


def test_admin_page_in_chinese_and_without_the_admin_token(browser, server):
    fill_month(server)
    page = open_page(browser, locale="zh-CN")
    page.goto(f"{server.url}/admin#token={ADMIN}&month=2026-01")
    admin_loaded(page)
    assert page.inner_text("h1") == "运营总览" and page.title() == "运营总览"
    assert "接近或超出额度" in page.inner_text("body") and "下载 CSV" in page.inner_text("#csv")
    assert csp_violations(page) == []
    page.close()
    for fragment, message in (("", "/admin#token="), (f"#token={SERVICE}", "QUOTA_ADMIN_TOKEN")):
        page = open_page(browser, locale="en-US")
        page.goto(f"{server.url}/admin{fragment}")
        page.wait_for_function("() => !document.getElementById('alert').hidden", timeout=10_000)
        assert message in page.inner_text("#alert")
        page.close()
