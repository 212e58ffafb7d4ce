"""The embedded web UI (crates/mgmt/ui), driven in a real headless Chromium.

Debian's chromium and chromedriver are used as installed (.ci/run installs them): Selenium
is given /usr/bin/chromedriver and SE_OFFLINE=true, so nothing is downloaded at run time.
Screenshots of the main pages go to the test's tmp dir, or to UI_SCREENSHOT_DIR when set
(scripts/ui-screenshots.sh uses that to regenerate docs/ui/*.png).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pika
import pytest
import requests

from cluster_support import cluster  # noqa: F401 - fixture
from conftest import own_broker, REPO_ROOT, BrokerProcess

os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver or browser

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
AUTH = ("guest", "guest")
UI_DIR = REPO_ROOT / "crates" / "mgmt" / "ui"


@pytest.fixture
def node(request):
    with own_broker(request, "warren-pytest-ui-") as p:
        deadline = time.monotonic() + 15
        while True:  # the management listener may come up just after the AMQP one
            try:
                if requests.get(api(p, "/whoami"), auth=AUTH, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "management API did not come up"
            time.sleep(0.1)
        yield p


@pytest.fixture
def driver():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them)")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
              "--allow-file-access-from-files", "--disable-gpu", "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    downloads = Path(tempfile.mkdtemp(prefix="warren-ui-downloads-"))
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    d.downloads = downloads
    d.set_page_load_timeout(30)
    yield d
    # No script error in any journey (the API's 4xx answers the tests provoke are logged by
    # the browser as failed loads: those are expected).
    errors = [e["message"] for e in d.get_log("browser")
              if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    d.quit()
    shutil.rmtree(downloads, ignore_errors=True)
    assert not errors, errors


def api(node: BrokerProcess, path: str) -> str:
    return f"http://127.0.0.1:{node.mgmt_port}/api{path}"


def ui(node: BrokerProcess, hash_: str = "") -> str:
    return f"http://127.0.0.1:{node.mgmt_port}/{hash_}"


def wait(driver, timeout: float = 15) -> WebDriverWait:
    return WebDriverWait(driver, timeout, poll_frequency=0.1)


def visible(driver, css: str, timeout: float = 15):
    return wait(driver, timeout).until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))


def text_in(driver, css: str, text: str, timeout: float = 15):
    try:
        wait(driver, timeout).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
    except TimeoutException:
        els = driver.find_elements(By.CSS_SELECTOR, css)
        raise AssertionError(f"{css!r} never showed {text!r}; it shows {[e.text for e in els]!r}") from None


def login(driver, node, user="guest", password="guest", hash_="#/overview"):
    driver.get(ui(node, hash_))
    visible(driver, "#login-user").clear()
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-pass").clear()
    driver.find_element(By.ID, "login-pass").send_keys(password)
    driver.find_element(By.ID, "login-btn").click()


def logged_in(driver, node, user="guest", password="guest", hash_="#/overview"):
    login(driver, node, user, password, hash_)
    text_in(driver, "#whoami", user)


def js_text(driver, css: str, attr: str = "") -> str:
    """Read a node that the page re-renders every 5 s without a stale element reference."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); if (!e) return null;"
        "return arguments[1] ? e.getAttribute(arguments[1]) : e.textContent;", css, attr)


