"""The notebook view in a real headless Chromium with JavaScript switched off: the score heatmap shows, the
switch changes the view by CSS alone, and with ``<style>`` stripped every view still shows, the score first.

Needs Debian's ``chromium`` and ``chromium-driver`` (``bash scripts/setup-browser.sh``); without them the
test skips, unless ``HETA_FAST_REQUIRE_BROWSER=1`` (then it fails).
"""

import os
import re
import shutil
from pathlib import Path

import pytest

from heta_fast import Attribution, AttributionSequence

REQUIRE = os.environ.get("HETA_FAST_REQUIRE_BROWSER") == "1"
FIXTURES = Path(__file__).parent / "fixtures"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")


def _need(ok: bool, why: str):
    if not ok:
        if REQUIRE:
            pytest.fail(f"{why} (HETA_FAST_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(f"{why}; install it with `bash scripts/setup-browser.sh`", allow_module_level=True)


_need(CHROMIUM is not None and DRIVER is not None, "chromium / chromedriver are not installed")
try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
except ImportError as e:  # pragma: no cover - requirements/service.txt installs it
    _need(False, f"{e.name} is not installed (pip install -r requirements/service.txt)")


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})  # no JS
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(browser, tmp_path, body: str):
    page = tmp_path / "view.html"
    # The page's own script would retitle it if JavaScript ran (WebDriver's injected checks run regardless).
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>no-js</title></head><body>{body}"
                    "<script>document.title = 'js-ran'</script></body></html>", encoding="utf-8")
    browser.get(page.as_uri())


def _shown(browser) -> list[str]:
    return [v.get_attribute("data-by") for v in browser.find_elements(By.CSS_SELECTOR, ".heta-view")
            if v.is_displayed()]


def test_switch_works_without_javascript(browser, tmp_path):
    r = Attribution.load(FIXTURES / "attribution_v1.json")
    _open(browser, tmp_path, r._repr_html_())
    assert browser.title == "no-js"  # JavaScript really is off in this page
    assert _shown(browser) == ["scores"]
    spans = browser.find_elements(By.CSS_SELECTOR, ".heta-view-scores span[title^='pos ']")
    assert [s.text for s in spans[1:]] == list("hello worl")
    # Chromium reports an alpha of 1 as rgb(...): the darkest token is the one with the largest score.
    colours = [s.value_of_css_property("background-color") for s in spans]
    alphas = [float(c.rsplit(",", 1)[1].rstrip(")")) if c.startswith("rgba") else 1.0 for c in colours]
    assert r.scores[alphas.index(max(alphas))] == max(r.scores) and max(alphas) == 1.0
    for name in ("M", "S", "I", "scores"):
        browser.find_element(By.CSS_SELECTOR, f"label[for$='-{name}']").click()
        assert _shown(browser) == [name]


def test_every_view_shows_where_style_is_stripped(browser, tmp_path):
    seq = AttributionSequence.load(FIXTURES / "attribution_sequence_v1.json")
    body = re.sub(r"<style>.*?</style>", "", seq._repr_html_(), flags=re.S)
    _open(browser, tmp_path, body)
    assert _shown(browser) == ["scores", "M", "S", "I"]
    views = browser.find_elements(By.CSS_SELECTOR, ".heta-view")
    assert views[0].location["y"] < views[1].location["y"]  # the score first, at the top
