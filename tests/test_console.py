"""The SRE console: its endpoints over HTTP, then the page itself in a real headless Chromium
against a running gateway: it renders the routes, a percent set in the page routes real requests,
its rollback button works, and it says so when the daemon goes away. Screenshots are saved for review."""

import contextlib
import gzip
import json
import threading
import time
import urllib.error
import urllib.request

import openai

from gateway.gateway import GATEWAY
from tests.browser import screenshot
from tests.conftest import UPSTREAM_KEY
from tests.support import wait_until

TOKEN = "console-admin-token-0123456789"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def console_config(fake, tmp_path, shadow: bool = True) -> dict:
    def backend(model):
        return {
            "kind": "openai",
            "base_url": fake.url + "/v1",
            "model": model,
            "api_key": UPSTREAM_KEY,
        }

    return {
        "server": {"admin_token": TOKEN},
        "backends": {"base": backend("m-base"), "cand-a": backend("m-a"), "shadow-x": backend("m-shadow")},
        "routes": {"bot": {"baseline": "base", "candidates": {"cand-a": 10}, "shadow": ["shadow-x"] if shadow else []}},
        "prices": {
            "m-base": {"input": 3.0, "output": 15.0},
            "m-a": {"input": 0.5, "output": 1.5},
            "m-shadow": {"input": 0.2, "output": 0.6},
        },
        "plugins": {
            "console": {"sample_seconds": 1, "history": 120},
            "shadow": {"path": str(tmp_path / "shadow.db")},
            # the page's actions are under test here, not the rules: keep auto-rollback from acting
            "auto_rollback": {"min_samples": 100000, "interval_seconds": 1},
        },
    }