def click(driver, by: str, sel: str, timeout: float = 15):
    """Click an element of a list that is re-rendered every 5 s (retry on a stale reference)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            wait(driver, timeout).until(EC.element_to_be_clickable((by, sel))).click()
            return
        except StaleElementReferenceException:
            if time.monotonic() > deadline:
                raise


def go(driver, hash_: str):
    driver.execute_script("location.hash = arguments[0]", hash_)


def fill(form, name: str, value: str):
    el = form.find_element(By.NAME, name)
    el.clear()
    el.send_keys(value)


def queue(node, vhost_enc: str, name: str) -> dict:
    return requests.get(api(node, f"/queues/{vhost_enc}/{name}"), auth=AUTH, timeout=5).json()


def accept_confirm(driver):
    wait(driver, 5).until(EC.alert_is_present())
    driver.switch_to.alert.accept()


def shot(driver, tmp_path: Path, name: str):
    """Save a screenshot into the tmp dir (and UI_SCREENSHOT_DIR when set)."""
    time.sleep(0.3)  # let the last refresh paint
    driver.save_screenshot(str(tmp_path / f"{name}.png"))
    out = os.environ.get("UI_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(out) / f"{name}.png"))


def test_lib_unit_tests_pass_in_chromium(driver):
    driver.get((UI_DIR / "test.html").as_uri())
    wait(driver, 15).until(lambda d: d.find_element(By.ID, "summary").text != "running")
    results = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#results li")]
    failures = [r for r in results if not r.startswith("PASS")]
    assert len(results) >= 15, results
    assert not failures, failures
    assert driver.find_element(By.ID, "summary").text.endswith(" 0 failed")


def test_page_and_assets_are_served(node):
    r = requests.get(ui(node), timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache" and r.headers["etag"]
    assert requests.get(ui(node), headers={"If-None-Match": r.headers["etag"]}, timeout=5).status_code == 304
    for path, ctype in [("ui/app.js", "text/javascript"), ("ui/lib.js", "text/javascript"), ("ui/style.css", "text/css")]:
        r = requests.get(ui(node) + path, timeout=5)
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), path
    r = requests.get(api(node, "/nonexistent"), auth=AUTH, timeout=5)
    assert r.status_code == 404 and r.json() == {"error": "Object Not Found", "reason": "Not Found"}


def test_login_refusals_and_deep_link_reload(node, driver, tmp_path):
    # A wrong password is refused with a visible message.
    login(driver, node, "guest", "wrong")
    text_in(driver, "#login-error", "Login failed")
    shot(driver, tmp_path, "login")
    assert not driver.find_element(By.ID, "top").is_displayed()
    # A user without a management tag is refused, and told why.
    assert requests.put(api(node, "/users/plain"), json={"password": "pw", "tags": ""}, auth=AUTH,
                        timeout=5).status_code in (201, 204)
    login(driver, node, "plain", "pw")
    text_in(driver, "#login-error", "no management tag")
    # The administrator gets in and sees Admin; a deep link survives a reload.
    logged_in(driver, node, hash_="#/queues")
    assert driver.find_element(By.ID, "nav-admin").is_displayed()
    visible(driver, "#queues")
    driver.get(ui(node, "#/queues?name=nothing-matches"))
    driver.refresh()
    text_in(driver, "#queues-info", 'filter "nothing-matches"')
    assert driver.find_element(By.ID, "queues-filter").get_attribute("value") == "nothing-matches"
    go(driver, "#/no-such-page")
    text_in(driver, "#view", "Not found")


def test_amqp_queue_depth_and_live_rates(node, driver, tmp_path):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port))
    ch = conn.channel()
    ch.queue_declare("ui-depth", durable=True)
    for i in range(3):
        ch.basic_publish("", "ui-depth", f"m{i}".encode())
    conn.close()
    logged_in(driver, node, hash_="#/queues")
    text_in(driver, '#queues tr[data-name="ui-depth"] .ready', "3")
    text_in(driver, '#queues tr[data-name="ui-depth"] .total', "3")
    click(driver, By.LINK_TEXT, "ui-depth")
    text_in(driver, "#q-ready", "3")
    assert "#/queues/%2F/ui-depth" in driver.current_url
    before = js_text(driver, "#chart-queue-rates path", "d")
    # A publisher runs: the incoming rate figure and the chart change.
    stop = threading.Event()

    def publish():
        c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port))
        p = c.channel()
        while not stop.is_set():
            p.basic_publish("", "ui-depth", b"x")
            time.sleep(0.005)
        c.close()

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    try:
        wait(driver, 40).until(lambda d: js_text(d, "#q-publish-rate") not in (None, "", "0.0/s"))
        wait(driver, 15).until(
            lambda d: js_text(d, "#chart-queue-rates path", "d") not in (None, before))
        shot(driver, tmp_path, "queue")
        go(driver, "#/overview")
        try:
            wait(driver, 20).until(
                lambda d: js_text(d, '#chart-rates b[data-series="publish"]') not in (None, "", "0.0/s"))
        except TimeoutException:
            raise AssertionError(f"overview rates never moved: {js_text(driver, '#view')!r}") from None
        text_in(driver, "#nodes", "none")  # no alarms
        text_in(driver, "#listeners", "amqp")
        shot(driver, tmp_path, "overview")
    finally:
        stop.set()
        t.join(5)


def test_publish_peek_unchanged_then_purge(node, driver, tmp_path):
    assert requests.put(api(node, "/queues/%2F/ui-peek"), json={"durable": True}, auth=AUTH,
                        timeout=5).status_code == 201
    logged_in(driver, node, hash_="#/queues/%2F/ui-peek")
    form = visible(driver, "#queue-publish")
    fill(form, "payload", "hello from the UI")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#toast", "published and routed")
    wait(driver, 10).until(lambda d: queue(node, "%2F", "ui-peek")["messages"] == 1)
    for _ in range(2):  # peeking twice: still not redelivered, still there
        driver.find_element(By.ID, "peek-btn").click()
        text_in(driver, "#messages .payload", "hello from the UI")
        text_in(driver, "#messages .redelivered", "redelivered: false")
        q = queue(node, "%2F", "ui-peek")
        assert q["messages"] == 1 and q["messages_ready"] == 1
    shot(driver, tmp_path, "queue-peek")
    # A get with requeue marks it redelivered (to show the difference), peek shows that.
    Select(driver.find_element(By.CSS_SELECTOR, "#get-form select[name=ackmode]")).select_by_value("ack_requeue_true")
    driver.find_element(By.CSS_SELECTOR, "#get-form button").click()
    text_in(driver, "#messages", "ackmode ack_requeue_true")
    driver.find_element(By.ID, "peek-btn").click()
    text_in(driver, "#messages .redelivered", "redelivered: true")
    # Purge.
    driver.find_element(By.ID, "purge-btn").click()
    accept_confirm(driver)
    wait(driver, 10).until(lambda d: queue(node, "%2F", "ui-peek")["messages"] == 0)
    text_in(driver, "#q-total", "0")


def test_dead_letters_peeked_and_replayed_to_their_origin(node, driver):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port))
    ch = conn.channel()
    ch.queue_declare("ui-dlq")
    ch.queue_declare("ui-work", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "ui-dlq"})
    for i in range(2):
        ch.basic_publish("", "ui-work", f"job-{i}".encode())
    for _ in range(2):
        method, _, _ = ch.basic_get("ui-work")
        ch.basic_reject(method.delivery_tag, requeue=False)
    logged_in(driver, node, hash_="#/queues/%2F/ui-dlq")
    text_in(driver, "#q-ready", "2")
    driver.find_element(By.ID, "peek-btn").click()
    text_in(driver, "#messages", 'dead-lettered (rejected) from queue "ui-work"')
    form = driver.find_element(By.ID, "replay-form")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#toast", "2 message(s) replayed")
    wait(driver, 10).until(lambda d: queue(node, "%2F", "ui-work")["messages"] == 2)
    assert queue(node, "%2F", "ui-dlq")["messages"] == 0
    conn.close()


def test_admin_adds_user_and_permissions_then_amqp_login(node, driver, tmp_path):
    logged_in(driver, node, hash_="#/admin/users")
    form = visible(driver, "#add-user")
    fill(form, "name", "ui-alice")
    fill(form, "password", "s3cret")
    form.find_element(By.NAME, "tag-management").click()
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#users", "ui-alice")
    shot(driver, tmp_path, "admin-users")
    go(driver, "#/admin/permissions")
    form = visible(driver, "#set-permissions")
    Select(form.find_element(By.NAME, "user")).select_by_value("ui-alice")
    Select(form.find_element(By.NAME, "vhost")).select_by_value("/")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#permissions", "ui-alice")
    perms = requests.get(api(node, "/users/ui-alice/permissions"), auth=AUTH, timeout=5).json()
    assert perms == [{"user": "ui-alice", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]
    c = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", node.port, credentials=pika.PlainCredentials("ui-alice", "s3cret")))
    c.channel().queue_declare("alice-q")
    c.close()
    # The new user logs in to the UI too, without Admin.
    driver.find_element(By.ID, "logout").click()
    logged_in(driver, node, "ui-alice", "s3cret", "#/queues")
    assert not driver.find_element(By.ID, "nav-admin").is_displayed()


def test_admin_vhost_and_policy(node, driver):
    logged_in(driver, node, hash_="#/admin/vhosts")
    form = visible(driver, "#add-vhost")
    fill(form, "name", "ui-vh")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#vhosts", "ui-vh")
    assert requests.get(api(node, "/vhosts/ui-vh"), auth=AUTH, timeout=5).status_code == 200
    # The header's selector knows the new vhost.
    wait(driver, 10).until(lambda d: "ui-vh" in [o.get_attribute("value") for o in
                                                  d.find_elements(By.CSS_SELECTOR, "#vhost-select option")])
    # The header's vhost selector filters the lists.
    assert requests.put(api(node, "/queues/ui-vh/only-here"), json={}, auth=AUTH, timeout=5).status_code == 201
    assert requests.put(api(node, "/queues/%2F/only-in-root"), json={}, auth=AUTH, timeout=5).status_code == 201
    go(driver, "#/queues")
    text_in(driver, "#queues", "only-in-root")
    Select(driver.find_element(By.ID, "vhost-select")).select_by_value("ui-vh")
    text_in(driver, "#queues-info", "1 of 1")
    text_in(driver, "#queues", "only-here")
    assert "only-in-root" not in js_text(driver, "#queues")
    Select(driver.find_element(By.ID, "vhost-select")).select_by_value("")
    text_in(driver, "#queues-info", "2 of 2")
    go(driver, "#/admin/policies")
    form = visible(driver, "#add-policy")
    Select(form.find_element(By.NAME, "vhost")).select_by_value("ui-vh")
    fill(form, "name", "cap")
    fill(form, "pattern", "^capped\\.")
    Select(form.find_element(By.NAME, "apply-to")).select_by_value("queues")
    fill(form, "definition", "max-length = 3\noverflow = reject-publish")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#policies", "cap")
    p = requests.get(api(node, "/policies/ui-vh/cap"), auth=AUTH, timeout=5).json()
    assert p["pattern"] == "^capped\\." and p["apply-to"] == "queues"
    assert p["definition"] == {"max-length": 3, "overflow": "reject-publish"}
    # Delete the policy, then the vhost (each from its table).
    driver.find_element(By.CSS_SELECTOR, "#policies tbody tr button").click()
    wait(driver, 10).until(lambda d: requests.get(api(node, "/policies/ui-vh/cap"), auth=AUTH, timeout=5)
                           .status_code == 404)
    go(driver, "#/admin/vhosts")
    visible(driver, "#vhosts")
    row = [r for r in driver.find_elements(By.CSS_SELECTOR, "#vhosts tbody tr") if "ui-vh" in r.text][0]
    row.find_element(By.TAG_NAME, "button").click()
    accept_confirm(driver)
    wait(driver, 10).until(lambda d: requests.get(api(node, "/vhosts/ui-vh"), auth=AUTH, timeout=5)
                           .status_code == 404)


def test_exchange_declare_bind_publish_delete(node, driver):
    assert requests.put(api(node, "/queues/%2F/ui-xq"), json={"durable": False}, auth=AUTH,
                        timeout=5).status_code == 201
    logged_in(driver, node, hash_="#/exchanges")
    form = visible(driver, "#add-exchange")
    fill(form, "name", "ui-topic")
    Select(form.find_element(By.NAME, "type")).select_by_value("topic")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver, 10).until(lambda d: "#/exchanges/%2F/ui-topic" in d.current_url)
    form = visible(driver, "#xbind-form")
    fill(form, "dest", "ui-xq")
    fill(form, "routing_key", "jobs.#")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#bindings-source", "jobs.#")
    form = driver.find_element(By.ID, "exchange-publish")
    fill(form, "routing_key", "jobs.eu")
    fill(form, "payload", "via topic")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#toast", "published and routed")
    wait(driver, 10).until(lambda d: queue(node, "%2F", "ui-xq")["messages"] == 1)
    driver.find_element(By.CSS_SELECTOR, "#bindings-source button").click()
    text_in(driver, "#bindings-source", "Nothing here")
    driver.find_element(By.XPATH, "//button[text()='Delete']").click()
    accept_confirm(driver)
    wait(driver, 10).until(lambda d: requests.get(api(node, "/exchanges/%2F/ui-topic"), auth=AUTH, timeout=5)
                           .status_code == 404)


def test_definitions_import_through_upload(node, driver, tmp_path):
    defs = {
        "queues": [{"name": "from-file", "vhost": "/", "durable": True, "auto_delete": False,
                    "arguments": {"x-max-length": 5}}],
        "exchanges": [{"name": "file-x", "vhost": "/", "type": "fanout", "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {}}],
        "bindings": [{"source": "file-x", "vhost": "/", "destination": "from-file", "destination_type": "queue",
                      "routing_key": "", "arguments": {}}],
    }
    f = tmp_path / "defs.json"
    f.write_text(json.dumps(defs))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"queues": [{"name": "x", "vhost": "no-such-vhost", "durable": True}]}))
    logged_in(driver, node, hash_="#/admin/definitions")
    # A file the broker refuses: the reason is shown, nothing changes.
    visible(driver, "#import-file").send_keys(str(bad))
    driver.find_element(By.ID, "import-definitions").click()
    text_in(driver, "#import-result", "refused")
    driver.find_element(By.ID, "import-file").send_keys(str(f))
    driver.find_element(By.ID, "import-definitions").click()
    text_in(driver, "#import-result", "Imported defs.json")
    go(driver, "#/queues")
    text_in(driver, '#queues tr[data-name="from-file"]', "max-length")
    shot(driver, tmp_path, "queues")
    go(driver, "#/exchanges/%2F/file-x")
    text_in(driver, "#bindings-source", "from-file")
    shot(driver, tmp_path, "exchange")
    # The export downloads a file holding what was imported.
    go(driver, "#/admin/definitions")
    visible(driver, "#export-definitions").click()
    wait(driver, 15).until(lambda d: any(p.suffix == ".json" for p in d.downloads.iterdir()))
    exported = json.loads(next(p for p in driver.downloads.iterdir() if p.suffix == ".json").read_text())
    assert "from-file" in [q["name"] for q in exported["queues"]]
    assert exported["rabbitmq_definition_format"] == "cluster"


def test_queue_list_pages_on_the_server_at_10000_queues(node, driver, tmp_path):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port))
    ch = conn.channel()
    for i in range(10_000):
        ch.queue_declare(f"bulk-{i:05d}", auto_delete=False)
    ch.basic_publish("", "bulk-04242", b"x")
    conn.close()
    logged_in(driver, node, hash_="#/queues")
    text_in(driver, "#queues-info", "10,000 of 10,000 shown in 100 page(s)", timeout=30)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#queues tbody tr")) == 100
    # Sort by depth, descending: the one queue with a message comes first, on page 1.
    click(driver, By.CSS_SELECTOR, '#queues th[data-sort="messages"]')
    wait(driver, 10).until(lambda d: "sort=messages" in d.current_url)
    click(driver, By.CSS_SELECTOR, '#queues th[data-sort="messages"]')
    wait(driver, 10).until(lambda d: "sort_reverse=true" in d.current_url)
    text_in(driver, "#queues tbody tr:first-child", "bulk-04242")
    # A regex filter, server-side; the page's requests never ask for more than a page.
    go(driver, "#/queues?name=%5Ebulk-0999&use_regex=true")
    text_in(driver, "#queues-info", "10 of 10,000 shown in 1 page(s)")
    # A bad regex is explained where the list would be; a page past the end goes back to page 1.
    go(driver, "#/queues?name=%5B&use_regex=true")
    text_in(driver, "#queues-info", "invalid name regex")
    go(driver, "#/queues?page=999")
    wait(driver, 10).until(lambda d: "page=999" not in d.current_url)
    text_in(driver, "#queues-info", "10,000 of 10,000")
    sizes = driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/queues'))"
        ".map(e => [e.name, e.duration, e.encodedBodySize])")
    assert sizes and all("page_size=100" in n for n, _, _ in sizes), sizes
    assert max(b for _, _, b in sizes) < 500_000, sizes


def test_user_without_permissions_is_told(node, driver):
    assert requests.put(api(node, "/users/lonely"), json={"password": "pw", "tags": "management"}, auth=AUTH,
                        timeout=5).status_code == 201
    logged_in(driver, node, "lonely", "pw", "#/queues")
    text_in(driver, "#no-vhosts", "no permissions in any virtual host")
    driver.find_element(By.ID, "logout").click()
    logged_in(driver, node, hash_="#/queues")
    assert not driver.find_element(By.ID, "no-vhosts").is_displayed()


def test_monitoring_user_has_no_admin(node, driver):
    assert requests.put(api(node, "/users/watcher"), json={"password": "pw", "tags": "monitoring"}, auth=AUTH,
                        timeout=5).status_code == 201
    logged_in(driver, node, "watcher", "pw", "#/overview")
    visible(driver, "#count-queues")
    assert not driver.find_element(By.ID, "nav-admin").is_displayed()
    go(driver, "#/admin/users")
    text_in(driver, "#not-authorised", "Not authorised")
    # The deep link itself, from a fresh load.
    driver.get(ui(node, "#/admin/definitions"))
    text_in(driver, "#not-authorised", "Not authorised")


def test_close_connection_with_reason_and_screenshots(node, driver, tmp_path):
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", node.port, client_properties={"connection_name": "ui-client"}))
    conn.channel()
    logged_in(driver, node, hash_="#/connections")
    click(driver, By.CSS_SELECTOR, "#connections a")
    text_in(driver, "#client-properties", "ui-client")
    shot(driver, tmp_path, "connection")
    go(driver, "#/channels")
    visible(driver, "#channels a")
    shot(driver, tmp_path, "channels")
    go(driver, "#/connections")
    visible(driver, "#connections a")
    shot(driver, tmp_path, "connections")
    click(driver, By.CSS_SELECTOR, "#connections a")
    reason = visible(driver, "#close-reason")
    reason.clear()
    reason.send_keys("maintenance window")
    driver.find_element(By.CSS_SELECTOR, "#close-form button").click()
    accept_confirm(driver)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            conn.process_data_events(0.2)
    assert e.value.reply_code == 320 and "maintenance window" in e.value.reply_text
    # The dark theme, toggled (and kept in localStorage).
    go(driver, "#/overview")
    try:
        visible(driver, "#count-queues")
    except TimeoutException:
        # Once, in CI under load, the Overview did not render in 15 s after the close
        # (not reproduced in full runs here): one reload, then a longer wait.
        driver.refresh()
        visible(driver, "#count-queues", 30)
    driver.find_element(By.ID, "theme-toggle").click()
    theme = driver.execute_script("return document.documentElement.dataset.theme")
    assert theme in ("dark", "light")
    if theme == "light":
        driver.find_element(By.ID, "theme-toggle").click()
    assert driver.execute_script("return document.documentElement.dataset.theme") == "dark"
    shot(driver, tmp_path, "overview-dark")
    driver.find_element(By.ID, "theme-toggle").click()
    go(driver, "#/admin/policies")
    visible(driver, "#add-policy")
    shot(driver, tmp_path, "admin-policies")


def put(node, path: str, body: dict) -> requests.Response:
    r = requests.put(api(node, path), json=body, auth=AUTH, timeout=5)
    assert r.status_code in (201, 204), (path, r.status_code, r.text)
    return r


def alert_text_accept(driver) -> str:
    wait(driver, 5).until(EC.alert_is_present())
    a = driver.switch_to.alert
    text = a.text
    a.accept()
    return text


def test_bulk_purge_and_bulk_delete_of_selected_queues(node, driver, tmp_path):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port))
    ch = conn.channel()
    for name in ("sel-1", "sel-2", "sel-3", "sel-keep"):
        ch.queue_declare(name, durable=True)
        for _ in range(2):
            ch.basic_publish("", name, b"x")
    conn.close()
    logged_in(driver, node, hash_="#/queues?name=%5Esel-&use_regex=true")
    text_in(driver, '#queues tr[data-name="sel-keep"] .total', "2")
    for name in ("sel-1", "sel-2", "sel-3"):
        click(driver, By.CSS_SELECTOR, f'#queues tr[data-name="{name}"] input.select-row')
    text_in(driver, "#selected-count", "3 selected")
    # The header box shows a partial selection (3 of the 4 shown).
    assert driver.execute_script("return document.querySelector('#select-all').indeterminate")
    shot(driver, tmp_path, "queues-bulk")
    driver.find_element(By.ID, "bulk-purge").click()
    assert alert_text_accept(driver) == "Purge 3 queues?"
    wait(driver, 10).until(lambda d: all(queue(node, "%2F", n)["messages"] == 0 for n in ("sel-1", "sel-2", "sel-3")))
    assert queue(node, "%2F", "sel-keep")["messages"] == 2
    text_in(driver, "#toast", "Purge: 3 queues done")
    # The selection survives the purge (and the list's refreshes): delete the same three.
    text_in(driver, "#selected-count", "3 selected")
    driver.find_element(By.ID, "bulk-delete").click()
    assert alert_text_accept(driver) == "Delete 3 queues?"

    def gone(_):
        return all(requests.get(api(node, f"/queues/%2F/{n}"), auth=AUTH, timeout=5).status_code == 404
                   for n in ("sel-1", "sel-2", "sel-3"))
    wait(driver, 10).until(gone)
    assert queue(node, "%2F", "sel-keep")["messages"] == 2
    text_in(driver, "#selected-count", "0 selected")
    text_in(driver, "#queues-info", "1 of")
    # Select all (the header box), then dismissing the confirm changes nothing.
    click(driver, By.ID, "select-all")
    text_in(driver, "#selected-count", "1 selected")
    driver.find_element(By.ID, "bulk-delete").click()
    wait(driver, 5).until(EC.alert_is_present())
    driver.switch_to.alert.dismiss()
    time.sleep(0.5)
    assert queue(node, "%2F", "sel-keep")["messages"] == 2


def headers(driver, css="#queues thead th") -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent.replace(/ [▲▼]$/, ''))", css)


def test_column_picker_choice_survives_a_reload_per_user(node, driver):
    put(node, "/queues/%2F/cols", {"durable": True})
    put(node, "/users/other-admin", {"password": "pw", "tags": "administrator"})
    put(node, "/permissions/%2F/other-admin", {"configure": ".*", "write": ".*", "read": ".*"})
    logged_in(driver, node, hash_="#/queues")
    visible(driver, '#queues tr[data-name="cols"]')
    h = headers(driver)
    assert "Ready" in h and "Incoming" in h and "Ready bytes" not in h, h
    click(driver, By.ID, "col-message_bytes")
    click(driver, By.ID, "col-rates")
    wait(driver, 5).until(lambda d: "Ready bytes" in headers(d) and "Incoming" not in headers(d))
    assert json.loads(driver.execute_script("return localStorage.getItem('warren.columns.queues.guest')")) == \
        ["overview", "messages", "message_bytes"]
    driver.refresh()
    visible(driver, '#queues tr[data-name="cols"]')
    h = headers(driver)
    assert "Ready bytes" in h and "Total bytes" in h and "Incoming" not in h, h
    assert driver.find_element(By.ID, "col-message_bytes").is_selected()
    assert not driver.find_element(By.ID, "col-rates").is_selected()
    # Another user on the same browser keeps the default columns.
    driver.find_element(By.ID, "logout").click()
    logged_in(driver, node, "other-admin", "pw", "#/queues")
    visible(driver, '#queues tr[data-name="cols"]')
    h = headers(driver)
    assert "Incoming" in h and "Ready bytes" not in h, h


def test_refresh_interval_selector(node, driver):
    logged_in(driver, node, hash_="#/queues")
    sel = Select(visible(driver, "#refresh-select"))
    assert sel.first_selected_option.get_attribute("value") == "5"
    assert [o.get_attribute("value") for o in sel.options] == ["0", "5", "10", "30"]
    sel.select_by_value("0")
    visible(driver, "#queues")
    # Off: a queue declared now does not appear by itself.
    put(node, "/queues/%2F/late", {})
    time.sleep(6)
    assert "late" not in js_text(driver, "#queues")
    driver.refresh()
    text_in(driver, "#queues", "late")
    assert Select(visible(driver, "#refresh-select")).first_selected_option.get_attribute("value") == "0"
    Select(driver.find_element(By.ID, "refresh-select")).select_by_value("5")


def test_operator_policy_from_the_ui_caps_a_live_queue_and_is_explained(node, driver, tmp_path):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port))
    ch = conn.channel()
    ch.queue_declare("op-capped", durable=True)
    # A user's policy asks for 10; the operator policy's 2 is stricter and wins.
    put(node, "/policies/%2F/users-cap", {"pattern": "^op-", "apply-to": "queues", "definition": {"max-length": 10}})
    logged_in(driver, node, hash_="#/admin/operator-policies")
    form = visible(driver, "#add-operator-policy")
    fill(form, "name", "ops-cap")
    fill(form, "pattern", "^op-")
    Select(form.find_element(By.NAME, "apply-to")).select_by_value("queues")
    fill(form, "definition", "max-length = 2")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#operator-policies", "ops-cap")
    p = requests.get(api(node, "/operator-policies/%2F/ops-cap"), auth=AUTH, timeout=5).json()
    assert p["definition"] == {"max-length": 2} and p["pattern"] == "^op-", p
    wait(driver, 10).until(lambda d: queue(node, "%2F", "op-capped").get("operator_policy") == "ops-cap")
    for i in range(5):
        ch.basic_publish("", "op-capped", f"m{i}".encode())
    conn.close()
    wait(driver, 10).until(lambda d: queue(node, "%2F", "op-capped")["messages_ready"] == 2)
    go(driver, "#/queues/%2F/op-capped")
    text_in(driver, "#q-ready", "2")
    text_in(driver, "#q-operator-policy", "ops-cap")
    text_in(driver, "#q-policy", "users-cap")
    text_in(driver, "#effective-definition", "max-length")
    row = js_text(driver, "#effective-definition tbody tr")
    assert "2" in row and "policy and operator policy" in row, row
    shot(driver, tmp_path, "queue-policy")
    # Deleted in the UI: gone from the API.
    go(driver, "#/admin/operator-policies")
    click(driver, By.CSS_SELECTOR, "#operator-policies tbody tr button")
    wait(driver, 10).until(lambda d: requests.get(api(node, "/operator-policies/%2F/ops-cap"), auth=AUTH,
                                                  timeout=5).status_code == 404)


def test_vhost_max_queues_limit_from_the_ui_refuses_a_declare(node, driver, tmp_path):
    put(node, "/vhosts/limited", {})
    put(node, "/permissions/limited/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    logged_in(driver, node, hash_="#/admin/limits")
    form = visible(driver, "#set-vhost-limit")
    Select(form.find_element(By.NAME, "vhost")).select_by_value("limited")
    Select(form.find_element(By.NAME, "limit")).select_by_value("max-queues")
    fill(form, "value", "1")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#vhost-limits", "max-queues")
    r = requests.get(api(node, "/vhost-limits/limited"), auth=AUTH, timeout=5).json()
    assert r == [{"vhost": "limited", "value": {"max-queues": 1}}], r
    shot(driver, tmp_path, "admin-limits")
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port, virtual_host="limited"))
    ch = conn.channel()
    ch.queue_declare("first")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("second")
    assert e.value.reply_code == 406, e.value
    # Cleared in the UI: the declare works.
    row = [r for r in driver.find_elements(By.CSS_SELECTOR, "#vhost-limits tbody tr") if "limited" in r.text][0]
    row.find_element(By.TAG_NAME, "button").click()
    wait(driver, 10).until(lambda d: requests.get(api(node, "/vhost-limits/limited"), auth=AUTH, timeout=5).json() == [])
    conn.channel().queue_declare("second")
    conn.close()


def test_user_max_connections_limit_from_the_ui(node, driver):
    put(node, "/users/one-conn", {"password": "pw", "tags": ""})
    put(node, "/permissions/%2F/one-conn", {"configure": ".*", "write": ".*", "read": ".*"})
    logged_in(driver, node, hash_="#/admin/limits")
    form = visible(driver, "#set-user-limit")
    Select(form.find_element(By.NAME, "user")).select_by_value("one-conn")
    Select(form.find_element(By.NAME, "limit")).select_by_value("max-connections")
    fill(form, "value", "1")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#user-limits", "one-conn")
    creds = pika.PlainCredentials("one-conn", "pw")
    params = pika.ConnectionParameters("127.0.0.1", node.port, credentials=creds, connection_attempts=1)
    first = pika.BlockingConnection(params)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params)
    assert first.is_open
    # The connections list sorts on the server by the clicked column.
    go(driver, "#/connections")
    visible(driver, "#connections a")
    click(driver, By.CSS_SELECTOR, '#connections th[data-sort="user"]')
    wait(driver, 10).until(lambda d: "sort=user" in d.current_url)
    click(driver, By.CSS_SELECTOR, '#connections th[data-sort="user"]')
    wait(driver, 10).until(lambda d: "sort_reverse=true" in d.current_url)
    text_in(driver, "#connections tbody tr:first-child", "one-conn")
    go(driver, "#/channels")
    click(driver, By.CSS_SELECTOR, '#channels th[data-sort="prefetch_count"]')
    wait(driver, 10).until(lambda d: "sort=prefetch_count" in d.current_url)
    text_in(driver, "#channels-info", "of")
    assert "error" not in (js_text(driver, "#channels-info", "class") or "")
    first.close()


def test_topic_permission_from_the_ui_refuses_a_publish(node, driver):
    put(node, "/users/topical", {"password": "pw", "tags": ""})
    put(node, "/permissions/%2F/topical", {"configure": ".*", "write": ".*", "read": ".*"})
    logged_in(driver, node, hash_="#/admin/topic-permissions")
    form = visible(driver, "#set-topic-permission")
    Select(form.find_element(By.NAME, "user")).select_by_value("topical")
    fill(form, "exchange", "amq.topic")
    fill(form, "write", "^allowed\\.")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    text_in(driver, "#topic-permissions", "^allowed\\.")
    r = requests.get(api(node, "/topic-permissions/%2F/topical"), auth=AUTH, timeout=5).json()
    assert r == [{"user": "topical", "vhost": "/", "exchange": "amq.topic", "write": "^allowed\\.", "read": ".*"}], r
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port,
                                                             credentials=pika.PlainCredentials("topical", "pw")))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", "allowed.one", b"ok")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("amq.topic", "denied.one", b"no")
    assert e.value.reply_code == 403, e.value
    conn.close()
    # A second exchange's entry survives clearing the first one's in the UI.
    put(node, "/topic-permissions/%2F/topical", {"exchange": "other.topic", "write": ".*", "read": ".*"})
    go(driver, "#/admin/users")
    go(driver, "#/admin/topic-permissions")
    text_in(driver, "#topic-permissions", "other.topic")
    row = [r for r in driver.find_elements(By.CSS_SELECTOR, "#topic-permissions tbody tr") if "amq.topic" in r.text][0]
    row.find_element(By.TAG_NAME, "button").click()
    text_in(driver, "#toast", "cleared")

    def exchanges():
        r = requests.get(api(node, "/topic-permissions/%2F/topical"), auth=AUTH, timeout=5)
        return [t["exchange"] for t in r.json()] if r.status_code == 200 else r.status_code
    assert exchanges() == ["other.topic"], exchanges()
    visible(driver, "#topic-permissions")
    wait(driver, 10).until(lambda d: "amq.topic" not in js_text(d, "#topic-permissions"))


def test_queue_page_charts_start_filled_from_the_api_samples(node, driver, tmp_path):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port))
    ch = conn.channel()
    ch.queue_declare("sampled", durable=True)
    ch.basic_consume("sampled", lambda *a: None, auto_ack=False, consumer_tag="ui-consumer-tag")
    q = "?msg_rates_age=60&msg_rates_incr=5&lengths_age=60&lengths_incr=5"
    deadline = time.monotonic() + 30
    while True:  # the broker samples every 5 s: wait until it holds 3 samples of the depth
        ch.basic_publish("", "sampled", b"x")
        conn.process_data_events(0.2)
        d = requests.get(api(node, "/queues/%2F/sampled" + q), auth=AUTH, timeout=5).json()
        if len(d.get("messages_unacknowledged_details", {}).get("samples", [])) >= 3:
            break
        assert time.monotonic() < deadline, d
    logged_in(driver, node, hash_="#/queues/%2F/sampled")
    # Right after opening (well before the page's own second refresh), each chart has a line
    # of several points: "M x y L x y ...".
    t0 = time.monotonic()
    wait(driver, 3).until(lambda d: (js_text(d, "#chart-queue-depth path", "d") or "").count("L") >= 2)
    wait(driver, 3).until(lambda d: (js_text(d, "#chart-queue-rates path", "d") or "").count("L") >= 1)
    assert time.monotonic() - t0 < 4.5
    # Consumers come from the queue's own consumer_details.
    text_in(driver, "#consumers", "ui-consumer-tag")
    shot(driver, tmp_path, "queue-charts")
    conn.close()


# ---------------------------------------------------------------- third increment

def wait_for_api(p: BrokerProcess):
    deadline = time.monotonic() + 15
    while True:
        try:
            if requests.get(api(p, "/whoami"), auth=AUTH, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "management API did not come up"
        time.sleep(0.1)


def api_requests(driver, fragment: str) -> list[str]:
    """The URLs of the API calls the page made whose URL contains `fragment`."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes(arguments[0]))",
        fragment)


