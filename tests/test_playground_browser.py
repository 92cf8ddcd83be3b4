"""playground.py end to end in a real headless browser: Debian's Chromium and chromedriver, driven
by Selenium. Starts the app on tiny models, generates, opens the next-token view of a token, draws
the attention heatmap, chats and classifies, and saves a screenshot of each view in
outputs/playground/. Runs in CI (.ci/run installs Chromium); elsewhere it is skipped without it."""

import os
import queue
import shutil
import subprocess
import sys
import threading

import pytest
from test_playground import save_tiny_checkpoints

from plumbing import OUTPUTS_DIR

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = OUTPUTS_DIR / "playground"


def need(condition, what):
    """Without a browser the test cannot run: in CI that is a failure, elsewhere a skip."""
    if not condition:
        message = f"{what} is missing: apt-get install chromium chromium-driver, pip install selenium"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs them)")
        pytest.skip(message)


@pytest.fixture
def app_url(tmp_path):
    """playground.py on three tiny checkpoints, on a free port of 127.0.0.1, as a reader starts it."""
    paths = save_tiny_checkpoints(tmp_path)
    env = dict(os.environ, LLM_OUTPUTS_DIR=str(tmp_path), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "playground.py", "--port", "0", "--checkpoint", *map(str, paths)]
    process = subprocess.Popen(command, cwd=REPO_DIR, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    printed = []
    try:
        while True:
            try:
                printed.append(lines.get(timeout=30))
            except queue.Empty:
                pytest.fail("playground.py printed no address in 30 s:\n" + "".join(printed))
            if printed[-1].startswith("Playground at "):
                break
        url = printed[-1].split()[2]
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def browser():
    need(CHROMIUM and CHROMEDRIVER, "Chromium or chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need(False, "selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                     "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_generate_next_token_view_attention_chat_and_classify_in_a_browser(app_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    wait = WebDriverWait(browser, 10)
    find = browser.find_element

    def text_of(element_id):
        return find(By.ID, element_id).text

    browser.get(app_url)
    wait.until(lambda _: "tiny-lm.pth: language model" in text_of("model-info"))

    # Generate: type a prompt, click, wait for the streamed tokens to end.
    prompt = find(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("Every effort")
    find(By.ID, "max-new-tokens").clear()
    find(By.ID, "max-new-tokens").send_keys("12")
    find(By.ID, "seed").clear()
    find(By.ID, "seed").send_keys("1")  # twelve tokens before any <|endoftext|>
    find(By.ID, "generate-button").click()
    wait.until(lambda _: "new tokens in" in text_of("generate-status"))
    tokens = browser.find_elements(By.CSS_SELECTOR, "#generated .tok")
    assert len(tokens) == 12
    assert find(By.CSS_SELECTOR, "#generated .prompt-text").text == "Every effort"

    # The next-token view of the third token: its candidates, the chosen one marked.
    tokens[2].click()
    panel = find(By.ID, "candidates")
    wait.until(lambda _: panel.is_displayed())
    assert panel.text.startswith("Token 3: the model wrote")
    rows = panel.find_elements(By.CSS_SELECTOR, "tr.chosen")
    assert len(rows) == 1 and "chosen" in rows[0].text
    assert len(panel.find_elements(By.CSS_SELECTOR, "table tr")) >= 11  # header + 10 candidates
    browser.save_screenshot(str(SCREENSHOTS / "generate.png"))

    # Tokens: the prompt's 12 characters, each with its id.
    find(By.CSS_SELECTOR, "#tabs button[data-view=tokens]").click()
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#token-list .token-chip")) == 12)
    assert text_of("tokens-status").startswith("12 tokens, character tokenizer")
    browser.save_screenshot(str(SCREENSHOTS / "tokens.png"))

    # Attention: the heatmap of layer 2, head 1 over the prompt's 12 tokens.
    find(By.CSS_SELECTOR, "#tabs button[data-view=attention]").click()
    Select(find(By.ID, "layer")).select_by_value("1")
    find(By.ID, "attention-button").click()
    canvas = find(By.ID, "heatmap")
    wait.until(lambda _: canvas.get_attribute("data-tokens") == "12")
    assert text_of("attention-status") == "layer 2 of 2, head 1 of 2, over the prompt's 12 tokens"
    # The first token can only attend to itself (weight 1: the darkest shade); above the
    # diagonal the causal mask leaves hatched grey cells.
    first, masked = browser.execute_script("""
        const canvas = arguments[0], ctx = canvas.getContext('2d'), n = 12;
        const size = Math.max(4, Math.min(34, Math.floor(560 / n)));  // app.js's cell size
        const margin = canvas.width - n * size - 10;  // the labels' room (device scale 1)
        const at = (i, j) => Array.from(
            ctx.getImageData(margin + j * size + 2, margin + i * size + 2, 1, 1).data);
        return [at(0, 0), at(0, 11)];""", canvas)
    assert first[:3] == [11, 42, 117]
    assert masked[:3] == [241, 242, 244]  # the hatch's background; a weight of 0 is white
    browser.save_screenshot(str(SCREENSHOTS / "attention.png"))

    # Chat with the instruction model: the answer streams into the second turn.
    Select(find(By.ID, "model-select")).select_by_value("tiny-instruct.pth")
    wait.until(lambda _: "tiny-instruct.pth: instruction model" in text_of("model-info"))
    assert find(By.ID, "view-chat").is_displayed()
    find(By.ID, "temperature").clear()
    find(By.ID, "temperature").send_keys("0")
    find(By.ID, "chat-message").send_keys("Name a fast animal.")
    find(By.ID, "chat-button").click()
    wait.until(lambda _: find(By.ID, "chat-button").is_enabled()
               and len(browser.find_elements(By.CSS_SELECTOR, "#chat-log .turn")) == 2)
    turns = browser.find_elements(By.CSS_SELECTOR, "#chat-log .turn")
    assert turns[0].text == "You\nName a fast animal." and turns[1].text.startswith("tiny-instruct.pth\n")
    assert len(turns[1].text) > len("tiny-instruct.pth\n")
    browser.save_screenshot(str(SCREENSHOTS / "chat.png"))

    # A bad input is a message on the page, and the page goes on working.
    find(By.ID, "temperature").clear()
    find(By.ID, "temperature").send_keys("-1")
    find(By.ID, "chat-message").send_keys("Again.")
    find(By.ID, "chat-button").click()
    wait.until(lambda _: find(By.ID, "message").is_displayed())
    assert text_of("message").startswith("temperature must be 0 (greedy")
    wait.until(lambda _: find(By.ID, "chat-button").is_enabled())
    # The refused message left no turns behind and is still in the box, to send again.
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chat-log .turn")) == 2
    assert find(By.ID, "chat-message").get_attribute("value") == "Again."

    # A refused Generate says so beside the button, not "generating...".
    find(By.CSS_SELECTOR, "#tabs button[data-view=generate]").click()
    find(By.ID, "temperature").clear()
    find(By.ID, "temperature").send_keys("0")
    find(By.ID, "max-new-tokens").clear()
    find(By.ID, "max-new-tokens").send_keys("5000")
    find(By.ID, "generate-button").click()
    wait.until(lambda _: text_of("message").startswith("max new tokens must be from 1 to 1000"))
    wait.until(lambda _: find(By.ID, "generate-button").is_enabled())
    assert text_of("generate-status") == "not generated (see the message above)"

    # Classify with the classifier: a label and two probabilities.
    Select(find(By.ID, "model-select")).select_by_value("tiny-classifier.pth")
    wait.until(lambda _: "tiny-classifier.pth: classifier" in text_of("model-info"))
    find(By.ID, "classify-button").click()
    result = find(By.ID, "classify-result")
    wait.until(lambda _: result.is_displayed())
    assert result.text.split("\n")[0] in ("The classifier says: spam", "The classifier says: not spam")
    assert "not spam" in result.text and "%" in result.text
    assert result.text.endswith("tokens long; like chapter 6's classify_review, the model read only its "
                                "first 16: its context length.")
    browser.save_screenshot(str(SCREENSHOTS / "classify.png"))
