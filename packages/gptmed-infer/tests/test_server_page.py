"""The chat page (GET /) in a real headless Chromium (selenium): ask, watch the answer stream,
stop a generation, see the server's refusals. Skips without chromium + chromedriver."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="the browser test needs selenium (pip install selenium)"
)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from server_backends import SlowBackend  # noqa: E402
from test_server import KEY, _start  # noqa: E402

# Chromium flags that keep it from reaching for the network (a closed network stalls it otherwise)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,900",
]


def _find(*names: str) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver", "chromium-driver")
    if not chromium or not driver_path:
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gptmed-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # both paths given: selenium never downloads a browser or driver
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page_server(onnx_gen, artifacts) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """EOS never wins and each step takes 30 ms more: an answer streams for max_tokens steps."""
    from gptmed.inference import TextGenerator

    backend = SlowBackend(onnx_gen.backend, delay=0.03, eos=onnx_gen.special_ids.eos)
    gen = TextGenerator(model=backend, tokenizer_path=str(artifacts.bundle / "tokenizer.model"))
    gen.source = str(artifacts.bundle)  # as from_bundle has it: the page names the bundle's folder
    yield from _start(gen, max_batch=2, max_queue=2)


def _answers(driver: Any) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, "#log .msg.assistant")


def _ask(driver: Any, question: str, **fields: Any) -> Any:
    """Type ``question`` (and sampling ``fields``), send it; the new answer element."""
    before = len(_answers(driver))
    for name, value in fields.items():
        box = driver.find_element(By.ID, name)
        box.clear()
        box.send_keys(str(value))
    driver.find_element(By.ID, "question").send_keys(question)
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, 10).until(lambda d: len(_answers(d)) > before)
    return _answers(driver)[-1]


def test_ask_stream_stop_and_refusals_in_a_real_browser(browser, page_server) -> None:  # type: ignore[no-untyped-def]
    driver, url = browser, page_server
    driver.get(url + "/")
    wait = WebDriverWait(driver, 20, poll_frequency=0.02)
    assert driver.find_element(By.ID, "bundle").text == "bundle"  # the bundle's folder name
    assert driver.find_element(By.ID, "key-box").is_displayed()  # the server has a key: the page asks for it
    driver.find_element(By.ID, "sampling").click()  # open the sampling controls
    assert driver.find_element(By.ID, "temperature").get_attribute("value") == "0.7"  # the bundle's defaults

    # a wrong key: the server's 401 is shown and the page asks again
    driver.find_element(By.ID, "key").send_keys("sk-wrong")
    driver.find_element(By.ID, "key-save").click()
    answer = _ask(driver, "What is fever?")
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "401" in driver.find_element(By.ID, "error").text and answer.get_attribute("data-state") == "error"
    assert driver.find_element(By.ID, "key-box").is_displayed()
    driver.find_element(By.ID, "key").send_keys(KEY)
    driver.find_element(By.ID, "key-save").click()
    assert not driver.find_element(By.ID, "key-box").is_displayed()

    # an answer appears while it is generated, then ends
    answer = _ask(driver, "What is fever?", max_tokens=24, temperature=0)
    wait.until(lambda d: answer.text.strip())
    assert answer.get_attribute("data-state") == "streaming"  # text arrived before the end
    partial = answer.text
    wait.until(lambda d: answer.get_attribute("data-state") == "done")
    assert len(answer.text) > len(partial) and answer.text.startswith(partial.rstrip("▍").strip())
    assert answer.get_attribute("data-finish") == "length"
    assert not driver.find_element(By.ID, "error").is_displayed()

    # the stop button ends a generation: the server frees its row
    cancelled = httpx.get(url + "/health").json()["cancelled"]
    answer = _ask(driver, "Tell me about asthma.", max_tokens=64)
    wait.until(lambda d: answer.text.strip())
    driver.find_element(By.ID, "stop").click()
    wait.until(lambda d: answer.get_attribute("data-state") == "stopped")
    deadline = time.time() + 5
    while (h := httpx.get(url + "/health").json())["active"] or h["cancelled"] == cancelled:
        assert time.time() < deadline, h
        time.sleep(0.05)
    assert h["cancelled"] == cancelled + 1
    assert driver.find_element(By.ID, "send").is_enabled()

    # a request the server refuses: its message is shown
    answer = _ask(driver, "What is fever?", temperature=-1)
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    error = driver.find_element(By.ID, "error").text
    assert "(400)" in error and "temperature" in error, error
    assert answer.get_attribute("data-state") == "error"