def test_consumers_page_with_links_filter_vhost_and_monitoring(node, driver, tmp_path):
    put(node, "/vhosts/other", {})
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=7)
    ch.queue_declare("work-a")
    ch.queue_declare("work-b")
    ch.basic_consume("work-a", lambda *a: None, consumer_tag="ctag-manual")
    ch2 = conn.channel()  # no prefetch on this one
    ch2.basic_consume("work-b", lambda *a: None, auto_ack=True, exclusive=True, consumer_tag="ctag-auto",
                      arguments={"x-priority": 5})
    other = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port, virtual_host="other"))
    och = other.channel()
    och.queue_declare("elsewhere")
    och.basic_consume("elsewhere", lambda *a: None, consumer_tag="ctag-other")
    put(node, "/users/watcher", {"password": "pw", "tags": "monitoring"})
    try:
        # A monitoring user has the Consumers page, with every consumer.
        logged_in(driver, node, "watcher", "pw", "#/overview")
        assert driver.find_element(By.ID, "nav-consumers").is_displayed()
        click(driver, By.ID, "nav-consumers")
        text_in(driver, "#consumers-info", "3 of 3 shown in 1 page(s)")
        row = lambda tag: f'//table[@id="consumers"]//tr[.//span[@class="tag" and text()="{tag}"]]'  # noqa: E731
        manual = wait(driver).until(EC.presence_of_element_located((By.XPATH, row("ctag-manual"))))
        cells = [td.text for td in manual.find_elements(By.TAG_NAME, "td")]
        # Queue, vhost, channel, tag, ack, exclusive, prefetch, active, arguments.
        assert cells[0] == "work-a" and cells[1] == "/" and cells[2].endswith("(1)"), cells
        assert cells[3:8] == ["ctag-manual", "manual", "no", "7", "up"], cells
        auto = driver.find_element(By.XPATH, row("ctag-auto"))
        cells = [td.text for td in auto.find_elements(By.TAG_NAME, "td")]
        assert cells[4:7] == ["automatic", "yes", "0"] and '"x-priority":5' in cells[8], cells
        shot(driver, tmp_path, "consumers")
        # The API was asked for the shown fields only (it does not page consumers).
        urls = api_requests(driver, "/api/consumers")
        assert urls and all("columns=" in u for u in urls), urls
        r = requests.get(urls[-1], auth=AUTH, timeout=5).json()
        assert {k for c in r for k in c} <= {"queue", "channel_details", "consumer_tag", "ack_required", "exclusive",
                                             "prefetch_count", "active", "activity_status", "arguments"}, r
        # Filter by queue or tag, kept in the URL; sort by a column on the server.
        f = driver.find_element(By.ID, "consumers-filter")
        f.send_keys("work-b\n")
        text_in(driver, "#consumers-info", '1 of 3 shown in 1 page(s) (filter "work-b")')
        assert "name=work-b" in driver.current_url
        go(driver, "#/consumers")
        text_in(driver, "#consumers-info", "3 of 3")
        click(driver, By.CSS_SELECTOR, '#consumers th[data-sort="prefetch_count"]')
        click(driver, By.CSS_SELECTOR, '#consumers th[data-sort="prefetch_count"]')
        wait(driver).until(lambda d: "sort_reverse=true" in d.current_url)
        wait(driver).until(lambda d: js_text(d, "#consumers tbody tr:first-child .tag") == "ctag-manual")
        # The vhost selector narrows the list to /api/consumers/{vhost}.
        Select(driver.find_element(By.ID, "vhost-select")).select_by_value("other")
        text_in(driver, "#consumers-info", "1 of 1 shown")
        text_in(driver, "#consumers", "ctag-other")
        assert any("/api/consumers/other" in u for u in api_requests(driver, "/api/consumers/"))
        Select(driver.find_element(By.ID, "vhost-select")).select_by_value("")
        text_in(driver, "#consumers-info", "3 of 3")
        # The queue links to its page, the channel to its connection.
        click(driver, By.XPATH, row("ctag-manual") + "//td[1]/a")
        text_in(driver, "#queue-name", "work-a")
        text_in(driver, "#consumers", "ctag-manual")
        driver.back()
        click(driver, By.XPATH, row("ctag-manual") + "//td[3]/a")
        wait(driver).until(lambda d: "#/connections/" in d.current_url)
        text_in(driver, "#conn-state", "running")
    finally:
        conn.close()
        other.close()


