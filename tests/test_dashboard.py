"""The operator's dashboard in a real headless Chromium (selenium) against the real service.

Chromium and its driver are Debian's ``chromium`` and ``chromium-driver``
(``.ci/run`` installs them). Every wait is on a condition with a deadline;
the page's live refresh replaces elements, so lookups are retried when an
element goes stale.
"""

import os
import re
import shutil
import time

import itsdangerous
import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from api.auth import client_scope
from api.dashboard import COOKIE, CSP, PAGE, REFRESH_SECONDS
from tests.harness import ROOT, consumers_ready, wait_until
from tests.test_delivery import settled

IMG_DIR = os.path.join(ROOT, "docs", "img")
HOOK = "https://example.com/hook"
TOKENS = {"TIMER_API_TOKENS": "tok-alpha,tok-beta"}


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module (Debian's chromium + chromedriver)."""
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver_path, "needs Debian's chromium and chromium-driver (.ci/run installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=ChromeService(driver_path), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium):
    """The module's Chromium, cookies and window size reset after the test."""
    yield chromium
    chromium.delete_all_cookies()
    chromium.set_window_size(1280, 1000)
    chromium.get("about:blank")
    chromium.get_log("browser")


def wait_for(browser, predicate, timeout=30, message="condition"):
    """``predicate(browser)`` truthy within ``timeout`` s, retried over stale or missing elements."""
    return WebDriverWait(browser, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
                         ).until(predicate, message)


def text(browser, css):
    """The visible text of the element ``css``."""
    return browser.find_element(By.CSS_SELECTOR, css).text


def click(browser, css):
    """Click ``css``, again if the live refresh replaced it in between."""
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True, message=f"click {css}")


def open_page(browser, url):
    """Navigate and wait for the page (and its script) to have loaded."""
    browser.get(url)
    wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete")


def list_ids(browser):
    """Timer ids of the rows of the list page."""
    return [int(i) for i in browser.execute_script(
        "return [...document.querySelectorAll('#timers tbody tr[data-id]')].map(r => r.dataset.id)")]


def create(service, url=HOOK, token=None, **duration):
    """POST /timers (with a bearer token when given); the new id."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.post(f"{service.url}/timers", json={"url": url, **duration}, headers=headers,
                             timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def api_status(service, timer_id, token=None):
    """The timer's status as the API reads it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{service.url}/timers/{timer_id}", headers=headers, timeout=10).json()["status"]


def same_origin_only(browser, origin):
    """Every URL the page loaded (navigation and resources, fetches included), asserted same-origin."""
    urls = browser.execute_script(
        "return performance.getEntriesByType('navigation').concat("
        "performance.getEntriesByType('resource')).map(e => e.name)")
    strays = [url for url in urls if not url.startswith(origin + "/")]
    assert strays == [], strays
    return urls


def fetches(browser):
    """How many fetch() requests the page has made (the live refresh's)."""
    return browser.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.initiatorType === 'fetch').length")


def created_per_minute(browser):
    """The overview's created-per-minute figure (0 while a process is still measuring)."""
    shown = text(browser, "#rates div:first-child dd")
    return float(shown) if shown[:1].isdigit() else 0.0


