"""The chat page in a real headless Chromium: upload an image, ask, see both answers; a correct "no"
is not struck through, the marks have a legend and the heatmap a colour bar; a bad guard setting
shows its typed message.

Serves `app/chat.py` with `streamlit run` on a free localhost port and drives Debian's chromium
through selenium and chromedriver. The screenshot is written to artifacts/app_screenshot.png
(git-ignored; CI keeps it as an artifact). Skips only when chromium or chromedriver is missing,
which `scripts/setup_env.sh` installs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "artifacts" / "app_screenshot.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytest.importorskip("streamlit")
webdriver = pytest.importorskip("selenium.webdriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("chromium/chromedriver not installed (scripts/setup_env.sh installs them)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lvlm_guard.embedded.world import build_world

    world = build_world(tmp_path_factory.mktemp("browser_world"), seed=0, sizes={"test": 2}, workers=1, progress=False)
    port = _free_port()
    env = {
        **os.environ,
        "LVLM_GUARD_APP_WORLD": str(world),
        "LVLM_GUARD_APP_MAX_NEW_TOKENS": "16",  # a yes/no answer ends by ~12 tokens
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path_factory.mktemp("browser_log") / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "chat.py"), "--server.headless", "true"]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _click_text(driver, wait, xpath: str) -> None:
    wait.until(ec.element_to_be_clickable((By.XPATH, xpath))).click()


def test_upload_ask_and_see_both_answers(server, browser, tmp_path):
    picture = tmp_path / "upload.png"
    Image.new("RGB", (96, 64), (200, 40, 40)).save(picture)
    wait = WebDriverWait(browser, 90)
    browser.get(server)
    wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'guarded vs unguarded')]")))
    _click_text(browser, wait, "//label[.//p[starts-with(text(), 'PAI — ')]]")  # one guard on, its defaults
    wait.until(ec.presence_of_element_located((By.XPATH, "//code[normalize-space(.)='pai']")))
    _click_text(browser, wait, "//label[.//p[text()='Upload']]")
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type='file']")))
    upload.send_keys(str(picture))
    wait.until(ec.presence_of_element_located((By.XPATH, "//textarea")))
    _click_text(browser, wait, "//button[.//p[text()='Ask']]")
    unguarded = "//h3[starts-with(normalize-space(.), 'Unguarded')]"
    guarded = "//h3[starts-with(normalize-space(.), 'Guarded: pai')]"
    wait.until(ec.presence_of_element_located((By.XPATH, unguarded)))
    wait.until(ec.presence_of_element_located((By.XPATH, guarded)))
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
    errors = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    assert not errors, errors[0].text


RUNNING = "[data-testid='stStatusWidgetRunningIcon'], [data-testid='stStatusWidgetRunningManIcon']"


def _settle(driver, wait) -> None:
    """Until the script run a widget started has finished (elements found before may be redrawn)."""
    time.sleep(0.5)  # the rerun a widget asks for starts after a round trip
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, RUNNING))


def _ask(driver, wait, question: str) -> None:
    box = wait.until(ec.presence_of_element_located((By.XPATH, "//textarea")))
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(question)
    box.send_keys(Keys.CONTROL, Keys.ENTER)  # commits the text area (a click elsewhere would too)
    _settle(driver, wait)
    _click_text(driver, wait, "//button[.//p[text()='Ask']]")


def test_correct_no_is_not_struck_and_legend_and_colour_bar_show(server, browser):
    """The first sample (a street: bench, car, person, stop sign, traffic light, tv) asked POPE-style
    about a pizza: tiny-coco answers "No, there is no pizza in the image." (greedy, deterministic)."""
    wait = WebDriverWait(browser, 90)
    browser.get(server)
    wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'guarded vs unguarded')]")))
    _ask(browser, wait, "Is there a pizza in the image?")
    wait.until(ec.presence_of_element_located((By.XPATH, "//h3[starts-with(normalize-space(.), 'Unguarded')]")))
    wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'pizza (correctly denied)')]")))
    _settle(browser, wait)
    pizza = browser.find_elements(
        By.XPATH, "//*[@data-testid='stMarkdownContainer']//*[normalize-space(text())='pizza']"
    )
    assert pizza, "the answer's 'pizza' mention is not drawn"
    for mention in pizza:
        struck = mention.find_elements(By.XPATH, "ancestor-or-self::del | ancestor-or-self::s")
        assert not struck and mention.value_of_css_property("text-decoration-line") != "line-through"
    legend = browser.find_element(By.XPATH, "//*[contains(., 'What the marks mean')]/ancestor::details[1]")
    for text in ("named and in the image", "named but not in the image", "said to be absent, and it is absent"):
        assert text in legend.text
    sample = legend.find_element(By.XPATH, ".//*[normalize-space(text())='hallucinated']")
    assert sample.find_elements(By.XPATH, "ancestor-or-self::del | ancestor-or-self::s")  # the check above can fail
    _click_text(browser, wait, "//button[.//p[text()='Show attention heatmap']]")
    _settle(browser, wait)
    wait.until(ec.presence_of_element_located((By.XPATH, "//*[starts-with(normalize-space(.), 'colour scale')]")))
    wait.until(ec.presence_of_element_located((By.XPATH, "//*[starts-with(normalize-space(.), 'attention flow of')]")))
    browser.save_screenshot(str(SCREENSHOT.with_name("app_screenshot_negation.png")))
    errors = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    assert not errors, errors[0].text


def test_bad_setting_shows_the_typed_message(server, browser):
    wait = WebDriverWait(browser, 90)
    browser.get(server)
    wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'guarded vs unguarded')]")))
    _click_text(browser, wait, "//label[.//p[starts-with(text(), 'EXIT — ')]]")
    _settle(browser, wait)
    _click_text(browser, wait, "//summary[.//*[text()='exit parameters']]")
    layer = wait.until(ec.element_to_be_clickable((By.XPATH, "//input[@aria-label='layer']")))
    layer.send_keys(Keys.CONTROL, "a")
    layer.send_keys("abc", Keys.ENTER)
    message = "exit: layer='abc' is not allowed; layer must be an integer or none"
    alert = wait.until(
        ec.presence_of_element_located((By.XPATH, f"//*[@data-testid='stAlert'][contains(., \"{message}\")]"))
    )
    assert "TypeError" not in alert.text
    _settle(browser, wait)  # the alert can show while the run that removes the old page is still going
    # nothing to ask with a bad setting (a stale element of the previous run may linger a moment)
    WebDriverWait(browser, 20).until_not(lambda d: d.find_elements(By.XPATH, "//button[.//p[text()='Ask']]"))