def test_memory_alarm_blocks_a_publisher_and_the_ui_shows_it(node, driver, tmp_path):
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", node.port, client_properties={"connection_name": "ui-publisher"}))
    ch = conn.channel()
    ch.queue_declare("alarmed")
    ch.basic_publish("", "alarmed", b"before")  # a connection that has published is blocked
    logged_in(driver, node, hash_="#/connections")
    text_in(driver, '#connections [data-state]', "running")
    watermark = api(node, "/warren/vm-memory-high-watermark")
    try:
        # The simplest real trigger: a memory high watermark below the node's RSS (as
        # `warrenctl set_vm_memory_high_watermark absolute 1`).
        assert requests.put(watermark, json={"absolute": 1}, auth=AUTH, timeout=5).status_code == 204
        text_in(driver, '#connections [data-state]', "blocked", timeout=20)
        # Published once the connection is blocked (not before: a frame already in the
        # socket when the alarm arrives may be read first), it stays in the socket.
        ch.basic_publish("", "alarmed", b"during")
        assert "bad" in driver.find_element(By.CSS_SELECTOR, "#connections [data-state]").get_attribute("class")
        shot(driver, tmp_path, "connections-blocked")
        go(driver, "#/overview")
        text_in(driver, "#alarm-banner", "memory alarm on")
        text_in(driver, "#nodes", "memory")
        shot(driver, tmp_path, "overview-alarm")
        # The connection's own page shows it blocked; its channel stays running (as RabbitMQ).
        go(driver, "#/connections")
        click(driver, By.CSS_SELECTOR, "#connections a")
        text_in(driver, "#conn-state", "blocked")
        text_in(driver, "#view table [data-state]", "running")
        go(driver, "#/channels")
        text_in(driver, "#channels [data-state]", "running")
        assert queue(node, "%2F", "alarmed")["messages"] == 1, "the blocked publish was not read"
    finally:
        # Clearing the alarm unblocks the connection, and the held publish arrives.
        assert requests.put(watermark, json={"absolute": 1 << 50}, auth=AUTH, timeout=5).status_code == 204
    go(driver, "#/overview")
    wait(driver, 20).until(lambda d: d.find_element(By.ID, "alarm-banner").get_attribute("hidden") is not None)
    text_in(driver, "#nodes", "none")
    go(driver, "#/connections")
    text_in(driver, '#connections [data-state]', "running", timeout=20)
    wait(driver, 10).until(lambda d: queue(node, "%2F", "alarmed")["messages"] == 2)
    conn.close()