def test_overview_list_and_timer_page_show_what_the_api_has(make_service, receiver, browser):
    service = make_service().start()
    consumers_ready(service)
    receiver.script("/gone", [(410, {}, 0)])
    fired = [create(service, receiver.url + "/ok", seconds=0) for _ in range(3)]
    failed = create(service, receiver.url + "/gone", seconds=0)
    scheduled = [create(service, HOOK, hours=1) for _ in range(5)]
    wait_until(lambda: all(api_status(service, i) == "fired" for i in fired), timeout=30,
               message="the 0-second timers to fire")
    wait_until(lambda: api_status(service, failed) == "failed", timeout=30, message="the 410 timer to fail")

    open_page(browser, f"{service.url}/dashboard")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#shards tbody tr")) == 4
    assert text(browser, "#shards tfoot").split()[-3:] == ["5", "0", "0"]
    # Lateness: every first attempt (4) is in the histogram.
    assert "4 first attempts" in text(browser, "#overview")
    assert text(browser, "#memory dd").endswith(("B", "K", "M", "G"))
    # Per-minute rates need samples over a few seconds; the page refreshes by itself.
    wait_for(browser, lambda d: "measuring" not in text(d, "#rates"), timeout=90, message="rates")
    scheduled += [create(service, HOOK, hours=2) for _ in range(6)]
    wait_for(browser, lambda d: text(d, "#shards tfoot").split()[-3:] == ["11", "0", "0"]
             and created_per_minute(d) > 0, timeout=60,
             message="the new timers in the depths and the created rate")
    browser.set_window_size(1280, 1500)
    browser.save_screenshot(os.path.join(IMG_DIR, "dashboard-overview.png"))
    browser.set_window_size(1280, 1000)
    same_origin_only(browser, service.url)

    open_page(browser, f"{service.url}/dashboard/timers?status=scheduled")
    assert sorted(list_ids(browser)) == sorted(scheduled)
    open_page(browser, f"{service.url}/dashboard/timers?status=fired")
    assert sorted(list_ids(browser)) == sorted(fired)
    open_page(browser, f"{service.url}/dashboard/timers?status=failed")
    assert list_ids(browser) == [failed]
    assert "HTTP 410" in text(browser, f"tr[data-id='{failed}']")

    click(browser, f"tr[data-id='{failed}'] a")
    wait_for(browser, lambda d: d.current_url.endswith(f"/dashboard/timers/{failed}"))
    view = service.get(failed)
    for field, value in view.items():
        shown = text(browser, f"#field-{field}")
        assert shown == ("none" if value is None else str(value)), field
    assert text(browser, "#field-shard") == str(failed % 1000)
    browser.save_screenshot(os.path.join(IMG_DIR, "dashboard-timer.png"))
    same_origin_only(browser, service.url)


def test_search_by_id(make_service, browser):
    service = make_service().start("api")
    first, second = create(service, hours=1), create(service, hours=2)
    open_page(browser, f"{service.url}/dashboard")
    box = browser.find_element(By.NAME, "id")
    box.send_keys(str(second))
    box.submit()
    wait_for(browser, lambda d: d.current_url.endswith(f"/dashboard/timers/{second}"))
    assert text(browser, "#field-id") == str(second)
    assert text(browser, "h1") == f"Timer {second}"
    assert str(first) not in browser.page_source

    open_page(browser, f"{service.url}/dashboard/search?id={second + 1000}")
    assert (text(browser, "h1"), text(browser, "main .error")) == (
        "Timer not found", f"No timer with id {second + 1000}.")
    open_page(browser, f"{service.url}/dashboard/search?id=12ab")
    assert text(browser, "h1") == "Not a timer id"


def test_cancel_changes_the_status_without_a_reload(make_service, browser):
    service = make_service().start("api")
    timer_id, other = create(service, hours=1), create(service, hours=1)
    open_page(browser, f"{service.url}/dashboard/timers/{timer_id}")
    browser.execute_script("window.notReloaded = true")
    click(browser, "form[action$='/cancel'] button")
    WebDriverWait(browser, 10).until(expected_conditions.alert_is_present()).accept()
    wait_for(browser, lambda d: text(d, "#field-status") == "cancelled", message="status cancelled")
    assert text(browser, "#flash") == "Timer cancelled."
    assert browser.execute_script("return window.notReloaded") is True
    assert browser.find_elements(By.CSS_SELECTOR, "form[action$='/cancel']") == []
    assert api_status(service, timer_id) == "cancelled"

    # Changes made elsewhere show up by themselves: the list refreshes without a reload.
    open_page(browser, f"{service.url}/dashboard/timers?status=scheduled")
    assert list_ids(browser) == [other]
    browser.execute_script("window.notReloaded = true")
    assert requests.delete(f"{service.url}/timers/{other}", timeout=10).status_code == 204
    wait_for(browser, lambda d: list_ids(d) == [], message="the cancelled timer to leave the list")
    assert browser.execute_script("return window.notReloaded") is True


