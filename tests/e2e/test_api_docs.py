"""/docs in a real headless Chromium (Debian's, through Selenium and Debian's chromedriver)
against the session server: Swagger UI renders every documented operation from assets the
server serves itself (no request to any other origin, no console error, the CSP holds),
and "Try it out" with the API key reaches the real API. Screenshots go to the artefacts dir
(DECLAWD_ARTEFACTS, default /tmp/declawd-artefacts)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTEFACTS = Path(os.environ.get("DECLAWD_ARTEFACTS", "/tmp/declawd-artefacts"))

# `make system` installs Debian's chromium and chromium-driver: a missing browser is a
# failure of the set-up, never a skip.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1400,1000")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def shot(browser: WebDriver, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTEFACTS / f"api-docs-{name}.png"))


def wait(browser: WebDriver, css: str, timeout: float = 30) -> Any:
    return WebDriverWait(browser, timeout).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def open_operation(browser: WebDriver, method: str, path: str) -> Any:
    for block in browser.find_elements(By.CSS_SELECTOR, f".opblock-{method}"):
        shown = block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").text
        if shown.replace("\u200b", "") == path:
            browser.execute_script("arguments[0].scrollIntoView()", block)
            block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
            return block
    raise AssertionError(f"{method.upper()} {path} is not on the page")


def test_docs_render_every_operation_from_local_assets(
    server: dict[str, str], browser: WebDriver
) -> None:
    spec = httpx.get(server["url"] + "/openapi.json").json()
    expected = sum(len(item) for item in spec["paths"].values())
    browser.get(server["url"] + "/docs")
    wait(browser, ".opblock")
    WebDriverWait(browser, 30).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) >= expected
    )
    assert not browser.find_elements(By.CSS_SELECTOR, ".errors-wrapper .error-wrapper")
    shot(browser, "overview")
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources, "the page loaded its assets"
    foreign = [r for r in resources if not r.startswith(server["url"])]
    assert not foreign, f"requests to other origins: {foreign}"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"console errors (a CSP refusal shows here): {errors}"


def test_models_show_and_try_it_out_reaches_the_api(
    server: dict[str, str], browser: WebDriver
) -> None:
    browser.get(server["url"] + "/docs")
    wait(browser, ".opblock")
    block = open_operation(browser, "post", "/sandboxes")
    wait(browser, ".opblock-post .model-example, .opblock-post .body-param")
    assert "template" in block.text and "201" in block.text
    shot(browser, "create-sandbox")

    browser.find_element(By.CSS_SELECTOR, ".auth-wrapper .authorize").click()
    field = wait(browser, ".modal-ux input[type=text], .modal-ux input[type=password]")
    field.send_keys(server["key"])
    browser.find_element(By.CSS_SELECTOR, ".modal-ux .auth-btn-wrapper .authorize").click()
    browser.find_element(By.CSS_SELECTOR, ".modal-ux .btn-done, .modal-ux .close-modal").click()

    block = open_operation(browser, "get", "/sandboxes")
    block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    block.find_element(By.CSS_SELECTOR, ".execute").click()
    status: Any = WebDriverWait(browser, 30).until(
        lambda b: block.find_element(
            By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_status"
        )
    )
    shot(browser, "list-sandboxes-tried")
    assert status.text.strip().startswith("200"), status.text
    assert "sandboxes" in block.find_element(By.CSS_SELECTOR, ".live-responses-table").text