def test_session_expires_after_the_default_timeout_of_inactivity(node, driver):
    logged_in(driver, node, hash_="#/queues")
    assert driver.execute_script("return sessionStorage.getItem('warren.timeout')") == "480"
    # Forced expiry: the last activity 8 hours and a second ago; the page's check logs out.
    driver.execute_script("sessionStorage.setItem('warren.active', String(Date.now() - 480 * 60000 - 1000))")
    text_in(driver, "#login-error", "Your session expired after 8h 00m without activity", timeout=10)
    assert not driver.find_element(By.ID, "top").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('warren.auth')") is None
    # After a reload too: an expired session never reaches a page.
    logged_in(driver, node, hash_="#/queues")
    visible(driver, "#queues")
    driver.execute_script("sessionStorage.setItem('warren.active', String(Date.now() - 481 * 60000))")
    driver.refresh()
    text_in(driver, "#login-error", "session expired")
    assert driver.execute_script("return sessionStorage.getItem('warren.auth')") is None


def test_login_session_timeout_from_the_config_file(request, driver, tmp_path):
    conf = tmp_path / "warren.conf"
    conf.write_text("management.login_session_timeout = 1\n")
    with own_broker(request, "warren-pytest-ui-timeout-", extra_args=["--config", str(conf)]) as p:
        wait_for_api(p)
        assert requests.get(api(p, "/whoami"), auth=AUTH, timeout=5).json()["login_session_timeout"] == 1
        logged_in(driver, p, hash_="#/overview")
        assert driver.execute_script("return sessionStorage.getItem('warren.timeout')") == "1"
        # 50 s idle, then a click: the minute starts again, so the session outlives the next checks.
        driver.execute_script("sessionStorage.setItem('warren.active', String(Date.now() - 50000))")
        driver.find_element(By.CSS_SELECTOR, "#nav a[data-page=queues]").click()
        visible(driver, "#queues")
        time.sleep(11)  # two of the page's 5 s checks, and past the first minute
        assert driver.find_element(By.ID, "top").is_displayed()
        # The page's own refreshes are not activity: a minute idle logs out.
        driver.execute_script("sessionStorage.setItem('warren.active', String(Date.now() - 61000))")
        text_in(driver, "#login-error", "Your session expired after 1m 00s without activity", timeout=10)