def failed_once(service, receiver, path, base=None):
    """A timer to ``path`` of the receiver (at ``base``, default its URL) whose only attempt got a
    503: its id, once failed."""
    receiver.script(path, [(503, {}, 0)])
    timer_id = create(service, (base or receiver.url) + path, seconds=0, retry={"max_attempts": 1})
    wait_until(lambda: api_status(service, timer_id) == "failed", timeout=30,
               message=f"timer {timer_id} to fail")
    return timer_id


def act_on_timer_page(browser, service, timer_id, button):
    """Open the timer's page, press ``button`` (Run now or Re-drive) and confirm; no reload follows."""
    open_page(browser, f"{service.url}/dashboard/timers/{timer_id}")
    browser.execute_script("window.notReloaded = true")
    assert text(browser, "form[action$='/run'] button") == button
    click(browser, "form[action$='/run'] button")
    alert = WebDriverWait(browser, 10).until(expected_conditions.alert_is_present())
    assert alert.text == f"{button} timer {timer_id}?"
    alert.accept()


def test_re_drive_a_failed_timer_and_see_it_fire(make_service, receiver, browser):
    service = make_service().start()
    consumers_ready(service)
    timer_id = failed_once(service, receiver, "/flaky")
    receiver.script("/flaky", [(200, {}, 0)])
    act_on_timer_page(browser, service, timer_id, "Re-drive")
    wait_for(browser, lambda d: text(d, "#field-status") == "fired", message="status fired")
    assert text(browser, "#flash") == "Timer re-driven: due now with a fresh attempt budget."
    assert (text(browser, "#field-attempts"), text(browser, "#field-last_error")) == ("2", "none")
    assert browser.execute_script("return window.notReloaded") is True
    assert browser.find_elements(By.CSS_SELECTOR, "form[action$='/run']") == []
    wait_until(lambda: settled(service), timeout=10, message="queues to drain")
    deliveries = receiver.received(f"/flaky/{timer_id}")
    # The failed attempt and exactly one more, with the same webhook-id.
    assert [d["headers"]["webhook-id"] for d in deliveries] == [str(timer_id)] * 2


def test_run_now_fires_a_one_hour_timer(make_service, receiver, browser):
    service = make_service().start()
    consumers_ready(service)
    timer_id, other = (create(service, receiver.url + "/later", hours=1) for _ in range(2))
    act_on_timer_page(browser, service, timer_id, "Run now")
    wait_for(browser, lambda d: text(d, "#field-status") == "fired", message="status fired")
    assert text(browser, "#flash") == "Timer is due now."
    assert browser.execute_script("return window.notReloaded") is True
    wait_until(lambda: settled(service), timeout=10, message="queues to drain")
    assert [d["headers"]["webhook-id"] for d in receiver.received()] == [str(timer_id)]
    assert api_status(service, other) == "scheduled"

    # Refused as POST /timers/<id>/run refuses: 409 once fired or cancelled, 404 unknown.
    session = requests.Session()
    page = session.get(f"{service.url}/dashboard/timers/{other}", timeout=10).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert requests.delete(f"{service.url}/timers/{other}", timeout=10).status_code == 204
    for target, status, status_text in ((timer_id, 409, "fired"), (other, 409, "cancelled"),
                                        (other + 1000, 404, None)):
        answer = session.post(f"{service.url}/dashboard/timers/{target}/run", data={"csrf": csrf},
                              allow_redirects=False, timeout=10)
        api = requests.post(f"{service.url}/timers/{target}/run", timeout=10)
        assert (answer.status_code, api.status_code) == (status, status), target
        if status_text:
            assert f"Timer {target} is already {status_text}; it cannot be run." in answer.text
    assert (api_status(service, timer_id), api_status(service, other)) == ("fired", "cancelled")
    assert len(receiver.received()) == 1


