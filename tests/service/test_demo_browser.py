"""The Gradio demo in a real headless Chromium: the page loads, a run completes, green tokens appear;
with sentence units, the top-units table and the heatmap shaded by unit appear.

Needs Debian's ``chromium`` and ``chromium-driver`` (``bash scripts/setup-browser.sh``, root). Without
them the test skips, unless ``HETA_FAST_REQUIRE_BROWSER=1`` (then it fails). The screenshots are kept
in ``tests/service/artifacts/`` (``demo.png``; ``demo_units.png``, a run scored by sentence).
"""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

ARTIFACTS = Path(__file__).parent / "artifacts"
REQUIRE = os.environ.get("HETA_FAST_REQUIRE_BROWSER") == "1"


def _find(*names):
    return next((p for p in map(shutil.which, names) if p), None)


CHROMIUM = _find("chromium", "chromium-browser", "google-chrome")
DRIVER = _find("chromedriver")


def _need(ok: bool, why: str):
    if not ok:
        if REQUIRE:
            pytest.fail(f"{why} (HETA_FAST_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(f"{why}; install it with `bash scripts/setup-browser.sh`", allow_module_level=True)


_need(CHROMIUM is not None, "chromium is not installed")
_need(DRIVER is not None, "chromedriver (Debian package chromium-driver) is not installed")
try:
    import gradio  # noqa: F401
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:  # pragma: no cover - requirements/service.txt installs them
    _need(False, f"{e.name} is not installed (pip install -r requirements/service.txt)")

from heta_fast.service.app import AttributionService, create_app  # noqa: E402
from heta_fast.service.cli import load_attributor  # noqa: E402


@pytest.fixture(scope="module")
def demo_url():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster on a shared machine
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    service = AttributionService(load_attributor(tiny_model="llama"), max_tokens=256)
    app = create_app(service, demo=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "demo server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    service = webdriver.ChromeService(executable_path=DRIVER)
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_demo_runs_and_shades_tokens(demo_url, browser):
    wait = WebDriverWait(browser, 60)
    browser.get(demo_url + "/")  # redirects to /demo/
    box = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#heta-text textarea")))
    box.clear()
    box.send_keys("hello world")
    time.sleep(1.0)  # let the target dropdown refresh from the new text before running

    def heatmap_shown(d):
        return len(d.find_elements(By.CSS_SELECTOR, "#heta-heatmap span.tok")) > 0

    _run_until(browser, heatmap_shown)  # no coloured tokens after three clicks fails here
    toks = browser.find_elements(By.CSS_SELECTOR, "#heta-heatmap span.tok")
    assert [t.text for t in toks] == list("hello worl") or len(toks) == 10  # the BOS is the sink
    shades = [t.value_of_css_property("background-color") for t in toks]
    assert all(s.startswith("rgba(0, 128, 0") for s in shades)
    assert any(s != shades[0] for s in shades), "every token has the same shade"
    assert "'d'" in browser.find_element(By.CSS_SELECTOR, "#heta-status").text
    assert browser.find_elements(By.CSS_SELECTOR, "#heta-topk table, #heta-topk [role='grid']")
    assert "heta_attribution" in browser.find_element(By.CSS_SELECTOR, "#heta-files").text

    # Switching the shading re-renders from the stored result, without a new run.
    browser.find_element(By.XPATH, "//*[@id='heta-by']//label[.//span[text()='M'] or normalize-space()='M']").click()
    wait.until(lambda d: "shading: M" in d.find_element(By.CSS_SELECTOR, "#heta-heatmap").text)

    # Generate a continuation (slider default: 5 tokens), then explain its last token.
    browser.find_element(By.CSS_SELECTOR, "#heta-generate").click()
    wait.until(lambda d: len(d.find_element(By.CSS_SELECTOR, "#heta-text textarea").get_attribute("value")) == 16)
    time.sleep(0.5)  # target dropdown refresh
    browser.find_element(By.CSS_SELECTOR, "#heta-run").click()
    wait.until(lambda d: "position 15" in d.find_element(By.CSS_SELECTOR, "#heta-status").text)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#heta-heatmap span.tok")) == 15

    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "demo.png"
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000


def _run_until(browser, done, tries: int = 3):
    """Click Explain until ``done(driver)`` holds (a click landing during a dropdown refresh can be dropped)."""
    from selenium.common.exceptions import TimeoutException

    for _attempt in range(tries):
        browser.find_element(By.CSS_SELECTOR, "#heta-run").click()
        try:
            WebDriverWait(browser, 30).until(done)
            return
        except TimeoutException:
            continue
    raise AssertionError(f"the run did not finish after {tries} clicks")


def test_demo_scores_sentence_units(demo_url, browser):
    wait = WebDriverWait(browser, 60)
    browser.get(demo_url + "/demo/")
    box = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#heta-text textarea")))
    box.clear()
    box.send_keys("Hi there. Bye now")  # target 'w'; its context "Hi there. Bye no" is two sentences

    def table_shown(d):
        return any(e.is_displayed() for e in d.find_elements(By.CSS_SELECTOR, "#heta-topunits"))

    def status(d):
        return d.find_element(By.CSS_SELECTOR, "#heta-status").text

    assert not table_shown(browser)  # no units yet
    browser.find_element(By.XPATH, "//*[@id='heta-options']//button[contains(., 'Options')]").click()

    def unit_choice(name):
        return wait.until(EC.element_to_be_clickable(
            (By.XPATH, f"//*[@id='heta-units']//label[.//span[text()='{name}'] or normalize-space()='{name}']")))

    unit_choice("sentence").click()
    time.sleep(1.0)  # let the target dropdown refresh from the new text before running
    _run_until(browser, lambda d: "units (sentence)" in status(d))
    assert "scored 2 units (sentence)" in status(browser) and "position 16" in status(browser)

    # The top-units table: one row per sentence (Gradio's grid rows carry data-index), best first.
    wait.until(table_shown)
    rows = browser.find_elements(By.CSS_SELECTOR, "#heta-topunits [role='row'][data-index]")
    cells = [[c.text for c in r.find_elements(By.CSS_SELECTOR, "[role='gridcell']")] for r in rows]
    assert len(cells) == 2 and all(len(c) == 9 for c in cells)
    assert [c[0] for c in cells] == ["1", "2"] and {c[1] for c in cells} == {"sentence"}
    assert sorted((c[2], c[3], c[4]) for c in cells) == [("0–9", "0–8", "Hi there."), ("9–16", "9–15", "Bye no")]

    # The heatmap shades by unit: two unit groups, every token of a unit alike, its unit's text on hover.
    units = browser.find_elements(By.CSS_SELECTOR, "#heta-heatmap span.unit")
    assert len(units) == 2
    shades = [[t.value_of_css_property("background-color") for t in u.find_elements(By.CSS_SELECTOR, "span.tok")]
              for u in units]
    assert [len(s) for s in shades] == [9, 7] and all(len(set(s)) == 1 for s in shades)
    assert all(s[0].startswith("rgba(0, 128, 0") or s[0] == "rgb(0, 128, 0)" for s in shades)
    assert shades[0][0] != shades[1][0]
    titles = [t.get_attribute("title") for t in units[0].find_elements(By.CSS_SELECTOR, "span.tok")]
    assert all("(sentence)" in t and t.endswith("Hi there.") for t in titles)
    # Only M is per token without refine: the token table ranks by M and says so.
    assert "Top tokens by M" in browser.find_element(By.CSS_SELECTOR, "#heta-topk").text

    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "demo_units.png"
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000

    # Back to tokens: the units table goes away again.
    unit_choice("token").click()
    _run_until(browser, lambda d: "position 16" in status(d) and "units" not in status(d))
    wait.until(lambda d: not table_shown(d))
    assert not browser.find_elements(By.CSS_SELECTOR, "#heta-heatmap span.unit")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#heta-heatmap span.tok")) == 16