def test_per_vhost_definitions_export_then_import_into_another_vhost(node, driver, tmp_path):
    put(node, "/vhosts/src", {})
    put(node, "/vhosts/dst", {})
    put(node, "/queues/src/orders", {"durable": True, "arguments": {"x-max-length": 7}})
    put(node, "/exchanges/src/orders-x", {"type": "fanout", "durable": True})
    assert requests.post(api(node, "/bindings/src/e/orders-x/q/orders"), json={"routing_key": "k"}, auth=AUTH,
                         timeout=5).status_code == 201
    put(node, "/policies/src/orders-ttl", {"pattern": "^orders$", "definition": {"message-ttl": 60000},
                                           "apply-to": "queues"})
    put(node, "/queues/%2F/not-in-src", {"durable": True})
    logged_in(driver, node, hash_="#/admin/definitions")
    Select(visible(driver, "#export-vhost")).select_by_value("src")
    driver.find_element(By.ID, "export-definitions").click()
    wait(driver, 15).until(lambda d: any(p.name.startswith("warren-definitions-src-") and p.suffix == ".json"
                                         for p in d.downloads.iterdir()))
    path = next(p for p in driver.downloads.iterdir() if p.name.startswith("warren-definitions-src-"))
    exported = json.loads(path.read_text())
    assert exported["rabbitmq_definition_format"] == "single_virtual_host"
    assert [q["name"] for q in exported["queues"]] == ["orders"]
    assert "vhost" not in exported["queues"][0]
    assert [x["name"] for x in exported["exchanges"]] == ["orders-x"]
    assert [pol["name"] for pol in exported["policies"]] == ["orders-ttl"]
    # Import that file into dst: everything lands there, nothing else changes.
    Select(driver.find_element(By.ID, "import-vhost")).select_by_value("dst")
    driver.find_element(By.ID, "import-file").send_keys(str(path))
    driver.find_element(By.ID, "import-definitions").click()
    text_in(driver, "#import-result", f"Imported {path.name} into dst.")
    q = queue(node, "dst", "orders")
    assert q["arguments"] == {"x-max-length": 7} and q["durable"] is True, q
    x = requests.get(api(node, "/exchanges/dst/orders-x"), auth=AUTH, timeout=5).json()
    assert x["type"] == "fanout", x
    bs = requests.get(api(node, "/bindings/dst/e/orders-x/q/orders"), auth=AUTH, timeout=5).json()
    assert [b["routing_key"] for b in bs] == ["k"], bs
    pol = requests.get(api(node, "/policies/dst/orders-ttl"), auth=AUTH, timeout=5).json()
    assert pol["definition"] == {"message-ttl": 60000}, pol
    assert requests.get(api(node, "/queues/dst/not-in-src"), auth=AUTH, timeout=5).status_code == 404
    go(driver, "#/queues?name=orders")
    text_in(driver, "#queues-info", "2 of")
    shot(driver, tmp_path, "admin-definitions")