def test_bulk_re_drive_of_one_host_counts_then_re_drives_only_those(make_service, receiver, browser):
    service = make_service().start()
    consumers_ready(service)
    other_host = receiver.url.replace("127.0.0.1", "localhost")
    wanted = [failed_once(service, receiver, f"/bulk-{n}", other_host) for n in range(2)]
    left = failed_once(service, receiver, "/bulk-other")
    for path in ("/bulk-0", "/bulk-1", "/bulk-other"):
        receiver.script(path, [(200, {}, 0)])

    open_page(browser, f"{service.url}/dashboard/timers?status=failed&host=LOCALHOST")
    assert sorted(list_ids(browser)) == sorted(wanted)
    assert text(browser, "form.bulk button") == "Re-drive all failed of localhost…"
    click(browser, "form.bulk button")
    wait_for(browser, lambda d: d.find_elements(By.ID, "redrive-count"), message="the count")
    assert text(browser, "#redrive-count") == (
        "2 failed timers with host localhost would be re-driven (each due now with a fresh attempt budget).")
    assert browser.find_elements(By.ID, "redrive-more") == []
    # Only counted: nothing changed yet.
    assert [api_status(service, i) for i in (*wanted, left)] == ["failed"] * 3
    assert len(receiver.received()) == 3

    click(browser, "main form button.danger")
    wait_for(browser, lambda d: d.find_elements(By.ID, "redrive-result"), message="the result")
    assert text(browser, "#redrive-result") == "Re-drove 2 of 2 failed timers with host localhost."
    assert browser.find_elements(By.ID, "redrive-more") == []
    wait_until(lambda: all(api_status(service, i) == "fired" for i in wanted), timeout=30,
               message="the re-driven timers to fire")
    wait_until(lambda: settled(service), timeout=10, message="queues to drain")
    assert api_status(service, left) == "failed"
    per_timer = {}
    for delivery in receiver.received():
        per_timer.setdefault(int(delivery["headers"]["webhook-id"]), []).append(delivery)
    assert {i: len(d) for i, d in per_timer.items()} == {wanted[0]: 2, wanted[1]: 2, left: 1}

    # Done: a second count finds none.
    open_page(browser, f"{service.url}/dashboard/timers?status=failed&host=localhost")
    assert list_ids(browser) == []
    click(browser, "form.bulk button")
    wait_for(browser, lambda d: text(d, "#redrive-count").startswith("0 failed timers"), message="no more")
    assert browser.find_elements(By.CSS_SELECTOR, "main form button.danger") == []


def test_refresh_stops_while_the_tab_is_hidden(make_service, browser):
    service = make_service().start("api")
    open_page(browser, f"{service.url}/dashboard")
    wait_for(browser, lambda d: fetches(d) >= 1, message="a live refresh")
    browser.execute_script(
        "Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});"
        "document.dispatchEvent(new Event('visibilitychange'));")
    hidden_at = fetches(browser)
    # At most the refresh already under way completes; none starts while hidden.
    time.sleep(3 * REFRESH_SECONDS)
    assert fetches(browser) <= hidden_at + 1
    settled = fetches(browser)
    browser.execute_script(
        "Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'visible'});"
        "document.dispatchEvent(new Event('visibilitychange'));")
    wait_for(browser, lambda d: fetches(d) >= settled + 2, message="refreshes to resume")


