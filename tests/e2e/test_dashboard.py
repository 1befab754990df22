"""The web dashboard in a real headless Chromium (Debian's, driven by Selenium through
Debian's chromedriver) against the session server: sign in with the dev key, see a sandbox
this test created, watch a denied connect it makes appear in the live audit, browse a file,
kill it from the UI (the SDK then sees it gone), and the keys page creates a key that works.

Screenshots go to $DECLAWD_ARTEFACTS (default /tmp/declawd-artefacts)/dashboard/.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy
from declaw.exceptions import NotFoundException

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTEFACTS = Path(os.environ.get("DECLAWD_ARTEFACTS", "/tmp/declawd-artefacts")) / "dashboard"
WAIT_S = 45

# One denied connect by name (refused at DNS: evil.com is not in allow_out) and one by
# address (refused by the datapath), then a file the browser will read.
CONNECT = """
import socket
for target in (("evil.com", 443), ("198.51.100.7", 443)):
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect(target); print(target[0], "REACH")
    except OSError as e:
        print(target[0], type(e).__name__)
    finally:
        s.close()
"""

# `make system` installs Debian's chromium and chromium-driver: a missing browser is a
# failure of the set-up (Selenium raises), never a skip.

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser(server: dict[str, str]) -> Iterator[WebDriver]:
    shutil.rmtree(ARTEFACTS, ignore_errors=True)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,2000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        (ARTEFACTS / "console.log").write_text(
            "\n".join(str(e) for e in driver.get_log("browser")) + "\n"
        )
        driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    driver.save_screenshot(str(ARTEFACTS / f"{name}.png"))


def wait(driver: WebDriver) -> WebDriverWait:  # type: ignore[type-arg]
    return WebDriverWait(driver, WAIT_S)


def sign_in(driver: WebDriver, url: str, key: str) -> None:
    """Sign in from a signed-out browser (the module's browser may hold an earlier session)."""
    driver.get(url + "/")
    driver.delete_all_cookies()
    driver.get(url + "/")
    field = wait(driver).until(ec.visibility_of_element_located((By.ID, "signin-key")))
    shot(driver, "01-sign-in")
    field.send_keys(key)
    driver.find_element(By.ID, "signin-submit").click()
    wait(driver).until(ec.visibility_of_element_located((By.ID, "who")))


@pytest.fixture
def sandbox(server: dict[str, str]) -> Iterator[Sandbox]:
    s = Sandbox.create(
        template="python",
        timeout=600,
        metadata={"declaw.runtime": "runc", "test": "dashboard"},
        security=SecurityPolicy(
            network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC])
        ),
    )
    try:
        s.files.write("/home/user/hello-dashboard.txt", "written by test_dashboard\n")
        s.files.write("/tmp/connect.py", CONNECT)
        yield s
    finally:
        with contextlib.suppress(NotFoundException):  # the test killed it from the UI
            s.kill(wait=True)