def test_column_pickers_of_exchanges_connections_and_channels_shrink_replies(node, driver):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.port))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3)
    try:
        logged_in(driver, node, hash_="#/connections")
        visible(driver, "#connections [data-state]")
        h = headers(driver, "#connections thead th")
        assert h[:2] == ["Name", "State"] and "Client" in h and "From client" in h, h
        click(driver, By.ID, "connections-col-client")
        wait(driver, 5).until(lambda d: "Client" not in headers(d, "#connections thead th"))
        assert json.loads(driver.execute_script("return localStorage.getItem('warren.columns.connections.guest')")) == \
            ["overview", "network"]
        # The list asks the API for the shown fields only: no client properties now.
        wait(driver, 10).until(lambda d: any("columns=" in u and "client_properties" not in u
                                             for u in api_requests(d, "/api/connections?")))
        url = [u for u in api_requests(driver, "/api/connections?") if "columns=" in u][-1]
        items = requests.get(url, auth=AUTH, timeout=5).json()["items"]
        assert items and all("client_properties" not in c and "state" in c for c in items), items
        driver.refresh()
        visible(driver, "#connections [data-state]")
        assert "Client" not in headers(driver, "#connections thead th")
        assert not driver.find_element(By.ID, "connections-col-client").is_selected()
        # Channels: state always shown, details and rates groups.
        go(driver, "#/channels")
        text_in(driver, "#channels [data-state]", "running")
        assert "Prefetch" in headers(driver, "#channels thead th")
        click(driver, By.ID, "channels-col-details")
        wait(driver, 5).until(lambda d: "Prefetch" not in headers(d, "#channels thead th"))
        assert "Publish" in headers(driver, "#channels thead th")
        url = [u for u in api_requests(driver, "/api/channels?") if "columns=" in u][-1]
        assert "prefetch_count" not in url and "state" in url, url
        # Exchanges: rates off.
        go(driver, "#/exchanges")
        visible(driver, '#exchanges tr[data-name="amq.direct"]')
        assert "In" in headers(driver, "#exchanges thead th")
        click(driver, By.ID, "exchanges-col-rates")
        wait(driver, 5).until(lambda d: "In" not in headers(d, "#exchanges thead th"))
        assert "Type" in headers(driver, "#exchanges thead th")
        url = [u for u in api_requests(driver, "/api/exchanges?") if "columns=" in u][-1]
        assert "message_stats" not in url and "type" in url, url
        assert json.loads(driver.execute_script("return localStorage.getItem('warren.columns.exchanges.guest')")) == \
            ["overview"]
        # The queue list asks for its columns too.
        go(driver, "#/queues")
        visible(driver, "#queues")
        wait(driver, 10).until(lambda d: any("columns=" in u for u in api_requests(d, "/api/queues?")))
    finally:
        conn.close()