def test_tokens_show_nothing_before_sign_in(make_service, browser):
    service = make_service(env=TOKENS).start("api", ready_path="/healthz")
    timer_id = create(service, token="tok-beta", hours=1)
    for path in ("/dashboard", "/dashboard/timers?status=scheduled", f"/dashboard/timers/{timer_id}",
                 f"/dashboard/search?id={timer_id}"):
        open_page(browser, service.url + path)
        assert browser.current_url == f"{service.url}/dashboard/signin", path
        assert str(timer_id) not in browser.page_source
        assert browser.find_elements(By.CSS_SELECTOR, "#shards, #timers, #timer, nav") == []
        answer = requests.get(service.url + path, allow_redirects=False, timeout=10)
        assert (answer.status_code, answer.headers["Location"]) == (303, "/dashboard/signin")
        assert str(timer_id) not in answer.text
    refused = requests.post(f"{service.url}/dashboard/timers/{timer_id}/cancel", data={"csrf": "x"},
                            allow_redirects=False, timeout=10)
    assert refused.status_code == 403
    assert api_status(service, timer_id, "tok-alpha") == "scheduled"

    browser.find_element(By.NAME, "token").send_keys("tok-gamma")
    browser.find_element(By.NAME, "token").submit()
    wait_for(browser, lambda d: text(d, "#signin-error") == "That is not a valid API token.")
    assert browser.get_cookie(COOKIE) is None

    browser.find_element(By.NAME, "token").send_keys("tok-beta")
    browser.find_element(By.NAME, "token").submit()
    wait_for(browser, lambda d: d.current_url == f"{service.url}/dashboard" and d.find_elements(
        By.CSS_SELECTOR, "#shards"), message="the overview after signing in")
    cookie = browser.get_cookie(COOKIE)
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"], cookie["path"]) == (
        True, "Strict", False, "/dashboard")
    assert 0 < cookie["expiry"] - time.time() <= 8 * 3600 + 5
    open_page(browser, f"{service.url}/dashboard/timers?status=scheduled")
    assert list_ids(browser) == [timer_id]

    # A cookie signed with another key is no session (tests/test_dashboard_units.py has more).
    forged = itsdangerous.URLSafeTimedSerializer("guess", salt="timer-dashboard-session").dumps(
        {"k": "x", "c": client_scope("tok-beta")})
    answer = requests.get(f"{service.url}/dashboard", cookies={COOKIE: forged}, allow_redirects=False,
                          timeout=10)
    assert answer.status_code == 303

    click(browser, "header button.link")
    wait_for(browser, lambda d: d.current_url.startswith(f"{service.url}/dashboard/signin"))
    open_page(browser, f"{service.url}/dashboard/timers/{timer_id}")
    assert browser.current_url == f"{service.url}/dashboard/signin"


def test_an_action_without_the_csrf_token_is_refused(make_service, browser):
    service = make_service().start("api")
    timer_id = create(service, hours=1)
    open_page(browser, f"{service.url}/dashboard/timers/{timer_id}")
    # A plain form post (no script) without the CSRF field.
    browser.execute_script(
        "const form = document.querySelector(\"form[action$='/cancel']\");"
        "form.querySelector('[name=csrf]').remove(); form.removeAttribute('data-action'); form.submit();")
    wait_for(browser, lambda d: text(d, "h1") == "Refused", message="the refusal page")
    assert api_status(service, timer_id) == "scheduled"

    # Another session's token does not do either.
    session = requests.Session()
    page = session.get(f"{service.url}/dashboard/timers/{timer_id}", timeout=10).text
    own = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    other = re.search(r'name="csrf" value="([^"]+)"',
                      requests.get(f"{service.url}/dashboard/timers/{timer_id}", timeout=10).text).group(1)
    for token in ("", other, own + "x"):
        answer = session.post(f"{service.url}/dashboard/timers/{timer_id}/cancel", data={"csrf": token},
                              allow_redirects=False, timeout=10)
        assert answer.status_code == 403, token
    assert api_status(service, timer_id) == "scheduled"
    answer = session.post(f"{service.url}/dashboard/timers/{timer_id}/cancel", data={"csrf": own},
                          allow_redirects=False, timeout=10)
    assert (answer.status_code, answer.headers["Location"]) == (
        303, f"/dashboard/timers/{timer_id}?done=cancel")
    assert api_status(service, timer_id) == "cancelled"


def test_a_script_url_is_shown_as_text_and_nothing_leaves_the_origin(make_service, browser):
    service = make_service().start("api")
    url = "https://x.test/<script>window.injected=1</script>"
    timer_id = create(service, url, hours=1)
    for path in (f"/dashboard/timers/{timer_id}", "/dashboard/timers?status=scheduled"):
        open_page(browser, service.url + path)
        shown = text(browser, "#field-url" if "status" not in path else f"tr[data-id='{timer_id}'] .url")
        assert shown == url
        assert browser.execute_script("return document.querySelectorAll('script').length") == 1
        assert browser.execute_script("return window.injected") is None
        assert "&lt;script&gt;window.injected=1&lt;/script&gt;" in browser.page_source
    open_page(browser, f"{service.url}/dashboard")
    wait_for(browser, lambda d: fetches(d) >= 1, message="a live refresh")
    urls = same_origin_only(browser, service.url)
    assert {f"{service.url}/dashboard/static/dashboard.js", f"{service.url}/dashboard/static/dashboard.css",
            f"{service.url}/dashboard"} <= set(urls)
    # No Content-Security-Policy violation or other error was logged by the page.
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    for path in ("/dashboard", f"/dashboard/timers/{timer_id}", "/dashboard/static/dashboard.js",
                 "/dashboard/nothing-here"):
        headers = requests.get(service.url + path, timeout=10).headers
        assert (headers["Content-Security-Policy"], headers["X-Content-Type-Options"]) == (CSP, "nosniff")