def http(
    url: str,
    path: str,
    *,
    token: str | None = TOKEN,
    headers: dict | None = None,
    method: str = "GET",
    body: dict | None = None,
):
    """(status, headers, body bytes) of one request, errors included."""
    sent = {**(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        sent["Content-Type"] = "application/json"
    request = urllib.request.Request(url + path, method=method, data=data, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def served_by(url: str, users: list[str]) -> dict[str, str]:
    """Which variant answered each user's request, through the gateway with the official SDK."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="app-key", max_retries=0)
    found = {}
    for user in users:
        raw = client.chat.completions.with_raw_response.create(
            model="bot", messages=[{"role": "user", "content": f"where is order {user}?"}], user=user
        )
        found[user] = raw.headers["x-llmgate-variant"]
        assert raw.parse().model.startswith("m-")
    return found


@contextlib.contextmanager
def background_traffic(url: str, per_second: float = 6):
    """Steady requests from other users (every tenth one failing upstream), so the charts have lines to draw."""
    stop = threading.Event()

    def run():
        client = openai.OpenAI(base_url=url + "/v1", api_key="app-key", max_retries=0, timeout=5)
        i = 0
        while not stop.wait(1 / per_second):
            i += 1
            text = "[status 500] background" if i % 10 == 0 else f"[sleep 0.0{i % 4}] background {i}"
            with contextlib.suppress(openai.OpenAIError):
                client.chat.completions.create(
                    model="bot", messages=[{"role": "user", "content": text}], user=f"bg-{i % 50}"
                )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


# --- the endpoints, without a browser --------------------------------------------------------------


def test_page_and_assets_load_without_the_token_and_cache_well(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(console_config(fake_openai, tmp_path))
    status, headers, body = http(gw.url, "/console", token=None, headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    page = gzip.decompress(body).decode()
    assert "admin token" in page.lower() and "{{version}}" not in page
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-cache"
    assert http(gw.url, "/console", token=None, headers={"If-None-Match": headers["ETag"]})[0] == 304

    script = page.split('<script type="module" src="')[1].split('"')[0]
    status, headers, body = http(gw.url, script, token=None)
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert "immutable" in headers["Cache-Control"] and b"sessionStorage" not in body  # app.js: the token is api.js's
    assert http(gw.url, script.replace("app.js", "nope.js"), token=None)[0] == 404
    assert b"Authorization" in http(gw.url, script.replace("app.js", "api.js"), token=None)[2]


def test_data_endpoints_need_the_admin_token(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(console_config(fake_openai, tmp_path))
    for path in ("/admin/console/series", "/admin/console/shadow/pairs?route=bot"):
        status, _, body = http(gw.url, path, token=None)
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_admin_token"
        assert http(gw.url, path, token="wrong-token")[0] == 401
    status, _, body = http(gw.url, "/admin/console/shadow/pairs?route=nope")
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
    status, _, body = http(gw.url, "/admin/console/shadow/pairs")
    assert status == 400 and json.loads(body)["error"]["param"] == "route"


def test_series_and_shadow_pairs_follow_real_traffic(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(console_config(fake_openai, tmp_path))
    served = served_by(gw.url, [f"user-{i}" for i in range(40)])
    assert set(served.values()) <= {"base", "cand-a"}
    gw.call(gw.app[GATEWAY].hooks.call("record_score", route="bot", variant="cand-a", name="judge_win_rate", value=1.0))

    def counted():
        body = json.loads(http(gw.url, "/admin/console/series")[2])
        total = sum(
            v["requests"] for s in body["samples"] for v in s["routes"].get("bot", {}).get("variants", {}).values()
        )
        judged = body["window"].get("bot", {}).get("cand-a", {}).get("judge_n")
        return body if total == 40 and judged == 1 else None  # a sample taken before the score would lack it

    series = wait_until(counted, what="the 40 requests and the judge's score in the console's series")
    assert series["interval_seconds"] == 1 and series["sampling"] is True
    window = series["window"]["bot"]
    assert window["base"]["requests"] + window.get("cand-a", {"requests": 0})["requests"] == 40
    assert window["base"]["p50_ms"] > 0 and window["base"]["cost_per_request"] > 0
    assert window["cand-a"]["judge_win_rate"] == 1.0 and window["cand-a"]["judge_n"] == 1
    newest = series["samples"][-1]["t"]
    later = json.loads(http(gw.url, f"/admin/console/series?after={newest}")[2])["samples"]
    assert all(s["t"] > newest for s in later), "?after= returns only newer samples"

    def paired():
        body = json.loads(http(gw.url, "/admin/console/shadow/pairs?route=bot&limit=3&chars=12")[2])
        return body["pairs"] if len(body["pairs"]) == 3 else None

    pairs = wait_until(paired, what="three shadow comparisons")
    assert [p["id"] for p in pairs] == sorted((p["id"] for p in pairs), reverse=True), "newest first"
    assert all(p["shadow_backend"] == "shadow-x" and p["shadow_status"] == 200 for p in pairs)
    assert all(len(p["shadow_answer"]) == 12 and p["shadow_chars"] > 12 for p in pairs), "bounded by ?chars="
    assert pairs[0]["primary_answer"].startswith("echo: where")


# --- the page, in a real browser ---------------------------------------------------------------


def open_console(browser, url: str, viewport: dict, **options):
    context = browser.new_context(viewport=viewport, **options)
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.goto(url + "/console")
    page.fill("#login-token", TOKEN)
    page.fill("#login-name", "oncall")
    page.click("#login-submit")
    page.wait_for_selector('section[data-route="bot"] tr[data-variant="cand-a"]', timeout=20000)
    return context, page, problems


def confirm(page, fields: dict[str, str]) -> dict:
    """Fill the confirmation dialog, confirm, and return the audit event it shows."""
    page.wait_for_selector("#confirm[open]")
    for selector, value in fields.items():
        page.fill(selector, value)
    page.click("#confirm-ok")
    table = page.wait_for_selector("#confirm-event", timeout=15000)
    event = {
        row.query_selector("th").inner_text(): row.query_selector("td").inner_text()
        for row in table.query_selector_all("tr")
    }
    page.click("#confirm-cancel")  # now "Close"
    page.wait_for_selector("#confirm", state="hidden")
    return event


def test_the_console_steers_real_traffic(browser, fake_openai, make_gateway, tmp_path):
    gw = make_gateway(console_config(fake_openai, tmp_path))
    users = [f"user-{i}" for i in range(30)]
    assert "base" in served_by(gw.url, users).values()
    for value in (1.0, 0.5, 1.0):  # a judge's verdicts, so the judge column and chart have data
        gw.call(
            gw.app[GATEWAY].hooks.call(
                "record_score", route="bot", variant="cand-a", name="judge_win_rate", value=value
            )
        )
    with background_traffic(gw.url):
        context, page, problems = open_console(browser, gw.url, LAPTOP)
        assert not page.is_visible("#banner") and page.inner_text("#conn").lower() == "live"
        route = page.locator('section[data-route="bot"]')
        assert route.locator("h2").inner_text() == "bot"
        assert route.locator('tr[data-variant="base"] .role').inner_text().lower() == "baseline"
        assert "10%" in route.locator('tr[data-variant="cand-a"] .share').inner_text()
        assert page.evaluate("sessionStorage.length") == 2 and TOKEN not in page.url

        # a percent set in the page reaches the routing of real requests
        route.locator('button[data-action="percent"][data-candidate="cand-a"]').click()
        page.fill("#confirm-percent", "100")
        assert "10% → 100%" in page.inner_text("#confirm-text"), "the dialog says what will change"
        event = confirm(page, {"#confirm-percent": "100", "#confirm-reason": "ready for everyone"})
        assert event["kind"] == "rollout" and event["actor"].startswith("console:oncall")
        assert json.loads(event["after"]) == {"cand-a": 100.0}
        start = len(fake_openai.requests)
        assert set(served_by(gw.url, users).values()) == {"cand-a"}
        ours = [
            r["model"] for r in fake_openai.requests[start:] if "where is order user-" in r["messages"][-1]["content"]
        ]
        assert set(ours) - {"m-shadow"} == {"m-a"}, "the candidate's upstream model answered"
        page.wait_for_function(
            """document.querySelector('section[data-route="bot"] tr[data-variant="cand-a"] .share')
                                  .innerText.includes('100%')""",
            timeout=20000,
        )

        # the rollback button sends everyone back to the baseline, and the event shows in the history
        route.locator('button[data-action="rollback"][data-candidate="cand-a"]').click()
        page.click("#confirm-ok")  # no reason yet: the form refuses, nothing is sent
        assert page.is_visible("#confirm-reason") and not page.is_visible("#confirm-event")
        event = confirm(page, {"#confirm-reason": "answers too long"})
        assert event["kind"] == "rollback" and event["reason"] == "answers too long"
        assert set(served_by(gw.url, users).values()) == {"base"}
        row = page.wait_for_selector('#history-rows tr[data-kind="rollback"]', timeout=20000)
        assert "answers too long" in row.inner_text() and "console:oncall" in row.inner_text()
        page.wait_for_selector('section[data-route="bot"] tr[data-variant="cand-a"] .badge.bad', timeout=20000)
        page.wait_for_selector('section[data-route="bot"] details.pair', timeout=40000)  # answers side by side
        time.sleep(3)  # a few more seconds of background traffic: lines rather than dots in the screenshots
        laptop = screenshot(page, "console-laptop.png")

        phone_context, phone, phone_problems = open_console(
            browser, gw.url, PHONE, is_mobile=True, has_touch=True, device_scale_factor=2
        )
        phone.wait_for_selector('#history-rows tr[data-kind="rollback"]', timeout=20000)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the phone page scrolls sideways ({width} px)"
        assert phone.locator('tr[data-variant="cand-a"] button[data-action="rollback"]').is_visible()
        phone_shot = screenshot(phone, "console-phone.png")
        phone_context.close()

    # the daemon stops: a clear banner, the last data greyed, retries announced
    gw.stop()
    page.wait_for_selector("#banner", state="visible", timeout=30000)
    assert "unreachable" in page.inner_text("#banner").lower() and "retrying" in page.inner_text("#banner").lower()
    assert page.evaluate("document.body.classList.contains('stale')")
    assert page.inner_text("#conn").lower() == "unreachable"
    assert route.locator('tr[data-variant="cand-a"]').is_visible(), "last-known data stays on the page"
    down = screenshot(page, "console-unreachable.png")
    context.close()
    assert laptop.stat().st_size > 10000 and phone_shot.stat().st_size > 10000 and down.exists()
    assert not [p for p in problems if "Failed to load resource" not in p], problems
    assert not phone_problems, phone_problems


def test_the_sign_in_refuses_a_wrong_token(browser, fake_openai, make_gateway, tmp_path):
    gw = make_gateway(console_config(fake_openai, tmp_path, shadow=False))
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.goto(gw.url + "/console")
    page.fill("#login-token", "not-the-token")
    page.click("#login-submit")
    page.wait_for_selector("#login-error:not([hidden])", timeout=20000)
    assert "refused" in page.inner_text("#login-error") and page.evaluate("sessionStorage.length") == 0
    assert not page.is_visible('section[data-route="bot"]')
    context.close()


def test_schedule_and_promote_from_the_page(browser, fake_openai, make_gateway, tmp_path):
    gw = make_gateway(console_config(fake_openai, tmp_path, shadow=False))
    context, page, problems = open_console(browser, gw.url, LAPTOP)
    route = page.locator('section[data-route="bot"]')

    route.locator('button[data-action="schedule-start"]').click()
    event = confirm(page, {"#confirm-steps": "20, 100", "#confirm-hold": "600", "#confirm-reason": "staged"})
    assert event["kind"] == "schedule" and json.loads(event["steps"]) == [20.0, 100.0]
    page.wait_for_selector('section[data-route="bot"] .schedule .step.now', timeout=20000)
    assert route.locator(".schedule .step.now").inner_text() == "20%"
    assert "running" in route.locator(".schedule").inner_text()

    route.locator('button[data-action="schedule-pause"]').click()
    event = confirm(page, {"#confirm-reason": "holding for the incident review"})
    assert event["kind"] == "schedule" and "paused" in event["after"]
    page.wait_for_selector('section[data-route="bot"] button[data-action="schedule-resume"]', timeout=20000)

    route.locator('button[data-action="promote"][data-candidate="cand-a"]').click()
    event = confirm(page, {})
    assert event["kind"] == "promote" and json.loads(event["after"]) == {"cand-a": 100.0}
    assert set(served_by(gw.url, [f"user-{i}" for i in range(20)]).values()) == {"cand-a"}
    page.wait_for_selector('#history-rows tr[data-kind="promote"]', timeout=20000)
    assert len(page.query_selector_all('#history-rows tr[data-kind="schedule"]')) >= 2
    context.close()
    assert not [p for p in problems if "Failed to load resource" not in p], problems


def test_an_adaptive_schedule_shows_its_evidence(browser, fake_openai, make_gateway, tmp_path):
    gw = make_gateway(console_config(fake_openai, tmp_path, shadow=False))
    status, _, body = http(
        gw.url,
        "/admin/routes/bot/schedule",
        method="POST",
        body={"candidate": "cand-a", "steps": [10, 100], "mode": "adaptive"},
    )
    assert status == 200, body
    context, page, problems = open_console(browser, gw.url, LAPTOP)
    schedule = page.locator('section[data-route="bot"] .schedule')
    try:
        schedule.get_by_text("evidence: continue", exact=False).wait_for(timeout=20000)
    except Exception:
        raise AssertionError((schedule.inner_text(), problems)) from None
    text = schedule.inner_text()
    assert "adaptive, at most 6.0 h" in text and "primary −∞ to +∞ (0 / 0 calls)" in text, text
    context.close()
    assert not [p for p in problems if "Failed to load resource" not in p], problems


def test_the_spend_panel_shows_each_teams_spend_today_and_this_month(browser, fake_openai, make_gateway, tmp_path):
    from plugins.api_keys.plugin import hash_key

    key = "sk-lg-console-spend-key-0123456789abcd"
    config = console_config(fake_openai, tmp_path, shadow=False)
    config["plugins"]["api_keys"] = {"enabled": True, "teams": {"support": {"keys": [hash_key(key)]}}}
    config["plugins"]["usage"] = {"enabled": True}
    gw = make_gateway(config)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    for i in range(3):
        client.chat.completions.create(model="bot", messages=[{"role": "user", "content": f"spend {i}"}], user=f"s{i}")

    def counted():
        report = json.loads(http(gw.url, "/v1/usage?group_by=team,route")[2])
        return report if report["total"]["requests"] == 3 else None

    report = wait_until(counted, "the three requests counted")
    tokens = report["total"]["prompt_tokens"] + report["total"]["completion_tokens"]
    context, page, problems = open_console(browser, gw.url, LAPTOP)
    row = page.wait_for_selector('#spend tr[data-team="support"][data-route="bot"]', timeout=20000)
    today, today_tokens, month, month_tokens = [cell.inner_text() for cell in row.query_selector_all("td")][2:]
    assert today == month and today.startswith("$") and today != "$0", (today, month)
    assert today_tokens == month_tokens == str(tokens)
    assert "this month, UTC" in page.inner_text("#spend-period")
    assert page.inner_text("#spend tr.total").split()[0] == "total"
    screenshot(page, "console-spend.png")
    context.close()
    assert not [p for p in problems if "Failed to load resource" not in p], problems