def test_pages_live_audit_and_kill_from_the_ui(
    server: dict[str, str], browser: WebDriver, sandbox: Sandbox
) -> None:
    sid = sandbox.sandbox_id
    sign_in(browser, server["url"], server["key"])
    row = f"#sandboxes-table tr[data-sandbox-id='{sid}']"
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    cells = browser.find_element(By.CSS_SELECTOR, row).text
    assert "running" in cells and "python" in cells and "runc" in cells, cells
    assert "vCPU" in cells and "MiB" in cells, cells
    shot(browser, "02-sandboxes")

    browser.find_element(By.CSS_SELECTOR, f"{row} a").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "audit-status"), "live"))
    assert "api.openai.com" in browser.find_element(By.ID, "policy-allow").text
    assert ALL_TRAFFIC in browser.find_element(By.ID, "policy-deny").text
    # The connect happens after the page is streaming: it can only arrive live.
    denied = "#audit-table tr[data-verdict='deny'][data-name='evil.com']"
    assert not browser.find_elements(By.CSS_SELECTOR, denied)
    out = sandbox.commands.run("python3 /tmp/connect.py", timeout=60)
    assert "evil.com REACH" not in out.stdout, out.stdout
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, denied)))
    allowed = browser.find_elements(By.CSS_SELECTOR, "#audit-table tr[data-verdict='allow']")
    assert allowed, "the command's own allow event is listed too"
    wait(browser).until(
        ec.text_to_be_present_in_element((By.ID, "commands-history"), "python3 /tmp/connect.py")
    )

    file_link = "#files-list tr[data-path='/home/user/hello-dashboard.txt'] a"
    wait(browser).until(ec.element_to_be_clickable((By.CSS_SELECTOR, file_link))).click()
    wait(browser).until(
        ec.text_to_be_present_in_element((By.ID, "file-content"), "written by test_dashboard")
    )
    shot(browser, "03-sandbox-live-audit")

    browser.find_element(By.ID, "kill-button").click()
    wait(browser).until(ec.element_to_be_clickable((By.ID, "kill-button-confirm"))).click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "sandbox-state"), "killed"))
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "audit-status"), "ended"))
    shot(browser, "04-sandbox-killed")
    deadline = time.monotonic() + 30
    while True:
        try:
            Sandbox.connect(sid)
        except NotFoundException:
            break
        assert time.monotonic() < deadline, f"{sid} still answers after the UI killed it"
        time.sleep(0.5)
    assert sid not in {s["sandbox_id"] for s in Sandbox.list()["sandboxes"]}


def test_templates_and_keys_pages(server: dict[str, str], browser: WebDriver) -> None:
    sign_in(browser, server["url"], server["key"])
    browser.get(server["url"] + "/#/templates")
    python = "#templates-table tr[data-template-id] a"
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, python)))
    assert "python" in browser.find_element(By.ID, "templates-table").text
    shot(browser, "05-templates")

    browser.get(server["url"] + "/#/keys")
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#keys-table tr")))
    assert "(this session)" in browser.find_element(By.ID, "keys-table").text
    name = f"from-the-dashboard-{uuid.uuid4().hex[:8]}"  # the test instance keeps old keys
    browser.find_element(By.ID, "new-key-name").send_keys(name)
    browser.find_element(By.ID, "new-key-submit").click()
    value = wait(browser).until(ec.visibility_of_element_located((By.ID, "new-key-value")))
    key = value.get_attribute("value") or ""
    assert key.startswith("dcw_")
    shot(browser, "06-keys-created")
    answer = httpx.get(server["url"] + "/sandboxes", headers={"X-API-Key": key}, timeout=30)
    assert answer.status_code == 200, answer.text
    listed = httpx.get(server["url"] + "/keys", headers={"X-API-Key": key}, timeout=30).json()
    new_id = next(k["key_id"] for k in listed["keys"] if k["name"] == name)
    revoke = f"#revoke-{new_id}"
    wait(browser).until(ec.element_to_be_clickable((By.CSS_SELECTOR, revoke))).click()
    wait(browser).until(ec.element_to_be_clickable((By.ID, f"revoke-{new_id}-confirm"))).click()
    row = f"#keys-table tr[data-key-id='{new_id}'][data-state='revoked']"
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    gone = httpx.get(server["url"] + "/sandboxes", headers={"X-API-Key": key}, timeout=30)
    assert gone.status_code == 401
    shot(browser, "07-keys-revoked")

    browser.find_element(By.ID, "signout").click()
    wait(browser).until(ec.visibility_of_element_located((By.ID, "signin-key")))
    browser.get(server["url"] + "/#/sandboxes")
    wait(browser).until(ec.visibility_of_element_located((By.ID, "signin-key")))


def test_the_page_carries_a_strict_csp_and_the_cookie_is_httponly(
    server: dict[str, str], browser: WebDriver
) -> None:
    sign_in(browser, server["url"], server["key"])
    cookie = browser.get_cookie("declawd_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""
    page = httpx.get(server["url"] + "/", timeout=30)
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # The browser itself refuses an injected inline script under that policy.
    ran = browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.__inl = 1';"
        " document.body.append(s); return window.__inl === 1;"
    )
    assert ran is False