def test_readonly_has_no_actions_and_off_has_no_dashboard(make_service, receiver, browser):
    service = make_service(env={"TIMER_DASHBOARD": "readonly"}).start()
    consumers_ready(service)
    timer_id = create(service, hours=1)
    failed = failed_once(service, receiver, "/readonly")
    receiver.script("/readonly", [(200, {}, 0)])
    for path in (f"/dashboard/timers/{timer_id}", f"/dashboard/timers/{failed}"):
        open_page(browser, service.url + path)
        assert text(browser, "#field-status") in ("scheduled", "failed")
        assert browser.find_elements(By.CSS_SELECTOR, "main form, main button") == [], path
    open_page(browser, f"{service.url}/dashboard/timers?status=failed")
    assert list_ids(browser) == [failed]
    assert browser.find_elements(By.CSS_SELECTOR, "form.bulk, form[action$='/run']") == []
    # With a session: were the routes there, a missing CSRF token would be a 403, not a 404.
    session = requests.Session()
    assert session.get(f"{service.url}/dashboard", timeout=10).cookies.get(COOKIE)
    for path in (f"/dashboard/timers/{timer_id}/cancel", f"/dashboard/timers/{timer_id}/run",
                 f"/dashboard/timers/{failed}/run", "/dashboard/redrive"):
        answer = session.post(service.url + path, data={"csrf": "", "confirm": "yes"}, timeout=10)
        assert answer.status_code == 404, path
    assert (api_status(service, timer_id), api_status(service, failed)) == ("scheduled", "failed")
    assert len(receiver.received()) == 1
    service.stop()

    off = make_service(env={"TIMER_DASHBOARD": "off"}).start("api")
    for path in ("/dashboard", "/dashboard/timers", "/dashboard/static/dashboard.js", "/dashboard/signin"):
        assert requests.get(off.url + path, timeout=10).status_code == 404, path
    assert requests.get(f"{off.url}/timers/{timer_id}", timeout=10).status_code == 200


def test_pages_fit_a_phone_sized_window(make_service, browser):
    service = make_service().start("api")
    timer_id = create(service, "https://a-rather-long-host-name.example.com/" + "segment/" * 30, hours=1)
    browser.set_window_size(390, 844)
    for path in ("/dashboard", "/dashboard/timers?status=scheduled", f"/dashboard/timers/{timer_id}"):
        open_page(browser, service.url + path)
        width, scroll = browser.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth]")
        assert width <= 400 and scroll <= width, (path, width, scroll)


def test_lists_page_with_the_store_cursor_and_filter_by_host(make_service, browser):
    service = make_service().start("api")
    ids = {create(service, f"https://b.test/{n}", hours=1) for n in range(2 * PAGE + 20)}
    wanted = {create(service, f"https://A.test:8443/{n}", hours=2) for n in range(3)}
    open_page(browser, f"{service.url}/dashboard/timers?status=scheduled")
    seen, sizes = [], []
    while True:
        page = list_ids(browser)
        seen += page
        sizes.append(len(page))
        if not browser.find_elements(By.ID, "next-page"):
            break
        click(browser, "#next-page")
        wait_for(browser, lambda d, before=page: list_ids(d) != before, message="the next page")
    assert sizes == [PAGE, PAGE, 23]
    assert sorted(seen) == sorted(ids | wanted)

    open_page(browser, f"{service.url}/dashboard/timers?status=scheduled")
    browser.find_element(By.NAME, "host").send_keys("a.test")
    browser.find_element(By.NAME, "host").submit()
    wait_for(browser, lambda d: "host=a.test" in d.current_url)
    assert sorted(list_ids(browser)) == sorted(wanted)