@pytest.fixture
def three_node_cluster(cluster):
    """Three warren processes forming one cluster (cluster_support.py: free ports, temp dirs, a
    cookie of their own; the seeded guest on every node), by node name."""
    return dict(zip(cluster.names, cluster.nodes))


def test_overview_of_a_three_node_cluster_shows_members_leader_and_lag(three_node_cluster, driver, tmp_path):
    nodes = three_node_cluster
    first = next(iter(nodes.values()))
    leader = requests.get(api(first, "/warren/cluster"), auth=AUTH, timeout=5).json()["leader"]
    assert leader in nodes
    on = nodes[leader]  # the leader's UI: it knows the members' lag
    logged_in(driver, on)
    wait(driver, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#nodes tbody tr[data-name]")) == 3)
    rows = {r.get_attribute("data-name"): r.text for r in driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")}
    assert set(rows) == set(nodes), rows
    assert all("running" in t and "not running" not in t for t in rows.values()), rows
    assert "leader" in rows[leader] and not any("leader" in t for n, t in rows.items() if n != leader), rows
    text_in(driver, "#cluster-leader", leader)
    term = requests.get(api(on, "/warren/cluster"), auth=AUTH, timeout=5).json()["term"]
    text_in(driver, "#cluster-term", str(term))
    wait(driver, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cluster-members tbody tr[data-name]")) == 3)
    text_in(driver, f'#cluster-members tr[data-name="{leader}"]', "leader")
    text_in(driver, "#cluster-members", "in sync")

    # kill -9 a follower and change something: the Overview shows it not running, behind.
    gone = next(n for n in nodes if n != leader)
    nodes[gone].stop(graceful=False)
    for i in range(3):
        assert requests.put(api(on, f"/vhosts/ui-cluster-{i}"), auth=AUTH, timeout=15).status_code in (201, 204)
    text_in(driver, f'#nodes tr[data-name="{gone}"]', "not running", timeout=20)
    text_in(driver, f'#cluster-members tr[data-name="{gone}"]', "behind", timeout=20)
    assert "—" in js_text(driver, f'#nodes tr[data-name="{gone}"]'), "no figures for another member"
    shot(driver, tmp_path, "overview-cluster")
    # The other follower's UI: the same members and leader, but lag only the leader knows.
    live = next(n for n in nodes if n not in (leader, gone))
    logged_in(driver, nodes[live])
    text_in(driver, "#cluster-leader", leader)
    text_in(driver, f'#nodes tr[data-name="{gone}"]', "not running", timeout=20)
    text_in(driver, f'#cluster-members tr[data-name="{gone}"]', "unknown here")
    text_in(driver, "#cluster-panel", "known on the leader only")


def test_quorum_queue_page_shows_its_raft_group_voters_learner_and_leader(three_node_cluster, driver, tmp_path):
    nodes = three_node_cluster
    names = list(nodes)
    declaring = nodes[names[0]]
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", declaring.port))
    ch = conn.channel()
    # Two voters: the declaring node (it leads, client-local) and one other; the third
    # member follows as a learner.
    ch.queue_declare("ui-qq", durable=True, arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": 2})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", "ui-qq", f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    conn.close()
    logged_in(driver, declaring, hash_="#/queues/%2F/ui-qq")
    text_in(driver, "#queue-raft-leader", names[0], timeout=20)
    wait(driver, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#queue-raft-members tbody tr[data-name]")) == 3)
    rows = {r.get_attribute("data-name"): r.text for r in driver.find_elements(By.CSS_SELECTOR, "#queue-raft-members tbody tr")}
    assert set(rows) == set(names), rows
    assert "leader" in rows[names[0]] and "voter" in rows[names[0]], rows
    assert sum("learner" in t for t in rows.values()) == 1, rows
    assert sum("voter" in t for t in rows.values()) == 2, rows
    text_in(driver, "#queue-raft-members", "in sync", timeout=20)
    # The leader timed its last entry (the confirmed publishes went through it).
    text_in(driver, "#queue-replication", "last commit", timeout=20)
    shot(driver, tmp_path, "queue-quorum-replication")
    # A follower's UI shows the same group, with lag left to the leader.
    logged_in(driver, nodes[names[1]], hash_="#/queues/%2F/ui-qq")
    text_in(driver, "#queue-raft-leader", names[0], timeout=20)
    text_in(driver, "#queue-replication", "known on the queue's leader only")
    assert "last commit" not in js_text(driver, "#queue-replication"), "timed on the leader only"
